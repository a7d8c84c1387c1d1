/**
 * distill/qat.ts and QAT mode of the model and trainer: the fake-quant ops against quantization
 * computed by hand, their straight-through gradients, the quantized activations against the
 * exported QDQ graph's, and a short QAT fine-tune whose INT8 export follows its fake-quant forward.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import { TfModel } from '../distill/model.ts';
import { calibrateRanges } from '../distill/onnx/calibrate-ranges.ts';
import { exportOnnx } from '../distill/onnx/export.ts';
import { parseOnnx } from '../distill/onnx/graph.ts';
import { activationQuant, planQdq, quantizeQdq } from '../distill/onnx/quantize.ts';
import { onnxLogits, toNchw } from '../distill/onnx-infer.ts';
import { QAT_DEFAULTS, qatStep } from '../distill/pipeline.ts';
import { silentProgress } from '../distill/progress.ts';
import {
  fakeQuantActivation,
  fakeQuantWeight,
  QAT_PREFIX,
  qatOnnxRanges,
  qatPoints,
  weightChannelAxis,
} from '../distill/qat.ts';
import { RunDir } from '../distill/run-dir.ts';
import { initTf, tf } from '../distill/tf.ts';
import { normalise, type TrainConfig, type TrainResult, train } from '../distill/train.ts';
import { type ArchSpec, DEVICE, GATEWAY, TEACHER } from '../models/arch.ts';
import { type ImageDataset, splitTrainVal, subset } from '../models/data/dataset.ts';
import { loadBundledSample } from '../models/data/load.ts';
import { mulberry32, type Rng } from '../models/data/rng.ts';

const MEAN = [0.286];
const STD = [0.353];

let dir: string;
let trainSet: ImageDataset;
let valSet: ImageDataset;
let evalSet: ImageDataset;

before(async () => {
  await initTf('wasm');
  dir = mkdtempSync(join(tmpdir(), 'qat-test-'));
  const sample = await loadBundledSample();
  // 300 images for training (every class: the sample is 200 per class in test-set order) and
  // 300 others to compare forwards on.
  const six = subset(
    sample,
    Array.from({ length: 300 }, (_, i) => i * 6),
  );
  ({ train: trainSet, val: valSet } = splitTrainVal(six, 1 / 12, 42));
  evalSet = subset(
    sample,
    Array.from({ length: 300 }, (_, i) => i * 6 + 3),
  );
});
after(() => rmSync(dir, { recursive: true, force: true }));

function gaussianArray(n: number, rng: Rng, std: number): Float32Array {
  return Float32Array.from({ length: n }, () => {
    const u = Math.max(rng(), 1e-12);
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng()) * std;
  });
}

/** Index of element i along `axis` of a row-major tensor of shape `dims`. */
function along(i: number, dims: number[], axis: number): number {
  const inner = dims.slice(axis + 1).reduce((a, b) => a * b, 1);
  return Math.floor(i / inner) % dims[axis];
}

/**
 * dequant(quant(w)) per channel of `axis`, written out: scale = max|w|/qmax in float32, q =
 * round(w/scale) clipped to ±qmax, value q·scale (qmax 63: 7-bit weights, the default). Also
 * returns how far w/scale is from a rounding tie, where float32 and float64 division may round
 * differently.
 */
function weightByHand(
  w: Float32Array,
  dims: number[],
  axis: number,
  qmax = 63,
): { value: Float32Array; tie: Float64Array } {
  const amax = new Float64Array(dims[axis]);
  for (let i = 0; i < w.length; i++) {
    const c = along(i, dims, axis);
    amax[c] = Math.max(amax[c], Math.abs(w[i]));
  }
  const scale = Float32Array.from(amax, (a) => (a > 0 ? a / qmax : 1));
  const value = new Float32Array(w.length);
  const tie = new Float64Array(w.length);
  for (let i = 0; i < w.length; i++) {
    const s = scale[along(i, dims, axis)];
    const r = w[i] / s;
    value[i] = Math.max(-qmax, Math.min(qmax, Math.round(r))) * s;
    tie[i] = Math.abs(Math.abs(r - Math.trunc(r)) - 0.5);
  }
  return { value, tie };
}

describe('fakeQuantWeight', () => {
  // A conv kernel [kh, kw, in, out] whose output channels have very different magnitudes, one all zero.
  const dims = [3, 3, 8, 6];
  const rng = mulberry32(11);
  const w = gaussianArray(
    dims.reduce((a, b) => a * b, 1),
    rng,
    1,
  ).map((v, i) => {
    const c = i % 6;
    return c === 5 ? 0 : v * 10 ** (c - 2);
  });

  it('is dequant(quant(w)) per output channel, with at most 127 values per channel (7 bits)', () => {
    const got = tf.tidy(() => fakeQuantWeight(tf.tensor(w, dims)).dataSync() as Float32Array);
    const { value, tie } = weightByHand(w, dims, 3);
    let compared = 0;
    for (let i = 0; i < w.length; i++) {
      if (tie[i] < 1e-4) continue;
      compared++;
      assert.ok(
        Math.abs(got[i] - value[i]) <= 1e-6 * Math.abs(value[i]),
        `element ${i}: ${got[i]} vs ${value[i]}`,
      );
    }
    assert.ok(compared > w.length * 0.99, `compared ${compared} of ${w.length} (the rest are rounding ties)`);
    for (let c = 0; c < 6; c++) {
      const distinct = new Set<number>();
      let changed = false;
      for (let i = c; i < w.length; i += 6) {
        distinct.add(got[i]);
        if (got[i] !== w[i]) changed = true;
      }
      assert.ok(distinct.size <= 127, `channel ${c}: ${distinct.size} distinct values`);
      if (c < 5) assert.ok(changed, `channel ${c} is rounded`);
      else assert.deepEqual([...distinct], [0], 'the all-zero channel stays zero');
    }
  });

  it('with 8 bits (the TensorRT export) rounds to ±127', () => {
    const got = tf.tidy(() => fakeQuantWeight(tf.tensor(w, dims), 3, 8).dataSync() as Float32Array);
    const { value, tie } = weightByHand(w, dims, 3, 127);
    for (let i = 0; i < w.length; i++) {
      if (tie[i] >= 1e-4) assert.ok(Math.abs(got[i] - value[i]) <= 1e-6 * Math.abs(value[i]), `${i}`);
    }
    // Levels beyond 7 bits' ±63 are used: not the 7-bit grid.
    const seven = tf.tidy(() => fakeQuantWeight(tf.tensor(w, dims), 3).dataSync() as Float32Array);
    assert.ok(
      got.some((v, i) => v !== seven[i]),
      '8-bit values differ from 7-bit ones',
    );
  });

  it('quantizes a depthwise kernel [kh, kw, C, 1] per channel C', () => {
    const dw: LayerSpecDw = { kind: 'dwconv', kernel: 3 };
    const axis = weightChannelAxis(dw);
    assert.equal(axis, 2);
    const ddims = [3, 3, 6, 1];
    const dwW = w.subarray(0, 54);
    const got = tf.tidy(() => fakeQuantWeight(tf.tensor(dwW, ddims), axis).dataSync() as Float32Array);
    const { value, tie } = weightByHand(dwW, ddims, 2);
    for (let i = 0; i < dwW.length; i++) {
      if (tie[i] >= 1e-4) assert.ok(Math.abs(got[i] - value[i]) <= 1e-6 * Math.abs(value[i]), `${i}`);
    }
  });

  it('passes the gradient straight through', () => {
    const dy = gaussianArray(w.length, mulberry32(12), 1);
    const g = tf.tidy(() => {
      const r = tf.tensor(dy, dims);
      return tf
        .grad((x: tf.Tensor) => tf.sum(tf.mul(fakeQuantWeight(x), r)))(tf.tensor(w, dims))
        .dataSync();
    });
    assert.deepEqual(Float32Array.from(g), dy);
  });
});

type LayerSpecDw = Extract<ArchSpec['layers'][number], { kind: 'dwconv' }>;

describe('fakeQuantActivation', () => {
  const q = activationQuant({ min: -0.8, max: 2.1 }, 'qdq-cpu');
  const lo = -q.zeroPoint * q.scale;
  const hi = (255 - q.zeroPoint) * q.scale;
  // Values across and well beyond the range.
  const x = Float32Array.from({ length: 2001 }, (_, i) => -3 + (i * 7) / 2000);

  it('is QuantizeLinear then DequantizeLinear (uint8, saturating)', () => {
    const got = tf.tidy(() => fakeQuantActivation(tf.tensor(x), q).dataSync() as Float32Array);
    for (let i = 0; i < x.length; i++) {
      const r = x[i] / q.scale;
      if (Math.abs(Math.abs(r - Math.trunc(r)) - 0.5) < 1e-4) continue;
      const want = (Math.max(0, Math.min(255, Math.round(r) + q.zeroPoint)) - q.zeroPoint) * q.scale;
      assert.ok(Math.abs(got[i] - want) <= 1e-6, `x=${x[i]}: ${got[i]} vs ${want}`);
    }
    assert.ok(Math.abs(Math.min(...got) - lo) < 1e-6 && Math.abs(Math.max(...got) - hi) < 1e-6, 'saturates');
  });

  it('passes the gradient inside the range and zero outside', () => {
    const dy = gaussianArray(x.length, mulberry32(13), 1);
    const g = tf.tidy(() => {
      const r = tf.tensor(dy);
      return tf
        .grad((t: tf.Tensor) => tf.sum(tf.mul(fakeQuantActivation(t, q), r)))(tf.tensor(x))
        .dataSync();
    });
    // The clip binds once x rounds past the grid's ends, half a step beyond them.
    const half = q.scale / 2;
    let inside = 0;
    let outside = 0;
    for (let i = 0; i < x.length; i++) {
      if (x[i] < lo - half - 1e-5 || x[i] > hi + half + 1e-5) {
        assert.ok(g[i] === 0, `x=${x[i]} is outside [${lo}, ${hi}]: gradient ${g[i]}`);
        outside++;
      } else if (x[i] > lo - half + 1e-5 && x[i] < hi + half - 1e-5) {
        assert.equal(g[i], dy[i], `x=${x[i]} is inside`);
        inside++;
      }
    }
    assert.ok(inside > 500 && outside > 500, `${inside} inside, ${outside} outside`);
  });
});

describe('qatPoints', () => {
  for (const arch of [DEVICE, GATEWAY, TEACHER]) {
    it(`${arch.name}: are exactly the activations the QDQ graph quantizes with their own ranges`, () => {
      const m = new TfModel(arch, mulberry32(1));
      const fp32 = exportOnnx(arch, m.snapshot());
      m.dispose();
      const want = planQdq(parseOnnx(fp32)).calibrated;
      assert.deepEqual(
        qatPoints(arch)
          .map((p) => p.onnx)
          .sort(),
        [...want].sort(),
      );
    });
  }
});

describe('QAT mode of TfModel', () => {
  it('is off by default, and its ranges survive snapshot and load', () => {
    const x = normalise(subset(trainSet, [0, 1, 2, 3, 4, 5, 6, 7]), MEAN, STD);
    const plain = new TfModel(DEVICE, mulberry32(3));
    assert.equal(plain.qat, false);
    assert.ok(![...plain.snapshot().keys()].some((k) => k.startsWith(QAT_PREFIX)));
    const a = new TfModel(DEVICE, mulberry32(3), { qat: true });
    const b = new TfModel(DEVICE, mulberry32(4), { qat: true });
    try {
      assert.equal(a.qat, true);
      // Ranges start empty: before any training batch the QAT forward only rounds weights.
      const keys = [...a.snapshot().keys()].filter((k) => k.startsWith(QAT_PREFIX));
      assert.equal(keys.length, qatPoints(DEVICE).length);
      tf.tidy(() => {
        a.forward(tf.tensor4d(x, [8, 28, 28, 1]), true);
      });
      const pending = a.snapshot();
      assert.ok(
        keys.every((k) => !(pending.get(k)![0] <= pending.get(k)![1])),
        'not committed yet',
      );
      a.commitBnUpdates();
      const w = a.snapshot();
      for (const k of keys) assert.ok(w.get(k)![0] <= w.get(k)![1], `${k} is set: ${w.get(k)}`);
      b.load(w);
      assert.deepEqual(b.snapshot(), w);
      assert.deepEqual(b.predict(x, 8), a.predict(x, 8));
      // A plain model ignores the ranges; the fp32 and QAT forwards differ.
      plain.load(w);
      const diff = maxAbsDiff(plain.predict(x, 8), a.predict(x, 8));
      assert.ok(diff > 1e-3, `QAT forward differs from the plain one by ${diff}`);
    } finally {
      for (const m of [plain, a, b]) m.dispose();
    }
  });
});

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

function meanAbsDiff(a: Float32Array, b: Float32Array): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) d += Math.abs(a[i] - b[i]);
  return d / a.length;
}

/** Share of rows whose argmax agrees. */
function agreement(a: Float32Array, b: Float32Array, k: number): number {
  const argmax = (v: Float32Array, i: number): number => {
    let best = 0;
    for (let j = 1; j < k; j++) if (v[i * k + j] > v[i * k + best]) best = j;
    return best;
  };
  let same = 0;
  const n = a.length / k;
  for (let i = 0; i < n; i++) if (argmax(a, i) === argmax(b, i)) same++;
  return same / n;
}

describe('QAT fine-tune', () => {
  const base: TrainConfig = {
    arch: DEVICE,
    epochs: 1,
    batchSize: 32,
    lr: 0.05,
    momentum: 0.9,
    weightDecay: 5e-4,
    warmupEpochs: 0,
    patience: 4,
    augment: { shift: 2, flip: true },
    seed: 5,
    mean: MEAN,
    std: STD,
    maxStepsPerEpoch: 4,
  };
  let fp32: TrainResult;
  let qatCfg: TrainConfig;
  let qat: TrainResult;

  it('fine-tunes trained weights with fake quantization and stores the ranges', async () => {
    fp32 = await train(base, trainSet, valSet, {
      checkpoint: join(dir, 'fp32.ckpt'),
      progress: silentProgress,
    });
    qatCfg = { ...base, lr: 0.005, init: fp32.weights, qat: true };
    qat = await train(qatCfg, trainSet, valSet, {
      checkpoint: join(dir, 'qat.ckpt'),
      progress: silentProgress,
    });
    for (const p of qatPoints(DEVICE)) {
      const r = qat.weights.get(`${QAT_PREFIX}${p.key}`);
      assert.ok(r && r[0] < r[1], `range of ${p.onnx}: ${r}`);
    }
    // Started from the given weights, not the seeded initialisation, and moved from them.
    const k0 = fp32.weights.get('0/kernel')!;
    const k1 = qat.weights.get('0/kernel')!;
    const moved = maxAbsDiff(k0, k1);
    const seeded = new TfModel(DEVICE, mulberry32(base.seed));
    const fromSeed = maxAbsDiff(seeded.snapshot().get('0/kernel')!, k1);
    seeded.dispose();
    assert.ok(moved > 0 && moved < fromSeed / 4, `moved ${moved} from the init, ${fromSeed} from the seed`);
  });

  it('resumes an interrupted QAT run to the same weights and ranges, and refuses other initial weights', async () => {
    assert.ok(qat, 'the fine-tune ran first');
    const ckpt = join(dir, 'qat-resumed.ckpt');
    let calls = 0;
    await assert.rejects(
      train(qatCfg, trainSet, valSet, {
        checkpoint: ckpt,
        progress: silentProgress,
        shouldStop: () => ++calls === 2,
      }),
      (err: unknown) => err instanceof CascadeError && err.code === ErrorCodes.TRAIN_ERR_INTERRUPTED,
    );
    const other = join(dir, 'qat-other-init.ckpt');
    copyFileSync(ckpt, other);
    const resumed = await train(qatCfg, trainSet, valSet, { checkpoint: ckpt, progress: silentProgress });
    assert.deepEqual(resumed.weights, qat.weights);
    const seeded = new TfModel(DEVICE, mulberry32(99));
    const otherInit = seeded.snapshot();
    seeded.dispose();
    await assert.rejects(
      train({ ...qatCfg, init: otherInit }, trainSet, valSet, {
        checkpoint: other,
        progress: silentProgress,
      }),
      (err: unknown) => err instanceof CascadeError && err.code === ErrorCodes.TRAIN_ERR_CHECKPOINT,
    );
  });

  it('its INT8 export follows the fake-quant forward more closely than the fp32 forward', async (t) => {
    assert.ok(qat, 'the fine-tune ran first');
    const n = evalSet.n;
    const k = DEVICE.classes;
    const model = new TfModel(DEVICE, mulberry32(0), { qat: true });
    model.load(qat.weights);
    const qatLogits = model.predict(normalise(evalSet, MEAN, STD), n);
    model.dispose();

    const shape: [number, number, number] = [1, 28, 28];
    const xNchw = toNchw(evalSet, MEAN, STD);
    const fp32Model = exportOnnx(DEVICE, qat.weights);
    const fp32Logits = (await onnxLogits(fp32Model, xNchw, n, shape)).logits;
    // Post-training quantization as finalize --qat does it: calibrate, then the learnt ranges.
    const calib = toNchw(trainSet, MEAN, STD);
    const ranges = await calibrateRanges(fp32Model, [calib], { method: 'minmax', intraOpThreads: 1 });
    const learnt = qatOnnxRanges(DEVICE, qat.weights);
    assert.deepEqual(Object.keys(learnt).sort(), Object.keys(ranges.tensors).sort());
    Object.assign(ranges.tensors, learnt);
    const int8 = quantizeQdq(fp32Model, ranges, { flavour: 'qdq-cpu' }).model;
    const int8Logits = (await onnxLogits(int8, xNchw, n, shape)).logits;

    const toQat = meanAbsDiff(int8Logits, qatLogits);
    const toFp32 = meanAbsDiff(int8Logits, fp32Logits);
    const qatVsFp32 = meanAbsDiff(qatLogits, fp32Logits);
    const agreeQat = agreement(int8Logits, qatLogits, k);
    const agreeFp32 = agreement(int8Logits, fp32Logits, k);
    const detail = `mean |int8−qat| ${toQat.toFixed(5)}, |int8−fp32| ${toFp32.toFixed(5)}, |qat−fp32| ${qatVsFp32.toFixed(5)}; argmax agreement with qat ${agreeQat}, with fp32 ${agreeFp32}`;
    t.diagnostic(detail);
    // A no-op fake quant would make the QAT forward the fp32 one and both distances equal.
    assert.ok(qatVsFp32 > 1e-3, detail);
    assert.ok(toQat < 0.5 * toFp32, detail);
    assert.ok(agreeQat >= agreeFp32, detail);
  });
});

describe('qatStep (cascade distill qat)', () => {
  it('fine-tunes <arch>-kd from the run folder into <arch>-qat with the QAT defaults', async () => {
    const runs = new RunDir(join(dir, 'runs'));
    const splits = { train: trainSet, val: valSet, hash: 'test' };
    const step = {
      arch: 'device' as const,
      runs,
      progress: silentProgress,
      backend: 'wasm' as const,
      splits,
    };
    await assert.rejects(qatStep(step), (err: unknown) => {
      assert.ok(err instanceof CascadeError && err.code === ErrorCodes.TRAIN_ERR_CHECKPOINT);
      assert.match(err.message, /device-kd\.weights.*cascade distill student --arch device/);
      return true;
    });
    const seeded = new TfModel(DEVICE, mulberry32(21));
    await runs.saveWeights('device-kd', seeded.snapshot(), {
      name: 'device-kd',
      arch: 'device',
      config: {},
      history: [],
      bestEpoch: 1,
      bestValAccuracy: 0,
      imagesPerSecond: 0,
      backend: 'wasm',
      dataHash: 'test',
      seconds: 0,
    });
    seeded.dispose();
    const r = await qatStep({ ...step, overrides: { epochs: 1, maxStepsPerEpoch: 2, batchSize: 32 } });
    assert.equal(r.name, 'device-qat');
    const { weights, meta } = await runs.loadWeights('device-qat', '');
    assert.equal(meta.name, 'device-qat');
    assert.equal(meta.config.qat, true);
    assert.equal(meta.config.init, 'device-kd');
    assert.equal(meta.config.lr, QAT_DEFAULTS.lr);
    assert.equal(meta.config.warmupEpochs, 0);
    assert.equal(meta.config.epochs, 1, 'overrides win over the QAT defaults');
    assert.equal(Object.keys(qatOnnxRanges(DEVICE, weights)).length, qatPoints(DEVICE).length);
  });
});
