import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { main as benchMain } from '../bench/cli.ts';
import { writePlots } from '../bench/policy/plots.ts';
import { POLICY_NAMES } from '../bench/policy/policies.ts';
import {
  gatewayServiceMs,
  SIM_PAYLOADS,
  type SimData,
  type SimPayload,
  type TierRun,
} from '../bench/policy/predictions.ts';
import { runPolicies, toJson, toTable } from '../bench/policy/report.ts';
import { simulate } from '../bench/policy/sim.ts';
import { capacityPerSecond, parseMahimahi } from '../bench/policy/traces.ts';
import { EventQueue, Uplink, wireBytes } from '../bench/policy/uplink.ts';
import { CascadeError } from '../cascade/errors.ts';
import { type ModelCard, parseModelCard } from '../models/card.ts';

const dir = mkdtempSync(join(tmpdir(), 'policy-sim-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function card(tier: 'device' | 'gateway' | 'cloud'): ModelCard {
  const text = readFileSync(new URL(`../models/${tier}/card.json`, import.meta.url), 'utf8');
  return parseModelCard(JSON.parse(text), `${tier} card`);
}

/** The installed device card with a fixed reliability table, so retrained models change nothing here. */
function deviceCard(): ModelCard {
  return {
    ...card('device'),
    thresholds: { accept: 0.6 },
    reliability: [
      { lo: 0.2, hi: 0.4, n: 100, accuracy: 0.3, confidence: 0.3, next: { gateway: 0.6, cloud: 0.65 } },
      { lo: 0.8, hi: 1, n: 1000, accuracy: 0.97, confidence: 0.97, next: { gateway: 0.97, cloud: 0.97 } },
    ],
  };
}

/**
 * Predictions with a known structure: the device is right on 3 images in 4 and unsure (0.3) on
 * the fourth, which the gateway and the cloud get right. Real cards, synthetic predictions, so
 * the mechanics are checked without running models.
 */
function syntheticData(n = 400): SimData {
  const labels = Uint8Array.from({ length: n }, (_, i) => i % 10);
  const device: TierRun = { pred: new Uint8Array(n), conf: new Float32Array(n) };
  for (let i = 0; i < n; i++) {
    const hard = i % 4 === 3;
    device.pred[i] = hard ? (labels[i] + 1) % 10 : labels[i];
    device.conf[i] = hard ? 0.3 : 0.99;
  }
  const right: TierRun = { pred: labels.slice(), conf: new Float32Array(n).fill(0.95) };
  const runs = {} as Record<SimPayload, TierRun>;
  const bytes = {} as Record<SimPayload, Uint16Array>;
  for (const p of SIM_PAYLOADS) {
    runs[p] = right;
    bytes[p] = new Uint16Array(n).fill(p === 'tensor' ? 784 : 500);
  }
  return {
    dataset: 'synthetic',
    note: null,
    n,
    labels,
    device,
    gateway: runs,
    cloud: runs,
    payloadBytes: bytes,
    deviceMs: 1,
    gatewayBatchMs: [0.1, 0.15, 0.25, 0.45, 0.9, 1.8],
    cloudMs: 0.5,
    cards: { device: deviceCard(), gateway: card('gateway'), cloud: card('cloud') },
    cachePath: '',
    cached: true,
  };
}

const FAST = parseMahimahi('1\n', 'fixed-12mbps'); // one packet per ms
// A link that delivers only in bursts: 20 packets at the start of every second.
const BURSTY = parseMahimahi(`${Array.from({ length: 20 }, () => '0').join('\n')}\n1000\n`, 'bursty');

describe('Uplink', () => {
  it('delivers 1500 bytes per opportunity in FIFO order and wastes idle opportunities', () => {
    const u = new Uplink(FAST);
    assert.equal(u.send(0.5, 3000), 2); // opportunities at 1 and 2 ms
    assert.equal(u.send(0.5, 100), 3); // queued behind the first message
    assert.equal(u.send(0.5, 100), 3); // shares the 3 ms opportunity
    assert.equal(u.send(10.2, 1000), 11); // the link idled from 4 to 10 ms
    assert.equal(u.bytes, 4200);
  });

  it('loops the trace after its period', () => {
    const u = new Uplink(parseMahimahi('0\n100\n', 'loop'));
    assert.equal(u.send(50, 10), 100);
    assert.equal(u.send(150, 10), 200); // 100 + period 100 (and its 0)
    assert.equal(u.send(250, 10), 300);
  });

  it('counts protocol overhead per message and per packet', () => {
    assert.equal(wireBytes(784), 784 + 100 + 40);
    assert.equal(wireBytes(3000), 3100 + 3 * 40);
  });
});

describe('EventQueue', () => {
  it('pops by time, equal times in insertion order', () => {
    const q = new EventQueue<string>();
    for (const [t, v] of [
      [5, 'a'],
      [1, 'b'],
      [5, 'c'],
      [3, 'd'],
      [1, 'e'],
    ] as [number, string][])
      q.push(t, v);
    const out: string[] = [];
    for (let e = q.pop(); e; e = q.pop()) out.push(e.ev);
    assert.deepEqual(out, ['b', 'e', 'd', 'a', 'c']);
    assert.equal(q.size, 0);
  });
});

describe('simulate', () => {
  const data = syntheticData();
  const opts = { cameras: 4, fps: 10, budgetMs: 50, durationMs: 10_000 };

  it('device-only answers everything locally and sends nothing', () => {
    const r = simulate(data, FAST, 'device-only', opts);
    assert.equal(r.frames, 400);
    assert.equal(r.accuracy, 0.75);
    assert.equal(r.deadlineHit, 1);
    assert.equal(r.uplinkBytes, 0);
    assert.deepEqual(r.resolved, { device: 1, gateway: 0, cloud: 0 });
  });

  it('cloud-only on a fast link: every frame answered by the cloud in time, bytes counted', () => {
    const r = simulate(data, FAST, 'cloud-only', opts);
    assert.equal(r.accuracy, 1);
    assert.equal(r.deadlineHit, 1);
    assert.equal(r.resolved.cloud, 1);
    assert.equal(r.uplinkBytes, 400 * wireBytes(784));
    // radio 10 + cloud 20 + service + serialisation
    assert.ok(r.latencyMs.p50 > 30 && r.latencyMs.p99 < 40, JSON.stringify(r.latencyMs));
  });

  it('late answers are not used: on a bursty link cloud-only falls back to the device', () => {
    const r = simulate(data, BURSTY, 'cloud-only', opts);
    assert.ok(r.deadlineHit < 0.2, `hit ${r.deadlineHit}`);
    // Misses keep the device's answer: accuracy between device-only and perfect.
    assert.ok(r.accuracy >= 0.75 && r.accuracy < 0.8, `accuracy ${r.accuracy}`);
    assert.equal(r.missesByReason['offload:always'], Math.round((1 - r.deadlineHit) * r.frames));
  });

  it('fixed thresholds offload the unsure quarter to the gateway, which answers', () => {
    const r = simulate(data, FAST, 'fixed', opts);
    assert.equal(r.offloaded, 0.25);
    assert.equal(r.accuracy, 1);
    assert.equal(r.resolved.gateway, 0.25);
    assert.ok(r.gatewayUtilization > 0 && r.gatewayUtilization < 0.01);
  });

  it('the engine offloads the unsure frames, meets the deadline and sends a quarter of cloud-only', () => {
    const engine = simulate(data, FAST, 'engine', opts);
    const cloud = simulate(data, FAST, 'cloud-only', opts);
    assert.ok(engine.accuracy > 0.97, `accuracy ${engine.accuracy}`);
    assert.ok(engine.deadlineHit >= 0.99);
    assert.ok(engine.uplinkBytes <= 0.26 * cloud.uplinkBytes);
    assert.ok((engine.reasons.device['offload:gain'] ?? 0) > 0);
    assert.ok((engine.reasons.device['local:confident'] ?? 0) > 0);
    assert.ok(engine.calibration.length > 0);
  });

  it('the engine keeps the deadline where fixed thresholds do not (bursty link)', () => {
    // Long enough for the miss allowance (a few misses up front) to be a small share.
    const engine = simulate(data, BURSTY, 'engine', { ...opts, durationMs: 120_000, cameras: 2 });
    const fixed = simulate(data, BURSTY, 'fixed', { ...opts, durationMs: 120_000, cameras: 2 });
    assert.ok(fixed.deadlineHit < 0.95, `fixed ${fixed.deadlineHit}`);
    assert.ok(engine.deadlineHit >= 0.99, `engine ${engine.deadlineHit}`);
  });

  it('is deterministic and refuses nonsense settings', () => {
    const a = simulate(data, BURSTY, 'engine', opts);
    const b = simulate(data, BURSTY, 'engine', opts);
    assert.deepEqual({ ...a, timeline: null }, { ...b, timeline: null });
    assert.throws(() => simulate(data, FAST, 'engine', { ...opts, cameras: 0 }), RangeError);
  });

  it('interpolates the gateway service time between measured batch sizes', () => {
    assert.equal(gatewayServiceMs(data, 1), 0.1);
    assert.ok(Math.abs(gatewayServiceMs(data, 3) - 0.2) < 1e-9);
    assert.ok(Math.abs(gatewayServiceMs(data, 64) - 3.6) < 1e-9);
  });
});

describe('report and plots', () => {
  const data = syntheticData();
  const report = runPolicies(
    data,
    FAST,
    { cameras: 2, fps: 10, budgetMs: 50, durationMs: 5000 },
    POLICY_NAMES,
    Array.from(capacityPerSecond(FAST, 5)),
  );

  it('has the JSON shape of `cascade bench policy --json`', () => {
    const j = JSON.parse(JSON.stringify(toJson(report)));
    assert.equal(j.trace, 'fixed-12mbps');
    assert.deepEqual(Object.keys(j.policies), [...POLICY_NAMES]);
    for (const p of Object.values(j.policies) as Record<string, unknown>[]) {
      for (const k of ['accuracy', 'deadlineHit', 'uplinkBytes', 'resolved', 'latencyMs'])
        assert.ok(k in p, k);
      assert.deepEqual(Object.keys(p.latencyMs as object), ['p50', 'p95', 'p99']);
      assert.deepEqual(Object.keys(p.resolved as object), ['device', 'gateway', 'cloud']);
    }
    assert.equal(j.setup.cameras, 2);
    assert.equal(typeof j.targets.met.deadlineHit, 'boolean');
  });

  it('prints a table naming the setting and the targets', () => {
    const t = toTable(report);
    assert.match(t, /2 cameras × 10 fps · 50 ms budget/);
    for (const p of POLICY_NAMES) assert.match(t, new RegExp(`^${p} `, 'm'));
    assert.match(t, /engine targets: accuracy/);
  });

  it('writes two SVG plots', async () => {
    const files = await writePlots(report, join(dir, 'plots'));
    assert.equal(files.length, 2);
    for (const f of files) {
      const svg = readFileSync(f, 'utf8');
      assert.ok(svg.startsWith('<svg'), f);
      assert.match(svg, /engine/);
    }
  });
});

describe('cascade bench policy arguments', () => {
  const isArgs = (e: unknown) => e instanceof CascadeError && e.code === 'CLI_ERR_ARGS';
  it('refuses bad arguments before any work', async () => {
    await assert.rejects(benchMain(['policy', '--cameras', '0']), isArgs);
    await assert.rejects(benchMain(['policy', '--policies', 'engine,oracle']), isArgs);
    await assert.rejects(benchMain(['policy', '--fps', 'x']), isArgs);
    await assert.rejects(benchMain(['nope']), isArgs);
    await assert.rejects(
      benchMain(['policy', '--trace', join(dir, 'missing.up')]),
      (e: unknown) => e instanceof CascadeError && e.code === 'DATA_ERR_NOT_FOUND',
    );
  });
});
