/**
 * Fault: the cloud teacher becomes slow, or unavailable, under load. A real `cascade cloud`
 * process is frozen with SIGSTOP (it accepts connections and never answers: the slowest cloud
 * there is) or SIGKILLed. The gateway bounds every cloud call by the frame's remaining budget and
 * falls back to its own answer (`fallback:cloud-timeout`, `fallback:cloud-network`), so devices
 * keep getting answers, and every frame ends in exactly one state. The two faults run side by
 * side, each on its own broker, cloud and gateway.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { CameraFleet } from '../bench/load/cameras.ts';
import { type FramePool, loadFramePool } from '../bench/load/frames.ts';
import { type GatewayProcess, startGateway, startService, sumMetric } from '../bench/load/gateways.ts';
import type { LedgerSummary } from '../bench/load/ledger.ts';
import { type MosquittoBroker, mosquittoPath, startMosquitto } from '../bench/load/mosquitto.ts';

const SKIP = mosquittoPath() ? undefined : 'mosquitto is not installed (apt-get install mosquitto)';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const TOKEN = 'fault-test-token-0123456789';

interface RigResult {
  summary: LedgerSummary;
  reasons: Map<string, number>;
  healthyCloudAnswers: number;
  gatewayText: string;
  gatewayAlive: boolean;
  publishErrors: number;
}

const cleanup: (() => Promise<void>)[] = [];

/** Broker, cloud, gateway (forwarding every unsure frame) and 10 cameras; `fault` hits the cloud. */
async function rig(pool: FramePool, fault: (cloud: GatewayProcess) => void): Promise<RigResult> {
  const broker: MosquittoBroker = await startMosquitto();
  cleanup.push(() => broker.close());
  const cloud = await startService('cloud', { name: 'cloud', env: { CASCADE_CLOUD_TOKEN: TOKEN } });
  cleanup.push(async () => {
    cloud.child.kill('SIGCONT');
    await cloud.kill();
  });
  const gateway = await startGateway({
    broker: broker.url,
    name: 'gw',
    args: ['--cloud', cloud.httpUrl],
    env: {
      CASCADE_GATEWAY_CLOUD_TOKEN: TOKEN,
      CASCADE_GATEWAY_POLICY: JSON.stringify({ acceptThreshold: 0.999, minGain: 0, deadlineHitGoal: 0 }),
    },
  });
  cleanup.push(() => gateway.kill());
  const reasons = new Map<string, number>();
  const fleet = new CameraFleet({
    broker: broker.url,
    pool,
    cameras: 10,
    fps: 10,
    budgetMs: 1000,
    onAnswer: (a) => reasons.set(`${a.tier}/${a.reason}`, (reasons.get(`${a.tier}/${a.reason}`) ?? 0) + 1),
  });
  cleanup.push(() => fleet.close());
  await fleet.connect();
  fleet.start();
  await sleep(2500);
  const healthyCloudAnswers = [...reasons]
    .filter(([k]) => k.startsWith('cloud/'))
    .reduce((a, [, v]) => a + v, 0);
  fault(cloud);
  await sleep(3500);
  fleet.stop();
  await fleet.settle(500);
  return {
    summary: fleet.ledger.summary(),
    reasons,
    healthyCloudAnswers,
    gatewayText: await gateway.metrics(),
    gatewayAlive: gateway.alive,
    publishErrors: fleet.publishErrors,
  };
}

describe('fault: the cloud is slow or unavailable', { skip: SKIP }, () => {
  after(async () => {
    for (const c of cleanup.reverse()) await c().catch(() => {});
  });

  it('the gateway answers itself when the cloud stalls (SIGSTOP) or dies (SIGKILL)', async () => {
    const pool = await loadFramePool({ size: 64 });
    const [stalled, dead] = await Promise.all([
      rig(pool, (cloud) => cloud.child.kill('SIGSTOP')),
      rig(pool, (cloud) => void cloud.kill()),
    ]);
    for (const [name, r] of [
      ['stalled', stalled],
      ['dead', dead],
    ] as const) {
      const s = r.summary;
      const detail = `${name}: ${JSON.stringify([...r.reasons])}`;
      assert.ok(r.healthyCloudAnswers > 0, `the cloud answered while healthy (${detail})`);
      assert.equal(r.gatewayAlive, true, detail);
      assert.equal(s.unaccounted, 0, JSON.stringify(s));
      assert.equal(s.answered + s.refused + s.missed, s.frames);
      // Every frame the gateway took was answered (ok, fallback or refusal): none left hanging.
      assert.equal(
        sumMetric(r.gatewayText, 'cascade_gateway_requests_total', ['transport="mqtt"']),
        s.frames - r.publishErrors,
        detail,
      );
    }
    const fallbacks = (r: RigResult, reason: string) =>
      sumMetric(r.gatewayText, 'cascade_gateway_cloud_fallbacks_total', [`reason="${reason}"`]);
    assert.ok(fallbacks(stalled, 'timeout') > 0, 'stalled cloud: calls cut at the frame budget');
    assert.ok(
      (stalled.reasons.get('gateway/fallback:cloud-timeout') ?? 0) > 0,
      'and answered by the gateway',
    );
    assert.ok(
      fallbacks(dead, 'network') > 0,
      `dead cloud: refused connections ${JSON.stringify([...dead.reasons])} ${dead.gatewayText
        .split('\n')
        .filter((l) => l.includes('fallbacks_total{'))
        .join(' ')}`,
    );
    assert.ok((dead.reasons.get('gateway/fallback:cloud-network') ?? 0) > 0, 'and answered by the gateway');
  });
});
