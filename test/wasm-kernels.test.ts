import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { initTf, tf } from '../distill/tf.ts';

type Case = {
  name: string;
  x: [number, number, number, number];
  k: number;
  cout: number;
  stride: number;
  pad: 'same' | 'valid' | [[number, number], [number, number], [number, number], [number, number]];
  depthwise?: boolean;
  fused?: boolean;
};

function seeded(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = s / 2 ** 32 - 0.5;
  }
  return a;
}

/** Gradients of sum(conv(x, w) * g) with respect to x and w, on the current backend. */
function grads(c: Case): { dx: Float32Array; dw: Float32Array } {
  const cin = c.x[3];
  const wShape: [number, number, number, number] = c.depthwise ? [c.k, c.k, cin, 1] : [c.k, c.k, cin, c.cout];
  const x = tf.tensor4d(
    seeded(
      c.x.reduce((a, b) => a * b),
      1,
    ),
    c.x,
  );
  const w = tf.tensor4d(
    seeded(
      wShape.reduce((a, b) => a * b),
      2,
    ),
    wShape,
  );
  const f = (xx: tf.Tensor4D, ww: tf.Tensor4D): tf.Tensor4D => {
    if (c.depthwise) return tf.depthwiseConv2d(xx, ww, c.stride, c.pad);
    if (c.fused) return tf.fused.conv2d({ x: xx, filter: ww, strides: c.stride, pad: c.pad });
    return tf.conv2d(xx, ww, c.stride, c.pad);
  };
  const y = f(x, w);
  const g = tf.tensor(seeded(y.size, 3), y.shape);
  const [dx, dw] = tf.grads((xx: tf.Tensor, ww: tf.Tensor) =>
    tf.sum(tf.mul(f(xx as tf.Tensor4D, ww as tf.Tensor4D), g)),
  )([x, w]);
  const out = { dx: dx.dataSync() as Float32Array, dw: dw.dataSync() as Float32Array };
  tf.dispose([x, w, y, g, dx, dw]);
  return out;
}

function maxRelErr(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let scale = 1e-6;
  for (const v of b) scale = Math.max(scale, Math.abs(v));
  let err = 0;
  for (let i = 0; i < a.length; i++) err = Math.max(err, Math.abs(a[i] - b[i]));
  return err / scale;
}

const cases: Case[] = [
  // Few input channels: patches by an identity conv, then GEMMs (any stride).
  { name: 'conv 3x3 same', x: [4, 9, 9, 3], k: 3, cout: 5, stride: 1, pad: 'same' },
  {
    name: 'patches: 3x3 same, grey, chunks of 5 images and a remainder of 2',
    x: [7, 28, 28, 1],
    k: 3,
    cout: 8,
    stride: 1,
    pad: 'same',
  },
  {
    name: 'fused conv 3x3 same (BN path)',
    x: [3, 8, 8, 4],
    k: 3,
    cout: 6,
    stride: 1,
    pad: 'same',
    fused: true,
  },
  { name: 'conv 5x5 valid', x: [2, 11, 10, 2], k: 5, cout: 3, stride: 1, pad: 'valid' },
  { name: 'conv 3x3 stride 2 same', x: [2, 9, 8, 3], k: 3, cout: 4, stride: 2, pad: 'same' },
  { name: 'conv 1x1 (grid path)', x: [3, 5, 5, 8], k: 1, cout: 4, stride: 1, pad: 'same' },
  // Many input channels, stride 1: the pixel-grid GEMMs. 11×29×29 grid positions make two chunks,
  // the second one shorter.
  { name: 'grid: 3x3 same, two chunks', x: [11, 28, 28, 5], k: 3, cout: 3, stride: 1, pad: 'same' },
  { name: 'grid: 3x3 valid', x: [2, 30, 30, 6], k: 3, cout: 4, stride: 1, pad: 'valid' },
  {
    name: 'grid: 2x2 same (pads only below and right)',
    x: [2, 12, 12, 9],
    k: 2,
    cout: 3,
    stride: 1,
    pad: 'same',
  },
  {
    name: 'grid: 3x3 explicit uneven pads',
    x: [2, 16, 16, 6],
    k: 3,
    cout: 3,
    stride: 1,
    pad: [
      [0, 0],
      [0, 2],
      [1, 1],
      [0, 0],
    ],
  },
  {
    name: 'grid: fused conv (BN path)',
    x: [2, 14, 14, 8],
    k: 3,
    cout: 5,
    stride: 1,
    pad: 'same',
    fused: true,
  },
  // Small images waste too much of the grid: the conv formulation, stride 1.
  {
    name: 'small image, many channels (conv formulation)',
    x: [3, 5, 5, 6],
    k: 3,
    cout: 4,
    stride: 1,
    pad: 'same',
  },
  {
    name: 'stride 2, many channels (conv formulation)',
    x: [2, 9, 8, 6],
    k: 3,
    cout: 4,
    stride: 2,
    pad: 'same',
  },
  { name: 'depthwise 3x3 same', x: [3, 7, 7, 4], k: 3, cout: 4, stride: 1, pad: 'same', depthwise: true },
  { name: 'depthwise 3x3 stride 2', x: [2, 9, 9, 3], k: 3, cout: 3, stride: 2, pad: 'same', depthwise: true },
];

type PoolCase = {
  name: string;
  x: [number, number, number, number];
  size: number;
  stride: number;
  pad: 'same' | 'valid';
};

/** Values on a coarse grid, so windows hold ties (the first maximum must win) and negatives. */
function poolInput(c: PoolCase): tf.Tensor4D {
  const v = seeded(
    c.x.reduce((a, b) => a * b),
    7,
  ).map((u) => Math.round(u * 6) / 2);
  return tf.tensor4d(v, c.x);
}

function argmaxPool(
  c: PoolCase,
  includeBatchInIndex: boolean,
): { values: Float32Array; indexes: Int32Array } {
  const x = poolInput(c);
  const { result, indexes } = tf.maxPoolWithArgmax(x, c.size, c.stride, c.pad, includeBatchInIndex);
  const out = { values: result.dataSync() as Float32Array, indexes: indexes.dataSync() as Int32Array };
  tf.dispose([x, result, indexes]);
  return out;
}

const poolCases: PoolCase[] = [
  { name: '2x2 stride 2 valid (unrolled)', x: [3, 8, 6, 5], size: 2, stride: 2, pad: 'valid' },
  { name: '3x3 stride 2 valid, odd size (inside)', x: [2, 9, 7, 3], size: 3, stride: 2, pad: 'valid' },
  { name: '3x3 stride 1 same (clipped windows)', x: [2, 6, 5, 4], size: 3, stride: 1, pad: 'same' },
];

describe('wasm gradient kernels agree with the cpu backend', () => {
  const want = new Map<string, { dx: Float32Array; dw: Float32Array }>();
  const wantPool = new Map<string, { values: Float32Array; indexes: Int32Array }>();
  before(async () => {
    await initTf('cpu');
    for (const c of cases) want.set(c.name, grads(c));
    for (const c of poolCases)
      for (const inc of [true, false]) wantPool.set(`${c.name} ${inc}`, argmaxPool(c, inc));
    await initTf('wasm');
  });
  for (const c of cases) {
    it(c.name, () => {
      const got = grads(c);
      const ref = want.get(c.name)!;
      assert.ok(maxRelErr(got.dx, ref.dx) < 1e-5, `dx differs: ${maxRelErr(got.dx, ref.dx)}`);
      assert.ok(maxRelErr(got.dw, ref.dw) < 1e-5, `dw differs: ${maxRelErr(got.dw, ref.dw)}`);
    });
  }
  it('MaxPoolWithArgmax handles all-negative and all-zero windows, first max on ties', () => {
    // Windows: [-3 -1 -2 -4] → -1 at 1; zeros → 0 at 2 (the first); [5 1 2 5] → 5 at 8; [-7 -6 -5 -8] → -5 at 14.
    const img = [-3, -1, 0, 0, -2, -4, 0, 0, 5, 1, -7, -6, 2, 5, -5, -8];
    const x = tf.tensor4d([...img, ...img.map((v) => v * 2)], [2, 4, 4, 1]);
    const { result, indexes } = tf.maxPoolWithArgmax(x, 2, 2, 'valid', true);
    assert.deepEqual(Array.from(result.dataSync()), [-1, 0, 5, -5, -2, 0, 10, -10]);
    assert.deepEqual(Array.from(indexes.dataSync()), [1, 2, 8, 14, 17, 18, 24, 30]);
    const noBatch = tf.maxPoolWithArgmax(x, 2, 2, 'valid', false);
    assert.deepEqual(Array.from(noBatch.indexes.dataSync()), [1, 2, 8, 14, 1, 2, 8, 14]);
    tf.dispose([x, result, indexes, noBatch.result, noBatch.indexes]);
  });
  for (const c of poolCases) {
    it(`MaxPoolWithArgmax ${c.name} gives the cpu backend's values and indexes`, () => {
      for (const inc of [true, false]) {
        const got = argmaxPool(c, inc);
        const ref = wantPool.get(`${c.name} ${inc}`)!;
        assert.deepEqual(Array.from(got.values), Array.from(ref.values));
        assert.deepEqual(Array.from(got.indexes), Array.from(ref.indexes), `includeBatchInIndex ${inc}`);
      }
    });
  }
  it('Identity and same-dtype Cast share memory; the copy outlives its source; Cast still converts', () => {
    const a = tf.tensor1d([1.5, -2.25, 3]);
    const buffers = tf.memory().numDataBuffers;
    const c = tf.clone(a);
    const f = tf.cast(a, 'float32');
    assert.equal(tf.memory().numDataBuffers, buffers, 'no new buffers');
    const i = tf.cast(a, 'int32');
    assert.equal(tf.memory().numDataBuffers, buffers + 1, 'a real conversion allocates');
    a.dispose();
    assert.deepEqual(Array.from(c.dataSync()), [1.5, -2.25, 3]);
    assert.deepEqual(Array.from(f.dataSync()), [1.5, -2.25, 3]);
    assert.equal(i.dtype, 'int32');
    assert.deepEqual(Array.from(i.dataSync()), [1, -2, 3]);
    tf.dispose([c, f, i]);
  });
  it('the registered kernels replace the missing and slow ones', () => {
    for (const k of ['Conv2DBackpropFilter', 'Conv2DBackpropInput', 'DepthwiseConv2dNativeBackpropFilter']) {
      assert.ok(tf.getKernel(k, 'wasm'), `${k} registered`);
    }
  });
});
