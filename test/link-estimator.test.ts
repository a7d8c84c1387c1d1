import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { DEFAULT_POLICY_CONFIG } from '../cascade/policy/config.ts';
import { LinkEstimator } from '../cascade/policy/link-estimator.ts';
import { LoadEstimator } from '../cascade/policy/load-estimator.ts';
import { RobustEwma } from '../cascade/policy/robust-ewma.ts';
import { TailCalibrator } from '../cascade/policy/tail-calibrator.ts';

const CFG = DEFAULT_POLICY_CONFIG.estimator;
const RTT = 10; // propagation, ms
const BYTES = 1000;

/** Deterministic noise in [-1, 1) (LCG), so failures replay with fast-check's seed. */
function noise(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s / 2 ** 32) * 2 - 1;
  };
}

/** Network time of a 1 kB transfer at `perKB` ms/kB with ±10 % noise on the transfer part. */
function net(perKB: number, r: () => number): number {
  return RTT + perKB * (1 + 0.1 * r());
}

/** Predicted network time of a 1 kB transfer. */
function predicted(e: LinkEstimator, now: number): number {
  const s = e.estimate(now);
  return s.rttMs + s.msPerKB * (BYTES / 1000);
}

describe('LinkEstimator', () => {
  it('learns a steady link: network time, bandwidth and a small spread', () => {
    const e = new LinkEstimator(CFG);
    const r = noise(3);
    let t = 0;
    for (let i = 0; i < 60; i++) {
      t += 100;
      e.observe(t, BYTES, net(8, r));
    }
    const s = e.estimate(t);
    assert.ok(s.known);
    assert.ok(Math.abs(predicted(e, t) - (RTT + 8)) < 1.5, `predicted ${predicted(e, t)}`);
    // 8 ms per kB above propagation (minus the window minimum's share) is about 1 Mbit/s.
    assert.ok(s.bandwidthBps > 0.6e6 && s.bandwidthBps < 20e6, `bandwidth ${s.bandwidthBps}`);
    assert.ok(s.msPerKBSd < 3, `sd ${s.msPerKBSd}`);
  });

  it('property: a step change (×3 or more, either way) is tracked within 1 s', () => {
    fc.assert(
      fc.property(
        fc.double({ min: 1, max: 40, noNaN: true }),
        fc.double({ min: 3, max: 10, noNaN: true }),
        fc.boolean(),
        fc.integer({ min: 30, max: 400 }),
        fc.integer({ min: 0, max: 2 ** 31 }),
        (before, factor, up, interval, seed) => {
          const after = up ? before * factor : before / factor;
          const e = new LinkEstimator(CFG);
          const r = noise(seed);
          let t = 0;
          for (let i = 0; i < 40; i++) {
            t += interval;
            e.observe(t, BYTES, net(before, r));
          }
          const step = t;
          while (t + interval <= step + 1000) {
            t += interval;
            e.observe(t, BYTES, net(after, r));
          }
          const want = RTT + after;
          const got = predicted(e, t);
          return Math.abs(got - want) <= 0.35 * want;
        },
      ),
      { numRuns: 200 },
    );
  });

  it('property: one outlier neither moves the estimate much nor counts as a change', () => {
    fc.assert(
      fc.property(
        fc.double({ min: 1, max: 40, noNaN: true }),
        fc.double({ min: 5, max: 100, noNaN: true }),
        fc.integer({ min: 30, max: 400 }),
        fc.integer({ min: 0, max: 2 ** 31 }),
        (level, spike, interval, seed) => {
          const e = new LinkEstimator(CFG);
          const r = noise(seed);
          let t = 0;
          for (let i = 0; i < 40; i++) {
            t += interval;
            e.observe(t, BYTES, net(level, r));
          }
          const changes = e.estimate(t).changes;
          t += interval;
          e.observe(t, BYTES, RTT + level * spike);
          const got = predicted(e, t);
          const want = RTT + level;
          return e.estimate(t).changes === changes && Math.abs(got - want) <= 0.3 * want;
        },
      ),
      { numRuns: 200 },
    );
  });

  it('property: an idle gap keeps the estimate, widens its uncertainty, and forgets it after staleMs', () => {
    fc.assert(
      fc.property(
        fc.double({ min: 1, max: 40, noNaN: true }),
        fc.integer({ min: 1500, max: CFG.staleMs - 1 }),
        fc.integer({ min: 0, max: 2 ** 31 }),
        (level, gap, seed) => {
          const e = new LinkEstimator(CFG);
          const r = noise(seed);
          let t = 0;
          for (let i = 0; i < 30; i++) {
            t += 100;
            e.observe(t, BYTES, net(level, r));
          }
          const fresh = e.estimate(t);
          const before = predicted(e, t);
          const idle = e.estimate(t + gap);
          const stale = e.estimate(t + CFG.staleMs + 1);
          return (
            idle.known &&
            Math.abs(predicted(e, t + gap) - before) < 1e-9 &&
            idle.msPerKBSd > fresh.msPerKBSd &&
            !stale.known &&
            stale.msPerKBSd > idle.msPerKBSd
          );
        },
      ),
      { numRuns: 200 },
    );
  });

  it('a transfer after an idle gap weighs more than one in a busy stream', () => {
    const run = (gap: number) => {
      const e = new LinkEstimator(CFG);
      let t = 0;
      for (let i = 0; i < 30; i++) {
        t += 100;
        e.observe(t, BYTES, RTT + 10);
      }
      e.observe(t + gap, BYTES, RTT + 11.5);
      return predicted(e, t + gap);
    };
    assert.ok(run(3000) > run(100) + 0.5, `${run(3000)} vs ${run(100)}`);
  });

  it('two misses within a second mean the link is slower than the time waited', () => {
    const e = new LinkEstimator(CFG);
    let t = 0;
    for (let i = 0; i < 30; i++) {
      t += 100;
      e.observe(t, BYTES, RTT + 5);
    }
    t += 200;
    e.observeMiss(t, BYTES, 60);
    t += 200;
    e.observeMiss(t, BYTES, 60);
    assert.ok(predicted(e, t) >= 60, `predicted ${predicted(e, t)} after two 60 ms misses`);
    // The link comes back: one normal answer restores the old level at once.
    t += 500;
    e.observe(t, BYTES, RTT + 5);
    assert.ok(predicted(e, t) < 20, `predicted ${predicted(e, t)} after the link came back`);
  });

  it('a miss on an unknown link still teaches something', () => {
    const e = new LinkEstimator(CFG);
    e.observeMiss(100, BYTES, 50);
    const s = e.estimate(100);
    assert.ok(s.known);
    assert.ok(s.msPerKB >= 50);
  });

  it('ignores transfers of no bytes and non-finite times', () => {
    const e = new LinkEstimator(CFG);
    e.observe(1, 0, 10);
    e.observe(2, 100, Number.NaN);
    e.observeMiss(3, 0, 10);
    assert.equal(e.estimate(3).samples, 0);
    assert.equal(e.estimate(3).known, false);
  });

  it('caps the bandwidth of a link that shows no transfer delay', () => {
    const e = new LinkEstimator(CFG);
    for (let i = 1; i <= 10; i++) e.observe(i * 100, BYTES, RTT);
    assert.equal(e.estimate(1000).bandwidthBps, CFG.maxBandwidthBps);
  });
});

describe('RobustEwma', () => {
  const opts = { ...CFG, minDeviation: 0.01, minDeviationRatio: 0, halfLifeMs: 0 };
  const steady = () => {
    const e = new RobustEwma(opts);
    for (let i = 0; i < 20; i++) e.update(i * 10, 10 + (i % 2));
    return e;
  };

  it('leaves a lone outlier out of the body and restarts on a sustained step', () => {
    const e = steady();
    const m = e.mean;
    assert.equal(e.update(200, 100), 'outlier');
    assert.equal(e.mean, m);
    assert.equal(e.update(210, 100), 'change');
    assert.ok(Math.abs(e.mean - 100) < 1e-9);
    assert.equal(e.changes, 1);
  });

  it('outliers in a row add up however far apart; with inliers between, only within the window', () => {
    const a = steady();
    assert.equal(a.update(1000, 100), 'outlier');
    assert.equal(a.update(1000 + 10 * opts.changeWindowMs, 100), 'change');
    const b = steady();
    assert.equal(b.update(1000, 100), 'outlier');
    assert.equal(b.update(1010, 10.5), 'inlier');
    assert.equal(b.update(1000 + opts.changeWindowMs + 1, 100), 'outlier');
    assert.equal(b.changes, 0);
    assert.equal(b.update(1000 + opts.changeWindowMs + 2, 100), 'change');
  });

  it('after a step up, one sample back at the old level restores it', () => {
    const e = steady();
    e.update(300, 100);
    e.update(310, 100);
    assert.equal(e.update(320, 10.5), 'restore');
    assert.ok(e.mean < 11);
  });

  it('a censored sample never lowers the mean; two in a row raise it past the bound', () => {
    const e = new RobustEwma(opts);
    for (let i = 0; i < 20; i++) e.update(i * 10, 50);
    const m = e.mean;
    e.update(300, 1, true);
    assert.ok(e.mean >= m);
    e.update(310, 1, true);
    assert.ok(e.mean > m + opts.outlierK * opts.minDeviation);
  });

  it('rejects non-finite samples', () => {
    assert.throws(() => new RobustEwma(opts).update(0, Number.POSITIVE_INFINITY), RangeError);
  });
});

describe('LoadEstimator', () => {
  it('tracks queue and service time and reports unknown before any answer', () => {
    const l = new LoadEstimator(CFG);
    assert.equal(l.estimate(0).known, false);
    for (let i = 1; i <= 20; i++) l.observe(i * 50, 2, 1.5);
    const s = l.estimate(1000);
    assert.ok(s.known);
    assert.ok(Math.abs(s.queueMs - 2) < 0.1 && Math.abs(s.serviceMs - 1.5) < 0.1);
    assert.equal(l.estimate(1000 + CFG.staleMs + 1).known, false);
  });

  it('reads negative reports as zero', () => {
    const l = new LoadEstimator(CFG);
    l.observe(1, -5, -1);
    assert.equal(l.estimate(1).queueMs, 0);
    assert.equal(l.estimate(1).serviceMs, 0);
  });
});

describe('TailCalibrator', () => {
  it('falls back to the normal CDF without residuals and learns a heavy tail from misses', () => {
    const t = new TailCalibrator({ halfLifeMs: 10_000, prior: 10, capacity: 100 });
    assert.ok(Math.abs(t.cdf(1.645, 0) - 0.95) < 1e-3);
    for (let i = 0; i < 40; i++) t.add(i * 10, i % 5 === 0 ? Number.POSITIVE_INFINITY : 0);
    // One transfer in five was late: no threshold can claim more than ~0.85.
    assert.ok(t.cdf(50, 400) < 0.86, `${t.cdf(50, 400)}`);
    // Monotone in the threshold.
    assert.ok(t.cdf(-1, 400) <= t.cdf(0, 400) && t.cdf(0, 400) <= t.cdf(3, 400));
  });

  it('forgets old misses with time and keeps at most `capacity` residuals', () => {
    const t = new TailCalibrator({ halfLifeMs: 1000, prior: 10, capacity: 8 });
    for (let i = 0; i < 8; i++) t.add(0, Number.POSITIVE_INFINITY);
    assert.ok(t.cdf(5, 0) < 0.6);
    assert.ok(t.cdf(5, 20_000) > 0.99);
    t.add(1, 0);
    assert.equal(t.size, 8);
    t.add(2, Number.NaN);
    assert.equal(t.size, 8);
  });
});
