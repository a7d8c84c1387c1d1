/**
 * The per-frame decision as one pure function of its inputs: the frame's facts, the card's gain
 * curve and threshold, the link and load estimates, the config, the room in the byte budget and
 * whether a probe is due. {@link PolicyEngine} gathers those; tests call this directly.
 *
 * For every allowed payload p: P(answer within the budget) from a normal approximation of the
 * round trip (propagation + bytes × time per kB + remote queue + service, its error calibrated
 * on past transfers), and the utility P(in time) × (gain − loss_p) − P(late) × missCost −
 * cost_per_MB × MB_p. Offload with the best payload whose P(in time) meets the target and whose
 * mean round trip fits, when its utility beats `minGain` and the byte budget has room.
 * Every input moves the decision one way only: a higher confidence never makes offloading more
 * likely, a larger budget or bandwidth never less (the property tests check this).
 */
import type { PayloadKind, PolicyConfig } from './config.ts';
import { PRIVATE_PAYLOADS } from './config.ts';
import { type GainCurve, gainAt } from './gain.ts';
import type { LinkEstimate } from './link-estimator.ts';
import type { LoadEstimate } from './load-estimator.ts';
import { normalCdf } from './normal.ts';
import { type ReasonCode, Reasons } from './reasons.ts';

/** What the caller knows about one frame. */
export interface FrameFacts {
  /** Calibrated top-1 confidence of this tier. */
  confidence: number;
  /** Milliseconds left until the frame's deadline, after this tier's own work. */
  budgetLeftMs: number;
  /** Bytes of each payload this frame could be sent as; kinds left out are not offered. */
  payloadBytes: Partial<Record<PayloadKind, number>>;
  /** Privacy mode for this frame (no raw pixels leave); default: the config's. */
  privacy?: boolean;
}

/** The decision and the numbers behind it. */
export interface PolicyDecision {
  offload: boolean;
  payload: PayloadKind | null;
  reason: ReasonCode;
  /** P(answer within the budget) of the chosen (or best refused) payload; NaN when unknown. */
  pDeadline: number;
  /** Expected accuracy gain of offloading (next tier − this tier), before byte cost. */
  expectedGain: number;
}

/** One payload option as evaluated. */
export interface Candidate {
  payload: PayloadKind;
  bytes: number;
  /** Predicted round trip: mean and standard deviation, ms. */
  meanMs: number;
  sdMs: number;
  pDeadline: number;
  /** gain − payload loss − byte cost, i.e. the utility if the answer is surely in time. */
  netGain: number;
  /** pDeadline × (gain − loss) − (1 − pDeadline) × missCost − byte cost. */
  utility: number;
}

/** Everything {@link decideFrame} decides from. */
export interface DecisionInputs {
  facts: FrameFacts;
  curve: GainCurve;
  /** The card's calibrated accept threshold (or the config's override). */
  accept: number;
  link: LinkEstimate;
  load: LoadEstimate;
  config: Readonly<PolicyConfig>;
  /** Bytes the token bucket can spend now; Infinity when unlimited. */
  bucketBytes: number;
  /** A probe is due (the link has been silent long enough and a miss can be afforded). */
  probeDue: boolean;
  /**
   * Smallest P(in time) an offload needs now; default `config.deadlineTarget`. The engine raises
   * it towards 1 while its miss allowance is spent.
   */
  pFloor?: number;
  /** Calibrated distribution of the standardised round-trip error; default the normal CDF. */
  cdf?: (q: number) => number;
  /**
   * A miss can be afforded now (the engine's miss allowance); default true. When false, a
   * link that is unknown is not tried with the threshold rule.
   */
  missAffordable?: boolean;
}

/** {@link PolicyDecision} with the evaluated candidates and accuracies, for debug logs. */
export interface DecisionDetail extends PolicyDecision {
  candidates: Candidate[];
  localAccuracy: number | null;
  remoteAccuracy: number | null;
}

/** Floor of the predicted round trip's standard deviation, ms (clock resolution). */
const MIN_SD_MS = 0.5;

/**
 * Predicted round trip of `bytes` and P(it completes within `budgetMs`).
 * @param cdf distribution of the standardised error of the prediction; default the normal
 *   (the engine passes its calibrated one, see TailCalibrator).
 * @returns mean, sd (ms) and the probability; 0 when the budget is not positive.
 */
export function deadlineProbability(
  bytes: number,
  budgetMs: number,
  link: LinkEstimate,
  load: LoadEstimate,
  cdf: (q: number) => number = normalCdf,
): { meanMs: number; sdMs: number; p: number } {
  const kb = bytes / 1000;
  const meanMs = link.rttMs + kb * link.msPerKB + load.queueMs + load.serviceMs;
  const sdMs = Math.max(
    MIN_SD_MS,
    Math.sqrt((kb * link.msPerKBSd) ** 2 + load.queueSdMs ** 2 + load.serviceSdMs ** 2),
  );
  const p = budgetMs > 0 ? cdf((budgetMs - meanMs) / sdMs) : 0;
  return { meanMs, sdMs, p };
}

function local(reason: ReasonCode, p: number, gain: number): PolicyDecision {
  return { offload: false, payload: null, reason, pDeadline: p, expectedGain: gain };
}

/**
 * Decides one frame. Pure.
 * Order: no payload offered → `local:nopayload` / `local:privacy`; no positive net gain →
 * `local:confident` (at or above the threshold) or `local:nogain`; link unknown → the card's
 * threshold (`offload:threshold` / `local:unknown`); else the best payload meeting the deadline
 * target (`offload:gain`), with `local:deadline` or `local:budget` when none can, unless a probe
 * is due (`offload:probe`, the smallest worthwhile payload that fits the byte budget). A tie
 * between offloading and not (net gain exactly `minGain`) is settled by the threshold.
 */
export function decideFrame(inp: DecisionInputs): DecisionDetail {
  const { facts, config } = inp;
  const privacy = facts.privacy ?? config.privacy;
  const offered = config.payloads.filter((p) => (facts.payloadBytes[p] ?? 0) > 0);
  const allowed = privacy ? offered.filter((p) => PRIVATE_PAYLOADS.includes(p)) : offered;
  const g = gainAt(inp.curve, facts.confidence);
  const base = {
    candidates: [] as Candidate[],
    localAccuracy: g?.local ?? null,
    remoteAccuracy: g?.remote ?? null,
  };
  const gain = g?.gain ?? Number.NaN;
  if (allowed.length === 0) {
    const reason = offered.length > 0 ? Reasons.LOCAL_PRIVACY : Reasons.LOCAL_NOPAYLOAD;
    return { ...base, ...local(reason, Number.NaN, gain) };
  }
  const below = facts.confidence < inp.accept;
  const candidates: Candidate[] = allowed.map((payload) => {
    const bytes = facts.payloadBytes[payload] as number;
    const { meanMs, sdMs, p } = deadlineProbability(bytes, facts.budgetLeftMs, inp.link, inp.load, inp.cdf);
    const effective = (g === null ? (below ? 1 : 0) : gain) - (config.payloadAccuracyLoss[payload] ?? 0);
    const cost = (config.costPerMB * bytes) / 1e6;
    const utility = p * effective - (1 - p) * config.missCost - cost;
    return { payload, bytes, meanMs, sdMs, pDeadline: p, netGain: effective - cost, utility };
  });
  const detail = { ...base, candidates };
  const bestNet = Math.max(...candidates.map((c) => c.netGain));
  const tie = g !== null && Math.abs(bestNet - config.minGain) < 1e-12;
  // Unknown reliability or a tie: the card's calibrated threshold decides whether it is worth it.
  const worth = g === null || tie ? below : bestNet > config.minGain;
  if (!worth) {
    const reason = facts.confidence >= inp.accept ? Reasons.LOCAL_CONFIDENT : Reasons.LOCAL_NOGAIN;
    return { ...detail, ...local(reason, Math.max(...candidates.map((c) => c.pDeadline)), gain) };
  }
  const fits = (c: Candidate) => c.bytes <= inp.bucketBytes;
  const worthwhile = candidates.filter((c) => c.netGain > config.minGain || ((g === null || tie) && below));
  const byUtility = (a: Candidate, b: Candidate) => b.utility - a.utility;
  if (facts.budgetLeftMs <= 0) return { ...detail, ...local(Reasons.LOCAL_DEADLINE, 0, gain) };
  if (!inp.link.known) {
    // Nothing measured yet (or too long ago): the threshold rule, and the answers it brings back
    // teach the estimator.
    // Above the threshold a worthwhile frame may still probe the link, so it becomes known.
    const pick = worthwhile.filter(fits).sort((a, b) => a.bytes - b.bytes)[0];
    if (inp.missAffordable === false)
      return { ...detail, ...local(Reasons.LOCAL_DEADLINE, Number.NaN, gain) };
    if (!below && !(inp.probeDue && pick !== undefined)) {
      return { ...detail, ...local(Reasons.LOCAL_UNKNOWN, Number.NaN, gain) };
    }
    if (pick === undefined) return { ...detail, ...local(Reasons.LOCAL_BUDGET, Number.NaN, gain) };
    const reason = below ? Reasons.OFFLOAD_THRESHOLD : Reasons.OFFLOAD_PROBE;
    return { ...offload(detail, pick, reason, gain), pDeadline: Number.NaN };
  }
  const floor = inp.pFloor ?? config.deadlineTarget;
  const inTime = candidates.filter(
    (c) =>
      c.pDeadline >= floor &&
      c.meanMs <= facts.budgetLeftMs &&
      (c.utility > config.minGain || ((g === null || tie) && below)),
  );
  const chosen = inTime.filter(fits).sort(byUtility)[0];
  if (chosen !== undefined) return offload(detail, chosen, Reasons.OFFLOAD_GAIN, gain);
  if (inp.probeDue) {
    const probe = worthwhile.filter(fits).sort((a, b) => a.bytes - b.bytes)[0];
    if (probe !== undefined) return offload(detail, probe, Reasons.OFFLOAD_PROBE, gain);
  }
  const refused = inTime.length > 0 ? Reasons.LOCAL_BUDGET : Reasons.LOCAL_DEADLINE;
  const bestP = Math.max(...candidates.map((c) => c.pDeadline));
  return { ...detail, ...local(refused, bestP, gain) };
}

type Detail = Omit<DecisionDetail, keyof PolicyDecision>;

function offload(detail: Detail, c: Candidate, reason: ReasonCode, gain: number): DecisionDetail {
  return {
    ...detail,
    offload: true,
    payload: c.payload,
    reason,
    pDeadline: c.pDeadline,
    expectedGain: gain,
  };
}
