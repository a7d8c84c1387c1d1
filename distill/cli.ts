/**
 * `cascade distill …`: argument parsing only; the work is in pipeline.ts and finalize.ts.
 */
import { choiceOpt, numberOpt, parse } from '../cascade/args.ts';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import { loadDataset } from '../models/data/load.ts';
import type { CalibrationMethod } from './onnx/calibrate-ranges.ts';
import { streamProgress } from './progress.ts';
import { RunDir } from './run-dir.ts';
import type { TrainingBackend } from './tf.ts';
import type { TrainConfig } from './train.ts';

const HELP = `Usage: cascade distill <step> [options]

Steps (run in this order, or all at once with \`all\`):
  teacher                     train the fp32 teacher
  student --arch A [--no-kd]  distil a student (A: device | gateway) from the teacher's cached
                              logits; --no-kd trains the same student without distillation
  finalize                    export ONNX, quantize students to INT8 (QDQ), fit temperatures,
                              reliability tables and cascade thresholds, write cards + registry;
                              prints each student's INT8 loss versus fp32 (PTQ loss)
  qat --arch A [--from NAME]  optional, when finalize reports a PTQ loss over 0.5 pp:
                              quantization-aware fine-tune of A-kd (or NAME) with the same KD
                              loss (--no-kd: without), default 2 epochs, lr 0.005, no warm-up;
                              stored as A-qat, shipped by \`finalize --qat\`
  all                         teacher, both students with and without KD, finalize
  quantize --model F.onnx     calibrate and quantize any fp32 ONNX classifier to INT8 QDQ
           [--flavours cpu,trt] [--out DIR]  (written next to the model by default)
  calibrate --model F.onnx    fit its temperature; print ECE before/after and reliability (JSON)
  requantize --card C.json    narrow the weights of the card's INT8 (qdq-cpu) model to
           [--weight-bits 7]  7 bits in place, so CPUs without VNNI compute it exactly; measure it
                              again and update the card (JSON report)
  sample                      rebuild the bundled evaluation sample (models/sample)

Data and run options:
  --data DIR          dataset folder: Fashion-MNIST IDX files or an ImageFolder (root/<class>/*.png)
                      (default: /usr/share/datasets/fashion-mnist, Debian's dataset-fashion-mnist)
  --runs DIR          working folder for checkpoints and weights (default: runs)
  --out DIR           artifact folder for finalize (default: models)
  --limit N           use only the first N training images (smoke runs)
  --backend B         tensorflow | wasm | cpu (default: tensorflow if installed, else wasm)

Training options (defaults per role; see distill/pipeline.ts):
  --epochs N  --batch N  --lr X  --seed N  --patience N  --max-steps N (per epoch)
  --alpha X  --beta X  --temperature X     distillation loss weights and temperature
  --teacher FILE.onnx                       distil from (and ship) any fp32 ONNX classifier

Finalize options:
  --calibration auto|minmax|percentile|entropy
                      activation calibration; auto (finalize's default) keeps the method whose
                      INT8 model is most accurate on validation; quantize defaults to percentile
  --calibration-samples N                   training images used to calibrate (default 2048)
  --epsilon X                               allowed cascade accuracy loss vs teacher (default 0.003)
  --qat                                     ship a student's A-qat weights (and the activation
                                            ranges learnt with them) where they exist

Ctrl-C during training saves a checkpoint; rerun the same command to resume.`;

const OPTIONS = {
  help: { type: 'boolean', short: 'h' },
  arch: { type: 'string' },
  'no-kd': { type: 'boolean' },
  from: { type: 'string' },
  qat: { type: 'boolean' },
  data: { type: 'string' },
  runs: { type: 'string' },
  out: { type: 'string' },
  limit: { type: 'string' },
  backend: { type: 'string' },
  epochs: { type: 'string' },
  batch: { type: 'string' },
  lr: { type: 'string' },
  seed: { type: 'string' },
  patience: { type: 'string' },
  'max-steps': { type: 'string' },
  alpha: { type: 'string' },
  beta: { type: 'string' },
  temperature: { type: 'string' },
  teacher: { type: 'string' },
  calibration: { type: 'string' },
  'calibration-samples': { type: 'string' },
  epsilon: { type: 'string' },
  'per-class': { type: 'string' },
  model: { type: 'string' },
  flavours: { type: 'string' },
  card: { type: 'string' },
  'weight-bits': { type: 'string' },
} as const;

/** Runs `cascade distill` with its arguments. */
export async function main(argv: string[]): Promise<void> {
  const { values: v, positionals } = parse(argv, OPTIONS, true);
  const stepName = positionals[0];
  if (v.help || stepName === undefined) {
    process.stdout.write(`${HELP}\n`);
    return;
  }
  if (positionals.length > 1)
    throw new CascadeError(ErrorCodes.CLI_ERR_ARGS, `unexpected argument "${positionals[1]}"`);
  const { kd, loadSplits, teacherLogits, trainStep } = await import('./pipeline.ts').then((m) => ({
    kd: m.KD_DEFAULTS,
    loadSplits: m.loadSplits,
    teacherLogits: m.teacherLogits,
    trainStep: m.trainStep,
  }));

  if (stepName === 'sample') {
    const { makeSample } = await import('./sample.ts');
    const r = await makeSample({
      data: v.data,
      perClass: numberOpt('--per-class', v['per-class'], { integer: true, min: 1 }),
      seed: numberOpt('--seed', v.seed, { integer: true, min: 0 }),
      out: v.out ?? 'models/sample',
    });
    process.stdout.write(`wrote ${r.n} images (${r.bytes} bytes): ${r.files.join(', ')}\n`);
    return;
  }

  const runs = new RunDir(v.runs ?? 'runs');
  const backend = choiceOpt<TrainingBackend>('--backend', v.backend, ['tensorflow', 'wasm', 'cpu']);
  const limit = numberOpt('--limit', v.limit, { integer: true, min: 20 });
  const overrides: Partial<TrainConfig> = {};
  const epochs = numberOpt('--epochs', v.epochs, { integer: true, min: 1 });
  if (epochs !== undefined) overrides.epochs = epochs;
  const batch = numberOpt('--batch', v.batch, { integer: true, min: 2 });
  if (batch !== undefined) overrides.batchSize = batch;
  const lr = numberOpt('--lr', v.lr, { min: 0 });
  if (lr !== undefined) overrides.lr = lr;
  const seed = numberOpt('--seed', v.seed, { integer: true, min: 0 });
  if (seed !== undefined) overrides.seed = seed;
  const patience = numberOpt('--patience', v.patience, { integer: true, min: 1 });
  if (patience !== undefined) overrides.patience = patience;
  const maxSteps = numberOpt('--max-steps', v['max-steps'], { integer: true, min: 1 });
  if (maxSteps !== undefined) overrides.maxStepsPerEpoch = maxSteps;
  const kdCfg = {
    alpha: numberOpt('--alpha', v.alpha, { min: 0 }) ?? kd.alpha,
    beta: numberOpt('--beta', v.beta, { min: 0 }) ?? kd.beta,
    temperature: numberOpt('--temperature', v.temperature, { min: 0.1 }) ?? kd.temperature,
  };
  const arch = choiceOpt('--arch', v.arch, ['device', 'gateway'] as const);
  // Argument errors before the dataset is read: that takes seconds, and a missing dataset would
  // otherwise be reported instead of the argument the user got wrong.
  const steps = ['teacher', 'student', 'qat', 'finalize', 'quantize', 'calibrate', 'requantize', 'all'];
  if (!steps.includes(stepName)) {
    throw new CascadeError(
      ErrorCodes.CLI_ERR_ARGS,
      `unknown step "${stepName}"; run \`cascade distill --help\``,
    );
  }
  if ((stepName === 'student' || stepName === 'qat') && arch === undefined)
    throw new CascadeError(ErrorCodes.CLI_ERR_ARGS, `${stepName}: --arch device|gateway is required`);
  if ((stepName === 'quantize' || stepName === 'calibrate') && v.model === undefined)
    throw new CascadeError(ErrorCodes.CLI_ERR_ARGS, `${stepName}: --model FILE.onnx is required`);
  if (stepName === 'requantize' && v.card === undefined)
    throw new CascadeError(ErrorCodes.CLI_ERR_ARGS, 'requantize: --card CARD.json is required');
  const weightBits = Number(choiceOpt('--weight-bits', v['weight-bits'], ['7', '8'] as const) ?? '7') as
    | 7
    | 8;
  if (stepName === 'teacher' && v.teacher !== undefined)
    throw new CascadeError(
      ErrorCodes.CLI_ERR_ARGS,
      '--teacher FILE.onnx replaces training the teacher; skip this step',
    );

  let interrupted = false;
  const onSigint = (): void => {
    if (interrupted) process.exit(130);
    interrupted = true;
    process.stderr.write('\nstopping after this step to save a checkpoint (Ctrl-C again to abort)\n');
  };
  process.on('SIGINT', onSigint);
  const shouldStop = (): boolean => interrupted;
  try {
    const splits = await loadSplits({ data: v.data, limit });
    const student = async (role: 'device' | 'gateway', withKd: boolean): Promise<void> => {
      const progress = streamProgress(`${role}-${withKd ? 'kd' : 'nokd'}`);
      const teacher = withKd ? await teacherLogits(runs, splits, progress, v.teacher) : undefined;
      await trainStep({
        role,
        runs,
        progress,
        shouldStop,
        overrides,
        backend,
        splits,
        kd: teacher ? { ...kdCfg, teacherLogits: teacher } : undefined,
      });
    };
    const teacherStep = async (): Promise<void> => {
      await trainStep({
        role: 'teacher',
        runs,
        progress: streamProgress('teacher'),
        shouldStop,
        overrides,
        backend,
        splits,
      });
    };
    const finalizeStep = async (): Promise<void> => {
      const { finalize } = await import('./finalize.ts');
      const test = await loadTestSet(v.data, limit);
      await finalize({
        runs,
        splits,
        test,
        out: v.out,
        progress: streamProgress('finalize'),
        teacherOnnx: v.teacher,
        calibration: {
          method: choiceOpt<CalibrationMethod | 'auto'>('--calibration', v.calibration, [
            'auto',
            'minmax',
            'percentile',
            'entropy',
          ]),
          samples: numberOpt('--calibration-samples', v['calibration-samples'], { integer: true, min: 1 }),
        },
        epsilon: numberOpt('--epsilon', v.epsilon, { min: 0, max: 1 }),
        qat: v.qat,
      });
    };
    switch (stepName) {
      case 'teacher':
        await teacherStep();
        return;
      case 'student':
        if (arch === undefined)
          throw new CascadeError(ErrorCodes.CLI_ERR_ARGS, 'student: --arch device|gateway is required');
        await student(arch, !v['no-kd']);
        return;
      case 'qat': {
        if (arch === undefined)
          throw new CascadeError(ErrorCodes.CLI_ERR_ARGS, 'qat: --arch device|gateway is required');
        const progress = streamProgress(`${arch}-qat`);
        const teacher = v['no-kd'] ? undefined : await teacherLogits(runs, splits, progress, v.teacher);
        const { qatStep } = await import('./pipeline.ts');
        await qatStep({
          arch,
          from: v.from,
          runs,
          progress,
          shouldStop,
          overrides,
          backend,
          splits,
          kd: teacher ? { ...kdCfg, teacherLogits: teacher } : undefined,
        });
        return;
      }
      case 'finalize':
        await finalizeStep();
        return;
      case 'quantize':
      case 'calibrate': {
        if (v.model === undefined)
          throw new CascadeError(ErrorCodes.CLI_ERR_ARGS, `${stepName}: --model FILE.onnx is required`);
        const tools = await import('./onnx-tools.ts');
        if (stepName === 'calibrate') {
          process.stdout.write(`${JSON.stringify(await tools.calibrateFile(v.model, splits), null, 2)}\n`);
          return;
        }
        const flavours = (v.flavours ?? 'cpu,trt').split(',').map((f) => {
          const form = choiceOpt('--flavours', f.trim(), ['cpu', 'trt'] as const);
          return form === 'trt' ? ('qdq-trt' as const) : ('qdq-cpu' as const);
        });
        const { dirname } = await import('node:path');
        const r = await tools.quantizeFile({
          model: v.model,
          outDir: v.out ?? dirname(v.model),
          splits,
          flavours,
          method:
            choiceOpt<CalibrationMethod>('--calibration', v.calibration, [
              'minmax',
              'percentile',
              'entropy',
            ]) ?? 'percentile',
          samples:
            numberOpt('--calibration-samples', v['calibration-samples'], { integer: true, min: 1 }) ?? 2048,
          progress: streamProgress('quantize'),
        });
        process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
        return;
      }
      case 'requantize': {
        const tools = await import('./onnx-tools.ts');
        const test = await loadTestSet(v.data, limit);
        const r = await tools.requantizeCard(
          v.card ?? '',
          weightBits,
          splits,
          test,
          streamProgress('requantize'),
        );
        process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
        return;
      }
      case 'all':
        if (v.teacher === undefined) {
          await teacherStep();
        }
        for (const role of ['device', 'gateway'] as const) {
          await student(role, true);
          await student(role, false);
        }
        await finalizeStep();
        return;
      default:
        throw new CascadeError(
          ErrorCodes.CLI_ERR_ARGS,
          `unknown step "${stepName}"; run \`cascade distill --help\``,
        );
    }
  } finally {
    process.off('SIGINT', onSigint);
  }
}

/**
 * The test split for measurements: the dataset's own test split when it has one, otherwise the
 * bundled sample (which is drawn from Fashion-MNIST's test split).
 */
async function loadTestSet(data: string | undefined, limit: number | undefined) {
  const { loadBundledSample } = await import('../models/data/load.ts');
  try {
    const test = await loadDataset({ data, split: 'test' });
    if (limit !== undefined) {
      const { subset } = await import('../models/data/dataset.ts');
      return subset(
        test,
        Array.from({ length: Math.min(limit, test.n) }, (_, i) => i),
      );
    }
    return test;
  } catch (err) {
    if (data !== undefined) throw err;
    return loadBundledSample();
  }
}
