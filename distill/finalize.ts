/**
 * The last step of `cascade distill`: turn trained weights into shipped artifacts.
 *
 * Exports every tier to ONNX, quantizes the students to INT8 QDQ (one calibration, two
 * flavours for the gateway), fits a temperature per tier on the validation split, builds the
 * reliability tables and the cascade thresholds from validation predictions of the deployed
 * forms, measures everything on the test data, and writes the model cards and the registry.
 * The test split is only ever measured, never used to choose anything.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { ece, fitTemperature, predictions, reliability, softmaxT } from '../cascade/calibration.ts';
import { chooseThresholds, type TierPredictions } from '../cascade/cascade-sim.ts';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import { ARCHS, countParams } from '../models/arch.ts';
import type { ArtifactFile, ModelCard, ReliabilityBin, Tier } from '../models/card.ts';
import type { ImageDataset } from '../models/data/dataset.ts';
import { writeRegistry } from '../models/registry.ts';
import {
  type ActivationStats,
  type CalibrationMethod,
  type CalibrationRanges,
  collectActivationStats,
  rangesFromStats,
} from './onnx/calibrate-ranges.ts';
import { exportOnnx } from './onnx/export.ts';
import { parseOnnx } from './onnx/graph.ts';
import { type QdqFlavour, quantizeQdq } from './onnx/quantize.ts';
import { onnxLogits, toNchw, top1 } from './onnx-infer.ts';
import { FASHION_MNIST_MEAN, FASHION_MNIST_STD, type Splits } from './pipeline.ts';
import type { Progress } from './progress.ts';
import { qatOnnxRanges } from './qat.ts';
import type { RunDir, TrainedMeta } from './run-dir.ts';

export interface FinalizeOptions {
  runs: RunDir;
  splits: Splits;
  /** Labelled test images, measured only (full test split when available, else the bundled sample). */
  test: ImageDataset;
  /** Output folder of the artifacts; default 'models'. */
  out?: string;
  progress: Progress;
  /**
   * Activation calibration; default 'auto' over 2048 training images: every method is tried and
   * the one whose INT8 model scores best on the validation split is kept (measured here: entropy
   * cost the device student 1.8 pp, min-max 0.2 pp, so no single method is safe for every model).
   */
  calibration?: { method?: CalibrationMethod | 'auto'; samples?: number };
  /** Allowed cascade accuracy loss versus the teacher when choosing thresholds; default 0.003. */
  epsilon?: number;
  /** Use this fp32 ONNX classifier as the teacher instead of the trained one. */
  teacherOnnx?: string;
  /** Model version written into the cards; default today's date. */
  version?: string;
  /**
   * Ship a student's quantization-aware weights (`<tier>-qat`, from `cascade distill qat`) where
   * they exist, quantized with the activation ranges learnt with them; default false.
   */
  qat?: boolean;
}

/** INT8 validation accuracy may trail fp32 by this much before finalize recommends QAT. */
export const PTQ_LOSS_LIMIT = 0.005;

interface TierArtifacts {
  tier: Tier;
  name: string;
  files: Array<{ form: ArtifactFile['form']; bytes: Uint8Array; file: string }>;
  fp32: Uint8Array;
  params: number;
  arch: unknown;
  meta: TrainedMeta | null;
  inputQuant?: ModelCard['input']['quant'];
  /** The calibration method used and, with 'auto', each candidate's INT8 validation accuracy. */
  calibration?: { method: CalibrationMethod; candidates?: Partial<Record<CalibrationMethod, number>> };
  /** Set when the student is the QAT fine-tune: what it started from, which ranges it used. */
  qat?: { weights: string; from: unknown; qatRanges: number; calibratedRanges: number };
}

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

function countOnnxParams(model: Uint8Array, where: string): number {
  let n = 0;
  for (const t of parseOnnx(model, where).consts.values()) n += t.data.length;
  return n;
}

/** Calibration batches: a deterministic spread of training images, normalised, NCHW. */
function calibrationBatches(train: ImageDataset, samples: number): Float32Array[] {
  const take = Math.min(samples, train.n);
  const stride = train.n / take;
  const per = train.height * train.width * train.channels;
  const picked = new Uint8Array(take * per);
  for (let i = 0; i < take; i++) {
    const src = Math.floor(i * stride) * per;
    picked.set(train.images.subarray(src, src + per), i * per);
  }
  const x = toNchw({ ...train, n: take, images: picked }, FASHION_MNIST_MEAN, FASHION_MNIST_STD);
  const batches: Float32Array[] = [];
  for (let s = 0; s < take; s += 256) batches.push(x.subarray(s * per, Math.min(take, s + 256) * per));
  return batches;
}

async function buildStudent(
  opts: FinalizeOptions,
  tier: 'device' | 'gateway',
  flavours: QdqFlavour[],
): Promise<TierArtifacts> {
  let name = `${tier}-kd`;
  let loaded: Awaited<ReturnType<RunDir['loadWeights']>> | null = null;
  if (opts.qat) {
    try {
      loaded = await opts.runs.loadWeights(`${tier}-qat`, '');
      name = `${tier}-qat`;
    } catch (err) {
      if (!(err instanceof CascadeError && err.code === ErrorCodes.TRAIN_ERR_CHECKPOINT)) throw err;
      opts.progress.log(`${tier}: no ${tier}-qat weights in ${opts.runs.root}; shipping ${name} (PTQ)`);
    }
  }
  const { weights, meta } =
    loaded ?? (await opts.runs.loadWeights(name, `cascade distill student --arch ${tier}`));
  const arch = ARCHS[tier];
  const fp32 = exportOnnx(arch, weights);
  const requested = opts.calibration?.method ?? 'auto';
  const batches = calibrationBatches(opts.splits.train, opts.calibration?.samples ?? 2048);
  opts.progress.log(`${tier}: calibrating activations (${requested}, ${batches.length} batches)`);
  const stats = await collectActivationStats(fp32, batches, { intraOpThreads: 1 });
  const choice = await chooseCalibration(opts, tier, fp32, stats, requested);
  const ranges = choice.ranges;
  let qat: TierArtifacts['qat'];
  if (loaded !== null) {
    // The QAT model was trained against its own ranges; calibration only fills any it lacks.
    const learnt = Object.entries(qatOnnxRanges(arch, weights)).filter(([t]) => t in ranges.tensors);
    for (const [t, r] of learnt) ranges.tensors[t] = r;
    const total = Object.keys(ranges.tensors).length;
    qat = {
      weights: name,
      from: meta.config.init,
      qatRanges: learnt.length,
      calibratedRanges: total - learnt.length,
    };
    opts.progress.log(
      `${tier}: ${name}, activation ranges from QAT for ${learnt.length} of ${total} tensors`,
    );
  }
  const files: TierArtifacts['files'] = [];
  let inputQuant: ModelCard['input']['quant'];
  for (const flavour of flavours) {
    const q = quantizeQdq(fp32, ranges, { flavour });
    if (flavour === 'qdq-cpu') inputQuant = q.inputQuant;
    const suffix = flavour === 'qdq-cpu' ? 'int8' : 'int8-trt';
    files.push({ form: flavour, bytes: q.model, file: `${tier}-${suffix}.onnx` });
  }
  return {
    tier,
    name,
    files,
    fp32,
    params: countParams(arch),
    arch,
    meta,
    inputQuant,
    calibration: choice.record,
    qat,
  };
}

async function buildTeacher(opts: FinalizeOptions): Promise<TierArtifacts> {
  if (opts.teacherOnnx !== undefined) {
    const fp32 = new Uint8Array(await readFile(opts.teacherOnnx));
    const params = countOnnxParams(fp32, opts.teacherOnnx);
    return {
      tier: 'cloud',
      name: 'teacher',
      files: [{ form: 'fp32', bytes: fp32, file: 'teacher.onnx' }],
      fp32,
      params,
      arch: { imported: opts.teacherOnnx.split('/').pop() },
      meta: null,
    };
  }
  const { weights, meta } = await opts.runs.loadWeights('teacher', 'cascade distill teacher');
  const fp32 = exportOnnx(ARCHS.teacher, weights);
  return {
    tier: 'cloud',
    name: 'teacher',
    files: [{ form: 'fp32', bytes: fp32, file: 'teacher.onnx' }],
    fp32,
    params: countParams(ARCHS.teacher),
    arch: ARCHS.teacher,
    meta,
  };
}

interface Measured {
  valLogits: Float32Array;
  testLogits: Float32Array;
  fp32Val: number;
  fp32Test: number;
}

async function measure(
  a: TierArtifacts,
  xVal: Float32Array,
  xTest: Float32Array,
  o: FinalizeOptions,
): Promise<Measured> {
  const shape: [number, number, number] = [o.splits.val.channels, o.splits.val.height, o.splits.val.width];
  const deployed = a.files[0].bytes;
  const valLogits = (await onnxLogits(deployed, xVal, o.splits.val.n, shape)).logits;
  const testLogits = (await onnxLogits(deployed, xTest, o.test.n, shape)).logits;
  const k = o.splits.val.classes.length;
  let fp32Val = top1(valLogits, o.splits.val.labels, k);
  let fp32Test = top1(testLogits, o.test.labels, k);
  if (a.files[0].form !== 'fp32') {
    fp32Val = top1((await onnxLogits(a.fp32, xVal, o.splits.val.n, shape)).logits, o.splits.val.labels, k);
    fp32Test = top1((await onnxLogits(a.fp32, xTest, o.test.n, shape)).logits, o.test.labels, k);
  }
  return { valLogits, testLogits, fp32Val, fp32Test };
}

function correctOf(p: TierPredictions, labels: Uint8Array): Uint8Array {
  return Uint8Array.from(labels, (y, i) => (p.pred[i] === y ? 1 : 0));
}

/**
 * Ranges from one statistics pass: the requested method, or with 'auto' the method whose
 * CPU-flavour INT8 model is most accurate on the validation split (ties: the earlier in
 * min-max, percentile, entropy).
 */
async function chooseCalibration(
  opts: FinalizeOptions,
  tier: string,
  fp32: Uint8Array,
  stats: ActivationStats,
  requested: CalibrationMethod | 'auto',
): Promise<{ ranges: CalibrationRanges; record: NonNullable<TierArtifacts['calibration']> }> {
  if (requested !== 'auto')
    return { ranges: rangesFromStats(stats, requested), record: { method: requested } };
  const { val } = opts.splits;
  const x = toNchw(val, FASHION_MNIST_MEAN, FASHION_MNIST_STD);
  const candidates: Partial<Record<CalibrationMethod, number>> = {};
  let best: { method: CalibrationMethod; ranges: CalibrationRanges; acc: number } | null = null;
  for (const method of ['minmax', 'percentile', 'entropy'] as const) {
    const ranges = rangesFromStats(stats, method);
    const q = quantizeQdq(fp32, ranges, { flavour: 'qdq-cpu' });
    const { logits } = await onnxLogits(q.model, x, val.n, [val.channels, val.height, val.width]);
    const acc = top1(logits, val.labels, val.classes.length);
    candidates[method] = acc;
    if (best === null || acc > best.acc) best = { method, ranges, acc };
  }
  const chosen = best!;
  opts.progress.log(
    `${tier}: INT8 validation accuracy by calibration: ${Object.entries(candidates)
      .map(([m, a]) => `${m} ${(a ?? 0).toFixed(4)}`)
      .join(', ')}; using ${chosen.method}`,
  );
  return { ranges: chosen.ranges, record: { method: chosen.method, candidates } };
}

/** Runs the whole finalize step and returns the cards it wrote. */
export async function finalize(opts: FinalizeOptions): Promise<Record<Tier, ModelCard>> {
  const out = opts.out ?? 'models';
  const { splits, test, progress } = opts;
  const k = splits.val.classes.length;
  const teacher = await buildTeacher(opts);
  const gateway = await buildStudent(opts, 'gateway', ['qdq-cpu', 'qdq-trt']);
  const device = await buildStudent(opts, 'device', ['qdq-cpu']);
  const tiers: Record<Tier, TierArtifacts> = { device, gateway, cloud: teacher };

  const xVal = toNchw(splits.val, FASHION_MNIST_MEAN, FASHION_MNIST_STD);
  const xTest = toNchw(test, FASHION_MNIST_MEAN, FASHION_MNIST_STD);
  const measured = {} as Record<Tier, Measured>;
  const temps = {} as Record<Tier, number>;
  const valPred = {} as Record<Tier, TierPredictions>;
  const eces = {} as Record<Tier, { before: number; after: number }>;
  for (const tier of ['device', 'gateway', 'cloud'] as const) {
    progress.log(`${tier}: measuring on ${splits.val.n} validation and ${test.n} test images`);
    const m = await measure(tiers[tier], xVal, xTest, opts);
    measured[tier] = m;
    const T = fitTemperature(m.valLogits, splits.val.labels, k);
    temps[tier] = T;
    const probs = softmaxT(m.valLogits, k, T);
    valPred[tier] = predictions(probs, k);
    // Measured on the test split: the temperature was fitted on validation, so validation ECE
    // after scaling would flatter it.
    eces[tier] = {
      before: ece(softmaxT(m.testLogits, k, 1), test.labels, k),
      after: ece(softmaxT(m.testLogits, k, T), test.labels, k),
    };
  }
  for (const tier of ['device', 'gateway'] as const) {
    const int8Val = top1(measured[tier].valLogits, splits.val.labels, k);
    const loss = measured[tier].fp32Val - int8Val;
    progress.log(
      `${tier}: INT8 validation accuracy ${int8Val.toFixed(4)} vs fp32 ${measured[tier].fp32Val.toFixed(4)} ` +
        `(PTQ loss ${(loss * 100).toFixed(2)} pp${tiers[tier].qat ? ', QAT weights' : ''})`,
    );
    if (loss > PTQ_LOSS_LIMIT && !tiers[tier].qat) {
      progress.log(
        `${tier}: INT8 loses more than ${PTQ_LOSS_LIMIT * 100} pp; recommended: ` +
          `\`cascade distill qat --arch ${tier}\` then \`cascade distill finalize --qat\``,
      );
    }
  }

  const choice = chooseThresholds(valPred, splits.val.labels, { epsilon: opts.epsilon ?? 0.003 });
  progress.log(
    `thresholds: device ${choice.thresholds.device.toFixed(4)}, gateway ${choice.thresholds.gateway.toFixed(4)} ` +
      `(validation: cascade ${choice.accuracy.toFixed(4)} vs teacher ${choice.teacherAccuracy.toFixed(4)}, ` +
      `device ${choice.resolved.device.toFixed(3)} / gateway ${choice.resolved.gateway.toFixed(3)} / cloud ${choice.resolved.cloud.toFixed(3)}` +
      `${choice.feasible ? '' : ', constraint NOT met'})`,
  );
  const correct = {
    device: correctOf(valPred.device, splits.val.labels),
    gateway: correctOf(valPred.gateway, splits.val.labels),
    cloud: correctOf(valPred.cloud, splits.val.labels),
  };
  const tables: Record<Tier, ReliabilityBin[]> = {
    device: reliability(valPred.device.conf, correct.device, 10, {
      gateway: correct.gateway,
      cloud: correct.cloud,
    }),
    gateway: reliability(valPred.gateway.conf, correct.gateway, 10, { cloud: correct.cloud }),
    cloud: reliability(valPred.cloud.conf, correct.cloud, 10),
  };
  const accept: Record<Tier, number> = {
    device: choice.thresholds.device,
    gateway: choice.thresholds.gateway,
    cloud: 0,
  };

  const kdComparison = await compareKd(opts, xTest);
  const version = opts.version ?? new Date().toISOString().slice(0, 10);
  const cards = {} as Record<Tier, ModelCard>;
  const registry = [];
  for (const tier of ['device', 'gateway', 'cloud'] as const) {
    const a = tiers[tier];
    const m = measured[tier];
    const dir = join(out, tier);
    await mkdir(dir, { recursive: true });
    const files: ArtifactFile[] = [];
    for (const f of a.files) {
      await writeFile(join(dir, f.file), f.bytes);
      files.push({ file: f.file, bytes: f.bytes.length, sha256: sha256(f.bytes), form: f.form });
    }
    const card: ModelCard = {
      schemaVersion: 1,
      name: a.name,
      tier,
      version,
      arch: a.arch,
      params: a.params,
      files,
      input: {
        name: 'input',
        layout: 'NCHW',
        height: splits.val.height,
        width: splits.val.width,
        colour: splits.val.channels === 1 ? 'gray' : 'rgb',
        mean: FASHION_MNIST_MEAN,
        std: FASHION_MNIST_STD,
        ...(a.inputQuant ? { quant: a.inputQuant } : {}),
      },
      output: { name: 'logits', classes: k },
      labels: splits.val.classes,
      temperature: temps[tier],
      metrics: {
        valAccuracy: top1(m.valLogits, splits.val.labels, k),
        testAccuracy: top1(m.testLogits, test.labels, k),
        fp32ValAccuracy: m.fp32Val,
        fp32TestAccuracy: m.fp32Test,
        eceBefore: eces[tier].before,
        eceAfter: eces[tier].after,
        testSet: `${test.name} (${test.n} images)`,
      },
      reliability: tables[tier],
      thresholds: { accept: accept[tier] },
      training: {
        ...(a.meta ? { ...a.meta } : { imported: true }),
        ...(tier !== 'cloud' && kdComparison[tier] ? { kdComparison: kdComparison[tier] } : {}),
        ...(a.qat ? { qat: a.qat } : {}),
        calibration: {
          ...(a.calibration ?? { method: opts.calibration?.method ?? 'auto' }),
          samples: opts.calibration?.samples ?? 2048,
        },
        thresholdChoice: {
          epsilon: opts.epsilon ?? 0.003,
          feasible: choice.feasible,
          valCascadeAccuracy: choice.accuracy,
          valTeacherAccuracy: choice.teacherAccuracy,
          valResolved: choice.resolved,
        },
      },
      dataHash: splits.hash,
      createdAt: new Date().toISOString(),
    };
    await writeFile(join(dir, 'card.json'), `${JSON.stringify(card, null, 2)}\n`);
    cards[tier] = card;
    registry.push({ name: a.name, tier, card: join(dir, 'card.json') });
    progress.log(
      `${tier}: ${files.map((f) => `${f.file} ${f.bytes} B`).join(', ')}; test accuracy ${card.metrics.testAccuracy?.toFixed(4)} ` +
        `(fp32 ${m.fp32Test.toFixed(4)}), T ${temps[tier].toFixed(3)}, ECE ${eces[tier].before.toFixed(4)} → ${eces[tier].after.toFixed(4)}`,
    );
  }
  await writeRegistry(registry, join(out, 'registry.json'));
  progress.log(`wrote ${relative('.', join(out, 'registry.json'))}`);
  return cards;
}

/** Test accuracy (fp32) of each student trained with and without distillation, when both exist. */
async function compareKd(
  opts: FinalizeOptions,
  xTest: Float32Array,
): Promise<Partial<Record<'device' | 'gateway', Record<string, number>>>> {
  const result: Partial<Record<'device' | 'gateway', Record<string, number>>> = {};
  const shape: [number, number, number] = [opts.test.channels, opts.test.height, opts.test.width];
  const k = opts.test.classes.length;
  for (const tier of ['device', 'gateway'] as const) {
    const accs: Record<string, number> = {};
    for (const variant of ['kd', 'nokd'] as const) {
      try {
        const { weights, meta } = await opts.runs.loadWeights(`${tier}-${variant}`, '');
        const logits = (await onnxLogits(exportOnnx(ARCHS[tier], weights), xTest, opts.test.n, shape)).logits;
        accs[`${variant}TestAccuracy`] = top1(logits, opts.test.labels, k);
        accs[`${variant}ValAccuracy`] = meta.bestValAccuracy;
      } catch {
        // The baseline is optional; without it there is no comparison to report.
      }
    }
    if (accs.kdTestAccuracy !== undefined && accs.nokdTestAccuracy !== undefined) {
      accs.gain = accs.kdTestAccuracy - accs.nokdTestAccuracy;
      result[tier] = accs;
      opts.progress.log(
        `${tier}: KD ${accs.kdTestAccuracy.toFixed(4)} vs no KD ${accs.nokdTestAccuracy.toFixed(4)} (fp32 test accuracy, gain ${(accs.gain * 100).toFixed(2)} pp)`,
      );
    }
  }
  return result;
}
