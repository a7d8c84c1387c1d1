/**
 * The training loop shared by the teacher and both students: SGD with Nesterov momentum,
 * decoupled from tfjs's optimizers so that its state is plain named tensors we checkpoint;
 * linear warm-up then cosine decay; random-shift and flip augmentation; optional Hinton
 * distillation loss; early stopping on a validation split; Ctrl-C saves a resumable checkpoint.
 *
 * Every source of randomness derives from (seed, epoch, step), so a resumed run follows the same
 * trajectory as an uninterrupted one.
 */
import { createHash } from 'node:crypto';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import type { ArchSpec } from '../models/arch.ts';
import type { ImageDataset } from '../models/data/dataset.ts';
import { mulberry32, shuffleInPlace } from '../models/data/rng.ts';
import { type Augment, augmentInto, normalise } from './augment.ts';
import { loadCheckpoint, removeCheckpoint, saveCheckpoint } from './checkpoint.ts';
import { TfModel } from './model.ts';
import type { Progress } from './progress.ts';
import { sgdStep } from './sgd.ts';
import { tf } from './tf.ts';

export interface Distillation {
  /** Weight of the hard-label cross-entropy. */
  alpha: number;
  /** Weight of T²·KL(teacher_T ‖ student_T). */
  beta: number;
  /** Softmax temperature of the distillation term. */
  temperature: number;
  /** Teacher logits for every training image, in dataset order (n × classes). */
  teacherLogits: Float32Array;
}

export interface TrainConfig {
  arch: ArchSpec;
  /** Maximum epochs. */
  epochs: number;
  batchSize: number;
  /** Peak learning rate after warm-up. */
  lr: number;
  momentum: number;
  /** L2 on conv and dense kernels (not BN, not biases). */
  weightDecay: number;
  warmupEpochs: number;
  /** Stop when validation accuracy has not improved for this many epochs. */
  patience: number;
  augment: Augment;
  seed: number;
  /** Per-channel normalisation applied to pixel/255. */
  mean: number[];
  std: number[];
  kd?: Distillation;
  /** Limit steps per epoch (smoke tests). */
  maxStepsPerEpoch?: number;
  /**
   * Start from these weights (a {@link TfModel.snapshot}) instead of the seeded initialisation,
   * e.g. a trained student to fine-tune. Part of the checkpoint key by content digest.
   */
  init?: Map<string, Float32Array>;
  /** Quantization-aware training: the model fake-quantizes as its INT8 export will (distill/qat.ts). */
  qat?: boolean;
}

export interface EpochRecord {
  epoch: number;
  loss: number;
  trainAccuracy: number;
  valAccuracy: number;
  lr: number;
  seconds: number;
}

export interface TrainResult {
  /** The best weights by validation accuracy. */
  weights: Map<string, Float32Array>;
  history: EpochRecord[];
  bestEpoch: number;
  bestValAccuracy: number;
  imagesPerSecond: number;
  stoppedEarly: boolean;
}

interface CkptMeta {
  configKey: string;
  epoch: number;
  step: number;
  history: EpochRecord[];
  bestEpoch: number;
  bestValAccuracy: number;
  sinceBest: number;
  lossSum: number;
  correct: number;
  seen: number;
}

/** Learning rate at a fractional epoch: linear warm-up, then cosine decay to zero. */
export function learningRate(cfg: TrainConfig, epochFloat: number): number {
  if (epochFloat < cfg.warmupEpochs) return (cfg.lr * (epochFloat + 1e-3)) / cfg.warmupEpochs;
  const t = (epochFloat - cfg.warmupEpochs) / Math.max(1e-9, cfg.epochs - cfg.warmupEpochs);
  return 0.5 * cfg.lr * (1 + Math.cos(Math.PI * Math.min(1, t)));
}

/** JSON with object keys sorted, so equal configurations give equal strings whatever their key order. */
function canonical(value: unknown): string {
  return JSON.stringify(value, (_, v: unknown) =>
    v !== null && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([x], [y]) => (x < y ? -1 : 1)))
      : v,
  );
}

/** A stable key of everything that must match for a checkpoint to be resumed. */
function configKey(cfg: TrainConfig, trainN: number, valN: number): string {
  const { kd, init, ...rest } = cfg;
  return canonical({
    ...rest,
    kd: kd && { ...kd, teacherLogits: kd.teacherLogits.length },
    // Absent unless given, so keys of runs without initial weights stay as they were.
    ...(init ? { init: weightsDigest(init) } : {}),
    trainN,
    valN,
  });
}

/** sha256 of named tensors (names sorted), so a resumed fine-tune must start from the same weights. */
function weightsDigest(weights: Map<string, Float32Array>): string {
  const h = createHash('sha256');
  for (const name of [...weights.keys()].sort()) {
    const v = weights.get(name)!;
    h.update(`${name}:${v.length};`).update(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
  }
  return h.digest('hex');
}

/** Accuracy of a model on a normalised set, in inference mode. */
export function accuracyOf(model: TfModel, x: Float32Array, labels: Uint8Array): number {
  const logits = model.predict(x, labels.length);
  const k = model.arch.classes;
  let correct = 0;
  for (let i = 0; i < labels.length; i++) {
    let best = 0;
    for (let j = 1; j < k; j++) if (logits[i * k + j] > logits[i * k + best]) best = j;
    if (best === labels[i]) correct++;
  }
  return correct / labels.length;
}

export interface TrainOptions {
  /** Resumable checkpoint file; resumed when it exists and matches the configuration. */
  checkpoint: string;
  progress: Progress;
  /** Set by the caller's SIGINT handler: the loop saves a checkpoint and throws TRAIN_ERR_INTERRUPTED. */
  shouldStop?: () => boolean;
  /** Seconds between periodic checkpoints within an epoch. Default 120. */
  checkpointEverySeconds?: number;
}

/**
 * Trains `cfg.arch` on `train`, early-stopping on `val`.
 * @throws {CascadeError} TRAIN_ERR_INTERRUPTED after saving a checkpoint when `shouldStop` fires;
 *   TRAIN_ERR_CHECKPOINT when the checkpoint belongs to another configuration.
 */
export async function train(
  cfg: TrainConfig,
  trainSet: ImageDataset,
  valSet: ImageDataset,
  opts: TrainOptions,
): Promise<TrainResult> {
  // tfjs registers variables by name: a run that throws (interrupted, checkpoint refused) must
  // free its model too, or the next run in the same process cannot create one.
  const owned: Array<TfModel | tf.Variable> = [];
  try {
    return await trainOwning(cfg, trainSet, valSet, opts, owned);
  } finally {
    for (const t of owned) if (t instanceof TfModel || !t.isDisposed) t.dispose();
  }
}

async function trainOwning(
  cfg: TrainConfig,
  trainSet: ImageDataset,
  valSet: ImageDataset,
  opts: TrainOptions,
  owned: Array<TfModel | tf.Variable>,
): Promise<TrainResult> {
  const [h, w, c] = cfg.arch.input;
  if (trainSet.height !== h || trainSet.width !== w || trainSet.channels !== c) {
    throw new CascadeError(
      ErrorCodes.DATA_ERR_FORMAT,
      `${trainSet.name}: images are ${trainSet.height}x${trainSet.width}x${trainSet.channels}, architecture ${cfg.arch.name} expects ${h}x${w}x${c}`,
    );
  }
  const classes = cfg.arch.classes;
  const xTrain = normalise(trainSet, cfg.mean, cfg.std);
  const xVal = normalise(valSet, cfg.mean, cfg.std);
  const fill = new Float32Array(c).map(
    (_, k) => -cfg.mean[k % cfg.mean.length] / cfg.std[k % cfg.std.length],
  );
  const n = trainSet.n;
  const stepsPerEpoch = Math.min(
    Math.floor(n / cfg.batchSize),
    cfg.maxStepsPerEpoch ?? Number.POSITIVE_INFINITY,
  );
  const key = configKey(cfg, n, valSet.n);

  const model = new TfModel(cfg.arch, mulberry32(cfg.seed), { qat: cfg.qat });
  owned.push(model);
  if (cfg.init) model.load(cfg.init);
  const params = model.trainableParams();
  const velocity = new Map<string, tf.Variable>();
  for (const [name, v] of params) velocity.set(name, tf.variable(tf.zerosLike(v), false));
  owned.push(...velocity.values());
  const decayed = new Set(params.filter(([name]) => name.endsWith('/kernel')).map(([name]) => name));

  let meta: CkptMeta = {
    configKey: key,
    epoch: 0,
    step: 0,
    history: [],
    bestEpoch: -1,
    bestValAccuracy: -1,
    sinceBest: 0,
    lossSum: 0,
    correct: 0,
    seen: 0,
  };
  let best: Map<string, Float32Array> | null = null;
  const ck = await loadCheckpoint<CkptMeta>(opts.checkpoint);
  if (ck !== null) {
    if (typeof ck.meta.configKey !== 'string' || canonical(JSON.parse(ck.meta.configKey)) !== key) {
      throw new CascadeError(
        ErrorCodes.TRAIN_ERR_CHECKPOINT,
        `${opts.checkpoint}: checkpoint is from a different configuration; delete it or rerun with the same options`,
      );
    }
    meta = ck.meta;
    model.load(
      new Map([...ck.tensors].filter(([k]) => k.startsWith('model:')).map(([k, v]) => [k.slice(6), v])),
    );
    for (const [name, v] of velocity) v.assign(tf.tensor(ck.tensors.get(`velocity:${name}`)!, v.shape));
    const bestEntries = [...ck.tensors].filter(([k]) => k.startsWith('best:'));
    if (bestEntries.length > 0) best = new Map(bestEntries.map(([k, v]) => [k.slice(5), v]));
    opts.progress.log(`resumed from ${opts.checkpoint} at epoch ${meta.epoch + 1}, step ${meta.step}`);
  }

  const save = async (): Promise<void> => {
    const tensors = new Map<string, Float32Array>();
    for (const [k, v] of model.snapshot()) tensors.set(`model:${k}`, v);
    for (const [k, v] of velocity) tensors.set(`velocity:${k}`, v.dataSync() as Float32Array);
    if (best !== null) for (const [k, v] of best) tensors.set(`best:${k}`, v);
    await saveCheckpoint(opts.checkpoint, { meta, tensors });
  };

  const batchX = new Float32Array(cfg.batchSize * h * w * c);
  const batchY = new Float32Array(cfg.batchSize * classes);
  const batchT = cfg.kd ? new Float32Array(cfg.batchSize * classes) : null;
  // Step times after warm-up (the wasm backend builds its XNNPACK operators in the first steps).
  const stepSeconds: number[] = [];
  let stepsRun = 0;
  let stoppedEarly = false;
  let lastSave = performance.now();

  for (; meta.epoch < cfg.epochs; meta.epoch++) {
    const order = Uint32Array.from({ length: n }, (_, i) => i);
    shuffleInPlace(order, mulberry32(cfg.seed * 1000003 + meta.epoch));
    const epochStart = performance.now();
    opts.progress.startEpoch(meta.epoch, cfg.epochs, stepsPerEpoch, meta.step);
    for (; meta.step < stepsPerEpoch; meta.step++) {
      const t0 = performance.now();
      const rng = mulberry32((cfg.seed * 1000003 + meta.epoch) * 100003 + meta.step);
      batchY.fill(0);
      for (let b = 0; b < cfg.batchSize; b++) {
        const idx = order[meta.step * cfg.batchSize + b];
        augmentInto(xTrain, idx * h * w * c, batchX, b * h * w * c, h, w, c, fill, cfg.augment, rng);
        batchY[b * classes + trainSet.labels[idx]] = 1;
        if (batchT && cfg.kd)
          batchT.set(cfg.kd.teacherLogits.subarray(idx * classes, (idx + 1) * classes), b * classes);
      }
      const lr = learningRate(cfg, meta.epoch + meta.step / stepsPerEpoch);
      const { loss, correct } = sgdStep(
        model,
        params,
        velocity,
        decayed,
        cfg,
        lr,
        batchX,
        batchY,
        batchT,
        rng,
      );
      meta.lossSum += loss * cfg.batchSize;
      meta.correct += correct;
      meta.seen += cfg.batchSize;
      const dt = (performance.now() - t0) / 1000;
      if (++stepsRun > WARMUP_STEPS) {
        stepSeconds.push(dt);
      }
      opts.progress.step(meta.step + 1, {
        loss: meta.lossSum / meta.seen,
        acc: meta.correct / meta.seen,
        lr,
      });
      // Yield so SIGINT handlers run between steps.
      await new Promise((r) => setImmediate(r));
      if (opts.shouldStop?.()) {
        meta.step++;
        await save();
        opts.progress.stop();
        throw new CascadeError(
          ErrorCodes.TRAIN_ERR_INTERRUPTED,
          `interrupted: checkpoint saved to ${opts.checkpoint}; run the same command again to resume`,
        );
      }
      if (performance.now() - lastSave > (opts.checkpointEverySeconds ?? 120) * 1000) {
        meta.step++;
        await save();
        meta.step--;
        lastSave = performance.now();
      }
    }
    model.recalibrateBn(xTrain, n, cfg.batchSize, Math.min(20, Math.max(1, Math.floor(n / cfg.batchSize))));
    const valAccuracy = accuracyOf(model, xVal, valSet.labels);
    const record: EpochRecord = {
      epoch: meta.epoch + 1,
      loss: meta.lossSum / Math.max(1, meta.seen),
      trainAccuracy: meta.correct / Math.max(1, meta.seen),
      valAccuracy,
      lr: learningRate(cfg, meta.epoch + 1),
      seconds: (performance.now() - epochStart) / 1000,
    };
    meta.history.push(record);
    opts.progress.endEpoch(record);
    if (valAccuracy > meta.bestValAccuracy) {
      meta.bestValAccuracy = valAccuracy;
      meta.bestEpoch = meta.epoch + 1;
      meta.sinceBest = 0;
      best = model.snapshot();
    } else {
      meta.sinceBest++;
    }
    meta.step = 0;
    meta.lossSum = 0;
    meta.correct = 0;
    meta.seen = 0;
    const done = meta.sinceBest >= cfg.patience;
    meta.epoch++;
    await save();
    lastSave = performance.now();
    meta.epoch--;
    if (done) {
      stoppedEarly = true;
      opts.progress.log(`early stop: no validation gain for ${cfg.patience} epochs (best ${meta.bestEpoch})`);
      meta.epoch++;
      break;
    }
  }
  opts.progress.stop();
  const weights = best ?? model.snapshot();
  model.dispose();
  for (const v of velocity.values()) v.dispose();
  await removeCheckpoint(opts.checkpoint);
  return {
    weights,
    history: meta.history,
    bestEpoch: meta.bestEpoch,
    bestValAccuracy: meta.bestValAccuracy,
    imagesPerSecond: stepSeconds.length > 0 ? cfg.batchSize / median(stepSeconds) : 0,
    stoppedEarly,
  };
}

/** Steps left out of the throughput figure: the wasm backend builds its operators in the first ones. */
const WARMUP_STEPS = 5;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

export type { Augment };
export { normalise, TfModel };
