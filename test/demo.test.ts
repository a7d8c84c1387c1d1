import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { describe, it } from 'node:test';
import { percentile, ResultTally } from '../cascade/demo/tally.ts';
import type { ResultMessage } from '../cascade/protocol.ts';

const trace = { traceId: '0'.repeat(32), spanId: '0'.repeat(16), flags: 0 };

function result(over: Partial<ResultMessage>): ResultMessage {
  return {
    kind: 'result',
    deviceId: 'cam-1',
    frameId: 0,
    captureTime: 0,
    tier: 'device',
    label: 1,
    confidence: 0.9,
    latencyMs: 1,
    budgetMs: 50,
    reason: 'local:confident',
    missed: false,
    truth: 1,
    trace,
    ...over,
  };
}

const camera = (deviceId: string, frames: number, dropped = 0) => ({
  deviceId,
  frames,
  processed: frames - dropped,
  dropped: { backpressure: dropped, source: 0, error: 0 },
  late: 0,
  uplinkBytes: 100,
  allFramesBytes: 1000,
  unpublished: 0,
});

/** Runs `cascade <args>`; resolves with exit code, stdout and stderr. */
function cascade(
  args: string[],
  timeoutMs: number,
): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['cascade/bin.mjs', ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => {
      out += d;
    });
    child.stderr.on('data', (d) => {
      err += d;
    });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`cascade ${args.join(' ')} timed out; stderr: ${err.slice(-500)}`));
    }, timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
  });
}

describe('demo tally', () => {
  it('accounts for every frame, deduplicates redelivered results and splits latency by path', () => {
    const t = new ResultTally(50);
    const add = (r: Partial<ResultMessage>) => t.add(result(r), 0);
    assert.equal(add({ frameId: 0, latencyMs: 2 }), true);
    assert.equal(add({ frameId: 0, latencyMs: 2 }), false, 'a QoS 1 redelivery is not a new frame');
    add({ frameId: 1, tier: 'gateway', reason: 'offload:gain', latencyMs: 12, label: 3, truth: 3 });
    add({ frameId: 2, tier: 'cloud', reason: 'offload:gain', latencyMs: 30, label: 2, truth: 4 });
    add({ frameId: 3, tier: 'device', reason: 'offload:gain', missed: true, latencyMs: 60 });
    add({ deviceId: 'cam-2', frameId: 0, truth: -1 });
    const r = t.report([camera('cam-1', 5, 1), camera('cam-2', 1)], 2);
    assert.equal(t.duplicates, 1);
    assert.equal(r.frames, 6);
    assert.equal(r.answered, 4);
    assert.equal(r.misses, 1);
    assert.equal(r.dropped, 1);
    assert.equal(r.unaccounted, 0);
    assert.equal(r.accuracy, 3 / 4, 'frames without ground truth are left out');
    assert.deepEqual(r.resolved, { device: 3 / 5, gateway: 1 / 5, cloud: 1 / 5 });
    assert.equal(r.withinBudget, 4 / 6, 'the miss at 60 ms and the dropped frame are not within budget');
    assert.deepEqual(r.reasons, { 'offload:gain': 3, 'local:confident': 2 });
    assert.equal(r.latencyByPath.missed.n, 1);
    assert.equal(r.latencyByPath.gateway.p50, 12);
    assert.equal(r.uplinkBytes, 200);
    assert.equal(r.allFramesBytes, 2000);
  });

  it('uses nearest-rank percentiles', () => {
    const v = Array.from({ length: 100 }, (_, i) => i + 1);
    assert.equal(percentile(v, 0.5), 50);
    assert.equal(percentile(v, 0.99), 99);
    assert.ok(Number.isNaN(percentile([], 0.5)));
  });
});

describe('cascade device CLI', () => {
  it('prints its help and refuses bad arguments in one line', async () => {
    const help = await cascade(['device', '--help'], 30_000);
    assert.equal(help.code, 0);
    assert.match(help.out, /--broker URL/);
    const bad = await cascade(['device', '--shard', '3/2'], 30_000);
    assert.equal(bad.code, 2);
    assert.match(bad.err, /--shard: expected I\/N/);
    assert.equal(bad.err.trim().split('\n').length, 1);
    const cfg = await cascade(['device', '--budget-ms', '0'], 30_000);
    assert.notEqual(cfg.code, 0);
  });
});

describe('cascade demo', () => {
  it('runs broker, cloud, gateway and 4 cameras end to end and accounts for every frame', async () => {
    const { code, out, err } = await cascade(['demo', '--frames', '20', '--json'], 110_000);
    assert.equal(code, 0, err.slice(-1000));
    const lines = out.trim().split('\n');
    assert.equal(lines.length, 1, 'stdout holds only the JSON report');
    const r = JSON.parse(lines[0]);
    for (const key of [
      'frames',
      'accuracy',
      'resolved',
      'withinBudget',
      'misses',
      'dropped',
      'latencyMs',
      'uplinkBytes',
      'allFramesBytes',
      'budgetMs',
    ]) {
      assert.ok(key in r, `report has ${key}`);
    }
    assert.equal(r.frames, 80);
    assert.equal(r.answered + r.misses + r.dropped, r.frames, 'frames = answered + misses + dropped');
    assert.equal(r.unaccounted, 0);
    assert.equal(r.budgetMs, 50);
    for (const f of [r.accuracy, r.withinBudget, r.resolved.device, r.resolved.gateway, r.resolved.cloud]) {
      assert.ok(f >= 0 && f <= 1);
    }
    assert.ok(Math.abs(r.resolved.device + r.resolved.gateway + r.resolved.cloud - 1) < 1e-9);
    assert.ok(r.accuracy > 0.7, `accuracy ${r.accuracy}`);
    assert.ok(r.uplinkBytes <= r.allFramesBytes);
    assert.match(err, /gateway http:\/\/127\.0\.0\.1:\d+/, 'progress and status go to stderr');
  });
});
