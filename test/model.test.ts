/**
 * distill/model.ts: the hand-written training-mode gradients (BatchNorm, BatchNorm + ReLU, global
 * average pool, max pool) against autodiff of plain TensorFlow.js ops, precise-BN recalibration
 * against statistics computed by hand, and TfModel inference against ONNX Runtime running the
 * exported graph.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as ort from 'onnxruntime-node';
import { BN_EPSILON, TfModel } from '../distill/model.ts';
import { exportOnnx } from '../distill/onnx/export.ts';
import { initTf, tf } from '../distill/tf.ts';
import { normalise } from '../distill/train.ts';
import { type ArchSpec, DEVICE } from '../models/arch.ts';
import { subset } from '../models/data/dataset.ts';
import { loadBundledSample } from '../models/data/load.ts';
import { mulberry32, type Rng, shuffleInPlace } from '../models/data/rng.ts';

/**
 * conv → BN → ReLU → max pool → GAP → dense: every custom gradient on one small path (BN and ReLU
 * run fused in training); without the ReLU, BN runs alone.
 */
function tiny(relu: boolean): ArchSpec {
  return {
    name: 't',
    input: [6, 6, 2],
    classes: 3,
    layers: [
      { kind: 'conv', filters: 4, kernel: 3 },
      { kind: 'bn' },
      ...(relu ? [{ kind: 'relu' } as const] : []),
      { kind: 'maxpool', size: 2 },
      { kind: 'gap' },
      { kind: 'dense', units: 3 },
    ],
  };
}
/** Index of the dense layer in {@link tiny}. */
const denseAt = (relu: boolean): number => (relu ? 5 : 4);
const BATCH = 5;

function uniform(n: number, rng: Rng, lo = -1, hi = 1): Float32Array {
  return Float32Array.from({ length: n }, () => lo + (hi - lo) * rng());
}

/** max|a−b| / max|b|: a relative error that a sign flip or a missing term cannot pass. */
function relErr(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let scale = 0;
  for (const v of b) scale = Math.max(scale, Math.abs(v));
  assert.ok(scale > 1e-3, 'the reference gradient is not all zeros');
  let err = 0;
  for (let i = 0; i < a.length; i++) err = Math.max(err, Math.abs(a[i] - b[i]));
  return err / scale;
}

type Grads = Record<'dx' | 'dgamma' | 'dbeta' | 'dkernel', Float32Array>;

/** Weights of {@link tiny} with a non-unit gamma and non-zero beta, so every BN term matters. */
function tinyWeights(relu: boolean): Map<string, Float32Array> {
  const model = new TfModel(tiny(relu), mulberry32(7));
  const w = model.snapshot();
  model.dispose();
  const rng = mulberry32(8);
  w.set('1/gamma', uniform(4, rng, 0.5, 1.5));
  w.set('1/beta', uniform(4, rng, -0.3, 0.3));
  w.set(`${denseAt(relu)}/bias`, uniform(3, rng, -0.1, 0.1));
  return w;
}

const X = uniform(BATCH * 6 * 6 * 2, mulberry32(9));
const G = uniform(BATCH * 3, mulberry32(10));

/** Gradients of sum(TfModel.forward(x, training) ⊙ G) on the current backend. */
function modelGrads(weights: Map<string, Float32Array>, relu: boolean): Grads {
  const model = new TfModel(tiny(relu), mulberry32(1));
  model.load(weights);
  const xv = tf.variable(tf.tensor4d(X, [BATCH, 6, 6, 2]), true, 'x');
  const v = (name: string): tf.Variable => model.vars.get(name)!;
  const list = [xv, v('1/gamma'), v('1/beta'), v('0/kernel')];
  const { grads } = tf.variableGrads(
    () => tf.sum(tf.mul(model.forward(xv, true), tf.tensor2d(G, [BATCH, 3]))),
    list,
  );
  model.discardBnUpdates();
  const out: Grads = {
    dx: grads.x.dataSync() as Float32Array,
    dgamma: grads[v('1/gamma').name].dataSync() as Float32Array,
    dbeta: grads[v('1/beta').name].dataSync() as Float32Array,
    dkernel: grads[v('0/kernel').name].dataSync() as Float32Array,
  };
  tf.dispose(Object.values(grads));
  xv.dispose();
  model.dispose();
  return out;
}

/** The same network from plain ops (tf.moments BN, tf.maxPool), differentiated by autodiff. */
function referenceGrads(weights: Map<string, Float32Array>, relu: boolean): Grads {
  const w = (name: string, shape: number[]): tf.Tensor => tf.tensor(weights.get(name)!, shape);
  const kernel = w('0/kernel', [3, 3, 2, 4]);
  const dense = w(`${denseAt(relu)}/kernel`, [4, 3]) as tf.Tensor2D;
  const bias = w(`${denseAt(relu)}/bias`, [3]);
  const g = tf.tensor2d(G, [BATCH, 3]);
  const f = (x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, k: tf.Tensor): tf.Scalar => {
    const h = tf.conv2d(x as tf.Tensor4D, k as tf.Tensor4D, 1, 'same');
    const { mean, variance } = tf.moments(h, [0, 1, 2]);
    const bn = tf.add(tf.mul(tf.div(tf.sub(h, mean), tf.sqrt(tf.add(variance, BN_EPSILON))), gamma), beta);
    const p = tf.maxPool((relu ? tf.relu(bn) : bn) as tf.Tensor4D, 2, 2, 'valid');
    const logits = tf.add(tf.matMul(tf.mean(p, [1, 2]) as tf.Tensor2D, dense), bias);
    return tf.sum(tf.mul(logits, g));
  };
  const [dx, dgamma, dbeta, dkernel] = tf.grads((x, gamma, beta, k) => f(x, gamma, beta, k))([
    tf.tensor4d(X, [BATCH, 6, 6, 2]),
    w('1/gamma', [4]),
    w('1/beta', [4]),
    kernel,
  ]);
  const out: Grads = {
    dx: dx.dataSync() as Float32Array,
    dgamma: dgamma.dataSync() as Float32Array,
    dbeta: dbeta.dataSync() as Float32Array,
    dkernel: dkernel.dataSync() as Float32Array,
  };
  tf.dispose([dx, dgamma, dbeta, dkernel, kernel, dense, bias, g]);
  return out;
}

function assertGradsClose(got: Grads, want: Grads, tol: number, what: string): void {
  for (const k of ['dx', 'dgamma', 'dbeta', 'dkernel'] as const) {
    const e = relErr(got[k], want[k]);
    assert.ok(e < tol, `${what}: ${k} relative error ${e}`);
  }
}

/** Max pool 2x2 on a 2x7x7x3 input: odd sizes, so the last row and column are dropped. */
const POOL: ArchSpec = {
  name: 'pool',
  input: [7, 7, 3],
  classes: 27,
  layers: [{ kind: 'maxpool', size: 2 }, { kind: 'flatten' }],
};

// Distinct values in [-0.5, 0.5) in random order: no window has a tie, and some windows are all
// negative (the case the wasm backend's own MaxPoolWithArgmax gets wrong).
const POOL_X = shuffleInPlace(
  Float32Array.from({ length: 2 * 7 * 7 * 3 }, (_, i) => i / (2 * 7 * 7 * 3) - 0.5),
  mulberry32(11),
);
const POOL_G = uniform(2 * 27, mulberry32(12), 0.5, 1.5);

/** dL/dx of sum(pool(x) ⊙ G) through TfModel's training-mode (argmax-scatter) max pool. */
function customPoolGrad(): Float32Array {
  const model = new TfModel(POOL, mulberry32(1));
  const g = tf.tensor2d(POOL_G, [2, 27]);
  const xt = tf.tensor4d(POOL_X, [2, 7, 7, 3]);
  const dx = tf.grad((t: tf.Tensor) => tf.sum(tf.mul(model.forward(t as tf.Tensor4D, true), g)))(xt);
  const out = dx.dataSync() as Float32Array;
  tf.dispose([dx, xt, g]);
  model.dispose();
  return out;
}

/** The same through tf.maxPool's registered gradient. */
function referencePoolGrad(): Float32Array {
  const g = tf.tensor2d(POOL_G, [2, 27]);
  const xt = tf.tensor4d(POOL_X, [2, 7, 7, 3]);
  const dx = tf.grad((t: tf.Tensor) =>
    tf.sum(tf.mul(tf.reshape(tf.maxPool(t as tf.Tensor4D, 2, 2, 'valid'), [2, 27]), g)),
  )(xt);
  const out = dx.dataSync() as Float32Array;
  tf.dispose([dx, xt, g]);
  return out;
}

describe('TfModel training-mode gradients', () => {
  for (const relu of [true, false]) {
    const what = relu ? 'BatchNorm + ReLU (fused)' : 'BatchNorm alone';
    let weights: Map<string, Float32Array>;
    let cpuGrads: Grads;

    it(`custom ${what}, GAP and max-pool gradients match autodiff of plain ops (cpu)`, async () => {
      await initTf('cpu');
      weights = tinyWeights(relu);
      cpuGrads = modelGrads(weights, relu);
      assertGradsClose(cpuGrads, referenceGrads(weights, relu), 1e-4, 'cpu');
      // BN makes Σ over a channel of dL/dh zero; the input gradient must still be non-trivial.
      assert.ok(cpuGrads.dx.some((v) => Math.abs(v) > 1e-3));
    });

    it(`${what}: the wasm backend (project kernels) gives the cpu numbers`, async () => {
      assert.ok(cpuGrads, 'cpu gradients computed first');
      await initTf('wasm');
      assertGradsClose(modelGrads(weights, relu), cpuGrads, 1e-4, 'wasm vs cpu');
    });
  }

  // The reference is the cpu backend's MaxPoolGrad: the wasm backend's own MaxPoolGrad has the
  // same all-negative-window fault as its MaxPoolWithArgmax, and training never uses it.
  let poolRef: Float32Array;
  for (const backend of ['cpu', 'wasm'] as const) {
    it(`max-pool argmax-scatter gradient equals tf.maxPool's (${backend}, no ties)`, async () => {
      if (backend === 'cpu') {
        await initTf('cpu');
        poolRef = referencePoolGrad();
      }
      assert.ok(poolRef, 'cpu reference computed first');
      await initTf(backend);
      const got = customPoolGrad();
      assert.deepEqual(Array.from(got), Array.from(poolRef));
      // Exactly one gradient entry per pooled output (2·3·3·3), none in the dropped row/column.
      assert.equal(got.filter((v) => v !== 0).length, 54);
      for (let b = 0; b < 2; b++)
        for (let k = 0; k < 7; k++)
          for (let c = 0; c < 3; c++) {
            assert.equal(got[((b * 7 + 6) * 7 + k) * 3 + c], 0, 'last row gets no gradient');
            assert.equal(got[((b * 7 + k) * 7 + 6) * 3 + c], 0, 'last column gets no gradient');
          }
      // Each gradient lands on its window's maximum.
      for (let i = 0; i < got.length; i++) {
        if (got[i] === 0) continue;
        const c = i % 3;
        const col = Math.floor(i / 3) % 7;
        const row = Math.floor(i / 21) % 7;
        const b = Math.floor(i / 147);
        const r0 = row - (row % 2);
        const c0 = col - (col % 2);
        for (let dy = 0; dy < 2; dy++)
          for (let dx = 0; dx < 2; dx++)
            assert.ok(
              POOL_X[((b * 7 + r0 + dy) * 7 + c0 + dx) * 3 + c] <= POOL_X[i],
              `entry ${i} is its window's max`,
            );
      }
    });
  }
});

describe('TfModel.recalibrateBn', () => {
  /** 1x1 conv with a fixed mixing matrix, then BN: the statistics are computable by hand. */
  const ARCH: ArchSpec = {
    name: 'r',
    input: [2, 2, 2],
    classes: 2,
    layers: [
      { kind: 'conv', filters: 2, kernel: 1 },
      { kind: 'bn' },
      { kind: 'gap' },
      { kind: 'dense', units: 2 },
    ],
  };
  // conv output: ch0 = 2·x0 + x1, ch1 = −x1 (TF kernel layout [1, 1, in, out]).
  const KERNEL = Float32Array.from([2, 0, 1, -1]);

  it('sets moving mean/variance to the mean of full batches’ statistics', async () => {
    await initTf('cpu');
    const n = 10;
    const batchSize = 4;
    const x = uniform(n * 2 * 2 * 2, mulberry32(21), -2, 3);
    const model = new TfModel(ARCH, mulberry32(1));
    model.vars.get('0/kernel')!.assign(tf.tensor4d(KERNEL, [1, 1, 2, 2]));
    // gamma/beta must not enter the statistics.
    model.vars.get('1/gamma')!.assign(tf.tensor1d([3, 0.5]));
    model.vars.get('1/beta')!.assign(tf.tensor1d([1, -2]));
    model.recalibrateBn(x, n, batchSize, 20);

    // By hand: only the two full batches (images 0–3 and 4–7) count; images 8–9 are ignored.
    const wantMean = [0, 0];
    const wantVar = [0, 0];
    for (let b = 0; b < 2; b++) {
      for (let ch = 0; ch < 2; ch++) {
        const vals: number[] = [];
        for (let i = b * batchSize; i < (b + 1) * batchSize; i++)
          for (let p = 0; p < 4; p++) {
            const x0 = x[(i * 4 + p) * 2];
            const x1 = x[(i * 4 + p) * 2 + 1];
            vals.push(ch === 0 ? 2 * x0 + x1 : -x1);
          }
        const mu = vals.reduce((s, v) => s + v, 0) / vals.length;
        const variance = vals.reduce((s, v) => s + (v - mu) ** 2, 0) / vals.length;
        wantMean[ch] += mu / 2;
        wantVar[ch] += variance / 2;
      }
    }
    const mean = model.vars.get('1/mean')!.dataSync();
    const variance = model.vars.get('1/variance')!.dataSync();
    for (let ch = 0; ch < 2; ch++) {
      assert.ok(Math.abs(mean[ch] - wantMean[ch]) < 1e-5, `mean[${ch}] ${mean[ch]} vs ${wantMean[ch]}`);
      assert.ok(
        Math.abs(variance[ch] - wantVar[ch]) < 1e-5 * Math.max(1, wantVar[ch]),
        `variance[${ch}] ${variance[ch]} vs ${wantVar[ch]}`,
      );
    }
    // Differs from both the initial (0, 1) and the statistics of all ten images.
    assert.ok(Math.abs(mean[0]) > 0.1 && Math.abs(variance[0] - 1) > 0.1);
    model.dispose();
  });

  it('leaves the statistics alone when there is no full batch', async () => {
    await initTf('cpu');
    const model = new TfModel(ARCH, mulberry32(1));
    model.recalibrateBn(uniform(3 * 8, mulberry32(22)), 3, 4, 20);
    assert.deepEqual(Array.from(model.vars.get('1/mean')!.dataSync()), [0, 0]);
    assert.deepEqual(Array.from(model.vars.get('1/variance')!.dataSync()), [1, 1]);
    model.dispose();
  });
});

describe('TfModel vs ONNX Runtime on the exported graph', () => {
  it('DEVICE logits agree within 1e-4 on 200 sample images', async () => {
    await initTf('wasm');
    const sample = await loadBundledSample();
    const ds = subset(
      sample,
      Array.from({ length: 200 }, (_, i) => i * 10),
    );
    const x = normalise(ds, [0.286], [0.353]);

    const model = new TfModel(DEVICE, mulberry32(5));
    const w = model.snapshot();
    const rng = mulberry32(6);
    for (const [name, data] of w) {
      const leaf = name.slice(name.indexOf('/') + 1);
      const n = data.length;
      if (leaf === 'gamma') w.set(name, uniform(n, rng, 0.5, 1.5));
      else if (leaf === 'beta') w.set(name, uniform(n, rng, -0.5, 0.5));
      else if (leaf === 'mean') w.set(name, uniform(n, rng, -0.5, 0.5));
      else if (leaf === 'variance') w.set(name, uniform(n, rng, 0.3, 2));
      else if (leaf === 'bias') w.set(name, uniform(n, rng, -0.2, 0.2));
    }
    model.load(w);
    const tfLogits = model.predict(x, ds.n, 100);

    const session = await ort.InferenceSession.create(exportOnnx(DEVICE, model.snapshot()), {
      intraOpNumThreads: 1,
    });
    // One channel: NHWC and NCHW are the same bytes.
    const res = await session.run({ input: new ort.Tensor('float32', x, [ds.n, 1, 28, 28]) });
    const ortLogits = res.logits.data as Float32Array;
    await session.release();
    model.dispose();

    assert.equal(ortLogits.length, ds.n * 10);
    let maxDiff = 0;
    let maxAbs = 0;
    for (let i = 0; i < ortLogits.length; i++) {
      maxDiff = Math.max(maxDiff, Math.abs(ortLogits[i] - tfLogits[i]));
      maxAbs = Math.max(maxAbs, Math.abs(tfLogits[i]));
    }
    assert.ok(maxDiff < 1e-4, `max |logit difference| ${maxDiff}`);
    // Non-degenerate logits: a broken export giving constants would not pass by accident.
    assert.ok(maxAbs > 0.1, `logits are not all near zero (max ${maxAbs})`);
    const argmaxes = new Set<number>();
    for (let i = 0; i < ds.n; i++) {
      const row = tfLogits.subarray(i * 10, i * 10 + 10);
      argmaxes.add(row.indexOf(Math.max(...row)));
    }
    assert.ok(argmaxes.size > 1, 'different images get different top classes');
  });
});
