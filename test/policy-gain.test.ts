import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { CascadeError } from '../cascade/errors.ts';
import { gainAt, gainCurve } from '../cascade/policy/gain.ts';
import { type ModelCard, parseModelCard, type ReliabilityBin } from '../models/card.ts';

function card(tier: 'device' | 'gateway' | 'cloud'): ModelCard {
  const text = readFileSync(new URL(`../models/${tier}/card.json`, import.meta.url), 'utf8');
  return parseModelCard(JSON.parse(text), `${tier} card`);
}

function withBins(base: ModelCard, bins: ReliabilityBin[]): ModelCard {
  return { ...base, reliability: bins };
}

const arbBins = fc
  .array(
    fc.record({
      n: fc.integer({ min: 0, max: 500 }),
      accuracy: fc.double({ min: 0, max: 1, noNaN: true }),
      remote: fc.double({ min: 0, max: 1, noNaN: true }),
    }),
    { minLength: 1, maxLength: 15 },
  )
  .map((rows) =>
    rows.map((r, i, all): ReliabilityBin => {
      const lo = i / all.length;
      const hi = (i + 1) / all.length;
      const empty = r.n === 0;
      return {
        lo,
        hi,
        n: r.n,
        accuracy: empty ? null : r.accuracy,
        confidence: empty ? null : (lo + hi) / 2,
        next: { gateway: empty ? null : r.remote, cloud: empty ? null : r.remote },
      };
    }),
  );

describe('gainCurve', () => {
  it('reads the installed device and gateway cards (next tiers gateway and cloud)', () => {
    for (const tier of ['device', 'gateway'] as const) {
      const c = gainCurve(card(tier));
      assert.equal(c.next, tier === 'device' ? 'gateway' : 'cloud');
      assert.ok(c.points.length > 0);
      for (let i = 1; i < c.points.length; i++) {
        assert.ok(c.points[i].confidence > c.points[i - 1].confidence);
        assert.ok(c.points[i].gain <= c.points[i - 1].gain + 1e-12);
      }
    }
  });

  it('refuses the cloud card: nothing to offload to', () => {
    assert.throws(
      () => gainCurve(card('cloud')),
      (e: unknown) => e instanceof CascadeError && e.code === 'POLICY_ERR_CARD',
    );
  });

  it('property: the fitted gain never rises with confidence, for any table', () => {
    const base = card('device');
    fc.assert(
      fc.property(
        arbBins,
        fc.integer({ min: 0, max: 100 }),
        fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: 2, maxLength: 20 }),
        (bins, minN, qs) => {
          const c = gainCurve(withBins(base, bins), minN);
          const sorted = [...qs].sort((a, b) => a - b);
          const gains = sorted.map((q) => gainAt(c, q)?.gain);
          if (c.points.length === 0) return gains.every((g) => g === undefined);
          for (let i = 1; i < gains.length; i++)
            if ((gains[i] as number) > (gains[i - 1] as number) + 1e-12) return false;
          return true;
        },
      ),
      { numRuns: 300 },
    );
  });

  it('pools sparse bins and keeps frame counts', () => {
    const bins: ReliabilityBin[] = [
      { lo: 0.2, hi: 0.4, n: 3, accuracy: 0, confidence: 0.3, next: { gateway: 1, cloud: 1 } },
      { lo: 0.4, hi: 0.6, n: 97, accuracy: 0.5, confidence: 0.5, next: { gateway: 0.6, cloud: 0.6 } },
      { lo: 0.6, hi: 1, n: 900, accuracy: 0.9, confidence: 0.9, next: { gateway: 0.9, cloud: 0.9 } },
    ];
    const c = gainCurve(withBins(card('device'), bins), 20);
    assert.equal(c.points.length, 2);
    assert.equal(c.points[0].n, 100);
    // (3 × 1 + 97 × 0.1) / 100
    assert.ok(Math.abs(c.points[0].gain - 0.127) < 1e-9);
    assert.equal(c.points[1].gain, 0);
  });

  it('pools violators: a gain that rises with confidence is averaged', () => {
    const bins: ReliabilityBin[] = [
      { lo: 0, hi: 0.5, n: 100, accuracy: 0.5, confidence: 0.4, next: { gateway: 0.52, cloud: 0.5 } },
      { lo: 0.5, hi: 1, n: 100, accuracy: 0.8, confidence: 0.8, next: { gateway: 0.9, cloud: 0.8 } },
    ];
    const c = gainCurve(withBins(card('device'), bins), 1);
    assert.equal(c.points.length, 1);
    assert.ok(Math.abs(c.points[0].gain - 0.06) < 1e-9);
  });
});

describe('gainAt', () => {
  const bins: ReliabilityBin[] = [
    { lo: 0, hi: 0.5, n: 100, accuracy: 0.4, confidence: 0.4, next: { gateway: 0.6, cloud: 0.6 } },
    { lo: 0.5, hi: 1, n: 100, accuracy: 0.9, confidence: 0.8, next: { gateway: 0.9, cloud: 0.9 } },
  ];
  const c = gainCurve({ ...card('device'), reliability: bins }, 1);

  it('interpolates between knots and is flat outside them', () => {
    assert.ok(Math.abs((gainAt(c, 0.6)?.gain ?? -1) - 0.1) < 1e-9);
    assert.ok(Math.abs((gainAt(c, 0.1)?.gain ?? -1) - 0.2) < 1e-9);
    assert.equal(gainAt(c, 0.99)?.gain, 0);
  });

  it('is null (unknown) for an empty curve or a non-finite confidence', () => {
    assert.equal(gainAt({ tier: 'device', next: 'gateway', points: [] }, 0.5), null);
    assert.equal(gainAt(c, Number.NaN), null);
  });
});
