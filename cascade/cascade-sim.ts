/**
 * Offline simulation of the three-tier cascade on recorded predictions, and the choice of the
 * two accept thresholds written into the model cards. Pure: no I/O, no models.
 *
 * Routing rule (the same one the device and gateway apply at run time): the device answers when
 * its calibrated confidence is ≥ the device threshold; otherwise the gateway answers when its
 * confidence is ≥ the gateway threshold; otherwise the cloud teacher answers.
 */

/** One tier's per-sample top-1 class and calibrated confidence. */
export interface TierPredictions {
  pred: Uint8Array;
  conf: Float32Array;
}

/** Predictions of all three tiers on the same samples, in the same order. */
export interface CascadeTiers {
  device: TierPredictions;
  gateway: TierPredictions;
  cloud: TierPredictions;
}

/** Accept thresholds on calibrated confidence, each in [0, 1]. */
export interface Thresholds {
  device: number;
  gateway: number;
}

/** Outcome of a cascade run. All values are fractions of the samples, in [0, 1]. */
export interface CascadeResult {
  accuracy: number;
  /** Where samples were answered; the three sum to 1. */
  resolved: { device: number; gateway: number; cloud: number };
}

/** Relative cost of a frame reaching the cloud, in units of a frame leaving the device. */
export const CLOUD_COST_WEIGHT = 4;

/** Result of {@link chooseThresholds}. */
export interface ThresholdChoice extends CascadeResult {
  thresholds: Thresholds;
  /** Whether the accuracy constraint holds; when false the thresholds give the best accuracy found. */
  feasible: boolean;
  /** Cloud (teacher) accuracy alone: the reference of the constraint. */
  teacherAccuracy: number;
  /** offloaded-from-device + CLOUD_COST_WEIGHT × reaching-cloud, as fractions. */
  cost: number;
}

function sizeOf(tiers: CascadeTiers, labels: Uint8Array): number {
  const n = labels.length;
  for (const name of ['device', 'gateway', 'cloud'] as const) {
    const t = tiers[name];
    if (t.pred.length !== n || t.conf.length !== n) {
      throw new RangeError(
        `${name}: ${t.pred.length} predictions and ${t.conf.length} confidences for ${n} labels`,
      );
    }
  }
  return n;
}

/**
 * Runs the cascade routing rule over recorded predictions.
 * @param labels true classes, same order as the predictions.
 * @returns accuracy and where samples were resolved; all zero for an empty set.
 * @throws {RangeError} if array lengths differ.
 */
export function runCascade(tiers: CascadeTiers, labels: Uint8Array, thresholds: Thresholds): CascadeResult {
  const n = sizeOf(tiers, labels);
  let correct = 0;
  let device = 0;
  let gateway = 0;
  for (let i = 0; i < n; i++) {
    let pred: number;
    if (tiers.device.conf[i] >= thresholds.device) {
      device++;
      pred = tiers.device.pred[i];
    } else if (tiers.gateway.conf[i] >= thresholds.gateway) {
      gateway++;
      pred = tiers.gateway.pred[i];
    } else {
      pred = tiers.cloud.pred[i];
    }
    if (pred === labels[i]) correct++;
  }
  if (n === 0) return { accuracy: 0, resolved: { device: 0, gateway: 0, cloud: 0 } };
  return {
    accuracy: correct / n,
    resolved: { device: device / n, gateway: gateway / n, cloud: (n - device - gateway) / n },
  };
}

/**
 * Segment tree over the gateway's distinct confidence levels (ascending). Leaf j holds, for the
 * samples still offloaded by the device whose gateway confidence is level j, the accuracy change
 * if the cloud answered them instead of the gateway (Σ cloudCorrect − gatewayCorrect) and their
 * count. `firstPrefix` finds the fewest low levels that must go to the cloud to gain `need`.
 */
class PrefixTree {
  private readonly size: number;
  private readonly sum: Float64Array;
  private readonly best: Float64Array; // max over non-empty prefixes of the node's range
  private readonly cnt: Float64Array;

  constructor(readonly leaves: number) {
    let size = 1;
    while (size < Math.max(1, leaves)) size *= 2;
    this.size = size;
    this.sum = new Float64Array(2 * size);
    this.best = new Float64Array(2 * size);
    this.cnt = new Float64Array(2 * size);
  }

  add(leaf: number, delta: number, count: number): void {
    let i = leaf + this.size;
    this.sum[i] += delta;
    this.best[i] = this.sum[i];
    this.cnt[i] += count;
    for (i >>= 1; i >= 1; i >>= 1) {
      const l = 2 * i;
      this.sum[i] = this.sum[l] + this.sum[l + 1];
      this.best[i] = Math.max(this.best[l], this.sum[l] + this.best[l + 1]);
      this.cnt[i] = this.cnt[l] + this.cnt[l + 1];
    }
  }

  /** The shortest prefix with the largest sum (the empty prefix, sum 0, included). */
  maxPrefix(): Prefix {
    if (this.leaves === 0 || this.best[1] <= 0) return { k: 0, count: 0, gain: 0 };
    return this.firstPrefix(this.best[1]) ?? { k: 0, count: 0, gain: 0 };
  }

  /** The shortest prefix whose sum is ≥ need; null if there is none. */
  firstPrefix(need: number): Prefix | null {
    if (need <= 0) return { k: 0, count: 0, gain: 0 };
    if (this.leaves === 0 || this.best[1] < need) return null;
    let i = 1;
    let acc = 0;
    let count = 0;
    while (i < this.size) {
      const l = 2 * i;
      if (acc + this.best[l] >= need) {
        i = l;
      } else {
        acc += this.sum[l];
        count += this.cnt[l];
        i = l + 1;
      }
    }
    // Padding leaves add nothing, so the first hit is always a real leaf.
    return { k: i - this.size + 1, count: count + this.cnt[i], gain: acc + this.sum[i] };
  }
}

/** A prefix of the gateway levels sent to the cloud: k levels, `count` samples, accuracy `gain`. */
interface Prefix {
  k: number;
  count: number;
  gain: number;
}

/** A threshold pair under consideration, as level indices, with its correct count and cost. */
interface Candidate {
  dLevel: number;
  k: number;
  correct: number;
  cost: number;
}

/** Distinct values of `conf` clamped to [0, 1], plus 1 ("accept nothing" when all are below 1), ascending. */
function levels(conf: Float32Array): Float64Array {
  const v = Array.from(conf, (c) => Math.min(1, Math.max(0, c)));
  v.push(1);
  v.sort((a, b) => a - b);
  const out: number[] = [];
  for (const x of v) if (out.length === 0 || x !== out[out.length - 1]) out.push(x);
  return Float64Array.from(out);
}

/** Index of `x` in the ascending, distinct `lv` (x is one of its values). */
function levelIndex(lv: Float64Array, x: number): number {
  const c = Math.min(1, Math.max(0, x));
  let lo = 0;
  let hi = lv.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (lv[mid] < c) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * Chooses the (device, gateway) accept thresholds that offload least while the cascade stays
 * within `epsilon` of the teacher's accuracy on these samples.
 *
 * Objective: minimise cost = (fraction leaving the device) + {@link CLOUD_COST_WEIGHT} × (fraction
 * reaching the cloud): a cloud round trip costs the radio hop to the gateway and a WAN hop and
 * the teacher's compute, so it weighs more. Ties go to the higher accuracy.
 * Constraint: cascade accuracy ≥ teacher accuracy − epsilon.
 *
 * Every observed confidence is a candidate threshold for its tier, plus 1 (accept nothing); no
 * other value changes the routing. The search is exact over all pairs in O(n log n): the device
 * threshold sweeps down once while a segment tree over the gateway levels answers, for each, the
 * lowest gateway threshold that meets the constraint.
 * @param labels true classes, same order as the predictions.
 * @param opts.epsilon allowed accuracy loss against the teacher, as a fraction; default 0.003.
 * @returns the chosen pair with its accuracy, resolution and cost; when no pair meets the
 *   constraint, the pair with the best accuracy (then lowest cost) and `feasible: false`.
 * @throws {RangeError} if array lengths differ, the set is empty, a confidence is NaN or epsilon is negative.
 */
export function chooseThresholds(
  tiers: CascadeTiers,
  labels: Uint8Array,
  opts: { epsilon?: number } = {},
): ThresholdChoice {
  const epsilon = opts.epsilon ?? 0.003;
  if (!(epsilon >= 0)) throw new RangeError(`epsilon must be ≥ 0, received ${epsilon}`);
  const n = sizeOf(tiers, labels);
  if (n === 0) throw new RangeError('chooseThresholds needs at least one sample');
  for (const name of ['device', 'gateway', 'cloud'] as const) {
    if (tiers[name].conf.some(Number.isNaN)) throw new RangeError(`${name}: confidences contain NaN`);
  }
  const { device, gateway, cloud } = tiers;
  const dOk = new Uint8Array(n);
  const gOk = new Uint8Array(n);
  const cOk = new Uint8Array(n);
  let teacherCorrect = 0;
  for (let i = 0; i < n; i++) {
    dOk[i] = device.pred[i] === labels[i] ? 1 : 0;
    gOk[i] = gateway.pred[i] === labels[i] ? 1 : 0;
    cOk[i] = cloud.pred[i] === labels[i] ? 1 : 0;
    teacherCorrect += cOk[i];
  }
  // In correct-answer counts; the small slack absorbs floating-point error in epsilon · n.
  const target = teacherCorrect - epsilon * n - 1e-9;

  const gLevels = levels(gateway.conf);
  const dLevels = levels(device.conf);
  const gLeaf = Int32Array.from(gateway.conf, (c) => levelIndex(gLevels, c));
  // The top gateway level can never go to the cloud (its threshold would exceed 1), so the tree
  // covers the levels below it only.
  const tree = new PrefixTree(gLevels.length - 1);
  const top = gLevels.length - 1;

  // State: device accepts D, the rest R is offloaded. Correct answers = Σ_D dOk + Σ_R gOk +
  // (gain of sending the lowest-k gateway levels of R to the cloud).
  let deviceCorrect = 0;
  let restGatewayCorrect = 0;
  let offloaded = n;
  for (let i = 0; i < n; i++) {
    restGatewayCorrect += gOk[i];
    if (gLeaf[i] < top) tree.add(gLeaf[i], cOk[i] - gOk[i], 1);
  }

  // Samples by device confidence, descending: the sweep moves them from R to D in this order.
  const order = Array.from({ length: n }, (_, i) => i);
  const dConf = Float64Array.from(device.conf, (c) => Math.min(1, Math.max(0, c)));
  order.sort((a, b) => dConf[b] - dConf[a]);

  let best: Candidate | null = null;
  let fallback: Candidate | null = null;
  let next = 0;
  for (let li = dLevels.length - 1; li >= 0; li--) {
    const t = dLevels[li];
    while (next < n && dConf[order[next]] >= t) {
      const i = order[next++];
      deviceCorrect += dOk[i];
      restGatewayCorrect -= gOk[i];
      offloaded--;
      if (gLeaf[i] < top) tree.add(gLeaf[i], gOk[i] - cOk[i], -1);
    }
    const base = deviceCorrect + restGatewayCorrect;
    const hit = tree.firstPrefix(target - base);
    if (hit) {
      const cost = offloaded + CLOUD_COST_WEIGHT * hit.count;
      const correct = base + hit.gain;
      if (!best || cost < best.cost || (cost === best.cost && correct > best.correct)) {
        best = { dLevel: li, k: hit.k, correct, cost };
      }
    }
    if (!best) {
      const m = tree.maxPrefix();
      const correct = base + m.gain;
      const cost = offloaded + CLOUD_COST_WEIGHT * m.count;
      if (!fallback || correct > fallback.correct || (correct === fallback.correct && cost < fallback.cost)) {
        fallback = { dLevel: li, k: m.k, correct, cost };
      }
    }
  }

  const pick = best ?? fallback!;
  const thresholds = { device: dLevels[pick.dLevel], gateway: gLevels[pick.k] };
  // Recompute from the rule itself so the reported numbers are exactly what the thresholds do.
  const result = runCascade(tiers, labels, thresholds);
  return {
    ...result,
    thresholds,
    feasible: best !== null,
    teacherAccuracy: teacherCorrect / n,
    cost: result.resolved.gateway + result.resolved.cloud + CLOUD_COST_WEIGHT * result.resolved.cloud,
  };
}
