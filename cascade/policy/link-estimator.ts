/**
 * Link estimator: what one transfer of `bytes` over the uplink will take, learnt from the
 * transfers that already happened. Pure (times come from the caller).
 *
 * Model: network time = propagation + bytes × (transfer time per byte). The propagation part is
 * the minimum network time over a sliding window (BBR's RTprop filter); what lies above it is
 * scaled to 1 kB, and the network time of a 1 kB transfer is tracked by a {@link RobustEwma}
 * (mean and deviation, outliers clipped, step changes restart it; tracking the whole time rather
 * than the small excess keeps the noise floor proportionate). Queueing behind other senders on a
 * shared uplink shows up as a higher time per kB, i.e. a lower bandwidth, which is what a sender
 * sees. A missed answer is a censored sample: the transfer took at least the time waited.
 * Without observations the deviation grows with time (idle gaps) and after `staleMs` the link is
 * unknown again.
 */
import type { EstimatorConfig } from './config.ts';
import { ewmaOptions, RobustEwma } from './robust-ewma.ts';

/** Ratio of standard deviation to mean absolute deviation for a normal distribution. */
export const SD_PER_MAD = Math.sqrt(Math.PI / 2);

/** A point-in-time view of the link, as the decision and the metrics use it. */
export interface LinkEstimate {
  /** False before the first observation and after `staleMs` without any. */
  known: boolean;
  /** Propagation round-trip time (window minimum of network time), ms. */
  rttMs: number;
  /** Transfer time per kB above propagation: mean and standard deviation, ms. */
  msPerKB: number;
  msPerKBSd: number;
  /** 8 kbit / msPerKB, capped at the configured maximum. */
  bandwidthBps: number;
  /** Coefficient of variation of the per-kB transfer time (uncertainty of the bandwidth). */
  bandwidthCv: number;
  /** Observations and misses so far, step changes detected, time of the last one (ms or null). */
  samples: number;
  changes: number;
  lastSampleAt: number | null;
}

interface RttSample {
  at: number;
  ms: number;
}

/** Bandwidth of a per-kB transfer time: 8000 bit in `msPerKB` ms. */
export function bandwidthOf(msPerKB: number, maxBps: number): number {
  return msPerKB <= 8000 / maxBps ? maxBps : 8e6 / msPerKB;
}

export class LinkEstimator {
  #cfg: EstimatorConfig;
  #oneKB: RobustEwma;
  /** Monotonic deque of (time, network ms): increasing ms from the front. */
  #minRtt: RttSample[] = [];
  #lastRtt = 0;

  /** @param cfg estimator settings (PolicyConfig.estimator). */
  constructor(cfg: EstimatorConfig) {
    this.#cfg = { ...cfg };
    this.#oneKB = new RobustEwma(ewmaOptions(cfg));
  }

  /** Replaces the settings; the learnt state is kept. */
  setConfig(cfg: EstimatorConfig): void {
    this.#cfg = { ...cfg };
    this.#oneKB.setOptions(ewmaOptions(cfg));
  }

  #rttAt(at: number): number {
    const q = this.#minRtt;
    while (q.length > 0 && at - q[0].at > this.#cfg.minRttWindowMs) q.shift();
    // After an idle gap longer than the window the last minimum is still the best guess.
    return q.length > 0 ? q[0].ms : this.#lastRtt;
  }

  #pushRtt(at: number, ms: number): void {
    const q = this.#minRtt;
    while (q.length > 0 && q[q.length - 1].ms >= ms) q.pop();
    q.push({ at, ms });
  }

  /**
   * One completed transfer.
   * @param at when the answer arrived (ms, injected clock).
   * @param bytes payload bytes sent (> 0).
   * @param networkMs round-trip time minus the remote's own queue and service time.
   */
  observe(at: number, bytes: number, networkMs: number): void {
    if (!(bytes > 0) || !Number.isFinite(networkMs)) return;
    const net = Math.max(0, networkMs);
    this.#pushRtt(at, net);
    const rtt = this.#rttAt(at);
    this.#lastRtt = rtt;
    // A step in propagation (handover) is carried by the excess until the window forgets it.
    this.#oneKB.update(at, rtt + ((net - rtt) * 1000) / bytes, false, net / 4);
  }

  /**
   * A transfer whose answer did not come within `waitedMs`: the network time was at least that.
   * @param at when the wait ended (ms).
   */
  observeMiss(at: number, bytes: number, waitedMs: number): void {
    if (!(bytes > 0) || !Number.isFinite(waitedMs)) return;
    const rtt = this.#oneKB.count > 0 ? this.#rttAt(at) : 0;
    this.#oneKB.update(at, rtt + (Math.max(0, waitedMs - rtt) * 1000) / bytes, true);
  }

  /** The estimate at time `now` (ms). */
  estimate(now: number): LinkEstimate {
    const c = this.#cfg;
    const e = this.#oneKB;
    const last = e.lastAt;
    const known = e.count > 0 && last !== null && now - last < c.staleMs;
    const idleSec = last === null ? 0 : Math.max(0, now - last) / 1000;
    const rttMs = e.count > 0 ? this.#rttAt(now) : 0;
    const msPerKB = Math.max(0, e.mean - rttMs);
    const sd = e.deviation * SD_PER_MAD * (1 + c.idleGrowthPerSec * idleSec);
    const bandwidthBps = bandwidthOf(msPerKB, c.maxBandwidthBps);
    return {
      known,
      rttMs,
      msPerKB,
      msPerKBSd: sd,
      bandwidthBps,
      bandwidthCv: msPerKB > 0 ? sd / msPerKB : Number.POSITIVE_INFINITY,
      samples: e.count,
      changes: e.changes,
      lastSampleAt: last,
    };
  }
}
