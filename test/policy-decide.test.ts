import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { DEFAULT_POLICY_CONFIG, mergePolicyConfig, type PolicyConfig } from '../cascade/policy/config.ts';
import { type DecisionInputs, deadlineProbability, decideFrame } from '../cascade/policy/decide.ts';
import { type GainCurve, gainCurve } from '../cascade/policy/gain.ts';
import type { LinkEstimate } from '../cascade/policy/link-estimator.ts';
import type { LoadEstimate } from '../cascade/policy/load-estimator.ts';
import { normalCdf } from '../cascade/policy/normal.ts';
import { type ModelCard, parseModelCard } from '../models/card.ts';

const deviceCard = parseModelCard(
  JSON.parse(readFileSync(new URL('../models/device/card.json', import.meta.url), 'utf8')),
  'device card',
);

/** A device card with a chosen reliability table: gain 0.3 at low confidence, none at the top. */
function syntheticCard(): ModelCard {
  const bins = [
    { lo: 0.2, hi: 0.4, n: 100, accuracy: 0.3, confidence: 0.3, next: { gateway: 0.6, cloud: 0.65 } },
    { lo: 0.4, hi: 0.6, n: 100, accuracy: 0.5, confidence: 0.5, next: { gateway: 0.7, cloud: 0.72 } },
    { lo: 0.6, hi: 0.8, n: 100, accuracy: 0.7, confidence: 0.7, next: { gateway: 0.75, cloud: 0.76 } },
    { lo: 0.8, hi: 1, n: 1000, accuracy: 0.95, confidence: 0.95, next: { gateway: 0.95, cloud: 0.95 } },
  ];
  return { ...deviceCard, reliability: bins, thresholds: { accept: 0.6 } };
}

function link(bandwidthBps: number, opts: Partial<LinkEstimate> = {}): LinkEstimate {
  const msPerKB = 8e6 / bandwidthBps;
  return {
    known: true,
    rttMs: 10,
    msPerKB,
    msPerKBSd: 0.2 * msPerKB,
    bandwidthBps,
    bandwidthCv: 0.2,
    samples: 50,
    changes: 0,
    lastSampleAt: 0,
    ...opts,
  };
}

const LOAD: LoadEstimate = { known: true, queueMs: 2, queueSdMs: 0.5, serviceMs: 1, serviceSdMs: 0.2 };

function inputs(over: Partial<DecisionInputs> & { curve?: GainCurve } = {}): DecisionInputs {
  const card = syntheticCard();
  return {
    facts: { confidence: 0.3, budgetLeftMs: 50, payloadBytes: { tensor: 900 } },
    curve: gainCurve(card),
    accept: card.thresholds.accept,
    link: link(10e6),
    load: LOAD,
    config: DEFAULT_POLICY_CONFIG,
    bucketBytes: Number.POSITIVE_INFINITY,
    probeDue: false,
    ...over,
  };
}

describe('decideFrame: reasons', () => {
  it('offloads an unsure frame on a good link, with its gain and deadline probability', () => {
    const d = decideFrame(inputs());
    assert.equal(d.offload, true);
    assert.equal(d.reason, 'offload:gain');
    assert.equal(d.payload, 'tensor');
    assert.ok(d.pDeadline > 0.99);
    assert.ok(Math.abs(d.expectedGain - 0.3) < 1e-9);
  });

  it('keeps a confident frame (no gain) and a frame whose gain is below minGain', () => {
    assert.equal(
      decideFrame(inputs({ facts: { confidence: 0.97, budgetLeftMs: 50, payloadBytes: { tensor: 900 } } }))
        .reason,
      'local:confident',
    );
    const config = mergePolicyConfig(DEFAULT_POLICY_CONFIG, { minGain: 0.5 });
    assert.equal(decideFrame(inputs({ config })).reason, 'local:nogain');
  });

  it('keeps the frame when the answer cannot come back in time, unless a probe is due', () => {
    const slow = inputs({ link: link(100e3) }); // 80 ms per kB
    assert.equal(decideFrame(slow).reason, 'local:deadline');
    const probe = decideFrame({ ...slow, probeDue: true });
    assert.equal(probe.reason, 'offload:probe');
    assert.equal(probe.offload, true);
    assert.equal(
      decideFrame(inputs({ facts: { confidence: 0.3, budgetLeftMs: 0, payloadBytes: { tensor: 900 } } }))
        .reason,
      'local:deadline',
    );
  });

  it('keeps the frame when the byte budget has no room', () => {
    const d = decideFrame(inputs({ bucketBytes: 500 }));
    assert.equal(d.reason, 'local:budget');
    assert.equal(d.offload, false);
  });

  it('falls back to the card threshold on an unknown link (and probes above it)', () => {
    const unknown = link(10e6, { known: false });
    assert.equal(decideFrame(inputs({ link: unknown })).reason, 'offload:threshold');
    const above = inputs({
      link: unknown,
      facts: { confidence: 0.65, budgetLeftMs: 50, payloadBytes: { tensor: 900 } },
    });
    assert.equal(decideFrame(above).reason, 'local:unknown');
    assert.equal(decideFrame({ ...above, probeDue: true }).reason, 'offload:probe');
    assert.ok(Number.isNaN(decideFrame(inputs({ link: unknown })).pDeadline));
  });

  it('falls back to the card threshold when the card has no reliability for the next tier', () => {
    const bare = { ...syntheticCard(), reliability: [] };
    const curve = gainCurve(bare);
    const facts = (confidence: number) => ({ confidence, budgetLeftMs: 50, payloadBytes: { tensor: 900 } });
    assert.equal(decideFrame(inputs({ curve, facts: facts(0.5) })).offload, true);
    assert.equal(decideFrame(inputs({ curve, facts: facts(0.7) })).reason, 'local:confident');
  });

  it('privacy mode sends no pixels: only the tensor or features', () => {
    const facts = { confidence: 0.3, budgetLeftMs: 50, payloadBytes: { 'jpeg-q50': 300, tensor: 900 } };
    const config = mergePolicyConfig(DEFAULT_POLICY_CONFIG, { payloadAccuracyLoss: {} });
    assert.equal(decideFrame(inputs({ facts, config })).payload, 'jpeg-q50'); // smaller, no loss configured
    assert.equal(decideFrame(inputs({ facts: { ...facts, privacy: true }, config })).payload, 'tensor');
    const jpegOnly = { confidence: 0.3, budgetLeftMs: 50, payloadBytes: { 'jpeg-q75': 500 }, privacy: true };
    assert.equal(decideFrame(inputs({ facts: jpegOnly })).reason, 'local:privacy');
    assert.equal(
      decideFrame(inputs({ facts: { confidence: 0.3, budgetLeftMs: 50, payloadBytes: {} } })).reason,
      'local:nopayload',
    );
  });

  it('picks a smaller payload when only it makes the deadline', () => {
    const facts = { confidence: 0.3, budgetLeftMs: 34, payloadBytes: { tensor: 2000, 'jpeg-q50': 600 } };
    const l = link(800e3); // 10 ms per kB: tensor ≈ 33 ms + spread, JPEG ≈ 19 ms
    const d = decideFrame(inputs({ facts, link: l }));
    assert.equal(d.payload, 'jpeg-q50');
    const tensor = d.candidates.find((c) => c.payload === 'tensor');
    assert.ok(tensor && tensor.pDeadline < d.pDeadline);
  });

  it('a raised probability floor (spent miss allowance) stops risky offloads', () => {
    const l = link(250e3); // 32 ms per kB: P(in time) well below 1
    const base = inputs({ link: l });
    const p = decideFrame(base).pDeadline;
    assert.ok(p > 0.8 && p < 0.999, `p = ${p}`);
    assert.equal(decideFrame(base).offload, true);
    assert.equal(decideFrame({ ...base, pFloor: 0.9999 }).reason, 'local:deadline');
  });
});

describe('deadlineProbability', () => {
  it('is the normal probability of the predicted round trip, and 0 without budget', () => {
    const l = link(8e6); // 1 ms per kB
    const r = deadlineProbability(1000, 20, l, LOAD);
    assert.ok(Math.abs(r.meanMs - (10 + 1 + 2 + 1)) < 1e-9);
    assert.ok(Math.abs(r.p - normalCdf((20 - r.meanMs) / r.sdMs)) < 1e-12);
    assert.equal(deadlineProbability(1000, 0, l, LOAD).p, 0);
  });
});

// Properties over the real device card (whatever model is installed) and random states.
const realCurve = gainCurve(deviceCard);
const arbConfig = fc.record({
  deadlineTarget: fc.double({ min: 0.5, max: 0.999, noNaN: true }),
  minGain: fc.double({ min: 0, max: 0.05, noNaN: true }),
  costPerMB: fc.double({ min: 0, max: 20, noNaN: true }),
  missCost: fc.double({ min: 0, max: 1, noNaN: true }),
});
const arbState = fc.record({
  confidence: fc.double({ min: 0, max: 1, noNaN: true }),
  budget: fc.double({ min: -5, max: 200, noNaN: true }),
  bandwidth: fc.double({ min: 1e4, max: 1e9, noNaN: true }),
  cv: fc.double({ min: 0, max: 2, noNaN: true }),
  rtt: fc.double({ min: 0, max: 60, noNaN: true }),
  tensor: fc.integer({ min: 100, max: 20_000 }),
  jpeg: fc.option(fc.integer({ min: 100, max: 20_000 }), { nil: undefined }),
  probeDue: fc.boolean(),
  bucket: fc.option(fc.integer({ min: 0, max: 50_000 }), { nil: undefined }),
  known: fc.boolean(),
  floorRaise: fc.double({ min: 0, max: 1, noNaN: true }),
});
type State = {
  confidence: number;
  budget: number;
  bandwidth: number;
  cv: number;
  rtt: number;
  tensor: number;
  jpeg: number | undefined;
  probeDue: boolean;
  bucket: number | undefined;
  known: boolean;
  floorRaise: number;
};

function decideIn(s: State, c: Partial<PolicyConfig>): boolean {
  const config = mergePolicyConfig(DEFAULT_POLICY_CONFIG, c);
  const msPerKB = 8e6 / s.bandwidth;
  const payloadBytes = s.jpeg === undefined ? { tensor: s.tensor } : { tensor: s.tensor, 'jpeg-q75': s.jpeg };
  return decideFrame({
    facts: { confidence: s.confidence, budgetLeftMs: s.budget, payloadBytes },
    curve: realCurve,
    accept: deviceCard.thresholds.accept,
    link: { ...link(s.bandwidth), known: s.known, rttMs: s.rtt, msPerKB, msPerKBSd: s.cv * msPerKB },
    load: LOAD,
    config,
    bucketBytes: s.bucket ?? Number.POSITIVE_INFINITY,
    probeDue: s.probeDue,
    pFloor: config.deadlineTarget + (1 - config.deadlineTarget) * s.floorRaise,
  }).offload;
}

describe('decideFrame: monotone (property)', () => {
  it('a more confident frame is never more likely to be offloaded', () => {
    fc.assert(
      fc.property(arbState, arbConfig, fc.double({ min: 0, max: 1, noNaN: true }), (s, c, other) => {
        const [lo, hi] = s.confidence <= other ? [s.confidence, other] : [other, s.confidence];
        return !decideIn({ ...s, confidence: hi }, c) || decideIn({ ...s, confidence: lo }, c);
      }),
      { numRuns: 500 },
    );
  });

  it('a larger budget never makes offloading less likely', () => {
    fc.assert(
      fc.property(arbState, arbConfig, fc.double({ min: -5, max: 200, noNaN: true }), (s, c, other) => {
        const [lo, hi] = s.budget <= other ? [s.budget, other] : [other, s.budget];
        return !decideIn({ ...s, budget: lo }, c) || decideIn({ ...s, budget: hi }, c);
      }),
      { numRuns: 500 },
    );
  });

  it('more bandwidth never makes offloading less likely', () => {
    fc.assert(
      fc.property(arbState, arbConfig, fc.double({ min: 1e4, max: 1e9, noNaN: true }), (s, c, other) => {
        const [lo, hi] = s.bandwidth <= other ? [s.bandwidth, other] : [other, s.bandwidth];
        return !decideIn({ ...s, bandwidth: lo }, c) || decideIn({ ...s, bandwidth: hi }, c);
      }),
      { numRuns: 500 },
    );
  });
});
