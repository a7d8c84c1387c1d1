/**
 * Camera frame → model input, driven by the model card's input spec: crop, letterbox, resize
 * (area or bilinear), colour conversion (RGB/BGR/NV12/gray → the card's colour), mean/std
 * normalisation, optional int8/uint8 quantization with the card's scale and zero point, NCHW or
 * NHWC. This is the TypeScript reference; the native kernel (native/preprocess.ts) executes the
 * same plan (models/preprocess-plan.ts) and matches it bit for bit.
 *
 * INT8 cards: the ONNX models take float input and quantize it with their first QuantizeLinear,
 * whose scale and zero point the card's `quant` records. So the runtime feeds a Float32Array; a
 * Uint8Array/Int8Array output holds exactly what that QuantizeLinear computes
 * (clamp(roundHalfEven(fround(x / scale)) + zeroPoint)), e.g. for a compact offload tensor.
 */
import type { InputSpec } from './card.ts';
import {
  type Constants,
  checkFrame,
  checkOutput,
  checkSpec,
  constantsFor,
  type Frame,
  OutputCode,
  type Plan,
  type PreprocessOptions,
  planFor,
  roundHalfEven,
} from './preprocess-plan.ts';

export type { Frame, PixelFormat, PreprocessOptions, Rect } from './preprocess-plan.ts';
export { channelsOf, inputLength } from './preprocess-plan.ts';

/** Output buffers: float for fp32 inputs, or the card's quantized dtype. */
export type InputBuffer = Float32Array | Uint8Array | Int8Array;

/** A validated call: what both implementations execute. */
export interface PreparedCall {
  stride: number;
  plan: Plan;
  consts: Constants;
  outKind: number;
}

/** Reused by every call (the result of {@link prepare} is valid until the next call). */
const prepared = {} as PreparedCall;

/**
 * Validates every argument and resolves the plan and constants (shared with the native kernel).
 * @throws {TypeError} for an unknown format, resize method, malformed spec or crop, or an output
 *   buffer type the spec does not describe.
 * @throws {RangeError} for a wrong output length, odd NV12 dimensions, a short frame buffer or
 *   stride, a crop outside the frame or a padValue outside 0–255.
 */
export function prepare(
  frame: Frame,
  spec: InputSpec,
  out: InputBuffer,
  opts?: PreprocessOptions,
): PreparedCall {
  checkSpec(spec);
  const stride = checkFrame(frame);
  const outKind = checkOutput(spec, out);
  prepared.plan = planFor(frame, spec, opts);
  prepared.consts = constantsFor(frame.format, spec, opts?.padValue ?? 0);
  prepared.stride = stride;
  prepared.outKind = outKind;
  return prepared;
}

/**
 * Writes the model input described by `spec` for `frame` into `out` (one image; pass a subarray
 * of a batch buffer for batches). Allocation-free after the first call for a given geometry.
 * @param out Float32Array of {@link inputLength}(spec) values, or a Uint8Array/Int8Array when the
 *   spec has `quant` of that dtype (quantized values as the model's first QuantizeLinear).
 * @param opts resize 'area' (default) or 'bilinear', crop (default whole frame), letterbox
 *   (default false), padValue (default 0).
 * @throws {TypeError} see {@link prepare}.
 * @throws {RangeError} see {@link prepare}.
 */
export function preprocess(frame: Frame, spec: InputSpec, out: InputBuffer, opts?: PreprocessOptions): void {
  run(frame, spec, prepare(frame, spec, out, opts), out);
}

type RowFn = (
  acc: Float64Array,
  data: Uint8Array,
  y: number,
  wy: number,
  plan: Plan,
  stride: number,
  uvBase: number,
) => void;

/** Gray frame (or NV12 Y plane to gray): one resampled channel. */
function rowGray(
  acc: Float64Array,
  data: Uint8Array,
  y: number,
  wy: number,
  plan: Plan,
  stride: number,
): void {
  const { boxW, kx, xIdx, xW } = plan;
  const rowOff = y * stride;
  for (let ox = 0; ox < boxW; ox++) {
    let s = 0;
    for (let t = ox * kx, e = t + kx; t < e; t++) s += xW[t] * data[rowOff + xIdx[t]];
    acc[ox] += wy * s;
  }
}

/** Packed 3-byte frames: three resampled channels in byte order. */
function rowPacked(
  acc: Float64Array,
  data: Uint8Array,
  y: number,
  wy: number,
  plan: Plan,
  stride: number,
): void {
  const { boxW, kx, xIdx, xW } = plan;
  const rowOff = y * stride;
  for (let ox = 0; ox < boxW; ox++) {
    let s0 = 0;
    let s1 = 0;
    let s2 = 0;
    for (let t = ox * kx, e = t + kx; t < e; t++) {
      const w = xW[t];
      const p = rowOff + 3 * xIdx[t];
      s0 += w * data[p];
      s1 += w * data[p + 1];
      s2 += w * data[p + 2];
    }
    acc[3 * ox] += wy * s0;
    acc[3 * ox + 1] += wy * s1;
    acc[3 * ox + 2] += wy * s2;
  }
}

function clamp255(v: number): number {
  return Math.max(0, Math.min(v, 255));
}

/** NV12 luma expanded from video range (16–235) to 0–255, as for a gray pixel through BT.601. */
function rowNv12Gray(
  acc: Float64Array,
  data: Uint8Array,
  y: number,
  wy: number,
  plan: Plan,
  stride: number,
): void {
  const { boxW, kx, xIdx, xW } = plan;
  const rowOff = y * stride;
  for (let ox = 0; ox < boxW; ox++) {
    let s = 0;
    for (let t = ox * kx, e = t + kx; t < e; t++) {
      s += xW[t] * clamp255((298 * (data[rowOff + xIdx[t]] - 16) + 128) >> 8);
    }
    acc[ox] += wy * s;
  }
}

/** NV12 → RGB per tap (BT.601 video range, integer), then resampled. */
function rowNv12Rgb(
  acc: Float64Array,
  data: Uint8Array,
  y: number,
  wy: number,
  plan: Plan,
  stride: number,
  uvBase: number,
): void {
  const { boxW, kx, xIdx, xW } = plan;
  const rowOff = y * stride;
  const uvOff = uvBase + stride * (y >> 1);
  for (let ox = 0; ox < boxW; ox++) {
    let s0 = 0;
    let s1 = 0;
    let s2 = 0;
    for (let t = ox * kx, e = t + kx; t < e; t++) {
      const w = xW[t];
      const x = xIdx[t];
      const c = 298 * (data[rowOff + x] - 16) + 128;
      const uv = uvOff + (x & ~1);
      const d = data[uv] - 128;
      const f = data[uv + 1] - 128;
      s0 += w * clamp255((c + 409 * f) >> 8);
      s1 += w * clamp255((c - 100 * d - 208 * f) >> 8);
      s2 += w * clamp255((c + 516 * d) >> 8);
    }
    acc[3 * ox] += wy * s0;
    acc[3 * ox + 1] += wy * s1;
    acc[3 * ox + 2] += wy * s2;
  }
}

// Output state of the current call, module-level so that the per-value writer is not a closure.
let outBuf: InputBuffer = new Float32Array(0);
let outA: Float64Array = new Float64Array(3);
let outB: Float64Array = new Float64Array(3);
let outQuant = false;
let qScale = 1;
let qZero = 0;
let qMin = 0;
let qMax = 255;

function emit(i: number, c: number, r: number): void {
  const x = Math.fround(r * outA[c] + outB[c]);
  if (!outQuant) {
    outBuf[i] = x;
    return;
  }
  const q = roundHalfEven(Math.fround(x / qScale)) + qZero;
  outBuf[i] = Math.max(qMin, Math.min(q, qMax));
}

function run(frame: Frame, spec: InputSpec, call: PreparedCall, out: InputBuffer): void {
  const { plan, consts: k, stride } = call;
  const { boxX, boxY, boxW, boxH, ky, yIdx, yW, acc } = plan;
  const { width: W, height: H } = spec;
  const outC = k.outChannels;
  const srcC = k.srcChannels;
  // Element index of (y, x, c) = y * rowStep + x * colStep + c * chanStep.
  const nchw = spec.layout === 'NCHW';
  const colStep = nchw ? 1 : outC;
  const rowStep = W * colStep;
  const chanStep = nchw ? W * H : 1;
  const { data, format } = frame;
  const fillRow: RowFn =
    format === 'gray' ? rowGray : format === 'nv12' ? (srcC === 1 ? rowNv12Gray : rowNv12Rgb) : rowPacked;
  const uvBase = stride * frame.height;
  outBuf = out;
  outA = k.A;
  outB = k.B;
  outQuant = call.outKind !== OutputCode.float32;
  ({ qScale, qZero, qMin, qMax } = k);

  if (boxW !== W || boxH !== H) {
    for (let oy = 0; oy < H; oy++) {
      const inside = oy >= boxY && oy < boxY + boxH;
      for (let ox = 0; ox < W; ox++) {
        if (inside && ox >= boxX && ox < boxX + boxW) continue;
        for (let c = 0; c < outC; c++) emit(oy * rowStep + ox * colStep + c * chanStep, c, k.padR);
      }
    }
  }
  const l0 = k.luma[0];
  const l1 = k.luma[1];
  const l2 = k.luma[2];
  const perm = k.perm;
  for (let oy = 0; oy < boxH; oy++) {
    acc.fill(0);
    for (let t = oy * ky, e = t + ky; t < e; t++) {
      const wy = yW[t];
      if (wy !== 0) fillRow(acc, data, yIdx[t], wy, plan, stride, uvBase);
    }
    const rowBase = (boxY + oy) * rowStep + boxX * colStep;
    for (let ox = 0; ox < boxW; ox++) {
      const i = rowBase + ox * colStep;
      if (srcC === 1) {
        for (let c = 0; c < outC; c++) emit(i + c * chanStep, c, acc[ox]);
      } else if (outC === 1) {
        emit(i, 0, l0 * acc[3 * ox] + l1 * acc[3 * ox + 1] + l2 * acc[3 * ox + 2]);
      } else {
        for (let c = 0; c < 3; c++) emit(i + c * chanStep, c, acc[3 * ox + perm[c]]);
      }
    }
  }
}
