/**
 * The training steps of `cascade distill`: the teacher, the students with and without
 * distillation. Each step reads what earlier steps left in the run folder and writes its own
 * weights there; export, quantization and calibration follow in their own modules.
 */
import { createHash } from 'node:crypto';
import { readFile, rename, writeFile } from 'node:fs/promises';
import { ARCHS, type ArchSpec } from '../models/arch.ts';
import { datasetHash, type ImageDataset, splitTrainVal, subset } from '../models/data/dataset.ts';
import { loadDataset } from '../models/data/load.ts';
import { exportOnnx } from './onnx/export.ts';
import { onnxLogits, toNchw } from './onnx-infer.ts';
import type { Progress } from './progress.ts';
import type { RunDir } from './run-dir.ts';
import { initTf, type TrainingBackend } from './tf.ts';
import { type Distillation, type TrainConfig, train } from './train.ts';

/** Fashion-MNIST pixel statistics (train split), used as the input normalisation of every tier. */
export const FASHION_MNIST_MEAN = [0.286];
export const FASHION_MNIST_STD = [0.353];

/** Settings every role shares: SGD + Nesterov, cosine after one warm-up epoch, shift/flip augmentation. */
const BASE_CONFIG: Omit<TrainConfig, 'arch' | 'kd' | 'epochs' | 'seed'> = {
  batchSize: 128,
  lr: 0.1,
  momentum: 0.9,
  weightDecay: 5e-4,
  warmupEpochs: 1,
  patience: 4,
  augment: { shift: 2, flip: true },
  mean: FASHION_MNIST_MEAN,
  std: FASHION_MNIST_STD,
};

/** The defaults each role trains with; every field can be overridden from the CLI. */
export const ROLE_DEFAULTS: Record<'teacher' | 'gateway' | 'device', Omit<TrainConfig, 'arch' | 'kd'>> = {
  teacher: { ...BASE_CONFIG, epochs: 8, seed: 1 },
  gateway: { ...BASE_CONFIG, epochs: 8, seed: 2 },
  device: { ...BASE_CONFIG, epochs: 8, seed: 3 },
};

/** Hinton distillation defaults: equal weights, T = 4. */
export const KD_DEFAULTS = { alpha: 0.5, beta: 0.5, temperature: 4 };

/**
 * Quantization-aware fine-tune defaults: a short run at a small learning rate from trained
 * weights, no warm-up (the weights are already good; a warm-up would only waste the budget).
 */
export const QAT_DEFAULTS: Partial<TrainConfig> = { epochs: 2, lr: 0.005, warmupEpochs: 0 };

/** Validation share carved from the training split (never the test split). */
export const VAL_FRACTION = 1 / 12;
/** Seed of the train/validation split; shared by every step so all tiers see the same split. */
export const SPLIT_SEED = 42;

export interface DataOptions {
  /** Dataset folder (IDX or ImageFolder); default: Debian's Fashion-MNIST. */
  data?: string;
  /** Use only the first n training images (smoke tests). */
  limit?: number;
}

export interface Splits {
  train: ImageDataset;
  val: ImageDataset;
  hash: string;
}

/** Loads the training split and carves the validation split out of it. */
export async function loadSplits(opts: DataOptions): Promise<Splits> {
  let full = await loadDataset({ data: opts.data, split: 'train' });
  if (opts.limit !== undefined && opts.limit < full.n) {
    full = subset(
      full,
      Array.from({ length: opts.limit }, (_, i) => i),
    );
  }
  const { train: tr, val } = splitTrainVal(full, VAL_FRACTION, SPLIT_SEED);
  return { train: tr, val, hash: datasetHash(full) };
}

export interface TrainStepOptions extends DataOptions {
  role: 'teacher' | 'gateway' | 'device';
  runs: RunDir;
  progress: Progress;
  shouldStop?: () => boolean;
  /** Partial config overrides (epochs, lr, batchSize, seed, maxStepsPerEpoch...). */
  overrides?: Partial<TrainConfig>;
  /** Distil from cached teacher logits; name suffix `-kd`. Omit for the plain baseline. */
  kd?: Omit<Distillation, 'teacherLogits'> & { teacherLogits: Float32Array };
  /** Weights name in the run folder; default: role, role-kd or role-nokd. */
  name?: string;
  /** Name of the weights `overrides.init` holds, recorded in the stored metadata. */
  from?: string;
  backend?: TrainingBackend;
  splits?: Splits;
}

/** Trains one model and stores its best weights in the run folder. Returns the stored name. */
export async function trainStep(
  opts: TrainStepOptions,
): Promise<{ name: string; valAccuracy: number; backend: string }> {
  const backend = await initTf(opts.backend);
  const arch: ArchSpec = ARCHS[opts.role];
  const name = opts.name ?? (opts.role === 'teacher' ? 'teacher' : `${opts.role}-${opts.kd ? 'kd' : 'nokd'}`);
  opts.progress.log(`training ${name} (${arch.name}) on TensorFlow.js backend '${backend}'`);
  const splits = opts.splits ?? (await loadSplits(opts));
  const cfg: TrainConfig = { arch, ...ROLE_DEFAULTS[opts.role], ...opts.overrides, kd: opts.kd };
  opts.progress.log(
    `data: ${splits.train.n} train / ${splits.val.n} val images; epochs ${cfg.epochs}, batch ${cfg.batchSize}, lr ${cfg.lr}, seed ${cfg.seed}` +
      (cfg.kd ? `, KD alpha ${cfg.kd.alpha} beta ${cfg.kd.beta} T ${cfg.kd.temperature}` : '') +
      (cfg.init ? `, from ${opts.from ?? 'given weights'}` : '') +
      (cfg.qat ? ', quantization-aware' : ''),
  );
  await opts.runs.ensure();
  const started = performance.now();
  const result = await train(cfg, splits.train, splits.val, {
    checkpoint: opts.runs.path(`${name}.ckpt`),
    progress: opts.progress,
    shouldStop: opts.shouldStop,
  });
  const { kd, init, ...config } = cfg;
  await opts.runs.saveWeights(name, result.weights, {
    name,
    arch: arch.name,
    config: {
      ...config,
      arch: arch.name,
      kd: kd && { alpha: kd.alpha, beta: kd.beta, temperature: kd.temperature },
      ...(init ? { init: opts.from ?? 'given weights' } : {}),
    },
    history: result.history,
    bestEpoch: result.bestEpoch,
    bestValAccuracy: result.bestValAccuracy,
    imagesPerSecond: result.imagesPerSecond,
    backend,
    dataHash: splits.hash,
    seconds: (performance.now() - started) / 1000,
  });
  opts.progress.log(
    `${name}: best val accuracy ${result.bestValAccuracy.toFixed(4)} at epoch ${result.bestEpoch}; ` +
      `${result.imagesPerSecond.toFixed(0)} images/s on '${backend}'`,
  );
  return { name, valAccuracy: result.bestValAccuracy, backend };
}

/** Options of {@link qatStep}: those of a training step, the student and the weights to start from. */
export interface QatStepOptions extends Omit<TrainStepOptions, 'role' | 'name' | 'from'> {
  arch: 'device' | 'gateway';
  /** Weights to fine-tune, by name in the run folder; default `<arch>-kd`. */
  from?: string;
}

/**
 * Quantization-aware fine-tune of a trained student (`cascade distill qat`): loads `from`,
 * trains with fake quantization ({@link QAT_DEFAULTS}, then `overrides`) and the given KD loss,
 * and stores `<arch>-qat` (weights and activation ranges) in the run folder.
 * @throws {CascadeError} TRAIN_ERR_CHECKPOINT when the weights to start from are absent.
 */
export async function qatStep(
  opts: QatStepOptions,
): Promise<{ name: string; valAccuracy: number; backend: string }> {
  const from = opts.from ?? `${opts.arch}-kd`;
  const { weights } = await opts.runs.loadWeights(from, `cascade distill student --arch ${opts.arch}`);
  return trainStep({
    ...opts,
    role: opts.arch,
    name: `${opts.arch}-qat`,
    from,
    overrides: { ...QAT_DEFAULTS, ...opts.overrides, init: weights, qat: true },
  });
}

/**
 * Teacher logits on the training split (clean images), computed once with ONNX Runtime and
 * cached in the run folder, keyed by the split's data hash and the teacher's identity.
 * @param teacherOnnx use this fp32 ONNX classifier instead of the trained teacher.
 */
export async function teacherLogits(
  runs: RunDir,
  splits: Splits,
  progress: Progress,
  teacherOnnx?: string,
): Promise<Float32Array> {
  const model = teacherOnnx
    ? new Uint8Array(await readFile(teacherOnnx))
    : exportOnnx(ARCHS.teacher, (await runs.loadWeights('teacher', 'cascade distill teacher')).weights);
  const key = `${splits.hash}:${splits.train.n}:${createHash('sha256').update(model).digest('hex')}`;
  const cached = await runs.readJson<{ key: string }>('teacher-logits.json');
  if (cached?.key === key) {
    const buf = await readFile(runs.path('teacher-logits.bin'));
    return new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
  }
  progress.log(`computing teacher logits for ${splits.train.n} training images`);
  const x = toNchw(splits.train, FASHION_MNIST_MEAN, FASHION_MNIST_STD);
  const { logits } = await onnxLogits(model, x, splits.train.n, [
    splits.train.channels,
    splits.train.height,
    splits.train.width,
  ]);
  await runs.ensure();
  // Written to a private temporary name and renamed: two students started together both write
  // the cache, and a reader must never see half of it.
  const tmp = runs.path(`teacher-logits.bin.${process.pid}`);
  await writeFile(tmp, new Uint8Array(logits.buffer, logits.byteOffset, logits.byteLength));
  await rename(tmp, runs.path('teacher-logits.bin'));
  await runs.writeJson('teacher-logits.json', { key });
  return logits;
}
