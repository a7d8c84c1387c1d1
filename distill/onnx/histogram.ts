/**
 * Streaming activation statistics for calibration: exact min/max plus one 2048-bin histogram of
 * magnitudes per sign, and the threshold searches that turn them into ranges (percentile, and
 * TensorRT's entropy calibration: the clip threshold whose 128-level quantization loses the
 * least information, by KL divergence). Pure functions over arrays, no I/O.
 */

/** Bins per histogram, as TensorRT's entropy calibrator uses. */
export const HISTOGRAM_BINS = 2048;

/** Quantization levels per sign the entropy search assumes (int8: 128 per sign, as TensorRT). */
export const ENTROPY_LEVELS = 128;

/**
 * Histogram of values ≥ 0 over [0, width·bins). The range grows by powers of two as larger
 * values arrive; merging adjacent bin pairs keeps counts exact, so one pass over the data is
 * enough and the result does not depend on batch order beyond bin edges.
 */
export class MagnitudeHistogram {
  readonly bins = new Float64Array(HISTOGRAM_BINS);
  /** Bin width; 0 until the first non-zero value arrives. */
  width = 0;
  /** Number of values added. */
  count = 0;
  /** Largest value added. */
  max = 0;

  /** Adds magnitudes (callers pass |x|), growing the range first when needed. */
  add(values: Float32Array | Float64Array, n = values.length): void {
    let top = 0;
    for (let i = 0; i < n; i++) if (values[i] > top) top = values[i];
    if (top > 0) this.#cover(top);
    if (top > this.max) this.max = top;
    const b = this.bins;
    const last = HISTOGRAM_BINS - 1;
    const inv = this.width > 0 ? 1 / this.width : 0;
    for (let i = 0; i < n; i++) {
      const j = Math.floor(values[i] * inv);
      b[Math.min(j, last)]++;
    }
    this.count += n;
  }

  #cover(top: number): void {
    if (this.width === 0) {
      // A hair wider than top/bins, so the maximum lands inside the last bin instead of on its
      // upper edge, and bin indices stay consistent when the range later doubles.
      this.width = (top / HISTOGRAM_BINS) * (1 + 2 ** -20);
      return;
    }
    while (top >= this.width * HISTOGRAM_BINS) {
      const b = this.bins;
      for (let j = 0; j < HISTOGRAM_BINS / 2; j++) b[j] = b[2 * j] + b[2 * j + 1];
      b.fill(0, HISTOGRAM_BINS / 2);
      this.width *= 2;
    }
  }
}

/**
 * Smallest threshold t such that at most `fraction · total` values of this histogram lie above
 * it (bin upper edges, so it never clips more than asked), capped at the observed maximum.
 */
export function percentileThreshold(h: MagnitudeHistogram, fraction: number, total: number): number {
  const allowed = fraction * total;
  let above = 0;
  for (let j = HISTOGRAM_BINS - 1; j >= 0; j--) {
    if (above + h.bins[j] > allowed) return Math.min((j + 1) * h.width, h.max);
    above += h.bins[j];
  }
  return 0;
}

/**
 * TensorRT's entropy calibration on one histogram: for each candidate clip bin i (128…2048),
 * P is the histogram up to i with the clipped outliers added to its last bin, Q the same bins
 * quantized to 128 levels and expanded back over P's non-empty bins; the threshold is the one
 * minimizing KL(P‖Q). Returns a magnitude ≤ the observed maximum. 128 levels per sign even for
 * non-negative tensors: the same ranges serve the int8 TensorRT flavour, whose positive half has 128.
 */
export function entropyThreshold(h: MagnitudeHistogram, levels = ENTROPY_LEVELS): number {
  if (h.count === 0 || h.width === 0) return h.max;
  // The zero spike after a ReLU (often half the values) would dominate P and reward clipping
  // almost everything else; like pytorch-quantization, weigh bin 0 as its neighbour.
  const bins = Float64Array.from(h.bins);
  bins[0] = bins[1];
  const n = HISTOGRAM_BINS;
  // Trim trailing empty bins: candidates past the last data bin all give the same P.
  let used = n;
  while (used > levels && bins[used - 1] === 0) used--;
  const suffix = new Float64Array(n + 1);
  for (let j = n - 1; j >= 0; j--) suffix[j] = suffix[j + 1] + bins[j];
  const q = new Float64Array(n);
  let best = Number.POSITIVE_INFINITY;
  let bestI = used;
  for (let i = levels; i <= used; i++) {
    const merged = i / levels;
    q.fill(0, 0, i);
    for (let k = 0; k < levels; k++) {
      const start = Math.floor(k * merged);
      const stop = k === levels - 1 ? i : Math.floor((k + 1) * merged);
      let sum = 0;
      let nonzero = 0;
      for (let j = start; j < stop; j++) {
        sum += bins[j];
        if (bins[j] > 0) nonzero++;
      }
      if (nonzero === 0) continue;
      const v = sum / nonzero;
      for (let j = start; j < stop; j++) if (bins[j] > 0) q[j] = v;
    }
    // P sums to the whole count (outliers folded in); Q sums to the count inside the clip.
    const pSum = suffix[0];
    const qSum = pSum - suffix[i];
    if (qSum <= 0) continue;
    let kl = 0;
    for (let j = 0; j < i; j++) {
      const p = (j === i - 1 ? bins[j] + suffix[i] : bins[j]) / pSum;
      if (p === 0) continue;
      // A bin P needs but Q left empty (clipped outliers) costs as if Q held a tiny mass.
      const qq = Math.max(q[j] / qSum, 1e-10);
      kl += p * Math.log(p / qq);
    }
    if (kl < best) {
      best = kl;
      bestI = i;
    }
  }
  return Math.min(bestI * h.width, h.max);
}

/** Statistics of one activation tensor over all calibration batches. */
export class TensorStats {
  min = Number.POSITIVE_INFINITY;
  max = Number.NEGATIVE_INFINITY;
  /** Values ≥ 0. */
  readonly pos = new MagnitudeHistogram();
  /** Magnitudes of values < 0. */
  readonly neg = new MagnitudeHistogram();
  #scratchPos = new Float32Array(0);
  #scratchNeg = new Float32Array(0);

  /** Adds one batch of values; NaN and ±Infinity are rejected by the caller's check, not here. */
  add(values: Float32Array): void {
    if (this.#scratchPos.length < values.length) {
      this.#scratchPos = new Float32Array(values.length);
      this.#scratchNeg = new Float32Array(values.length);
    }
    const p = this.#scratchPos;
    const m = this.#scratchNeg;
    let np = 0;
    let nm = 0;
    let lo = this.min;
    let hi = this.max;
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (v < lo) lo = v;
      if (v > hi) hi = v;
      if (v >= 0) p[np++] = v;
      else m[nm++] = -v;
    }
    this.min = lo;
    this.max = hi;
    this.pos.add(p, np);
    this.neg.add(m, nm);
  }

  /** Number of values added, both signs. */
  get count(): number {
    return this.pos.count + this.neg.count;
  }
}
