/**
 * A robust running estimate of one noisy quantity: an EWMA of the mean and of the mean absolute
 * deviation (TCP's SRTT/RTTVAR, RFC 6298) of its body, and a step-change detector.
 *
 * A sample further than `outlierK` deviations from the mean is an outlier and leaves the body
 * alone: delays on cellular links are bimodal (a fast mode and fades or scheduling gaps), and
 * averaging the two modes describes neither; how often outliers happen is the tail calibrator's
 * business. `changeCount` outliers in a row on the same side, or within `changeWindowMs` of each
 * other, mean the level moved: the estimate restarts from them. After a step up, a sample back
 * inside the old band restores the old level at once. Pure: times come from the caller.
 */

import type { EstimatorConfig } from './config.ts';

/** Settings of a {@link RobustEwma}; see PolicyConfig.estimator for the defaults. */
export interface RobustEwmaOptions {
  alpha: number;
  beta: number;
  outlierK: number;
  changeCount: number;
  changeWindowMs: number;
  /**
   * Half-life of what is known, ms: a sample arriving after a gap of this long weighs at least
   * 1/2 (old knowledge ages with time, not only with new samples); 0 disables.
   */
  halfLifeMs: number;
  /** Floor of the deviation, in the quantity's unit. */
  minDeviation: number;
  /** Floor of the deviation as a share of the mean's magnitude (measurement noise grows with it). */
  minDeviationRatio: number;
  /**
   * After a step up, a sample back within the old level's band restores the old level at once
   * (the disturbance is over), for this long after the step; 0 disables.
   */
  restoreWindowMs: number;
}

/** The {@link RobustEwma} settings of the policy's estimator config (shared by every estimator). */
export function ewmaOptions(c: EstimatorConfig): RobustEwmaOptions {
  return {
    alpha: c.alpha,
    beta: c.beta,
    outlierK: c.outlierK,
    changeCount: c.changeCount,
    changeWindowMs: c.changeWindowMs,
    minDeviation: c.minDeviationMs,
    minDeviationRatio: c.minDeviationRatio,
    restoreWindowMs: c.restoreWindowMs,
    halfLifeMs: c.halfLifeMs,
  };
}

/** What {@link RobustEwma.update} did with a sample. */
export type SampleFate = 'first' | 'inlier' | 'outlier' | 'change' | 'restore';

interface Outlier {
  at: number;
  value: number;
  side: 1 | -1;
  /** No inlier came after it. */
  inRun: boolean;
}

export class RobustEwma {
  #opts: RobustEwmaOptions;
  #mean = 0;
  #dev = 0;
  #count = 0;
  #lastAt: number | null = null;
  #changes = 0;
  #outliers: Outlier[] = [];
  /** The level before the last step up, while a return to it may be recognised. */
  #before: { mean: number; dev: number; at: number } | null = null;

  constructor(opts: RobustEwmaOptions) {
    this.#opts = { ...opts };
  }

  /** Replaces the settings; the current estimate is kept. */
  setOptions(opts: RobustEwmaOptions): void {
    this.#opts = { ...opts };
  }

  /** Samples seen (0 = nothing known). */
  get count(): number {
    return this.#count;
  }

  get mean(): number {
    return this.#mean;
  }

  /** Mean absolute deviation, at least the configured floors. */
  get deviation(): number {
    const o = this.#opts;
    return Math.max(this.#dev, o.minDeviation, o.minDeviationRatio * Math.abs(this.#mean));
  }

  /** Time of the last sample, or null before the first. */
  get lastAt(): number | null {
    return this.#lastAt;
  }

  /** Step changes detected so far. */
  get changes(): number {
    return this.#changes;
  }

  /**
   * Adds a sample taken at time `at` (ms).
   * @param lowerBound the true value is at least `value` (a censored sample, e.g. a timeout): it
   *   only ever counts as a high-side outlier or raises the mean.
   * @param initialDeviation deviation to start from when this is the first sample; default
   *   half the sample's magnitude.
   * @returns how the sample was used.
   */
  update(at: number, value: number, lowerBound = false, initialDeviation?: number): SampleFate {
    if (!Number.isFinite(value)) throw new RangeError(`sample must be finite, received ${value}`);
    const o = this.#opts;
    if (this.#count === 0) {
      this.#lastAt = at;
      this.#count = 1;
      this.#mean = value;
      this.#dev = Math.max(initialDeviation ?? Math.abs(value) / 2, o.minDeviation);
      return 'first';
    }
    this.#count++;
    const gap = this.#lastAt === null ? 0 : Math.max(0, at - this.#lastAt);
    this.#lastAt = at;
    const aged = o.halfLifeMs > 0 ? 1 - 2 ** (-gap / o.halfLifeMs) : 0;
    const alpha = Math.max(o.alpha, aged);
    const beta = Math.max(o.beta, aged);
    const before = this.#before;
    if (before !== null && at - before.at > o.restoreWindowMs) this.#before = null;
    else if (before !== null && !lowerBound && value <= before.mean + o.outlierK * before.dev) {
      // Back to the old level: a step up that ended (a fade, a burst of cross traffic) should
      // not take many samples to forget.
      this.#mean = before.mean;
      this.#dev = before.dev;
      this.#before = null;
      this.#outliers = [];
      this.#changes++;
      this.#step(value - this.#mean, alpha, beta);
      return 'restore';
    }
    const bound = o.outlierK * this.deviation;
    let r = value - this.#mean;
    if (lowerBound && r < bound) r = bound * 1.000001; // a timeout is never good news
    if (Math.abs(r) <= bound) {
      // An inlier ends the run of outliers; recent ones may still add up within the window.
      for (const x of this.#outliers) x.inRun = false;
      this.#step(r, alpha, beta);
      return 'inlier';
    }
    const side: 1 | -1 = r > 0 ? 1 : -1;
    // Outliers in a row all count, others only within the window.
    const recent = this.#outliers.filter(
      (x) => x.side === side && (x.inRun || at - x.at <= o.changeWindowMs),
    );
    recent.push({ at, value: lowerBound ? Math.max(value, this.#mean + r) : value, side, inRun: true });
    this.#outliers = recent;
    if (recent.length >= o.changeCount) {
      // The level moved: restart from the outlying samples instead of creeping towards them.
      const values = recent.map((x) => x.value);
      const m = values.reduce((a, b) => a + b, 0) / values.length;
      const spread = values.reduce((a, b) => a + Math.abs(b - m), 0) / values.length;
      if (side > 0 && this.#before === null && o.restoreWindowMs > 0) {
        this.#before = { mean: this.#mean, dev: this.deviation, at };
      } else if (side < 0) {
        this.#before = null;
      }
      this.#mean = m;
      // Keep some of the old uncertainty: two samples say little about the new spread.
      this.#dev = Math.max(spread, this.#dev, Math.abs(m) / 4, o.minDeviation);
      this.#outliers = [];
      this.#changes++;
      return 'change';
    }
    return 'outlier';
  }

  #step(r: number, alpha: number, beta: number): void {
    this.#mean += alpha * r;
    this.#dev += beta * (Math.abs(r) - this.#dev);
  }

  /** Forgets everything. */
  reset(): void {
    this.#mean = 0;
    this.#dev = 0;
    this.#count = 0;
    this.#lastAt = null;
    this.#outliers = [];
    this.#before = null;
  }
}
