/**
 * Confidence calibration: temperature-scaled softmax, temperature fitting, expected calibration
 * error and reliability tables. Pure math with no I/O: the device and the gateway call
 * {@link softmaxT} on every frame, the distillation pipeline calls the rest once per model to
 * fill the model card (models/card.ts).
 *
 * Layout convention: a batch of `n` rows of `classes` values is one flat Float32Array, row-major.
 * Labels and predicted classes are Uint8Array, so at most 256 classes.
 */
import type { ReliabilityBin } from '../models/card.ts';

/** Search interval of {@link fitTemperature}. */
export const TEMPERATURE_MIN = 0.05;
export const TEMPERATURE_MAX = 20;

function rowsOf(values: ArrayLike<number>, classes: number, what: string): number {
  if (!Number.isInteger(classes) || classes < 1) throw new RangeError(`classes must be a positive integer`);
  if (values.length % classes !== 0) {
    throw new RangeError(`${what}: length ${values.length} is not a multiple of ${classes} classes`);
  }
  return values.length / classes;
}

function checkLabels(labels: ArrayLike<number>, rows: number): void {
  if (labels.length !== rows) throw new RangeError(`labels: ${labels.length} labels for ${rows} rows`);
}

/**
 * Row-wise softmax of `logits / T`, numerically stable (the row maximum is subtracted first, so
 * logits of any magnitude give finite probabilities).
 * @param logits n × classes, row-major.
 * @param T temperature (> 0); 1 is the plain softmax.
 * @returns a new n × classes array whose rows sum to 1.
 * @throws {RangeError} if T is not positive or the length is not a multiple of `classes`.
 */
export function softmaxT(logits: Float32Array, classes: number, T: number): Float32Array {
  if (!(T > 0)) throw new RangeError(`temperature must be > 0, received ${T}`);
  const rows = rowsOf(logits, classes, 'logits');
  const out = new Float32Array(logits.length);
  const inv = 1 / T;
  for (let r = 0; r < rows; r++) {
    const o = r * classes;
    let max = Number.NEGATIVE_INFINITY;
    for (let k = 0; k < classes; k++) if (logits[o + k] > max) max = logits[o + k];
    let sum = 0;
    for (let k = 0; k < classes; k++) {
      // Computed in float64 and stored once, so the row sums to 1 within float32 rounding.
      const e = Math.exp((logits[o + k] - max) * inv);
      out[o + k] = e;
      sum += e;
    }
    for (let k = 0; k < classes; k++) out[o + k] /= sum;
  }
  return out;
}

/**
 * Mean negative log-likelihood of the labels under softmax(logits / T).
 * @throws {RangeError} on shape mismatch or a non-positive T.
 */
export function nll(logits: Float32Array, labels: Uint8Array, classes: number, T: number): number {
  if (!(T > 0)) throw new RangeError(`temperature must be > 0, received ${T}`);
  const rows = rowsOf(logits, classes, 'logits');
  checkLabels(labels, rows);
  if (rows === 0) return 0;
  const inv = 1 / T;
  let total = 0;
  for (let r = 0; r < rows; r++) {
    const o = r * classes;
    let max = Number.NEGATIVE_INFINITY;
    for (let k = 0; k < classes; k++) if (logits[o + k] > max) max = logits[o + k];
    let sum = 0;
    for (let k = 0; k < classes; k++) sum += Math.exp((logits[o + k] - max) * inv);
    // -log p_y = log Σ exp((z_k - max)/T) - (z_y - max)/T
    total += Math.log(sum) - (logits[o + labels[r]] - max) * inv;
  }
  return total / rows;
}

/**
 * Fits the temperature T that minimises the validation NLL of softmax(logits / T) (Guo et al.,
 * 2017). Golden-section search over log T on [{@link TEMPERATURE_MIN}, {@link TEMPERATURE_MAX}]:
 * the NLL is convex in 1/T, hence unimodal in log T, so the search finds the global minimum
 * (clamped to the interval's ends).
 * @param logits n × classes validation logits, row-major.
 * @param labels n true classes.
 * @returns the fitted temperature; 1 for an empty set.
 * @throws {RangeError} on shape mismatch.
 */
export function fitTemperature(logits: Float32Array, labels: Uint8Array, classes: number): number {
  const rows = rowsOf(logits, classes, 'logits');
  checkLabels(labels, rows);
  if (rows === 0) return 1;
  const f = (u: number) => nll(logits, labels, classes, Math.exp(u));
  let a = Math.log(TEMPERATURE_MIN);
  let b = Math.log(TEMPERATURE_MAX);
  const g = (Math.sqrt(5) - 1) / 2;
  let c = b - g * (b - a);
  let d = a + g * (b - a);
  let fc = f(c);
  let fd = f(d);
  // 1e-5 in log T is a relative precision of 0.001 % in T: far below what the NLL can resolve.
  while (b - a > 1e-5) {
    if (fc <= fd) {
      b = d;
      d = c;
      fd = fc;
      c = b - g * (b - a);
      fc = f(c);
    } else {
      a = c;
      c = d;
      fc = fd;
      d = a + g * (b - a);
      fd = f(d);
    }
  }
  // The interval's ends are candidates too: the minimum may lie on the boundary.
  const u = (a + b) / 2;
  let best = u;
  let fBest = f(u);
  for (const end of [Math.log(TEMPERATURE_MIN), Math.log(TEMPERATURE_MAX)]) {
    const fe = f(end);
    if (fe < fBest) {
      best = end;
      fBest = fe;
    }
  }
  return Math.exp(best);
}

/**
 * Index of the largest value in `values[offset, offset + length)`, relative to `offset`; the
 * first one on ties. Returns -1 for an empty range.
 */
export function argmax(values: ArrayLike<number>, offset = 0, length = values.length - offset): number {
  let best = -1;
  let max = Number.NEGATIVE_INFINITY;
  for (let k = 0; k < length; k++) {
    const v = values[offset + k];
    if (best < 0 || v > max) {
      best = k;
      max = v;
    }
  }
  return best;
}

/** One entry of a top-k list. */
export interface Ranked {
  index: number;
  value: number;
}

/**
 * The k largest values of `values[offset, offset + length)`, largest first (indices relative to
 * `offset`; lower index first on ties). k is clamped to the range's length.
 */
export function topK(
  values: ArrayLike<number>,
  k: number,
  offset = 0,
  length = values.length - offset,
): Ranked[] {
  const m = Math.max(0, Math.min(k, length));
  const out: Ranked[] = [];
  // Insertion into a sorted list of at most k: k is small (top-1..5) so this beats a full sort.
  for (let i = 0; i < length; i++) {
    const v = values[offset + i];
    let j: number;
    if (out.length < m) {
      out.push({ index: i, value: v });
      j = out.length - 1;
    } else if (m === 0 || !(v > out[m - 1].value)) {
      continue; // not better than the current k-th (ties keep the lower index)
    } else {
      j = m - 1;
    }
    while (j > 0 && out[j - 1].value < v) {
      out[j] = out[j - 1];
      j--;
    }
    out[j] = { index: i, value: v };
  }
  return out;
}

/** Per-row predicted class and its probability. */
export interface Predictions {
  pred: Uint8Array;
  conf: Float32Array;
}

/**
 * Top-1 class and its probability for every row of a probability matrix.
 * @throws {RangeError} if the length is not a multiple of `classes` or classes > 256.
 */
export function predictions(probs: Float32Array, classes: number): Predictions {
  if (classes > 256) throw new RangeError(`at most 256 classes are supported, received ${classes}`);
  const rows = rowsOf(probs, classes, 'probs');
  const pred = new Uint8Array(rows);
  const conf = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    const k = argmax(probs, r * classes, classes);
    pred[r] = k;
    conf[r] = probs[r * classes + k];
  }
  return { pred, conf };
}

/** Equal-width bin of a confidence in [0, 1]; 1 (and anything above) falls in the last bin. */
function binOf(conf: number, bins: number): number {
  const b = Math.floor(conf * bins);
  return b < 0 ? 0 : b >= bins ? bins - 1 : b;
}

/**
 * Top-label expected calibration error with equal-width bins over [0, 1]:
 * Σ_b (n_b / n) · |accuracy_b − mean confidence_b|.
 * @param probs n × classes probabilities (already temperature-scaled if that is what is measured).
 * @param bins number of bins; default 15.
 * @returns the ECE in [0, 1]; 0 for an empty set.
 * @throws {RangeError} on shape mismatch or bins < 1.
 */
export function ece(probs: Float32Array, labels: Uint8Array, classes: number, bins = 15): number {
  if (!Number.isInteger(bins) || bins < 1) throw new RangeError(`bins must be a positive integer`);
  const { pred, conf } = predictions(probs, classes);
  checkLabels(labels, pred.length);
  const n = pred.length;
  if (n === 0) return 0;
  const count = new Float64Array(bins);
  const hits = new Float64Array(bins);
  const confSum = new Float64Array(bins);
  for (let i = 0; i < n; i++) {
    const b = binOf(conf[i], bins);
    count[b]++;
    confSum[b] += conf[i];
    if (pred[i] === labels[i]) hits[b]++;
  }
  let total = 0;
  for (let b = 0; b < bins; b++) if (count[b] > 0) total += Math.abs(hits[b] - confSum[b]);
  return total / n;
}

/**
 * Reliability table: for each equal-width confidence bin, how many samples fall in it, how often
 * this tier is right there and, for lower tiers, how often each next tier is right on the same
 * samples. The policy engine reads the `next` columns to judge whether offloading a frame of a
 * given confidence is likely to pay off.
 * @param confidences per-sample calibrated top-1 confidence of this tier.
 * @param correct per-sample 1 when this tier's prediction is right.
 * @param bins number of bins; default 10.
 * @param next per next tier (e.g. `{ gateway, cloud }`), per-sample 1 when that tier is right.
 * @returns `bins` entries covering [0, 1] in order; empty bins have null statistics.
 * @throws {RangeError} if the arrays differ in length or bins < 1.
 */
export function reliability(
  confidences: Float32Array,
  correct: Uint8Array,
  bins = 10,
  next?: Record<string, Uint8Array>,
): ReliabilityBin[] {
  if (!Number.isInteger(bins) || bins < 1) throw new RangeError(`bins must be a positive integer`);
  const n = confidences.length;
  if (correct.length !== n) throw new RangeError(`correct: ${correct.length} entries for ${n} confidences`);
  const names = next ? Object.keys(next) : [];
  const columns = names.map((name) => next?.[name] ?? new Uint8Array(0));
  columns.forEach((col, j) => {
    if (col.length !== n)
      throw new RangeError(`next.${names[j]}: ${col.length} entries for ${n} confidences`);
  });
  const count = new Float64Array(bins);
  const hits = new Float64Array(bins);
  const confSum = new Float64Array(bins);
  const nextHits = names.map(() => new Float64Array(bins));
  for (let i = 0; i < n; i++) {
    const b = binOf(confidences[i], bins);
    count[b]++;
    confSum[b] += confidences[i];
    if (correct[i]) hits[b]++;
    for (let j = 0; j < columns.length; j++) if (columns[j][i]) nextHits[j][b]++;
  }
  const out: ReliabilityBin[] = [];
  for (let b = 0; b < bins; b++) {
    const c = count[b];
    const bin: ReliabilityBin = {
      lo: b / bins,
      hi: (b + 1) / bins,
      n: c,
      accuracy: c > 0 ? hits[b] / c : null,
      confidence: c > 0 ? confSum[b] / c : null,
    };
    if (next) {
      const col: Record<string, number | null> = {};
      names.forEach((name, j) => {
        col[name] = c > 0 ? nextHits[j][b] / c : null;
      });
      bin.next = col;
    }
    out.push(bin);
  }
  return out;
}
