import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { Registry } from 'prom-client';
import { CascadeError } from '../cascade/errors.ts';
import {
  DEFAULT_POLICY_CONFIG,
  loadPolicyFile,
  mergePolicyConfig,
  type PolicyConfigPatch,
  PolicyEngine,
  registerPolicyMetrics,
  watchPolicyFile,
} from '../cascade/policy/index.ts';
import { type ModelCard, parseModelCard } from '../models/card.ts';

function card(tier: 'device' | 'gateway'): ModelCard {
  const text = readFileSync(new URL(`../models/${tier}/card.json`, import.meta.url), 'utf8');
  return parseModelCard(JSON.parse(text), `${tier} card`);
}

/** A device card whose table makes frames below 0.8 clearly worth offloading. */
function clearCard(): ModelCard {
  return {
    ...card('device'),
    thresholds: { accept: 0.6 },
    reliability: [
      { lo: 0, hi: 0.5, n: 200, accuracy: 0.4, confidence: 0.4, next: { gateway: 0.7, cloud: 0.7 } },
      { lo: 0.5, hi: 0.8, n: 200, accuracy: 0.6, confidence: 0.65, next: { gateway: 0.8, cloud: 0.8 } },
      { lo: 0.8, hi: 1, n: 2000, accuracy: 0.97, confidence: 0.95, next: { gateway: 0.96, cloud: 0.96 } },
    ],
  };
}

const TENSOR = { tensor: 900 };
const unsure = (budgetLeftMs = 45) => ({ confidence: 0.4, budgetLeftMs, payloadBytes: TENSOR });

/** Engine on a fake clock, with a healthy link learnt (answers in ~15 ms). */
function warmEngine(config?: PolicyConfigPatch) {
  const clock = { t: 0 };
  const engine = new PolicyEngine({ tier: 'device', card: clearCard(), config, now: () => clock.t });
  for (let i = 0; i < 30; i++) {
    clock.t += 100;
    engine.observe({ at: clock.t, bytes: 900, rttMs: 15 + (i % 3), queueMs: 2, serviceMs: 1 });
  }
  return { engine, clock };
}

describe('PolicyEngine', () => {
  it('checks its card and config', () => {
    assert.throws(
      () => new PolicyEngine({ tier: 'device', card: card('gateway'), now: () => 0 }),
      (e: unknown) => e instanceof CascadeError && e.code === 'POLICY_ERR_CARD',
    );
    assert.throws(
      () =>
        new PolicyEngine({
          tier: 'device',
          card: card('device'),
          now: () => 0,
          config: { deadlineTarget: 2, minGain: -1 } as PolicyConfigPatch,
        }),
      (e: unknown) =>
        e instanceof CascadeError &&
        e.code === 'POLICY_ERR_CONFIG' &&
        e.message.includes('deadlineTarget') &&
        e.message.includes('minGain'),
    );
  });

  it('uses the threshold on an unknown link, the estimates once answers come back', () => {
    const clock = { t: 0 };
    const engine = new PolicyEngine({ tier: 'device', card: clearCard(), now: () => clock.t });
    assert.equal(engine.decide(unsure()).reason, 'offload:threshold');
    assert.equal(engine.decide({ ...unsure(), confidence: 0.7 }).reason, 'local:unknown');
    assert.equal(engine.snapshot().linkKnown, false);
    for (let i = 0; i < 10; i++) {
      clock.t += 100;
      engine.observe({ at: clock.t, bytes: 900, rttMs: 15, queueMs: 2, serviceMs: 1 });
    }
    const d = engine.decide({ ...unsure(), confidence: 0.7 });
    assert.equal(d.reason, 'offload:gain');
    assert.ok(d.pDeadline > 0.8);
    const s = engine.snapshot();
    assert.ok(s.linkKnown && s.rttMs > 0 && s.rttMs <= 12 && s.queueMs > 1.9 && s.serviceMs > 0.9);
    assert.equal(s.reasons['offload:gain'], 1);
    assert.equal(s.reasons['offload:threshold'], 1);
  });

  it('stops offloading when answers stop coming back, then probes and recovers', () => {
    const { engine, clock } = warmEngine();
    assert.equal(engine.decide(unsure()).offload, true);
    clock.t += 50;
    engine.observeMiss(clock.t, 900, 45);
    clock.t += 100;
    engine.observeMiss(clock.t, 900, 45);
    assert.equal(engine.decide(unsure()).reason, 'local:deadline');
    // Two misses in a row: probes back off to 4 intervals.
    clock.t += 3 * DEFAULT_POLICY_CONFIG.probeIntervalMs;
    assert.equal(engine.decide(unsure()).reason, 'local:deadline');
    clock.t += DEFAULT_POLICY_CONFIG.probeIntervalMs;
    assert.equal(engine.decide(unsure()).reason, 'offload:probe');
    assert.equal(engine.decide(unsure()).reason, 'local:deadline'); // one probe per interval
    clock.t += 15;
    engine.observe({ at: clock.t, bytes: 900, rttMs: 15, queueMs: 2, serviceMs: 1 });
    assert.equal(engine.decide(unsure()).reason, 'offload:gain');
  });

  it('spends and refills the uplink byte budget', () => {
    const { engine, clock } = warmEngine({ uplinkBytesPerMinute: 6000, bucketBurstSeconds: 20 }); // 2000 bytes
    assert.equal(engine.decide(unsure()).offload, true);
    assert.equal(engine.decide(unsure()).offload, true);
    assert.equal(engine.decide(unsure()).reason, 'local:budget');
    clock.t += 9000; // 900 bytes back
    assert.equal(engine.decide(unsure()).offload, true);
    assert.ok((engine.snapshot().bucketBytes ?? -1) < 900);
  });

  it('a spent miss allowance raises the bar until frames earn it back', () => {
    const { engine, clock } = warmEngine({ deadlineHitGoal: 0.9, missBurst: 1, probeIntervalMs: 1e9 });
    assert.equal(engine.decide(unsure()).offload, true);
    clock.t += 45;
    engine.observeMiss(clock.t, 900, 45);
    // The link still looks good enough, but no miss is left to spend.
    const refused = engine.explain(unsure());
    assert.equal(refused.reason, 'local:deadline');
    assert.ok(refused.pDeadline >= DEFAULT_POLICY_CONFIG.deadlineTarget, `p = ${refused.pDeadline}`);
    // At a 90 % goal, ten frames earn one miss back.
    for (let i = 0; i < 10; i++) engine.decide({ ...unsure(), confidence: 0.99 });
    assert.equal(engine.decide(unsure()).reason, 'offload:gain');
  });

  it('reloads its config at run time and keeps what it learnt', () => {
    const { engine } = warmEngine();
    const before = engine.snapshot();
    engine.setConfig({ acceptThreshold: 0.1, minGain: 0.9 });
    assert.equal(engine.accept, 0.1);
    assert.equal(engine.decide(unsure()).reason, 'local:confident');
    assert.equal(engine.snapshot().samples, before.samples);
    assert.throws(() => engine.setConfig({ costPerMB: -1 }), CascadeError);
    assert.equal(engine.config.minGain, 0.9); // the invalid update changed nothing
    engine.setConfig({});
    assert.equal(engine.config.minGain, DEFAULT_POLICY_CONFIG.minGain);
    assert.equal(engine.accept, 0.6);
  });

  it('explains every decision to listeners and to a debug logger', () => {
    const lines: object[] = [];
    const clock = { t: 0 };
    const engine = new PolicyEngine({
      tier: 'device',
      card: clearCard(),
      now: () => clock.t,
      logger: { debug: (obj) => lines.push(obj), isLevelEnabled: () => true },
    });
    const seen: string[] = [];
    const off = engine.onDecision((d) => seen.push(d.reason));
    engine.decide(unsure());
    off();
    engine.decide(unsure());
    assert.deepEqual(seen, ['offload:threshold']);
    assert.equal(lines.length, 2);
    assert.ok('facts' in lines[0] && 'link' in lines[0] && 'decision' in lines[0]);
  });

  it('swaps cards (a new model) without losing estimates', () => {
    const { engine } = warmEngine();
    const samples = engine.snapshot().samples;
    engine.setCard({ ...clearCard(), thresholds: { accept: 0.3 } });
    assert.equal(engine.accept, 0.3);
    assert.equal(engine.snapshot().samples, samples);
    assert.throws(() => engine.setCard(card('gateway')), CascadeError);
  });

  it('works for the gateway tier with the installed gateway card', () => {
    const clock = { t: 0 };
    const gw = new PolicyEngine({ tier: 'gateway', card: card('gateway'), now: () => clock.t });
    const d = gw.decide({ confidence: 0.99, budgetLeftMs: 30, payloadBytes: TENSOR });
    assert.equal(d.offload, false);
    assert.equal(gw.curve.next, 'cloud');
  });
});

describe('policy metrics', () => {
  it('counts decisions by reason and exposes the estimates on a private registry', async () => {
    const { engine } = warmEngine();
    const registry = new Registry();
    const m = registerPolicyMetrics(registry, engine);
    engine.decide(unsure());
    engine.decide({ ...unsure(), confidence: 0.99 });
    const text = await registry.metrics();
    assert.match(
      text,
      /cascade_policy_decisions_total\{tier="device",reason="offload:gain",payload="tensor"\} 1/,
    );
    assert.match(
      text,
      /cascade_policy_decisions_total\{tier="device",reason="local:confident",payload="none"\} 1/,
    );
    assert.match(text, /cascade_policy_link_rtt_seconds\{tier="device"\} 0\.0\d+/);
    assert.match(text, /cascade_policy_link_known\{tier="device"\} 1/);
    m.close();
    engine.decide(unsure());
    assert.match(await registry.metrics(), /reason="offload:gain",payload="tensor"\} 1/);
  });
});

describe('policy file', () => {
  const dir = mkdtempSync(join(tmpdir(), 'policy-file-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('loads a partial config and refuses a bad one, listing every error', async () => {
    const good = join(dir, 'good.json');
    writeFileSync(good, JSON.stringify({ minGain: 0.02, estimator: { halfLifeMs: 500 } }));
    const patch = await loadPolicyFile(good);
    const merged = mergePolicyConfig(DEFAULT_POLICY_CONFIG, patch);
    assert.equal(merged.minGain, 0.02);
    assert.equal(merged.estimator.halfLifeMs, 500);
    assert.equal(merged.estimator.alpha, DEFAULT_POLICY_CONFIG.estimator.alpha);
    assert.ok(Object.isFrozen(merged) && Object.isFrozen(merged.estimator));

    const bad = join(dir, 'bad.json');
    writeFileSync(bad, JSON.stringify({ minGain: 'x', costPerMB: -2, nope: 1 }));
    await assert.rejects(loadPolicyFile(bad), (e: unknown) => {
      const msg = (e as Error).message;
      return (
        e instanceof CascadeError && msg.includes('minGain') && msg.includes('costPerMB') && msg.includes(bad)
      );
    });
    writeFileSync(bad, '{ not json');
    await assert.rejects(loadPolicyFile(bad), /not valid JSON/);
    await assert.rejects(loadPolicyFile(join(dir, 'missing.json')), /cannot read/);
  });

  it('watches the file: a valid change is applied, an invalid one reported', async () => {
    const path = join(dir, 'live.json');
    writeFileSync(path, JSON.stringify({ minGain: 0.01 }));
    const changes: PolicyConfigPatch[] = [];
    const errors: CascadeError[] = [];
    let wake: () => void = () => {};
    const watcher = watchPolicyFile(
      path,
      (p) => {
        changes.push(p);
        wake();
      },
      (e) => {
        errors.push(e);
        wake();
      },
      { debounceMs: 20 },
    );
    // fs.watch does not keep the process alive; this timer does, and fails a silent watcher.
    const guard = setTimeout(() => wake(), 10_000);
    try {
      const next = () => new Promise<void>((resolve) => (wake = resolve));
      let wait = next();
      writeFileSync(path, JSON.stringify({ minGain: 0.05 }));
      await wait;
      assert.equal(changes.at(-1)?.minGain, 0.05);
      wait = next();
      writeFileSync(path, JSON.stringify({ minGain: 5 }));
      await wait;
      assert.equal(errors.length, 1);
      assert.equal(errors[0].code, 'POLICY_ERR_CONFIG');
    } finally {
      clearTimeout(guard);
      watcher.close();
      watcher.close();
    }
  });
});
