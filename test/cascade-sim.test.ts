import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  type CascadeTiers,
  CLOUD_COST_WEIGHT,
  chooseThresholds,
  runCascade,
  type TierPredictions,
} from '../cascade/cascade-sim.ts';

function tier(pred: number[], conf: number[]): TierPredictions {
  return { pred: Uint8Array.from(pred), conf: Float32Array.from(conf) };
}

/** Random tiers where higher tiers are more often right and confidence tracks correctness. */
function randomCase(
  n: number,
  seed: number,
  levels: number,
  reach = true,
): { tiers: CascadeTiers; labels: Uint8Array } {
  let s = seed >>> 0;
  const r = () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
  const labels = Uint8Array.from({ length: n }, () => Math.floor(r() * 3));
  const make = (pRight: number): TierPredictions => {
    const pred = new Uint8Array(n);
    const conf = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const right = r() < pRight;
      pred[i] = right ? labels[i] : (labels[i] + 1) % 3;
      // Few distinct levels so ties are exercised.
      const c = right ? 0.5 + r() * 0.5 : r() * 0.8;
      // Below 1 unless `reach` is false, so that the cloud can always be reached.
      conf[i] = Math.min(reach ? 0.99 : 1, Math.round(c * levels) / levels);
    }
    return { pred, conf };
  };
  return { tiers: { device: make(0.6), gateway: make(0.8), cloud: make(0.93) }, labels };
}

/** Every pair of candidate thresholds, evaluated by the routing rule itself. */
function bruteForce(tiers: CascadeTiers, labels: Uint8Array, epsilon: number) {
  const cands = (c: Float32Array) => [...new Set([...c, 1])];
  const teacher = runCascade(tiers, labels, { device: 2, gateway: 2 }).accuracy;
  let best: { cost: number; accuracy: number } | null = null;
  let bestAcc = 0;
  for (const d of cands(tiers.device.conf)) {
    for (const g of cands(tiers.gateway.conf)) {
      const r = runCascade(tiers, labels, { device: d, gateway: g });
      bestAcc = Math.max(bestAcc, r.accuracy);
      const cost = r.resolved.gateway + r.resolved.cloud + CLOUD_COST_WEIGHT * r.resolved.cloud;
      if (r.accuracy >= teacher - epsilon - 1e-12 && (!best || cost < best.cost - 1e-12)) {
        best = { cost, accuracy: r.accuracy };
      }
    }
  }
  return { best, bestAcc, teacher };
}

describe('runCascade', () => {
  it('routes by the two thresholds', () => {
    const labels = Uint8Array.from([0, 1, 2, 0]);
    const tiers: CascadeTiers = {
      device: tier([0, 0, 0, 1], [0.9, 0.4, 0.3, 0.2]),
      gateway: tier([0, 1, 0, 1], [0.5, 0.95, 0.6, 0.3]),
      cloud: tier([0, 1, 2, 0], [1, 1, 1, 1]),
    };
    const r = runCascade(tiers, labels, { device: 0.8, gateway: 0.6 });
    assert.deepEqual(r.resolved, { device: 0.25, gateway: 0.5, cloud: 0.25 });
    assert.equal(r.accuracy, 0.75);
    assert.deepEqual(runCascade(tiers, labels, { device: 0, gateway: 0 }).resolved, {
      device: 1,
      gateway: 0,
      cloud: 0,
    });
    assert.throws(() => runCascade(tiers, labels.subarray(1), { device: 0, gateway: 0 }), RangeError);
  });
});

describe('chooseThresholds', () => {
  it('meets the constraint and no cheaper feasible pair exists (brute force)', () => {
    for (let seed = 1; seed <= 12; seed++) {
      const { tiers, labels } = randomCase(60, seed, seed % 2 ? 10 : 1000);
      const eps = seed % 3 === 0 ? 0 : 0.02;
      const choice = chooseThresholds(tiers, labels, { epsilon: eps });
      const bf = bruteForce(tiers, labels, eps);
      assert.ok(bf.best, 'accepting nothing is always feasible with a teacher-only cascade');
      assert.equal(choice.feasible, true);
      assert.ok(choice.accuracy >= bf.teacher - eps - 1e-12, `seed ${seed}: accuracy ${choice.accuracy}`);
      assert.ok(
        Math.abs(choice.cost - bf.best.cost) < 1e-9,
        `seed ${seed}: ${choice.cost} vs ${bf.best.cost}`,
      );
      const again = runCascade(tiers, labels, choice.thresholds);
      assert.deepEqual(again.resolved, choice.resolved);
      assert.ok(choice.thresholds.device >= 0 && choice.thresholds.device <= 1);
      assert.ok(choice.thresholds.gateway >= 0 && choice.thresholds.gateway <= 1);
    }
  });

  it('property: optimal on random small cases', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 40 }),
        fc.integer(),
        fc.integer({ min: 1, max: 20 }),
        (n, seed, lv) => {
          // Coarse levels reach confidence 1 often: then the cloud may be out of reach (infeasible).
          const { tiers, labels } = randomCase(n, seed, lv, lv > 3);
          const choice = chooseThresholds(tiers, labels, { epsilon: 0.01 });
          const bf = bruteForce(tiers, labels, 0.01);
          if (bf.best === null) return !choice.feasible && Math.abs(choice.accuracy - bf.bestAcc) < 1e-9;
          return choice.feasible && Math.abs(choice.cost - bf.best.cost) < 1e-9;
        },
      ),
      { numRuns: 60 },
    );
  });

  it('keeps everything on the device when it is as good as the teacher', () => {
    const labels = Uint8Array.from([0, 1, 2]);
    const right = tier([0, 1, 2], [0.7, 0.8, 0.9]);
    const choice = chooseThresholds({ device: right, gateway: right, cloud: right }, labels);
    assert.deepEqual(choice.resolved, { device: 1, gateway: 0, cloud: 0 });
    assert.equal(choice.cost, 0);
    assert.equal(choice.thresholds.device, Math.fround(0.7));
  });

  it('flags infeasible when the cloud cannot be reached and returns the most accurate pair', () => {
    // Confidence 1 everywhere: no threshold ≤ 1 can refuse a sample, so the device always answers.
    const labels = Uint8Array.from([0, 1, 2, 0]);
    const tiers: CascadeTiers = {
      device: tier([0, 0, 0, 0], [1, 1, 1, 1]),
      gateway: tier([0, 1, 2, 0], [1, 1, 1, 1]),
      cloud: tier([0, 1, 2, 0], [1, 1, 1, 1]),
    };
    const choice = chooseThresholds(tiers, labels, { epsilon: 0 });
    assert.equal(choice.feasible, false);
    assert.equal(choice.teacherAccuracy, 1);
    assert.equal(choice.accuracy, 0.5);
  });

  it('infeasible with a partly reachable cloud: best accuracy wins over cost', () => {
    const labels = Uint8Array.from([0, 1, 2]);
    const tiers: CascadeTiers = {
      device: tier([0, 0, 0], [1, 0.5, 1]),
      gateway: tier([0, 1, 0], [1, 1, 1]),
      cloud: tier([0, 1, 2], [1, 1, 1]),
    };
    const choice = chooseThresholds(tiers, labels, { epsilon: 0 });
    assert.equal(choice.feasible, false);
    assert.ok(Math.abs(choice.accuracy - 2 / 3) < 1e-9);
    assert.deepEqual(choice.resolved, { device: 2 / 3, gateway: 1 / 3, cloud: 0 });
  });

  it('rejects bad input', () => {
    const t = tier([0], [0.5]);
    assert.throws(() => chooseThresholds({ device: t, gateway: t, cloud: t }, new Uint8Array(0)), RangeError);
    assert.throws(
      () => chooseThresholds({ device: t, gateway: t, cloud: t }, Uint8Array.from([0]), { epsilon: -1 }),
      RangeError,
    );
    const nan = tier([0], [Number.NaN]);
    assert.throws(
      () => chooseThresholds({ device: nan, gateway: t, cloud: t }, Uint8Array.from([0])),
      RangeError,
    );
  });

  it('scales to 10 000 samples quickly', () => {
    const { tiers, labels } = randomCase(10000, 99, 100000);
    const t0 = performance.now();
    const choice = chooseThresholds(tiers, labels);
    assert.ok(performance.now() - t0 < 2000);
    assert.ok(choice.feasible);
  });
});
