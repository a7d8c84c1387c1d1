/**
 * Evaluation of the three registered tiers and of the cascade they form, on a labelled dataset,
 * through the same runtime the deployables use (ONNX Runtime via models/runtime.ts): what is
 * measured is what ships. The cascade uses the accept thresholds written in the device and
 * gateway cards.
 */
import { ece, softmaxT } from '../cascade/calibration.ts';
import { runCascade, type TierPredictions } from '../cascade/cascade-sim.ts';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import type { ModelCard, Tier } from '../models/card.ts';
import type { ImageDataset } from '../models/data/dataset.ts';
import { loadDataset } from '../models/data/load.ts';
import { loadRegistry, modelForTier } from '../models/registry.ts';
import { OnnxClassifier } from '../models/runtime.ts';

/** Bins of the ECE reported here, the usual choice in the calibration literature. */
const ECE_BINS = 15;

/** One tier's results. */
export interface TierEval {
  /** Top-1 accuracy in [0, 1]. */
  accuracy: number;
  /** Parameter count, from the card. */
  params: number;
  /** Size of the evaluated model file in bytes, from the card. */
  bytes: number;
  /** Top-label ECE (15 bins) of the card-temperature-scaled probabilities, in [0, 1]. */
  ece: number;
}

/** Result of {@link evaluate}. `cloud` is the teacher. */
export interface EvalReport {
  dataset: string;
  n: number;
  tiers: { device: TierEval; gateway: TierEval; cloud: TierEval };
  cascade: {
    /** Accuracy of the cascade's final answers, in [0, 1]. */
    accuracy: number;
    /** Fraction of samples answered by each tier; the three sum to 1. */
    resolved: { device: number; gateway: number; cloud: number };
  };
}

/** Options of {@link evaluate}. */
export interface EvalOptions {
  /** Registry file; default models/registry.json. */
  registry?: string;
  /** Labelled images; default the Fashion-MNIST test split from its default folder. */
  data?: ImageDataset;
  /** ONNX Runtime intra-op threads per model; default: ONNX Runtime's choice. */
  intraOpThreads?: number;
}

const TIERS: readonly Tier[] = ['device', 'gateway', 'cloud'];

/** Refuses a dataset the model cannot read or whose labels mean other classes. */
function checkFit(card: ModelCard, cardPath: string, data: ImageDataset): void {
  const fault = (what: string) =>
    new CascadeError(
      ErrorCodes.DATA_ERR_MISMATCH,
      `dataset ${data.name} does not fit model ${cardPath}: ${what}`,
    );
  const { height, width } = card.input;
  if (data.height !== height || data.width !== width) {
    throw fault(`images are ${data.height}×${data.width}, the model takes ${height}×${width}`);
  }
  if (data.channels !== 1 && data.channels !== 3)
    throw fault(`images have ${data.channels} channels (1 or 3)`);
  if (data.classes.length !== card.output.classes) {
    throw fault(`${data.classes.length} classes, the model has ${card.output.classes}`);
  }
  if (card.labels.length === data.classes.length) {
    const k = card.labels.findIndex((l, i) => l !== data.classes[i]);
    if (k >= 0) throw fault(`class ${k} is "${data.classes[k]}", the model's is "${card.labels[k]}"`);
  }
}

/** One tier's metrics and its per-sample predictions for the cascade. */
interface TierRun {
  metrics: TierEval;
  preds: TierPredictions;
  accept: number;
}

async function runTier(cardPath: string, data: ImageDataset, intraOpThreads?: number): Promise<TierRun> {
  const model = await OnnxClassifier.load(cardPath, { intraOpThreads });
  try {
    checkFit(model.card, cardPath, data);
    const out = await model.classify(data.images, data.n);
    let correct = 0;
    for (let i = 0; i < data.n; i++) if (out.pred[i] === data.labels[i]) correct++;
    const probs = softmaxT(out.logits, model.classes, model.card.temperature);
    return {
      metrics: {
        accuracy: correct / data.n,
        params: model.card.params,
        bytes: model.artifact.bytes,
        ece: ece(probs, data.labels, model.classes, ECE_BINS),
      },
      preds: { pred: out.pred, conf: out.conf },
      accept: model.card.thresholds.accept,
    };
  } finally {
    await model.dispose();
  }
}

/**
 * Runs every tier of the registry on a dataset, then the cascade with the thresholds from the
 * device and gateway cards (`thresholds.accept`).
 * @throws {CascadeError} MODEL_ERR_INVALID if the registry lacks a tier or a model fails to load
 *   (see OnnxClassifier.load); DATA_ERR_MISMATCH if the dataset's size or classes do not fit a
 *   model; DATA_ERR_* from the default dataset loader; DATA_ERR_EMPTY for an empty dataset.
 */
export async function evaluate(opts: EvalOptions = {}): Promise<EvalReport> {
  const models = await loadRegistry(opts.registry);
  const where = opts.registry ?? 'models/registry.json';
  const [d, g, c] = TIERS.map((t) => modelForTier(models, t, where));
  const data = opts.data ?? (await loadDataset({ split: 'test' }));
  if (data.n === 0) throw new CascadeError(ErrorCodes.DATA_ERR_EMPTY, `dataset ${data.name} has no images`);
  // One model at a time: only one session's memory is held, which matters on small machines.
  const device = await runTier(d.card, data, opts.intraOpThreads);
  const gateway = await runTier(g.card, data, opts.intraOpThreads);
  const cloud = await runTier(c.card, data, opts.intraOpThreads);
  const cascade = runCascade(
    { device: device.preds, gateway: gateway.preds, cloud: cloud.preds },
    data.labels,
    {
      device: device.accept,
      gateway: gateway.accept,
    },
  );
  return {
    dataset: data.name,
    n: data.n,
    tiers: { device: device.metrics, gateway: gateway.metrics, cloud: cloud.metrics },
    cascade,
  };
}

function pct(x: number): string {
  return `${(100 * x).toFixed(2)}%`;
}

function size(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(2)} MiB`;
}

/**
 * Renders a report as a plain-text table for terminals and logs, e.g.
 * ```
 * dataset fashion-mnist/test (n = 10000)
 * tier     accuracy  ECE     params   size
 * device   88.10%    0.0123  44,000   52.1 KiB
 * …
 * cascade  91.20%    resolved: device 70.00%, gateway 25.00%, cloud 5.00%
 * ```
 */
export function formatEvalTable(report: EvalReport): string {
  const rows = [['tier', 'accuracy', 'ECE', 'params', 'size']];
  for (const t of TIERS) {
    const r = report.tiers[t];
    rows.push([t, pct(r.accuracy), r.ece.toFixed(4), r.params.toLocaleString('en-US'), size(r.bytes)]);
  }
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  const line = (r: string[]) =>
    r
      .map((v, c) => v.padEnd(widths[c]))
      .join('  ')
      .trimEnd();
  const { resolved } = report.cascade;
  return [
    `dataset ${report.dataset} (n = ${report.n})`,
    ...rows.map(line),
    `${'cascade'.padEnd(widths[0])}  ${pct(report.cascade.accuracy).padEnd(widths[1])}  resolved: device ${pct(resolved.device)}, gateway ${pct(resolved.gateway)}, cloud ${pct(resolved.cloud)}`,
  ].join('\n');
}
