/**
 * What an offload carries. The default payload is the model input the device already computed,
 * quantized to uint8 exactly as the model's first QuantizeLinear does (the card's `input.quant`
 * scale and zero point): 784 bytes for a 28×28 gray model, and any tier can recover the pixels
 * from it (cascade/protocol.ts `tensorToPixels`). The alternative is a JPEG of the frame's ROI at
 * the quality the policy picks; never in privacy mode.
 */
import sharp from 'sharp';
import type { PayloadKind } from '../cascade/policy/index.ts';
import type { TensorInfo } from '../cascade/protocol.ts';
import type { InputSpec } from '../models/card.ts';
import { channelsOf, type Rect } from '../models/preprocess.ts';
import { roundHalfEven } from '../models/preprocess-plan.ts';
import type { CameraFrame } from './frames.ts';

/** The quantization of the tensor payload: the card's, or one covering the normalized range. */
export function payloadQuant(spec: InputSpec): { scale: number; zeroPoint: number } {
  const q = spec.quant;
  if (q !== undefined && q.dtype === 'uint8') return { scale: q.scale, zeroPoint: q.zeroPoint };
  if (q !== undefined) return { scale: q.scale, zeroPoint: q.zeroPoint + 128 };
  // fp32 model: a uint8 grid over the values pixels 0..255 can take in every channel.
  const c = channelsOf(spec);
  let lo = Number.POSITIVE_INFINITY;
  let hi = Number.NEGATIVE_INFINITY;
  for (let k = 0; k < c; k++) {
    const m = spec.mean[k] ?? spec.mean[0];
    const s = spec.std[k] ?? spec.std[0];
    lo = Math.min(lo, -m / s);
    hi = Math.max(hi, (1 - m) / s);
  }
  const scale = (hi - lo) / 255;
  return { scale, zeroPoint: Math.round(-lo / scale) };
}

/** The envelope's description of the tensor payload. */
export function tensorInfo(spec: InputSpec): TensorInfo {
  const c = channelsOf(spec);
  const { scale, zeroPoint } = payloadQuant(spec);
  return {
    layout: spec.layout,
    channels: c,
    height: spec.height,
    width: spec.width,
    scale,
    zeroPoint,
    mean: Array.from({ length: c }, (_, k) => spec.mean[k] ?? spec.mean[0]),
    std: Array.from({ length: c }, (_, k) => spec.std[k] ?? spec.std[0]),
  };
}

/**
 * Quantizes the model input into `out` as ONNX QuantizeLinear does: clamp(roundHalfEven(fround(x
 * / scale)) + zeroPoint, 0, 255). For a uint8 card this is bit for bit what the model computes
 * internally (and what models/preprocess.ts writes into a Uint8Array).
 */
export function quantizeInput(
  input: Float32Array,
  q: { scale: number; zeroPoint: number },
  out: Uint8Array,
): Uint8Array {
  const scale = Math.fround(q.scale);
  for (let i = 0; i < input.length; i++) {
    const v = roundHalfEven(Math.fround(input[i] / scale)) + q.zeroPoint;
    out[i] = v < 0 ? 0 : Math.min(v, 255);
  }
  return out;
}

/** JPEG quality of a payload kind, or null for non-JPEG kinds. */
export function jpegQuality(kind: PayloadKind): number | null {
  const m = /^jpeg-q(\d+)$/.exec(kind);
  return m ? Number(m[1]) : null;
}

/** Copies the frame's ROI (or the whole frame) out as packed RGB, for an asynchronous encode. */
export function cropRgb(frame: CameraFrame): { data: Buffer; width: number; height: number } {
  const r: Rect = frame.roi ?? { x: 0, y: 0, width: frame.width, height: frame.height };
  const data = Buffer.allocUnsafe(r.width * r.height * 3);
  const stride = frame.width * 3;
  for (let y = 0; y < r.height; y++) {
    const at = (r.y + y) * stride + r.x * 3;
    data.set(frame.data.subarray(at, at + r.width * 3), y * r.width * 3);
  }
  return { data, width: r.width, height: r.height };
}

/** Encodes packed RGB as a JPEG. */
export async function encodeJpeg(
  rgb: { data: Buffer; width: number; height: number },
  quality: number,
): Promise<Buffer> {
  return sharp(rgb.data, { raw: { width: rgb.width, height: rgb.height, channels: 3 } })
    .jpeg({ quality, mozjpeg: false })
    .toBuffer();
}

/**
 * Running estimate of JPEG bytes per pixel at each quality, so the policy can weigh a JPEG
 * payload before it is encoded. Starts from typical values and follows the real encodes.
 */
export class JpegSizeModel {
  readonly #bpp = new Map<number, number>([
    [50, 0.35],
    [75, 0.55],
    [90, 0.9],
  ]);

  /** Estimated bytes of a JPEG of `pixels` pixels at `quality` (plus the JFIF header). */
  estimate(quality: number, pixels: number): number {
    return Math.round(600 + (this.#bpp.get(quality) ?? 1) * pixels);
  }

  /** Learns from one encode. */
  observe(quality: number, pixels: number, bytes: number): void {
    const bpp = Math.max(0, bytes - 600) / Math.max(1, pixels);
    const old = this.#bpp.get(quality);
    this.#bpp.set(quality, old === undefined ? bpp : old + 0.2 * (bpp - old));
  }
}
