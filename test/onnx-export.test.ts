import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import * as ort from 'onnxruntime-node';
import { ErrorCodes } from '../cascade/errors.ts';
import { exportOnnx } from '../distill/onnx/export.ts';
import { decodeModel, num, type onnx } from '../distill/onnx/proto.ts';
import { initTf, tf } from '../distill/tf.ts';
import { type ArchSpec, DEVICE, GATEWAY, paramShapes, TEACHER } from '../models/arch.ts';
import { mulberry32 } from '../models/data/rng.ts';
import { randomWeights, sampleImages } from './onnx-fixtures.ts';

/** Reference forward pass in inference mode with plain tf ops, NHWC in, logits out. */
function tfForward(
  arch: ArchSpec,
  weights: Map<string, Float32Array>,
  x: Float32Array,
  n: number,
): Float32Array {
  const shapes = new Map(paramShapes(arch).map((p) => [p.name, p.shape]));
  return tf.tidy(() => {
    const [H, W, C] = arch.input;
    let h: tf.Tensor = tf.tensor4d(x, [n, H, W, C]);
    arch.layers.forEach((l, i) => {
      const v = (leaf: string): tf.Tensor =>
        tf.tensor(weights.get(`${i}/${leaf}`)!, shapes.get(`${i}/${leaf}`)!);
      switch (l.kind) {
        case 'conv':
          h = tf.conv2d(h as tf.Tensor4D, v('kernel') as tf.Tensor4D, l.stride ?? 1, 'same');
          break;
        case 'dwconv':
          h = tf.depthwiseConv2d(h as tf.Tensor4D, v('kernel') as tf.Tensor4D, l.stride ?? 1, 'same');
          break;
        case 'bn':
          h = tf.batchNorm(h, v('mean'), v('variance'), v('beta'), v('gamma'), 1e-3);
          break;
        case 'relu':
          h = tf.relu(h);
          break;
        case 'maxpool':
          h = tf.maxPool(h as tf.Tensor4D, l.size, l.size, 'valid');
          break;
        case 'gap':
          h = tf.mean(h, [1, 2]);
          break;
        case 'flatten':
          h = tf.reshape(h, [n, -1]);
          break;
        case 'dropout':
          break;
        case 'dense':
          h = tf.add(tf.matMul(h as tf.Tensor2D, v('kernel') as tf.Tensor2D), v('bias'));
          break;
      }
    });
    return h.dataSync() as Float32Array;
  });
}

function nhwcToNchw(x: Float32Array, n: number, h: number, w: number, c: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let b = 0; b < n; b++)
    for (let y = 0; y < h; y++)
      for (let xx = 0; xx < w; xx++)
        for (let ch = 0; ch < c; ch++)
          out[((b * c + ch) * h + y) * w + xx] = x[((b * h + y) * w + xx) * c + ch];
  return out;
}

async function ortForward(
  model: Uint8Array,
  arch: ArchSpec,
  nhwc: Float32Array,
  n: number,
): Promise<Float32Array> {
  const [H, W, C] = arch.input;
  const session = await ort.InferenceSession.create(model, { intraOpNumThreads: 1 });
  const out = await session.run({
    input: new ort.Tensor('float32', nhwcToNchw(nhwc, n, H, W, C), [n, C, H, W]),
  });
  assert.deepEqual(out.logits.dims, [n, arch.classes]);
  const data = Float32Array.from(out.logits.data as Float32Array);
  await session.release();
  return data;
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** Every layer kind and the awkward cases: RGB input, stride-2 'same' padding on odd sizes
 * (TensorFlow pads the extra pixel bottom/right), depthwise conv, NHWC flatten, BN after dense. */
const MIXED: ArchSpec = {
  name: 'mixed',
  input: [9, 11, 3],
  classes: 5,
  layers: [
    { kind: 'conv', filters: 8, kernel: 3, stride: 2 },
    { kind: 'bn' },
    { kind: 'relu' },
    { kind: 'dwconv', kernel: 3, stride: 2 },
    { kind: 'bn' },
    { kind: 'relu' },
    { kind: 'conv', filters: 6, kernel: 2 },
    { kind: 'flatten' },
    { kind: 'dense', units: 16 },
    { kind: 'dropout', rate: 0.5 },
    { kind: 'bn' },
    { kind: 'relu' },
    { kind: 'dense', units: 5 },
  ],
};

describe('exportOnnx', () => {
  before(async () => {
    await initTf('cpu');
  });

  for (const arch of [DEVICE, GATEWAY, TEACHER]) {
    it(`${arch.name}: onnxruntime matches the TensorFlow.js forward pass within 1e-4`, async () => {
      const n = 6;
      const weights = randomWeights(arch, 7);
      const x = await sampleImages(n, 100);
      const model = exportOnnx(arch, weights);
      const ref = tfForward(arch, weights, x, n);
      const got = await ortForward(model, arch, x, n);
      // Logits must be large enough for the tolerance to mean something.
      assert.ok(Math.max(...ref.map(Math.abs)) > 0.5, 'reference logits are not trivially small');
      assert.ok(maxAbsDiff(ref, got) < 1e-4, `max abs diff ${maxAbsDiff(ref, got)}`);
    });
  }

  it('handles RGB input, strided odd-size padding, depthwise conv, flatten order and BN after dense', async () => {
    const n = 4;
    const weights = randomWeights(MIXED, 11);
    const rng = mulberry32(3);
    const x = Float32Array.from({ length: n * 9 * 11 * 3 }, () => rng() * 2 - 1);
    const ref = tfForward(MIXED, weights, x, n);
    const got = await ortForward(exportOnnx(MIXED, weights), MIXED, x, n);
    assert.ok(maxAbsDiff(ref, got) < 1e-4, `max abs diff ${maxAbsDiff(ref, got)}`);
    // A batch of one through the dynamic batch dimension gives the same first row.
    const one = await ortForward(exportOnnx(MIXED, weights), MIXED, x.subarray(0, 9 * 11 * 3), 1);
    assert.ok(maxAbsDiff(one, got.subarray(0, 5)) < 1e-5);
  });

  it('writes a runtime graph: named fp32 NCHW input, dynamic batch, BN folded, dropout gone, opset 13', () => {
    const m = decodeModel(exportOnnx(DEVICE, randomWeights(DEVICE, 1), { producer: 'test' }), 'device');
    assert.equal(m.producerName, 'test');
    assert.deepEqual(
      m.opsetImport?.map((o) => [o.domain, num(o.version)]),
      [['', 13]],
    );
    const g = m.graph!;
    const dims = (v: onnx.IValueInfoProto) =>
      v.type?.tensorType?.shape?.dim?.map((d) => d.dimParam || num(d.dimValue));
    assert.equal(g.input?.[0].name, 'input');
    assert.deepEqual(dims(g.input![0]), ['N', 1, 28, 28]);
    assert.equal(g.output?.[0].name, 'logits');
    assert.deepEqual(dims(g.output![0]), ['N', 10]);
    const ops = g.node!.map((n) => n.opType);
    assert.deepEqual(
      ops,
      'Conv Relu MaxPool Conv Relu Conv Relu MaxPool Conv Relu GlobalAveragePool Flatten Gemm'.split(' '),
    );
    const mixed = decodeModel(exportOnnx(MIXED, randomWeights(MIXED, 1)), 'mixed').graph!.node!;
    const pads = mixed
      .filter((n) => n.opType === 'Conv')
      .map((n) => n.attribute!.find((a) => a.name === 'pads')!.ints!.map(num));
    // 9x11 input, k3 s2: total pad 2 → 1/1 and 2 → 1/1; then 5x6, k3 s2: 2 → 1/1 and 1 → 0/1.
    assert.deepEqual(pads.slice(0, 2), [
      [1, 1, 1, 1],
      [1, 0, 1, 1],
    ]);
  });

  it('rejects missing or misshapen weights, unfoldable BN and unsupported opsets with CascadeErrors', () => {
    const w = randomWeights(DEVICE, 1);
    const missing = new Map(w);
    missing.delete('0/kernel');
    assert.throws(() => exportOnnx(DEVICE, missing), {
      code: ErrorCodes.MODEL_ERR_INVALID,
      message: /0\/kernel/,
    });
    const short = new Map(w).set('1/gamma', new Float32Array(3));
    assert.throws(() => exportOnnx(DEVICE, short), {
      code: ErrorCodes.MODEL_ERR_INVALID,
      message: /1\/gamma/,
    });
    const bnAfterRelu: ArchSpec = {
      ...DEVICE,
      layers: [
        { kind: 'conv', filters: 4, kernel: 3 },
        { kind: 'relu' },
        { kind: 'bn' },
        { kind: 'gap' },
        { kind: 'dense', units: 10 },
      ],
    };
    assert.throws(() => exportOnnx(bnAfterRelu, randomWeights(bnAfterRelu, 1)), {
      code: ErrorCodes.MODEL_ERR_UNSUPPORTED,
      message: /layer 2 \(bn\)/,
    });
    assert.throws(() => exportOnnx(DEVICE, w, { opset: 11 }), { code: ErrorCodes.MODEL_ERR_UNSUPPORTED });
    assert.doesNotThrow(() => exportOnnx(DEVICE, w, { opset: 17 }));
  });
});
