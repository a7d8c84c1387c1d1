/**
 * PolicyEngine: the stateful shell around {@link decideFrame}. It owns the link and load
 * estimators, the uplink byte budget (a token bucket), the probe timer and the reason counters,
 * and reads the gain curve and calibrated threshold from the tier's model card. No I/O: the
 * clock is injected, and the caller reports what happened to each offload (`observe` when an
 * answer came back, `observeMiss` when none came within the budget).
 */
import type { ModelCard } from '../../models/card.ts';
import { CascadeError, ErrorCodes } from '../errors.ts';
import {
  DEFAULT_POLICY_CONFIG,
  mergePolicyConfig,
  type PolicyConfig,
  type PolicyConfigPatch,
} from './config.ts';
import {
  type DecisionDetail,
  deadlineProbability,
  decideFrame,
  type FrameFacts,
  type PolicyDecision,
} from './decide.ts';
import { type GainCurve, gainCurve } from './gain.ts';
import { type LinkEstimate, LinkEstimator } from './link-estimator.ts';
import { type LoadEstimate, LoadEstimator } from './load-estimator.ts';
import { ENGINE_REASONS } from './reasons.ts';
import { TailCalibrator } from './tail-calibrator.ts';

function tailOptions(c: PolicyConfig) {
  return {
    halfLifeMs: c.estimator.tailHalfLifeMs,
    prior: c.estimator.tailPrior,
    capacity: c.estimator.tailCapacity,
  };
}

/** One answer from the next tier, as the caller measured it. */
export interface TransferObservation {
  /** When the answer arrived, ms on the injected clock. */
  at: number;
  /** Payload bytes sent. */
  bytes: number;
  /** Send to answer, ms. */
  rttMs: number;
  /** Queue delay the remote reported (batcher wait), ms. */
  queueMs: number;
  /** Service (inference) time the remote reported, ms. */
  serviceMs: number;
  /** Time the remote spent waiting on its own next tier (a forward to the cloud), ms; default 0. */
  forwardMs?: number;
}

/** Minimal structured logger (pino's signature); debug lines carry every decision input. */
export interface PolicyLogger {
  debug(obj: object, msg?: string): void;
  isLevelEnabled?(level: string): boolean;
}

/** Options of {@link PolicyEngine}. */
export interface PolicyEngineOptions {
  /** 'device' decides device → gateway offloads, 'gateway' decides gateway → cloud forwards. */
  tier: 'device' | 'gateway';
  /** This tier's model card: reliability table and calibrated threshold. */
  card: ModelCard;
  /** Overrides of {@link DEFAULT_POLICY_CONFIG}. */
  config?: PolicyConfigPatch;
  /** Clock, ms (monotonic preferred). */
  now: () => number;
  logger?: PolicyLogger;
}

/** What {@link PolicyEngine.snapshot} reports, for metrics and `cascade demo`. */
export interface PolicySnapshot {
  bandwidthBps: number;
  rttMs: number;
  queueMs: number;
  serviceMs: number;
  uncertainty: { bandwidthCv: number; msPerKBSd: number; queueSdMs: number; serviceSdMs: number };
  linkKnown: boolean;
  samples: number;
  changes: number;
  /** Bytes left in the uplink budget; null when unlimited. */
  bucketBytes: number | null;
  accept: number;
  reasons: Record<string, number>;
}

/** Listener of every decision (metrics); gets the detail the debug log shows. */
export type DecisionListener = (d: DecisionDetail, facts: FrameFacts) => void;

export class PolicyEngine {
  readonly tier: 'device' | 'gateway';
  #now: () => number;
  #logger: PolicyLogger | undefined;
  #base: Readonly<PolicyConfig>;
  #config: Readonly<PolicyConfig>;
  #card!: ModelCard;
  #curve!: GainCurve;
  #link: LinkEstimator;
  #load: LoadEstimator;
  #tail: TailCalibrator;
  #tokens = 0;
  #tokensAt: number;
  #lastHeard = Number.NEGATIVE_INFINITY;
  /** Last offload of any kind (a probe is due an interval after it). */
  #lastProbe = Number.NEGATIVE_INFINITY;
  /** Consecutive misses since the last answer: probes back off exponentially while it grows. */
  #missRun = 0;
  #lastBudget: number | null = null;
  /** Deadline misses this tier can still afford (see PolicyConfig.deadlineHitGoal). */
  #missTokens: number;
  #reasons = new Map<string, number>();
  #listeners = new Set<DecisionListener>();

  /**
   * @throws {CascadeError} POLICY_ERR_CONFIG for an invalid config; POLICY_ERR_CARD when the
   *   card's tier is not `tier`.
   */
  constructor(opts: PolicyEngineOptions) {
    this.tier = opts.tier;
    this.#now = opts.now;
    this.#logger = opts.logger;
    this.#base = mergePolicyConfig(DEFAULT_POLICY_CONFIG, opts.config);
    this.#config = this.#base;
    this.#link = new LinkEstimator(this.#config.estimator);
    this.#load = new LoadEstimator(this.#config.estimator);
    this.#tail = new TailCalibrator(tailOptions(this.#config));
    this.setCard(opts.card);
    this.#tokensAt = this.#now();
    this.#tokens = this.#capacity();
    this.#missTokens = this.#config.missBurst;
    for (const r of ENGINE_REASONS) this.#reasons.set(r, 0);
  }

  /** The config in force (frozen). */
  get config(): Readonly<PolicyConfig> {
    return this.#config;
  }

  /** The gain curve read from the card (for reports). */
  get curve(): GainCurve {
    return this.#curve;
  }

  /** The calibrated threshold in force: the config's override or the card's. */
  get accept(): number {
    return this.#config.acceptThreshold ?? this.#card.thresholds.accept;
  }

  /**
   * Swaps the model card (a new model was installed); estimates are kept.
   * @throws {CascadeError} POLICY_ERR_CARD if the card's tier is not this engine's.
   */
  setCard(card: ModelCard): void {
    if (card.tier !== this.tier) {
      throw new CascadeError(
        ErrorCodes.POLICY_ERR_CARD,
        `model card ${card.name} is for tier "${card.tier}", the engine decides for "${this.tier}"`,
      );
    }
    this.#card = card;
    this.#curve = gainCurve(card, this.#config.minBinSamples);
  }

  /**
   * Applies a policy file's content: merged over the constructor's config, so a key removed
   * from the file reverts to its start-up value.
   * @throws {CascadeError} POLICY_ERR_CONFIG listing every error; the old config stays.
   */
  setConfig(patch: PolicyConfigPatch): void {
    const next = mergePolicyConfig(this.#base, patch, 'policy update');
    this.#refill();
    this.#config = next;
    this.#tokens = Math.min(this.#tokens, this.#capacity());
    this.#link.setConfig(next.estimator);
    this.#load.setConfig(next.estimator);
    this.#tail.setOptions(tailOptions(next));
    this.#curve = gainCurve(this.#card, next.minBinSamples);
  }

  #capacity(): number {
    const perMin = this.#config.uplinkBytesPerMinute;
    return perMin > 0 ? (perMin / 60) * this.#config.bucketBurstSeconds : Number.POSITIVE_INFINITY;
  }

  #refill(): void {
    const now = this.#now();
    const perMin = this.#config.uplinkBytesPerMinute;
    if (perMin > 0) {
      const dt = Math.max(0, now - this.#tokensAt);
      const tokens = Number.isFinite(this.#tokens) ? this.#tokens : this.#capacity();
      this.#tokens = Math.min(this.#capacity(), tokens + (perMin / 60_000) * dt);
    } else {
      this.#tokens = Number.POSITIVE_INFINITY;
    }
    this.#tokensAt = now;
  }

  /** The link estimate now. */
  link(): LinkEstimate {
    return this.#link.estimate(this.#now());
  }

  /** The remote load estimate now. */
  load(): LoadEstimate {
    return this.#load.estimate(this.#now());
  }

  /**
   * Decides one frame: accept here, or offload with which payload, and why. An offload spends
   * its bytes from the byte budget at once (the caller is expected to send it).
   */
  decide(f: FrameFacts): PolicyDecision {
    const d = this.explain(f);
    const goal = this.#config.deadlineHitGoal;
    if (goal > 0) this.#missTokens = Math.min(this.#config.missBurst, this.#missTokens + (1 - goal));
    if (d.offload && d.payload !== null) {
      const bytes = f.payloadBytes[d.payload] ?? 0;
      this.#tokens -= bytes;
      // Any offload tests the link: the next probe is due an interval after the last send.
      this.#lastProbe = this.#now();
      this.#lastBudget = f.budgetLeftMs;
    }
    this.#reasons.set(d.reason, (this.#reasons.get(d.reason) ?? 0) + 1);
    for (const l of this.#listeners) l(d, f);
    const log = this.#logger;
    if (log && (log.isLevelEnabled?.('debug') ?? true)) {
      log.debug(
        { tier: this.tier, facts: f, decision: d, link: this.link(), load: this.load() },
        'policy decision',
      );
    }
    return {
      offload: d.offload,
      payload: d.payload,
      reason: d.reason,
      pDeadline: d.pDeadline,
      expectedGain: d.expectedGain,
    };
  }

  /** The decision {@link decide} would take, with its candidates, without spending or counting. */
  explain(f: FrameFacts): DecisionDetail {
    this.#refill();
    const now = this.#now();
    const interval = this.#config.probeIntervalMs * 2 ** Math.min(this.#missRun, 4);
    const c = this.#config;
    // With less than one miss left in the allowance, only offloads sure to be in time go.
    const spare = c.deadlineHitGoal > 0 ? Math.max(0, Math.min(1, this.#missTokens)) : 1;
    const pFloor = 1 - (1 - c.deadlineTarget) * spare;
    const probeDue = spare >= 1 && now - this.#lastHeard >= interval && now - this.#lastProbe >= interval;
    return decideFrame({
      facts: f,
      curve: this.#curve,
      accept: this.accept,
      link: this.#link.estimate(now),
      load: this.#load.estimate(now),
      config: this.#config,
      bucketBytes: this.#tokens,
      probeDue,
      pFloor,
      cdf: this.#tail.view(now),
      missAffordable: spare >= 1,
    });
  }

  /** An answer arrived: feeds the link (network part of the round trip) and load estimators. */
  observe(o: TransferObservation): void {
    const network = o.rttMs - o.queueMs - o.serviceMs - (o.forwardMs ?? 0);
    const late = this.#lastBudget !== null && o.rttMs > this.#lastBudget;
    const link = this.#link.estimate(o.at);
    if (link.known && !late) {
      // How far off the prediction was, in predicted standard deviations (a late answer was
      // already counted as a miss).
      const pred = deadlineProbability(o.bytes, 0, link, this.#load.estimate(o.at));
      this.#tail.add(o.at, (o.rttMs - (o.forwardMs ?? 0) - pred.meanMs) / pred.sdMs);
    }
    this.#link.observe(o.at, o.bytes, network);
    this.#load.observe(o.at, o.queueMs, o.serviceMs);
    this.#lastHeard = Math.max(this.#lastHeard, o.at);
    // A late answer to a missed offload is information, not a success: the backoff stays.
    if (this.#lastBudget === null || o.rttMs <= this.#lastBudget) this.#missRun = 0;
  }

  /**
   * No answer came within the budget.
   * @param waitedMs how long the caller waited; default the budget of the last offload.
   */
  observeMiss(at: number, bytes: number, waitedMs?: number): void {
    const waited = waitedMs ?? this.#lastBudget;
    if (waited === null) return;
    const load = this.#load.estimate(at);
    this.#link.observeMiss(at, bytes, waited - load.queueMs - load.serviceMs);
    this.#lastHeard = Math.max(this.#lastHeard, at);
    this.#missRun++;
    this.#missTokens -= 1;
    this.#tail.add(at, Number.POSITIVE_INFINITY);
  }

  /** Subscribes to every decision; returns the unsubscribe function. */
  onDecision(listener: DecisionListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Decisions so far by reason code. */
  reasonCounts(): Record<string, number> {
    return Object.fromEntries(this.#reasons);
  }

  /** Estimates, their uncertainty, budget and counters now. */
  snapshot(): PolicySnapshot {
    this.#refill();
    const link = this.link();
    const load = this.load();
    return {
      bandwidthBps: link.bandwidthBps,
      rttMs: link.rttMs,
      queueMs: load.queueMs,
      serviceMs: load.serviceMs,
      uncertainty: {
        bandwidthCv: link.bandwidthCv,
        msPerKBSd: link.msPerKBSd,
        queueSdMs: load.queueSdMs,
        serviceSdMs: load.serviceSdMs,
      },
      linkKnown: link.known,
      samples: link.samples,
      changes: link.changes,
      bucketBytes: Number.isFinite(this.#tokens) ? this.#tokens : null,
      accept: this.accept,
      reasons: this.reasonCounts(),
    };
  }
}
