/**
 * Calibrates P(answer in time) against what actually happened. The estimators predict a round
 * trip as mean ± sd; real links (cellular fades, bursty schedulers) have far heavier tails than
 * a normal distribution, so Φ((budget − mean) / sd) can say 0.99 where one transfer in five is
 * late. This keeps the standardised residuals z = (actual − predicted mean) / predicted sd of
 * recent transfers (a miss counts as z = +∞: late whatever the threshold), weighted by age, and
 * answers P(z ≤ q) from them, with a normal prior worth `prior` samples so that a handful of
 * transfers cannot claim certainty. Pure: times come from the caller.
 */
import { normalCdf } from './normal.ts';

/** Settings of a {@link TailCalibrator}. */
export interface TailOptions {
  /** Age at which a residual weighs half, ms. */
  halfLifeMs: number;
  /** Weight of the normal prior, in samples. */
  prior: number;
  /** Residuals kept at most (oldest dropped first). */
  capacity: number;
}

export class TailCalibrator {
  #opts: TailOptions;
  #at: number[] = [];
  #z: number[] = [];

  constructor(opts: TailOptions) {
    this.#opts = { ...opts };
  }

  setOptions(opts: TailOptions): void {
    this.#opts = { ...opts };
    this.#trim();
  }

  /** Residuals kept. */
  get size(): number {
    return this.#z.length;
  }

  #trim(): void {
    const extra = this.#z.length - this.#opts.capacity;
    if (extra > 0) {
      this.#z.splice(0, extra);
      this.#at.splice(0, extra);
    }
  }

  /** Adds one residual (NaN ignored; +Infinity for a miss). */
  add(at: number, z: number): void {
    if (Number.isNaN(z)) return;
    this.#at.push(at);
    this.#z.push(z);
    this.#trim();
  }

  /**
   * P(z ≤ q) at time `now`: age-weighted share of residuals at or below q, blended with Φ(q).
   * Non-decreasing in q.
   */
  cdf(q: number, now: number): number {
    const { halfLifeMs, prior } = this.#opts;
    let total = prior;
    let below = prior * normalCdf(q);
    for (let i = 0; i < this.#z.length; i++) {
      const w = halfLifeMs > 0 ? 2 ** (-Math.max(0, now - this.#at[i]) / halfLifeMs) : 1;
      total += w;
      if (this.#z[i] <= q) below += w;
    }
    return total > 0 ? below / total : normalCdf(q);
  }

  /** A frozen view for one decision: `cdf` at the given time. */
  view(now: number): (q: number) => number {
    return (q) => this.cdf(q, now);
  }
}
