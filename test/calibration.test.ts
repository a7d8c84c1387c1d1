import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  argmax,
  ece,
  fitTemperature,
  nll,
  predictions,
  reliability,
  softmaxT,
  TEMPERATURE_MAX,
  TEMPERATURE_MIN,
  topK,
} from '../cascade/calibration.ts';

/** Deterministic uniform [0, 1) stream (LCG), so the synthetic sets are the same on every run. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/**
 * Calibrated synthetic set: logits z with labels drawn from softmax(z), so T = 1 is the truth;
 * the returned logits are z · scale, i.e. over-confident by a factor `scale`.
 */
function synthetic(n: number, classes: number, scale: number, seed = 7) {
  const r = rng(seed);
  const logits = new Float32Array(n * classes);
  const labels = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    const z = new Float32Array(classes);
    const hot = Math.floor(r() * classes);
    for (let k = 0; k < classes; k++) z[k] = (r() - 0.5) * 2 + (k === hot ? 2.5 : 0);
    const p = softmaxT(z, classes, 1);
    let u = r();
    let y = classes - 1;
    for (let k = 0; k < classes; k++) {
      u -= p[k];
      if (u < 0) {
        y = k;
        break;
      }
    }
    labels[i] = y;
    for (let k = 0; k < classes; k++) logits[i * classes + k] = z[k] * scale;
  }
  return { logits, labels };
}

describe('softmaxT', () => {
  it('rows sum to 1 and large logits stay finite', () => {
    const logits = Float32Array.from([1000, 999, -1000, 0, 0, 0, -3e38, 3e38, 0]);
    const p = softmaxT(logits, 3, 1);
    for (let r = 0; r < 3; r++) {
      const row = p.subarray(r * 3, r * 3 + 3);
      assert.ok(row.every(Number.isFinite));
      assert.ok(Math.abs(row[0] + row[1] + row[2] - 1) < 1e-6);
    }
    assert.ok(Math.abs(p[0] - 1 / (1 + Math.exp(-1))) < 1e-6);
    assert.ok(Math.abs(p[3] - 1 / 3) < 1e-6);
    assert.equal(p[7], 1);
  });

  it('higher temperature flattens a row', () => {
    const logits = Float32Array.from([2, 0, -1]);
    assert.ok(softmaxT(logits, 3, 4)[0] < softmaxT(logits, 3, 1)[0]);
    assert.throws(() => softmaxT(logits, 3, 0), RangeError);
    assert.throws(() => softmaxT(logits, 2, 1), RangeError);
  });

  it('property: rows sum to 1 for any finite logits and temperature', () => {
    fc.assert(
      fc.property(
        fc.array(fc.float({ min: -1e4, max: 1e4, noNaN: true }), { minLength: 4, maxLength: 40 }),
        fc.float({ min: Math.fround(0.05), max: 20, noNaN: true }),
        (values, T) => {
          const classes = 4;
          const rows = Math.floor(values.length / classes);
          const p = softmaxT(Float32Array.from(values.slice(0, rows * classes)), classes, T);
          for (let r = 0; r < rows; r++) {
            let s = 0;
            for (let k = 0; k < classes; k++) s += p[r * classes + k];
            if (Math.abs(s - 1) > 1e-5) return false;
          }
          return true;
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe('fitTemperature', () => {
  it('recovers the over-confidence factor of synthetic logits', () => {
    const { logits, labels } = synthetic(4000, 10, 3);
    const T = fitTemperature(logits, labels, 10);
    assert.ok(Math.abs(T - 3) < 0.3, `fitted T = ${T}`);
    assert.ok(nll(logits, labels, 10, T) < nll(logits, labels, 10, 1));
  });

  it('finds T ≈ 1 on calibrated logits and T < 1 on under-confident ones', () => {
    const cal = synthetic(3000, 5, 1, 11);
    assert.ok(Math.abs(fitTemperature(cal.logits, cal.labels, 5) - 1) < 0.15);
    const under = synthetic(3000, 5, 0.5, 12);
    const T = fitTemperature(under.logits, under.labels, 5);
    assert.ok(Math.abs(T - 0.5) < 0.08, `fitted T = ${T}`);
  });

  it('stays in its interval and handles an empty set', () => {
    // Always right with a margin: the NLL keeps falling as T shrinks, so the lower end wins.
    const logits = Float32Array.from([5, 0, 0, 5]);
    const T = fitTemperature(logits, Uint8Array.from([0, 1]), 2);
    assert.ok(Math.abs(T - TEMPERATURE_MIN) < 1e-3, `T = ${T}`);
    assert.ok(T <= TEMPERATURE_MAX);
    assert.equal(fitTemperature(new Float32Array(0), new Uint8Array(0), 3), 1);
    assert.throws(() => fitTemperature(logits, Uint8Array.from([0]), 2), RangeError);
  });
});

describe('ece', () => {
  it('drops after temperature scaling', () => {
    const { logits, labels } = synthetic(4000, 10, 3, 21);
    const T = fitTemperature(logits, labels, 10);
    const before = ece(softmaxT(logits, 10, 1), labels, 10);
    const after = ece(softmaxT(logits, 10, T), labels, 10);
    assert.ok(before > 0.1, `before = ${before}`);
    assert.ok(after < before / 3, `before = ${before}, after = ${after}`);
  });

  it('matches a hand computation', () => {
    // Two samples at confidence 0.9 (one right), one at 0.6 (right), 15 bins.
    const probs = Float32Array.from([0.9, 0.1, 0.9, 0.1, 0.4, 0.6]);
    const labels = Uint8Array.from([0, 1, 1]);
    const expected = (2 / 3) * Math.abs(0.5 - 0.9) + (1 / 3) * Math.abs(1 - 0.6);
    assert.ok(Math.abs(ece(probs, labels, 2) - expected) < 1e-6);
    assert.equal(ece(new Float32Array(0), new Uint8Array(0), 2), 0);
  });
});

describe('reliability', () => {
  it('bins count every sample, including confidence 1', () => {
    const conf = Float32Array.from([0, 0.05, 0.5, 0.95, 1, 1]);
    const correct = Uint8Array.from([0, 1, 1, 1, 1, 0]);
    const bins = reliability(conf, correct);
    assert.equal(bins.length, 10);
    assert.equal(
      bins.reduce((s, b) => s + b.n, 0),
      6,
    );
    assert.equal(bins[0].n, 2);
    assert.equal(bins[0].accuracy, 0.5);
    assert.equal(bins[9].n, 3);
    assert.ok(Math.abs((bins[9].accuracy ?? -1) - 2 / 3) < 1e-9);
    assert.equal(bins[3].accuracy, null);
    assert.equal(bins[3].confidence, null);
    assert.equal(bins[0].next, undefined);
    assert.equal(bins[0].lo, 0);
    assert.equal(bins[9].hi, 1);
  });

  it('reports next-tier accuracy per bin', () => {
    const conf = Float32Array.from([0.1, 0.15, 0.9]);
    const correct = Uint8Array.from([0, 0, 1]);
    const bins = reliability(conf, correct, 5, {
      gateway: Uint8Array.from([1, 0, 1]),
      cloud: Uint8Array.from([1, 1, 0]),
    });
    assert.deepEqual(bins[0].next, { gateway: 0.5, cloud: 1 });
    assert.deepEqual(bins[1].next, { gateway: null, cloud: null });
    assert.deepEqual(bins[4].next, { gateway: 1, cloud: 0 });
    assert.throws(() => reliability(conf, correct, 5, { cloud: new Uint8Array(2) }), RangeError);
  });

  it('property: counts add up to n for any confidences in [0, 1]', () => {
    fc.assert(
      fc.property(
        fc.array(fc.float({ min: 0, max: 1, noNaN: true }), { maxLength: 200 }),
        fc.integer({ min: 1, max: 30 }),
        (cs, b) => {
          const bins = reliability(Float32Array.from(cs), new Uint8Array(cs.length), b);
          return bins.length === b && bins.reduce((s, x) => s + x.n, 0) === cs.length;
        },
      ),
      { numRuns: 100 },
    );
  });
});

describe('argmax / topK / predictions', () => {
  it('pick the largest values, first index on ties', () => {
    const v = Float32Array.from([0.1, 0.7, 0.7, 0.05, 0.9]);
    assert.equal(argmax(v), 4);
    assert.equal(argmax(v, 0, 3), 1);
    assert.equal(argmax(v, 1, 2), 0);
    assert.equal(argmax([], 0, 0), -1);
    assert.deepEqual(
      topK(v, 3).map((r) => r.index),
      [4, 1, 2],
    );
    assert.deepEqual(topK(v, 0), []);
    assert.equal(topK(v, 10).length, 5);
    assert.deepEqual(
      topK(v, 2, 1, 3).map((r) => r.index),
      [0, 1],
    );
    const { pred, conf } = predictions(Float32Array.from([0.2, 0.8, 0.6, 0.4]), 2);
    assert.deepEqual([...pred], [1, 0]);
    assert.ok(Math.abs(conf[0] - 0.8) < 1e-6 && Math.abs(conf[1] - 0.6) < 1e-6);
  });

  it('property: topK agrees with a full sort', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: -5, max: 5 }), { maxLength: 30 }), fc.nat(8), (xs, k) => {
        const expected = xs
          .map((value, index) => ({ index, value }))
          .sort((a, b) => b.value - a.value || a.index - b.index)
          .slice(0, k);
        assert.deepEqual(topK(xs, k), expected);
      }),
      { numRuns: 200 },
    );
  });
});
