/**
 * Real offload traffic without a camera fleet: a pool of bundled Fashion-MNIST test images,
 * preprocessed once with the device model card's input spec into the quantized tensors a device
 * sends, with the device model's real calibrated top-k (one onnxruntime session for the whole
 * pool, not one per simulated camera). Simulated cameras then encode real offload envelopes
 * from the pool at almost no CPU cost, so the load lands on the broker and the gateways.
 */
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import {
  encode,
  type OffloadMessage,
  type Ranked,
  type TensorInfo,
  type TraceContext,
} from '../../cascade/protocol.ts';
import { type InputSpec, parseModelCard } from '../../models/card.ts';
import { loadBundledSample } from '../../models/data/load.ts';
import { preprocess } from '../../models/preprocess.ts';
import { OnnxClassifier } from '../../models/runtime.ts';

/** The device model's card (input spec, temperature, accept threshold). */
export const DEVICE_CARD = fileURLToPath(new URL('../../models/device/card.json', import.meta.url));

/** One pooled frame. */
export interface PoolFrame {
  /** Quantized device input tensor (the card's layout), as a device offloads it. */
  tensor: Uint8Array;
  /** Ground-truth label. */
  truth: number;
  /** Device top-3 with calibrated probabilities. */
  topk: Ranked[];
}

/** A pool of frames and what envelopes need to describe them. */
export interface FramePool {
  frames: PoolFrame[];
  tensorInfo: TensorInfo;
  modelVersion: string;
  /** The device card's accept threshold: frames below it are the ones a device offloads. */
  accept: number;
}

/** Options of {@link loadFramePool}. */
export interface FramePoolOptions {
  /** Frames in the pool. Default 256. */
  size?: number;
  /** Keep only frames the device would offload (confidence below its accept threshold). Default true. */
  offloadOnly?: boolean;
  /** Device model card. Default {@link DEVICE_CARD}. */
  cardPath?: string;
}

/**
 * Builds a pool from the bundled sample.
 * @throws {CascadeError} as {@link OnnxClassifier.load} and {@link loadBundledSample}.
 */
export async function loadFramePool(opts: FramePoolOptions = {}): Promise<FramePool> {
  const size = opts.size ?? 256;
  const cardPath = opts.cardPath ?? DEVICE_CARD;
  const card = parseModelCard(JSON.parse(await readFile(cardPath, 'utf8')), cardPath);
  const spec: InputSpec = card.input;
  if (spec.quant?.dtype !== 'uint8')
    throw new RangeError(`${cardPath}: the device input must be uint8-quantized`);
  const channels = spec.colour === 'gray' ? 1 : 3;
  const sample = await loadBundledSample();
  const model = await OnnxClassifier.load(cardPath, { intraOpThreads: 1 });
  const frames: PoolFrame[] = [];
  try {
    const px = sample.height * sample.width * sample.channels;
    const result = await model.classify(sample.images, sample.n);
    const classes = result.logits.length / sample.n;
    for (let i = 0; i < sample.n && frames.length < size; i++) {
      const topk = topK(result.logits.subarray(i * classes, (i + 1) * classes), card.temperature, 3);
      if ((opts.offloadOnly ?? true) && topk[0].prob >= card.thresholds.accept) continue;
      const tensor = new Uint8Array(channels * spec.height * spec.width);
      preprocess(
        {
          data: sample.images.subarray(i * px, (i + 1) * px),
          width: sample.width,
          height: sample.height,
          format: sample.channels === 1 ? 'gray' : 'rgb',
        },
        spec,
        tensor,
      );
      frames.push({ tensor, truth: sample.labels[i], topk });
    }
  } finally {
    await model.dispose();
  }
  if (frames.length === 0) throw new RangeError('frame pool: no frame below the accept threshold');
  return {
    frames,
    modelVersion: card.version,
    accept: card.thresholds.accept,
    tensorInfo: {
      layout: spec.layout,
      channels,
      height: spec.height,
      width: spec.width,
      scale: spec.quant.scale,
      zeroPoint: spec.quant.zeroPoint,
      mean: spec.mean.length === channels ? [...spec.mean] : Array(channels).fill(spec.mean[0] ?? 0),
      std: spec.std.length === channels ? [...spec.std] : Array(channels).fill(spec.std[0]),
    },
  };
}

function topK(logits: Float32Array, temperature: number, k: number): Ranked[] {
  let max = Number.NEGATIVE_INFINITY;
  for (const v of logits) max = Math.max(max, v / temperature);
  const e = Array.from(logits, (v) => Math.exp(v / temperature - max));
  const sum = e.reduce((a, b) => a + b, 0);
  return e
    .map((v, label) => ({ label, prob: v / sum }))
    .sort((a, b) => b.prob - a.prob)
    .slice(0, k);
}

/** Fields of one offload besides the pooled frame. */
export interface EnvelopeFields {
  deviceId: string;
  frameId: number;
  captureTime: number;
  budgetLeftMs: number;
  trace: TraceContext;
  /** Privacy mode flag (the payload is a tensor either way). Default false. */
  privacy?: boolean;
}

/** Encodes one real offload envelope for a pooled frame. */
export function offloadEnvelope(pool: FramePool, frame: PoolFrame, f: EnvelopeFields): Buffer {
  const m: OffloadMessage = {
    kind: 'offload',
    deviceId: f.deviceId,
    frameId: f.frameId,
    captureTime: f.captureTime,
    budgetLeftMs: f.budgetLeftMs,
    modelVersion: pool.modelVersion,
    topk: frame.topk,
    trace: f.trace,
    contentType: 'tensorU8',
    tensor: pool.tensorInfo,
    privacy: f.privacy ?? false,
    payload: frame.tensor,
  };
  return encode(m);
}
