/**
 * distill/train.ts and distill/checkpoint.ts: an interrupted and resumed run ends bit-identical to
 * an uninterrupted one; foreign and damaged checkpoints are refused; the learning-rate schedule;
 * the distillation term alone pulls a student toward the teacher.
 */
import assert from 'node:assert/strict';
import {
  copyFileSync,
  existsSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import { loadCheckpoint } from '../distill/checkpoint.ts';
import { TfModel } from '../distill/model.ts';
import { type Progress, silentProgress } from '../distill/progress.ts';
import { initTf } from '../distill/tf.ts';
import { learningRate, normalise, type TrainConfig, type TrainResult, train } from '../distill/train.ts';
import { DEVICE } from '../models/arch.ts';
import { type ImageDataset, splitTrainVal, subset } from '../models/data/dataset.ts';
import { loadBundledSample } from '../models/data/load.ts';
import { mulberry32 } from '../models/data/rng.ts';

const BASE: TrainConfig = {
  arch: DEVICE,
  epochs: 2,
  batchSize: 32,
  lr: 0.05,
  momentum: 0.9,
  weightDecay: 5e-4,
  warmupEpochs: 1,
  patience: 4,
  augment: { shift: 2, flip: true },
  seed: 7,
  mean: [0.286],
  std: [0.353],
  maxStepsPerEpoch: 4,
};

let dir: string;
let trainSet: ImageDataset;
let valSet: ImageDataset;

before(async () => {
  await initTf('wasm');
  dir = mkdtempSync(join(tmpdir(), 'train-test-'));
  const sample = await loadBundledSample();
  // 600 images, every class present (the sample is 200 per class in test-set order).
  const six = subset(
    sample,
    Array.from({ length: 600 }, (_, i) => i * 3),
  );
  ({ train: trainSet, val: valSet } = splitTrainVal(six, 1 / 12, 42));
});
after(() => rmSync(dir, { recursive: true, force: true }));

/** Rejects with a CascadeError of `code` whose message passes `check`. */
async function rejectsWith(p: Promise<unknown>, code: string, check?: (msg: string) => void): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof CascadeError, `a CascadeError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    check?.(err.message);
    return true;
  });
}

function assertBitIdentical(a: Map<string, Float32Array>, b: Map<string, Float32Array>): void {
  assert.deepEqual([...a.keys()], [...b.keys()]);
  for (const [name, va] of a) {
    const vb = b.get(name)!;
    assert.equal(va.length, vb.length, name);
    // Compare bit patterns: deepEqual on floats would accept -0 vs 0.
    const ia = new Uint32Array(va.buffer, va.byteOffset, va.length);
    const ib = new Uint32Array(vb.buffer, vb.byteOffset, vb.length);
    for (let i = 0; i < ia.length; i++) {
      if (ia[i] !== ib[i]) assert.fail(`${name}[${i}]: ${va[i]} vs ${vb[i]}`);
    }
  }
}

describe('train: interrupt and resume', () => {
  let straight: TrainResult;
  let ckpt: string;

  it('an interrupted run resumes to the uninterrupted run’s exact weights', async () => {
    straight = await train(BASE, trainSet, valSet, {
      checkpoint: join(dir, 'straight.ckpt'),
      progress: silentProgress,
    });
    assert.equal(straight.history.length, 2);
    assert.ok(!existsSync(join(dir, 'straight.ckpt')), 'a finished run removes its checkpoint');

    ckpt = join(dir, 'resumed.ckpt');
    let calls = 0;
    await rejectsWith(
      train(BASE, trainSet, valSet, {
        checkpoint: ckpt,
        progress: silentProgress,
        shouldStop: () => ++calls === 3,
      }),
      ErrorCodes.TRAIN_ERR_INTERRUPTED,
      (msg) => assert.ok(msg.includes(ckpt), msg),
    );
    assert.equal(calls, 3, 'stopped right after the 3rd step');
    const saved = await loadCheckpoint<{ epoch: number; step: number }>(ckpt);
    assert.ok(saved !== null, 'the interruption left a checkpoint');
    assert.equal(saved.meta.epoch, 0);
    assert.equal(saved.meta.step, 3);
    // Keep a copy for the refusal tests below (a completed run deletes its checkpoint).
    copyFileSync(ckpt, join(dir, 'interrupted.ckpt'));

    const logged: string[] = [];
    const resumed = await train(BASE, trainSet, valSet, {
      checkpoint: ckpt,
      progress: { ...silentProgress, log: (line) => logged.push(line) },
    });
    assert.ok(
      logged.some((l) => l.includes('resumed') && l.includes('step 3')),
      `resume is logged: ${logged.join(' | ')}`,
    );
    assertBitIdentical(resumed.weights, straight.weights);
    assert.deepEqual(
      resumed.history.map(({ seconds, ...r }) => r),
      straight.history.map(({ seconds, ...r }) => r),
    );
    assert.equal(resumed.bestEpoch, straight.bestEpoch);
    assert.ok(!existsSync(ckpt), 'the resumed run removes its checkpoint when done');
  });

  it('the weights moved from their initial values (the comparison is not vacuous)', () => {
    assert.ok(straight, 'the resume test ran first');
    const init = new TfModel(DEVICE, mulberry32(BASE.seed));
    const w0 = init.snapshot();
    init.dispose();
    const k0 = w0.get('0/kernel')!;
    const k1 = straight.weights.get('0/kernel')!;
    let diff = 0;
    for (let i = 0; i < k0.length; i++) diff = Math.max(diff, Math.abs(k0[i] - k1[i]));
    assert.ok(diff > 1e-4, `first conv kernel changed by ${diff}`);
  });

  it('refuses a checkpoint from another configuration and keeps it', async () => {
    const path = join(dir, 'other-config.ckpt');
    copyFileSync(join(dir, 'interrupted.ckpt'), path);
    await rejectsWith(
      train({ ...BASE, lr: 0.01 }, trainSet, valSet, { checkpoint: path, progress: silentProgress }),
      ErrorCodes.TRAIN_ERR_CHECKPOINT,
      (msg) => assert.ok(msg.includes(path) && /different configuration/.test(msg), msg),
    );
    // Another training set size is another configuration too.
    await rejectsWith(
      train(BASE, subset(trainSet, [...Array(trainSet.n - 1).keys()]), valSet, {
        checkpoint: path,
        progress: silentProgress,
      }),
      ErrorCodes.TRAIN_ERR_CHECKPOINT,
    );
    assert.ok(existsSync(path), 'the refused checkpoint is not deleted');
  });

  it('refuses a truncated checkpoint, naming the file', async () => {
    const path = join(dir, 'truncated.ckpt');
    const bytes = readFileSync(join(dir, 'interrupted.ckpt'));
    writeFileSync(path, bytes.subarray(0, bytes.length - 1000));
    await rejectsWith(
      train(BASE, trainSet, valSet, { checkpoint: path, progress: silentProgress }),
      ErrorCodes.TRAIN_ERR_CHECKPOINT,
      (msg) => assert.ok(msg.includes(path) && /truncated/.test(msg), msg),
    );
    // Cut inside the JSON header as well.
    writeFileSync(path, bytes.subarray(0, 40));
    await rejectsWith(
      train(BASE, trainSet, valSet, { checkpoint: path, progress: silentProgress }),
      ErrorCodes.TRAIN_ERR_CHECKPOINT,
      (msg) => assert.ok(msg.includes(path), msg),
    );
    assert.equal(statSync(path).size, 40, 'the damaged file is left as it was');
  });
});

describe('learningRate', () => {
  const cfg: TrainConfig = { ...BASE, lr: 0.2, warmupEpochs: 2, epochs: 10 };

  it('rises linearly during warm-up', () => {
    const pts = [0, 0.5, 1, 1.5, 1.9].map((e) => learningRate(cfg, e));
    for (let i = 1; i < pts.length; i++) assert.ok(pts[i] > pts[i - 1], `increasing at ${i}`);
    // Equal steps in epoch give equal steps in rate: slope lr / warmupEpochs.
    assert.ok(Math.abs(pts[2] - pts[1] - 0.05) < 1e-12);
    assert.ok(Math.abs(pts[3] - pts[2] - 0.05) < 1e-12);
    assert.ok(learningRate(cfg, 0) > 0 && learningRate(cfg, 0) < 1e-3, 'starts near zero, not at zero');
    assert.ok(Math.abs(learningRate(cfg, 1) - 0.1) < 1e-3, 'half the peak half-way through warm-up');
  });

  it('peaks at the end of warm-up, then decays by a cosine to ~0 at the last epoch', () => {
    assert.ok(Math.abs(learningRate(cfg, 2) - 0.2) < 1e-12, 'peak after warm-up');
    assert.ok(Math.abs(learningRate(cfg, 1.999) - 0.2) < 1e-3, 'continuous at the end of warm-up');
    assert.ok(Math.abs(learningRate(cfg, 6) - 0.1) < 1e-12, 'half the peak half-way through the decay');
    // Cosine, not linear: a quarter of the way down the rate is 0.2·(1+cos(π/4))/2.
    assert.ok(Math.abs(learningRate(cfg, 4) - 0.1 * (1 + Math.SQRT1_2)) < 1e-12);
    let prev = Number.POSITIVE_INFINITY;
    for (let e = 2; e <= 10; e += 0.25) {
      const r = learningRate(cfg, e);
      assert.ok(r < prev, `decreasing at epoch ${e}`);
      prev = r;
    }
    assert.ok(learningRate(cfg, 10) < 1e-12, 'zero at the end of the last epoch');
    assert.ok(learningRate(cfg, 9.9) < 0.001, 'small through the last epoch');
    assert.ok(learningRate(cfg, 12) < 1e-12, 'stays at zero past the end');
  });
});

describe('train: distillation', () => {
  it('with alpha 0 the student moves toward the teacher’s argmax', async () => {
    const k = DEVICE.classes;
    const target = 7;
    // The teacher says "class 7" for every image, whatever its true label.
    const teacherLogits = new Float32Array(trainSet.n * k);
    for (let i = 0; i < trainSet.n; i++) teacherLogits[i * k + target] = 8;
    const cfg: TrainConfig = {
      ...BASE,
      epochs: 1,
      warmupEpochs: 0,
      lr: 0.05,
      maxStepsPerEpoch: 6,
      kd: { alpha: 0, beta: 1, temperature: 4, teacherLogits },
    };
    const means: number[] = [];
    const progress: Progress = {
      ...silentProgress,
      step: (_, s) => {
        means.push(s.loss);
      },
    };
    const r = await train(cfg, trainSet, valSet, { checkpoint: join(dir, 'kd.ckpt'), progress });
    // The progress loss is a running mean; recover each step's own loss from it.
    const losses = means.map((m, i) => (i === 0 ? m : m * (i + 1) - means[i - 1] * i));
    assert.equal(losses.length, 6);
    // The loss is T²·CE(teacher_T, student_T); its floor is T² times the teacher's entropy.
    const T = 4;
    const z = Math.exp(8 / T) + (k - 1);
    const p = [Math.exp(8 / T) / z, 1 / z];
    const floor = T * T * -(p[0] * Math.log(p[0]) + (k - 1) * p[1] * Math.log(p[1]));
    assert.ok(
      losses.every((l) => l > floor - 1e-3),
      'no loss below the entropy floor',
    );
    assert.ok(
      losses[5] - floor < 0.6 * (losses[0] - floor),
      `the excess over the floor ${floor.toFixed(3)} shrinks: ${losses.map((l) => l.toFixed(3)).join(', ')}`,
    );

    // Share of validation images predicted as the teacher's class, before and after.
    const share = (weights: Map<string, Float32Array> | null): number => {
      const m = new TfModel(DEVICE, mulberry32(cfg.seed));
      if (weights) m.load(weights);
      const x = normalise(valSet, cfg.mean, cfg.std);
      m.recalibrateBn(normalise(trainSet, cfg.mean, cfg.std), trainSet.n, 32, 4);
      const logits = m.predict(x, valSet.n);
      m.dispose();
      let hits = 0;
      for (let i = 0; i < valSet.n; i++) {
        const row = logits.subarray(i * k, (i + 1) * k);
        if (row.indexOf(Math.max(...row)) === target) hits++;
      }
      return hits / valSet.n;
    };
    const before = share(null);
    const afterKd = share(r.weights);
    // True labels are balanced (10 % class 7): only the teacher term can explain a majority.
    assert.ok(afterKd > 0.5 && afterKd > before + 0.3, `class-${target} share ${before} → ${afterKd}`);
  });
});
