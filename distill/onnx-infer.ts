/**
 * Batch inference of an ONNX classifier from its bytes, for the pipeline's own measurements
 * (teacher soft labels from an imported model, validation predictions, INT8 vs fp32 checks).
 * Deployables use models/runtime.ts, which also checks cards and hashes.
 */
import * as ort from 'onnxruntime-node';
import type { ImageDataset } from '../models/data/dataset.ts';

/** Normalised float32 images in NCHW order, as every exported model takes them. */
export function toNchw(ds: ImageDataset, mean: number[], std: number[]): Float32Array {
  const { n, height: h, width: w, channels: c } = ds;
  const out = new Float32Array(n * c * h * w);
  const plane = h * w;
  for (let i = 0; i < n; i++) {
    for (let p = 0; p < plane; p++) {
      for (let k = 0; k < c; k++) {
        const px = ds.images[(i * plane + p) * c + k];
        out[(i * c + k) * plane + p] = (px / 255 - mean[k % mean.length]) / std[k % std.length];
      }
    }
  }
  return out;
}

/**
 * Logits of an ONNX classifier (input `input` NCHW, output `logits`) for n samples.
 * @param batch samples per run; default 500.
 */
export async function onnxLogits(
  model: Uint8Array | string,
  x: Float32Array,
  n: number,
  shape: [number, number, number],
  opts: { batch?: number; threads?: number } = {},
): Promise<{ logits: Float32Array; classes: number }> {
  const session = await ort.InferenceSession.create(model as Uint8Array, {
    intraOpNumThreads: opts.threads ?? 1,
    graphOptimizationLevel: 'all',
  });
  try {
    const [c, h, w] = shape;
    const per = c * h * w;
    const batch = opts.batch ?? 500;
    const inputName = session.inputNames[0];
    const outputName = session.outputNames[0];
    let out: Float32Array | null = null;
    let classes = 0;
    for (let s = 0; s < n; s += batch) {
      const m = Math.min(batch, n - s);
      const feed = {
        [inputName]: new ort.Tensor('float32', x.subarray(s * per, (s + m) * per), [m, c, h, w]),
      };
      const res = await session.run(feed);
      const t = res[outputName];
      const data = t.data as Float32Array;
      if (out === null) {
        classes = data.length / m;
        out = new Float32Array(n * classes);
      }
      out.set(data, s * classes);
    }
    return { logits: out ?? new Float32Array(0), classes };
  } finally {
    await session.release();
  }
}

/** Top-1 accuracy of logits against labels. */
export function top1(logits: Float32Array, labels: Uint8Array, classes: number): number {
  let correct = 0;
  for (let i = 0; i < labels.length; i++) {
    let best = 0;
    for (let j = 1; j < classes; j++) if (logits[i * classes + j] > logits[i * classes + best]) best = j;
    if (best === labels[i]) correct++;
  }
  return labels.length === 0 ? 0 : correct / labels.length;
}
