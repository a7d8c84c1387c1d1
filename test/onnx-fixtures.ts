/**
 * Shared inputs of the ONNX tests: seeded random weights that keep activations O(1) through
 * BatchNorm layers with non-trivial statistics, and normalised real Fashion-MNIST images from
 * the bundled sample.
 */

import * as ort from 'onnxruntime-node';
import { exportOnnx } from '../distill/onnx/export.ts';
import { DType, encodeModel, type onnx, toTensorProto, valueInfo } from '../distill/onnx/proto.ts';
import { type ArchSpec, paramShapes } from '../models/arch.ts';
import { loadBundledSample } from '../models/data/load.ts';
import { mulberry32, type Rng } from '../models/data/rng.ts';

/** Fashion-MNIST pixel mean and std (after /255), as the trainer normalises. */
export const FMNIST_MEAN = 0.286;
export const FMNIST_STD = 0.353;

function gaussian(rng: Rng): number {
  return Math.sqrt(-2 * Math.log(1 - rng())) * Math.cos(2 * Math.PI * rng());
}

/**
 * He-normal kernels, gamma in [0.5, 1.5], beta and bias in ±0.2, moving mean in ±0.3 and moving
 * variance in [0.5, 2]: BatchNorm folding then changes every weight and bias noticeably.
 */
export function randomWeights(arch: ArchSpec, seed: number): Map<string, Float32Array> {
  const rng = mulberry32(seed);
  const out = new Map<string, Float32Array>();
  for (const p of paramShapes(arch)) {
    const n = p.shape.reduce((a, b) => a * b, 1);
    const leaf = p.name.split('/')[1];
    const fanIn = n / p.shape[p.shape.length - 1];
    const gen: () => number =
      leaf === 'kernel'
        ? () => gaussian(rng) * Math.sqrt(2 / fanIn)
        : leaf === 'gamma'
          ? () => 0.5 + rng()
          : leaf === 'variance'
            ? () => 0.5 + 1.5 * rng()
            : leaf === 'mean'
              ? () => (rng() - 0.5) * 0.6
              : () => (rng() - 0.5) * 0.4;
    out.set(p.name, Float32Array.from({ length: n }, gen));
  }
  return out;
}

let cached: Float32Array | undefined;

/**
 * `n` normalised 28x28 grey images from the bundled sample starting at `offset`, as float32;
 * with one channel NHWC and NCHW are the same bytes. The sample is 200 per class in test order.
 */
export async function sampleImages(n: number, offset = 0): Promise<Float32Array> {
  if (!cached) {
    const ds = await loadBundledSample();
    cached = Float32Array.from(ds.images, (p) => (p / 255 - FMNIST_MEAN) / FMNIST_STD);
  }
  return cached.slice(offset * 784, (offset + n) * 784);
}

export type NodeSpec = [op: string, inputs: string[], outputs: string[], attrs?: onnx.IAttributeProto[]];

/** A hand-written ModelProto, the way other exporters (PyTorch, tf2onnx) lay them out. */
export function buildModel(
  nodes: NodeSpec[],
  inits: Record<string, { dims: number[]; data: Float32Array | number[] }>,
  opts: { opset?: number; inputs?: string[]; output?: string; domain?: string } = {},
): Uint8Array {
  const initializer = Object.entries(inits).map(([name, t]) =>
    t.data instanceof Float32Array
      ? toTensorProto(name, { dtype: 'float32', dims: t.dims, data: t.data })
      : toTensorProto(name, { dtype: 'int64', dims: t.dims, data: t.data }),
  );
  return encodeModel({
    irVersion: 7,
    opsetImport: [{ domain: '', version: opts.opset ?? 13 }],
    graph: {
      name: 'g',
      node: nodes.map(([opType, input, output, attribute], i) => ({
        name: `n${i}_${opType}`,
        opType,
        input,
        output,
        attribute: attribute ?? [],
        domain: i === 0 && opts.domain ? opts.domain : '',
      })),
      initializer,
      input: (opts.inputs ?? ['x']).map((name) => valueInfo(name, DType.FLOAT, ['batch', 3, 8, 8])),
      output: [valueInfo(opts.output ?? 'y', DType.FLOAT, ['batch', 10])],
    },
  });
}

export const ints = (name: string, v: number[]): onnx.IAttributeProto => ({ name, type: 7, ints: v });
export const float = (name: string, v: number): onnx.IAttributeProto => ({ name, type: 1, f: v });

/** Conv→BN→Clip(0,6), a residual Conv+Add→ReLU, AveragePool, Identity, Reshape, MatMul+Add, Dropout. */
export function foreignModel(seed = 5): Uint8Array {
  const rng = mulberry32(seed);
  const rand = (n: number, scale: number): Float32Array =>
    Float32Array.from({ length: n }, () => (rng() * 2 - 1) * scale);
  return buildModel(
    [
      ['Conv', ['x', 'w1'], ['c1'], [ints('pads', [1, 1, 1, 1]), ints('kernel_shape', [3, 3])]],
      ['BatchNormalization', ['c1', 'gamma', 'beta', 'mean', 'var'], ['b1'], [float('epsilon', 1e-5)]],
      ['Clip', ['b1', 'lo', 'hi'], ['r1']],
      ['Conv', ['r1', 'w2', 'bias2'], ['c2'], [ints('pads', [1, 1, 1, 1])]],
      ['Add', ['c2', 'r1'], ['s']],
      ['Relu', ['s'], ['rs']],
      ['AveragePool', ['rs'], ['p1'], [ints('kernel_shape', [2, 2]), ints('strides', [2, 2])]],
      ['Identity', ['p1'], ['p1i']],
      ['Reshape', ['p1i', 'shape'], ['f']],
      ['MatMul', ['f', 'wm'], ['mm']],
      ['Add', ['mm', 'bm'], ['a']],
      ['Dropout', ['a'], ['d']],
      ['Identity', ['d'], ['y']],
    ],
    {
      w1: { dims: [4, 3, 3, 3], data: rand(108, 0.4) },
      gamma: { dims: [4], data: Float32Array.of(0.7, 1.3, 1, 0.9) },
      beta: { dims: [4], data: Float32Array.of(0.1, -0.2, 0.3, 0) },
      mean: { dims: [4], data: Float32Array.of(0.2, -0.1, 0, 0.05) },
      var: { dims: [4], data: Float32Array.of(0.5, 1.5, 1, 2) },
      lo: { dims: [], data: Float32Array.of(0) },
      hi: { dims: [], data: Float32Array.of(6) },
      w2: { dims: [4, 4, 3, 3], data: rand(144, 0.3) },
      bias2: { dims: [4], data: rand(4, 0.1) },
      shape: { dims: [2], data: [-1, 64] },
      wm: { dims: [64, 10], data: rand(640, 0.3) },
      bm: { dims: [1, 10], data: rand(10, 0.1) },
    },
  );
}

/**
 * Random weights whose last dense bias is shifted so each logit averages 0 over `images`:
 * a random network's logits share a large common part, so without this one class wins every
 * image and argmax agreement would pass whatever the quantizer did.
 */
export async function centredWeights(
  arch: ArchSpec,
  seed: number,
  images: Float32Array,
): Promise<Map<string, Float32Array>> {
  const w = randomWeights(arch, seed);
  const [H, W, C] = arch.input;
  const n = images.length / (H * W * C);
  const logits = await runOnnx(exportOnnx(arch, w), images, [n, C, H, W]);
  const bias = w.get(`${arch.layers.length - 1}/bias`)!;
  for (let j = 0; j < arch.classes; j++) {
    let sum = 0;
    for (let i = 0; i < n; i++) sum += logits[i * arch.classes + j];
    bias[j] -= sum / n;
  }
  return w;
}

/**
 * Runs a single-input, single-output model once on the CPU provider (one thread). `optimize:
 * false` runs the graph as written (no fusion into integer kernels: a QDQ model computes in
 * float what its integers mean, as TensorRT computes them exactly in int32).
 */
export async function runOnnx(
  model: Uint8Array,
  x: Float32Array,
  dims: number[],
  opts: { optimize?: boolean } = {},
): Promise<Float32Array> {
  const s = await ort.InferenceSession.create(model, {
    intraOpNumThreads: 1,
    ...(opts.optimize === false ? { graphOptimizationLevel: 'disabled' as const } : {}),
  });
  const out = await s.run({ [s.inputNames[0]]: new ort.Tensor('float32', x, dims) });
  const data = Float32Array.from(out[s.outputNames[0]].data as Float32Array);
  await s.release();
  return data;
}

/** Mean absolute logit error relative to the reference (fp32) logits' standard deviation. */
export function relativeError(ref: Float32Array, got: Float32Array): number {
  const mean = ref.reduce((s, v) => s + v, 0) / ref.length;
  const std = Math.sqrt(ref.reduce((s, v) => s + (v - mean) ** 2, 0) / ref.length);
  let err = 0;
  for (let i = 0; i < ref.length; i++) err += Math.abs(ref[i] - got[i]);
  return err / ref.length / std;
}

/** Share of rows (of `classes` logits) whose argmax is the same in both. */
export function argmaxAgreement(a: Float32Array, b: Float32Array, classes: number): number {
  let same = 0;
  const n = a.length / classes;
  for (let i = 0; i < n; i++) {
    let ka = 0;
    let kb = 0;
    for (let j = 1; j < classes; j++) {
      if (a[i * classes + j] > a[i * classes + ka]) ka = j;
      if (b[i * classes + j] > b[i * classes + kb]) kb = j;
    }
    if (ka === kb) same++;
  }
  return same / n;
}
