/**
 * Remote load estimator: the queue delay and service time the next tier reports in each answer
 * (the gateway's batcher wait and inference time; the cloud's), each tracked by a
 * {@link RobustEwma}. Pure: times come from the caller.
 */
import type { EstimatorConfig } from './config.ts';
import { SD_PER_MAD } from './link-estimator.ts';
import { ewmaOptions, RobustEwma } from './robust-ewma.ts';

/** A point-in-time view of the next tier's load. */
export interface LoadEstimate {
  known: boolean;
  /** Queue delay at the remote (batcher wait): mean and standard deviation, ms. */
  queueMs: number;
  queueSdMs: number;
  /** Service (inference) time at the remote: mean and standard deviation, ms. */
  serviceMs: number;
  serviceSdMs: number;
}

export class LoadEstimator {
  #cfg: EstimatorConfig;
  #queue: RobustEwma;
  #service: RobustEwma;

  constructor(cfg: EstimatorConfig) {
    this.#cfg = { ...cfg };
    this.#queue = new RobustEwma(ewmaOptions(cfg));
    this.#service = new RobustEwma(ewmaOptions(cfg));
  }

  /** Replaces the settings; the learnt state is kept. */
  setConfig(cfg: EstimatorConfig): void {
    this.#cfg = { ...cfg };
    this.#queue.setOptions(ewmaOptions(cfg));
    this.#service.setOptions(ewmaOptions(cfg));
  }

  /** One answer's report: queue delay and service time at the remote, ms (negatives read as 0). */
  observe(at: number, queueMs: number, serviceMs: number): void {
    if (Number.isFinite(queueMs)) this.#queue.update(at, Math.max(0, queueMs));
    if (Number.isFinite(serviceMs)) this.#service.update(at, Math.max(0, serviceMs));
  }

  /** The estimate at `now`; before any report, zero load with zero spread and `known: false`. */
  estimate(now: number): LoadEstimate {
    const q = this.#queue;
    const s = this.#service;
    const last = Math.max(q.lastAt ?? Number.NEGATIVE_INFINITY, s.lastAt ?? Number.NEGATIVE_INFINITY);
    const known = s.count > 0 && now - last < this.#cfg.staleMs;
    const idle = 1 + (this.#cfg.idleGrowthPerSec * Math.max(0, now - last)) / 1000;
    return {
      known,
      queueMs: q.count > 0 ? Math.max(0, q.mean) : 0,
      queueSdMs: q.count > 0 ? q.deviation * SD_PER_MAD * idle : 0,
      serviceMs: s.count > 0 ? Math.max(0, s.mean) : 0,
      serviceSdMs: s.count > 0 ? s.deviation * SD_PER_MAD * idle : 0,
    };
  }
}
