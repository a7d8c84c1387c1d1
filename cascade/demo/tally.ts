/**
 * `cascade demo`'s bookkeeping, pure: the final results of every camera (deduplicated: QoS 1 may
 * deliver one twice) and the cameras' own end-of-run reports, turned into live progress and the
 * final report. Every frame must be accounted for: answered (by the device, gateway or cloud),
 * a miss (offloaded, no usable answer in time: the local answer stood), or dropped (never
 * processed: back-pressure, no free buffer, an error).
 */
import type { ResultMessage, TierName } from '../protocol.ts';

/** What a camera process reports at its end (device/app.ts DeviceReport, the fields used here). */
export interface CameraReport {
  deviceId: string;
  frames: number;
  processed: number;
  dropped: { backpressure: number; source: number; error: number };
  late: number;
  uplinkBytes: number;
  allFramesBytes: number;
  unpublished: number;
}

/** Live numbers for the progress line. */
export interface Progress {
  results: number;
  /** Results per second over the last window. */
  fps: number;
  /** Share of results whose frame was offloaded. */
  offloaded: number;
  p50: number;
  p99: number;
  /** Accuracy over results with ground truth; NaN before the first. */
  accuracy: number;
}

/** Latency percentiles, ms. */
export interface Percentiles {
  p50: number;
  p99: number;
  n: number;
}

/** The final report (`cascade demo --json`). Fractions are in [0, 1]. */
export interface DemoReport {
  frames: number;
  accuracy: number;
  resolved: { device: number; gateway: number; cloud: number };
  withinBudget: number;
  misses: number;
  dropped: number;
  latencyMs: { p50: number; p99: number };
  uplinkBytes: number;
  allFramesBytes: number;
  budgetMs: number;
  /** Frames answered with a usable answer (not a miss). */
  answered: number;
  /** frames − answered − misses − dropped: 0 when every frame is accounted for. */
  unaccounted: number;
  /** Results by policy reason code. */
  reasons: Record<string, number>;
  /** Latency percentiles per path: answered locally, by the gateway, by the cloud, missed. */
  latencyByPath: Record<'device' | 'gateway' | 'cloud' | 'missed', Percentiles>;
  lateAnswers: number;
  cameras: number;
  /** Results per second over the run. */
  fps: number;
  seconds: number;
}

/** Nearest-rank percentile of a sorted array; NaN when empty. */
export function percentile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.ceil(q * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))];
}

function pct(values: number[]): Percentiles {
  const s = [...values].sort((a, b) => a - b);
  return { p50: percentile(s, 0.5), p99: percentile(s, 0.99), n: s.length };
}

export class ResultTally {
  readonly budgetMs: number;
  readonly #seen = new Set<string>();
  readonly #latency: Record<'device' | 'gateway' | 'cloud' | 'missed', number[]> = {
    device: [],
    gateway: [],
    cloud: [],
    missed: [],
  };
  readonly #all: number[] = [];
  readonly #byTier: Record<TierName, number> = { device: 0, gateway: 0, cloud: 0 };
  readonly #reasons = new Map<string, number>();
  readonly #perDevice = new Map<string, number>();
  readonly #arrivals: number[] = [];
  #labelled = 0;
  #correct = 0;
  #misses = 0;
  #offloaded = 0;
  #within = 0;
  duplicates = 0;

  constructor(budgetMs: number) {
    this.budgetMs = budgetMs;
  }

  /**
   * Adds one result; a repeat of a (device, frame) already seen is counted as a duplicate only.
   * @param at arrival time (ms, any monotonic clock) for the fps window.
   * @returns false for a duplicate.
   */
  add(r: ResultMessage, at: number): boolean {
    const key = `${r.deviceId}\u0000${r.frameId}`;
    if (this.#seen.has(key)) {
      this.duplicates++;
      return false;
    }
    this.#seen.add(key);
    this.#perDevice.set(r.deviceId, (this.#perDevice.get(r.deviceId) ?? 0) + 1);
    this.#arrivals.push(at);
    this.#all.push(r.latencyMs);
    if (r.latencyMs <= r.budgetMs) this.#within++;
    this.#byTier[r.tier]++;
    if (r.missed) {
      this.#misses++;
      this.#latency.missed.push(r.latencyMs);
    } else {
      this.#latency[r.tier].push(r.latencyMs);
    }
    this.#reasons.set(r.reason, (this.#reasons.get(r.reason) ?? 0) + 1);
    if (r.reason.startsWith('offload:')) this.#offloaded++;
    if (r.truth >= 0) {
      this.#labelled++;
      if (r.label === r.truth) this.#correct++;
    }
    return true;
  }

  /** Time from the first to the last result, ms (0 with fewer than two). */
  spanMs(): number {
    const a = this.#arrivals;
    return a.length > 1 ? a[a.length - 1] - a[0] : 0;
  }

  /** Distinct results so far. */
  get results(): number {
    return this.#seen.size;
  }

  /** Distinct results of one device. */
  resultsOf(deviceId: string): number {
    return this.#perDevice.get(deviceId) ?? 0;
  }

  /** Progress now; `windowMs` is the fps window ending at `now`. */
  progress(now: number, windowMs = 1000): Progress {
    let recent = 0;
    for (let i = this.#arrivals.length - 1; i >= 0 && now - this.#arrivals[i] <= windowMs; i--) recent++;
    const lat = pct(this.#all.slice(-5000));
    const n = this.results;
    return {
      results: n,
      fps: (recent * 1000) / windowMs,
      offloaded: n > 0 ? this.#offloaded / n : 0,
      p50: lat.p50,
      p99: lat.p99,
      accuracy: this.#labelled > 0 ? this.#correct / this.#labelled : Number.NaN,
    };
  }

  /** The final report from the results and the cameras' own reports. */
  report(cameras: readonly CameraReport[], seconds: number): DemoReport {
    const frames = cameras.reduce((s, c) => s + c.frames, 0);
    const dropped = cameras.reduce(
      (s, c) => s + c.dropped.backpressure + c.dropped.source + c.dropped.error,
      0,
    );
    const n = this.results;
    const answered = n - this.#misses;
    const all = pct(this.#all);
    return {
      frames,
      accuracy: this.#labelled > 0 ? this.#correct / this.#labelled : Number.NaN,
      resolved: {
        device: n > 0 ? this.#byTier.device / n : 0,
        gateway: n > 0 ? this.#byTier.gateway / n : 0,
        cloud: n > 0 ? this.#byTier.cloud / n : 0,
      },
      withinBudget: frames > 0 ? this.#within / frames : 0,
      misses: this.#misses,
      dropped,
      latencyMs: { p50: all.p50, p99: all.p99 },
      uplinkBytes: cameras.reduce((s, c) => s + c.uplinkBytes, 0),
      allFramesBytes: cameras.reduce((s, c) => s + c.allFramesBytes, 0),
      budgetMs: this.budgetMs,
      answered,
      unaccounted: frames - answered - this.#misses - dropped,
      reasons: Object.fromEntries([...this.#reasons].sort((a, b) => b[1] - a[1])),
      latencyByPath: {
        device: pct(this.#latency.device),
        gateway: pct(this.#latency.gateway),
        cloud: pct(this.#latency.cloud),
        missed: pct(this.#latency.missed),
      },
      lateAnswers: cameras.reduce((s, c) => s + c.late, 0),
      cameras: cameras.length,
      fps: seconds > 0 ? n / seconds : 0,
      seconds,
    };
  }
}

function fmtPct(x: number): string {
  return Number.isFinite(x) ? `${(100 * x).toFixed(2)}%` : '-';
}

function fmtMs(x: number): string {
  return Number.isFinite(x) ? `${x.toFixed(1)} ms` : '-';
}

/** One progress line. */
export function formatProgress(p: Progress, elapsedS: number): string {
  return `[${elapsedS.toFixed(0).padStart(3)} s] ${String(p.results).padStart(6)} results  ${p.fps.toFixed(0).padStart(4)} fps  offload ${fmtPct(p.offloaded).padStart(6)}  p50 ${fmtMs(p.p50)}  p99 ${fmtMs(p.p99)}  accuracy ${fmtPct(p.accuracy)}`;
}

/** The summary table. */
export function formatReport(r: DemoReport): string {
  const kb = (b: number) => `${(b / 1024).toFixed(1)} KiB`;
  const row = (k: string, v: string) => `  ${k.padEnd(26)} ${v}`;
  const path = (name: 'device' | 'gateway' | 'cloud' | 'missed') => {
    const p = r.latencyByPath[name];
    return row(`latency ${name}`, p.n > 0 ? `p50 ${fmtMs(p.p50)}, p99 ${fmtMs(p.p99)} (${p.n} frames)` : '-');
  };
  return [
    `cascade demo: ${r.cameras} cameras, ${r.seconds.toFixed(1)} s, ${r.fps.toFixed(1)} results/s`,
    row(
      'frames',
      `${r.frames} = ${r.answered} answered + ${r.misses} misses + ${r.dropped} dropped${r.unaccounted !== 0 ? ` (${r.unaccounted} UNACCOUNTED)` : ''}`,
    ),
    row('accuracy', fmtPct(r.accuracy)),
    row(
      'resolved',
      `device ${fmtPct(r.resolved.device)}, gateway ${fmtPct(r.resolved.gateway)}, cloud ${fmtPct(r.resolved.cloud)}`,
    ),
    row(`within ${r.budgetMs} ms budget`, fmtPct(r.withinBudget)),
    row('latency all', `p50 ${fmtMs(r.latencyMs.p50)}, p99 ${fmtMs(r.latencyMs.p99)}`),
    path('device'),
    path('gateway'),
    path('cloud'),
    path('missed'),
    row('late answers', String(r.lateAnswers)),
    row(
      'uplink',
      `${kb(r.uplinkBytes)} vs ${kb(r.allFramesBytes)} offloading every frame (${fmtPct(r.allFramesBytes > 0 ? r.uplinkBytes / r.allFramesBytes : 0)})`,
    ),
    row(
      'decisions',
      Object.entries(r.reasons)
        .map(([k, v]) => `${k} ${v}`)
        .join(', '),
    ),
  ].join('\n');
}
