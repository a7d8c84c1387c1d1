/**
 * Expected accuracy gain of handing a frame to the next tier, as a function of this tier's
 * calibrated confidence, read from the reliability table `cascade distill` writes into the model
 * card: per confidence bin, P(this tier correct) and P(next tier correct) on the same frames.
 *
 * The raw per-bin gain is noisy (bins of a few hundred validation frames) and need not fall with
 * confidence; the decision must (a more confident frame is never more worth offloading). So:
 * sparse bins are pooled with their neighbours, then the gain is fitted non-increasing in
 * confidence by pool-adjacent-violators (weighted by frames), then interpolated linearly between
 * the pooled bins' mean confidences. Pure.
 */
import type { ModelCard } from '../../models/card.ts';
import { CascadeError, ErrorCodes } from '../errors.ts';

/** The tier that answers when this one offloads. */
export const NEXT_TIER: Readonly<Record<string, string | undefined>> = Object.freeze({
  device: 'gateway',
  gateway: 'cloud',
});

/** One knot of the gain curve. */
export interface GainPoint {
  /** Mean calibrated confidence of the pooled bins. */
  confidence: number;
  /** Fitted P(next tier correct) − P(this tier correct), non-increasing in confidence. */
  gain: number;
  /** Raw P(this tier correct) and P(next tier correct) of the pooled bins. */
  local: number;
  remote: number;
  /** Validation frames behind the knot. */
  n: number;
}

/** The gain curve of one card; `points` is empty when the card has no usable table. */
export interface GainCurve {
  tier: string;
  next: string;
  points: GainPoint[];
}

interface Block {
  n: number;
  conf: number;
  local: number;
  remote: number;
}

function pool(a: Block, b: Block): Block {
  const n = a.n + b.n;
  return {
    n,
    conf: (a.conf * a.n + b.conf * b.n) / n,
    local: (a.local * a.n + b.local * b.n) / n,
    remote: (a.remote * a.n + b.remote * b.n) / n,
  };
}

/**
 * Builds the gain curve of a device or gateway card.
 * @param minBinSamples bins with fewer frames are pooled with a neighbour (default 20).
 * @throws {CascadeError} POLICY_ERR_CARD for a tier with no next tier (the cloud).
 */
export function gainCurve(card: ModelCard, minBinSamples = 20): GainCurve {
  const next = NEXT_TIER[card.tier];
  if (next === undefined) {
    throw new CascadeError(
      ErrorCodes.POLICY_ERR_CARD,
      `model card ${card.name}: tier "${card.tier}" has no next tier to offload to`,
    );
  }
  const blocks: Block[] = [];
  for (const bin of card.reliability) {
    const remote = bin.next?.[next];
    if (bin.n <= 0 || bin.accuracy === null || remote === null || remote === undefined) continue;
    blocks.push({ n: bin.n, conf: bin.confidence ?? (bin.lo + bin.hi) / 2, local: bin.accuracy, remote });
  }
  blocks.sort((a, b) => a.conf - b.conf);
  // Pool sparse bins into their neighbour towards the middle of the table.
  const pooled: Block[] = [];
  for (const b of blocks) {
    const last = pooled[pooled.length - 1];
    if (last !== undefined && last.n < minBinSamples) pooled[pooled.length - 1] = pool(last, b);
    else pooled.push(b);
  }
  if (pooled.length > 1 && pooled[pooled.length - 1].n < minBinSamples) {
    const tail = pooled.pop() as Block;
    pooled[pooled.length - 1] = pool(pooled[pooled.length - 1], tail);
  }
  // Pool adjacent violators: gain must not increase with confidence.
  const fit: { block: Block; gain: number; members: number }[] = [];
  for (const b of pooled) {
    fit.push({ block: b, gain: b.remote - b.local, members: 1 });
    while (fit.length > 1 && fit[fit.length - 2].gain < fit[fit.length - 1].gain) {
      const hi = fit.pop() as (typeof fit)[number];
      const lo = fit[fit.length - 1];
      const block = pool(lo.block, hi.block);
      fit[fit.length - 1] = { block, gain: block.remote - block.local, members: lo.members + hi.members };
    }
  }
  return {
    tier: card.tier,
    next,
    points: fit.map((f) => ({
      confidence: f.block.conf,
      gain: f.gain,
      local: f.block.local,
      remote: f.block.remote,
      n: f.block.n,
    })),
  };
}

/** Gain, and this and the next tier's expected accuracy, at one confidence. */
export interface GainAt {
  gain: number;
  local: number;
  remote: number;
}

/**
 * Reads the curve at a confidence: linear between knots, flat beyond the first and last.
 * `local` and `remote` are interpolated the same way (so remote − local may differ slightly from
 * the fitted gain where violators were pooled).
 * @returns null when the curve is empty (unknown: the caller falls back to the card's threshold).
 */
export function gainAt(curve: GainCurve, confidence: number): GainAt | null {
  const p = curve.points;
  if (p.length === 0 || !Number.isFinite(confidence)) return null;
  if (confidence <= p[0].confidence) return { gain: p[0].gain, local: p[0].local, remote: p[0].remote };
  const last = p[p.length - 1];
  if (confidence >= last.confidence) return { gain: last.gain, local: last.local, remote: last.remote };
  let i = 1;
  while (p[i].confidence < confidence) i++;
  const a = p[i - 1];
  const b = p[i];
  const t = (confidence - a.confidence) / (b.confidence - a.confidence);
  return {
    gain: a.gain + t * (b.gain - a.gain),
    local: a.local + t * (b.local - a.local),
    remote: a.remote + t * (b.remote - a.remote),
  };
}
