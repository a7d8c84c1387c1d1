/**
 * Calibration: runs the fp32 model in onnxruntime-node on calibration batches with every
 * activation that will be quantized exposed as an extra graph output, collects per-tensor
 * statistics (min/max and magnitude histograms) in one pass, and turns them into ranges by one
 * of three methods. The statistics are kept so one run can yield all three.
 */
import * as ort from 'onnxruntime-node';
import { CascadeError, ErrorCodes } from '../../cascade/errors.ts';
import { parseOnnx, serializeGraph } from './graph.ts';
import { entropyThreshold, percentileThreshold, TensorStats } from './histogram.ts';
import { planQdq } from './quantize.ts';

/**
 * - 'minmax': the observed extremes.
 * - 'percentile': clips the given percentile of values on each side (fraction of all values).
 * - 'entropy': TensorRT's KL-divergence threshold over a 2048-bin histogram, per sign.
 */
export type CalibrationMethod = 'minmax' | 'percentile' | 'entropy';

/** A real-valued activation range. */
export interface TensorRange {
  min: number;
  max: number;
}

/** Calibrated ranges of a model's activations; plain JSON, so it can be saved beside the model. */
export interface CalibrationRanges {
  method: CalibrationMethod;
  /** The percentile used when method is 'percentile'. */
  percentile?: number;
  /** Number of calibration samples (images) seen. */
  samples: number;
  /** Range by tensor name, for every tensor the quantizer needs. */
  tensors: Record<string, TensorRange>;
}

/** Statistics gathered by {@link collectActivationStats}. */
export interface ActivationStats {
  samples: number;
  /** The graph output; its range is always min/max (clipping logits would change answers). */
  output: string;
  tensors: Map<string, TensorStats>;
}

/** Options of {@link collectActivationStats} and {@link calibrateRanges}. */
export interface CalibrateOptions {
  /** Default 'percentile'. */
  method?: CalibrationMethod;
  /** Percentile for method 'percentile', in (50, 100]; default 99.99. */
  percentile?: number;
  /** Called after each batch with batches done and the total (a CLI draws a bar). */
  onProgress?: (done: number, total: number) => void;
  /** ONNX Runtime intra-op threads; default: ONNX Runtime's choice (all cores). */
  intraOpThreads?: number;
}

/** Default percentile of method 'percentile'. */
export const DEFAULT_PERCENTILE = 99.99;

/**
 * Runs the model over the batches and collects statistics of every tensor the quantizer needs.
 * @param fp32Model an fp32 ONNX classifier that `parseOnnx` accepts.
 * @param batches normalised float32 NCHW data, each a whole number of samples (any batch size).
 * @throws {CascadeError} MODEL_ERR_INVALID / MODEL_ERR_UNSUPPORTED from parsing the model, or when
 *   its input has dynamic dimensions besides the batch.
 * @throws {RangeError} when there are no batches or a batch is not a whole number of samples.
 */
export async function collectActivationStats(
  fp32Model: Uint8Array,
  batches: readonly Float32Array[],
  opts: Pick<CalibrateOptions, 'onProgress' | 'intraOpThreads'> = {},
): Promise<ActivationStats> {
  const g = parseOnnx(fp32Model);
  const plan = planQdq(g);
  const dims = g.input.dims.slice(1);
  if (dims.some((d) => typeof d !== 'number')) {
    throw new CascadeError(
      ErrorCodes.MODEL_ERR_UNSUPPORTED,
      `input ${g.input.name} has dynamic dimensions [${g.input.dims.join(', ')}]; only the batch may be dynamic`,
    );
  }
  const shape = dims as number[];
  const per = shape.reduce((a, b) => a * b, 1);
  if (batches.length === 0) throw new RangeError('calibration needs at least one batch');
  for (const [i, b] of batches.entries()) {
    if (b.length === 0 || b.length % per !== 0) {
      throw new RangeError(
        `calibration batch ${i}: ${b.length} values is not a whole number of ${per}-value samples`,
      );
    }
  }
  const outputs = plan.calibrated.filter((t) => t !== g.input.name);
  const session = await ort.InferenceSession.create(serializeGraph(g, { extraOutputs: outputs }), {
    ...(opts.intraOpThreads ? { intraOpNumThreads: opts.intraOpThreads } : {}),
  });
  const tensors = new Map(plan.calibrated.map((t) => [t, new TensorStats()]));
  let samples = 0;
  try {
    for (const [i, b] of batches.entries()) {
      const n = b.length / per;
      const result = await session.run({ [g.input.name]: new ort.Tensor('float32', b, [n, ...shape]) });
      tensors.get(g.input.name)!.add(b);
      for (const t of outputs) {
        const data = result[t].data as Float32Array;
        tensors.get(t)!.add(data);
        result[t].dispose();
      }
      samples += n;
      opts.onProgress?.(i + 1, batches.length);
    }
  } finally {
    await session.release();
  }
  return { samples, output: g.output.name, tensors };
}

/**
 * Turns statistics into ranges by one method. Ranges of the graph output are always min/max.
 * Percentile and entropy ranges lie within the min/max ranges.
 * @param method default 'percentile'.
 * @param percentile default 99.99; the fraction (100 − p)% of all values may fall outside on each side.
 * @throws {RangeError} for a percentile outside (50, 100].
 * @throws {CascadeError} MODEL_ERR_INVALID when a tensor saw non-finite values (a broken model or input).
 */
export function rangesFromStats(
  stats: ActivationStats,
  method: CalibrationMethod = 'percentile',
  percentile = DEFAULT_PERCENTILE,
): CalibrationRanges {
  if (!(percentile > 50 && percentile <= 100))
    throw new RangeError(`percentile ${percentile} is not in (50, 100]`);
  const tensors: Record<string, TensorRange> = {};
  for (const [name, s] of stats.tensors) {
    if (!Number.isFinite(s.min) || !Number.isFinite(s.max)) {
      throw new CascadeError(
        ErrorCodes.MODEL_ERR_INVALID,
        `tensor ${name} produced non-finite values during calibration (min ${s.min}, max ${s.max})`,
      );
    }
    let { min, max } = s;
    if (name !== stats.output && method !== 'minmax') {
      const hi =
        method === 'entropy'
          ? entropyThreshold(s.pos)
          : percentileThreshold(s.pos, 1 - percentile / 100, s.count);
      const lo =
        method === 'entropy'
          ? entropyThreshold(s.neg)
          : percentileThreshold(s.neg, 1 - percentile / 100, s.count);
      // Thresholds are magnitudes per sign; a side with no values keeps its observed extreme.
      if (s.pos.count > 0 && max > 0) max = Math.max(Math.min(hi, max), 0);
      if (s.neg.count > 0 && min < 0) min = Math.min(Math.max(-lo, min), 0);
      if (min > max) [min, max] = [max, min];
    }
    tensors[name] = { min, max };
  }
  return { method, ...(method === 'percentile' ? { percentile } : {}), samples: stats.samples, tensors };
}

/**
 * Calibrates activation ranges of an fp32 model: {@link collectActivationStats} then
 * {@link rangesFromStats}.
 * @param opts.method default 'percentile'; opts.percentile default 99.99; opts.onProgress(done, total).
 * @throws {CascadeError} / {RangeError} as the two steps do.
 */
export async function calibrateRanges(
  fp32Model: Uint8Array,
  batches: readonly Float32Array[],
  opts: CalibrateOptions = {},
): Promise<CalibrationRanges> {
  const stats = await collectActivationStats(fp32Model, batches, opts);
  return rangesFromStats(stats, opts.method, opts.percentile);
}
