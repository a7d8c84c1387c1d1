/**
 * Per-stage latency samples of the frame loop, kept in preallocated rings so that recording a
 * frame allocates nothing: prom-client's `observe()` builds label objects per call, so samples
 * are handed to the histograms in bulk, at scrape time or when a ring fills.
 */

/** Stages of one frame, in order. `total` is capture → result. */
export const STAGES = ['queue', 'preprocess', 'infer', 'decide', 'total'] as const;
export type Stage = (typeof STAGES)[number];

/** Receives drained samples (ms). */
export type StageSink = (stage: Stage, ms: number) => void;

export class StageStats {
  readonly #rings: Record<Stage, Float64Array>;
  readonly #n: Record<Stage, number>;
  #sink: StageSink | null = null;
  /** Every sample ever recorded, per stage, kept for medians (bench, reports) when enabled. */
  readonly #history: Record<Stage, Float64Array> | null;
  readonly #historyN: Record<Stage, number>;

  /**
   * @param capacity samples per stage before a forced drain; default 1024.
   * @param history also keep up to this many samples per stage for {@link median}; default 0.
   */
  constructor(capacity = 1024, history = 0) {
    const make = (n: number) =>
      Object.fromEntries(STAGES.map((s) => [s, new Float64Array(n)])) as Record<Stage, Float64Array>;
    const zero = () => Object.fromEntries(STAGES.map((s) => [s, 0])) as Record<Stage, number>;
    this.#rings = make(capacity);
    this.#n = zero();
    this.#history = history > 0 ? make(history) : null;
    this.#historyN = zero();
  }

  /** Where drained samples go (e.g. histograms); without a sink, full rings are overwritten. */
  setSink(sink: StageSink | null): void {
    this.#sink = sink;
  }

  /** Records one sample (ms). */
  record(stage: Stage, ms: number): void {
    const ring = this.#rings[stage];
    if (this.#n[stage] === ring.length) {
      if (this.#sink) this.drain();
      else this.#n[stage] = 0;
    }
    ring[this.#n[stage]++] = ms;
    const h = this.#history;
    if (h !== null && this.#historyN[stage] < h[stage].length) h[stage][this.#historyN[stage]++] = ms;
  }

  /** Hands every pending sample to the sink. */
  drain(): void {
    const sink = this.#sink;
    for (const s of STAGES) {
      const ring = this.#rings[s];
      if (sink) for (let i = 0; i < this.#n[s]; i++) sink(s, ring[i]);
      this.#n[s] = 0;
    }
  }

  /** Median of the kept history of a stage (NaN when none); needs `history` > 0. */
  median(stage: Stage, from = 0): number {
    const h = this.#history;
    if (h === null) return Number.NaN;
    const v = Array.from(h[stage].subarray(from, this.#historyN[stage])).sort((a, b) => a - b);
    if (v.length === 0) return Number.NaN;
    const m = v.length >> 1;
    return v.length % 2 === 1 ? v[m] : (v[m - 1] + v[m]) / 2;
  }

  /**
   * Mean of the kept history of a stage (NaN when none); needs `history` > 0. Throughput is a
   * mean (frames / time), so bounds on it come from mean stage times, not medians.
   */
  mean(stage: Stage, from = 0): number {
    const h = this.#history;
    const n = this.#historyN[stage] - from;
    if (h === null || n <= 0) return Number.NaN;
    let sum = 0;
    for (let i = from; i < this.#historyN[stage]; i++) sum += h[stage][i];
    return sum / n;
  }

  /** Samples kept in the history of a stage. */
  count(stage: Stage): number {
    return this.#historyN[stage];
  }
}
