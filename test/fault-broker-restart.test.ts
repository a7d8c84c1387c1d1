/**
 * Fault: the broker dies under load and comes back on the same port. Cameras keep booking frames
 * while it is gone (a device does not queue offloads: its local answer stands), the gateway and
 * the cameras reconnect with backoff and resubscribe, answers resume, and every frame ends in
 * exactly one state.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { CameraFleet } from '../bench/load/cameras.ts';
import { type FramePool, loadFramePool } from '../bench/load/frames.ts';
import { type GatewayProcess, startGateway, sumMetric } from '../bench/load/gateways.ts';
import { type MosquittoBroker, mosquittoPath, startMosquitto } from '../bench/load/mosquitto.ts';

const SKIP = mosquittoPath() ? undefined : 'mosquitto is not installed (apt-get install mosquitto)';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('fault: the broker is killed and restarted under load', { skip: SKIP }, () => {
  let broker: MosquittoBroker;
  let pool: FramePool;
  let gateway: GatewayProcess;
  let fleet: CameraFleet | undefined;

  before(async () => {
    broker = await startMosquitto();
    pool = await loadFramePool({ size: 64 });
    gateway = await startGateway({ broker: broker.url, name: 'gw' });
  });
  after(async () => {
    await fleet?.close();
    await gateway?.kill();
    await broker?.close();
  });

  it('devices and gateway ride through: answers resume after the restart, nothing unaccounted', async () => {
    let answeredAfterRestart = 0;
    let restartedAt = Number.POSITIVE_INFINITY;
    fleet = new CameraFleet({
      broker: broker.url,
      pool,
      cameras: 20,
      fps: 10,
      budgetMs: 250,
      onAnswer: (a, at) => {
        if (at > restartedAt && a.status === 'ok') answeredAfterRestart++;
      },
    });
    await fleet.connect();
    fleet.start();
    await sleep(2500);
    const before = fleet.ledger.summary();
    assert.ok(before.answered > 0);
    await broker.stop(true);
    await sleep(1500);
    const duringOutage = fleet.ledger.frames - before.frames;
    await broker.start();
    restartedAt = performance.now();
    // Backoff caps at 1 s for the cameras and 5 s for the gateway.
    await sleep(6500);
    fleet.stop();
    await fleet.settle(500);
    const s = fleet.ledger.summary();

    assert.equal(gateway.alive, true, 'the gateway survived the broker');
    assert.equal(s.unaccounted, 0, JSON.stringify(s));
    assert.equal(s.answered + s.refused + s.missed, s.frames);
    assert.ok(duringOutage > 0, 'cameras kept producing frames during the outage');
    assert.ok(s.missed >= duringOutage, `${s.missed} missed ≥ ${duringOutage} frames sent into the outage`);
    assert.ok(fleet.publishErrors > 0, 'offloads were refused locally while disconnected');
    assert.ok(answeredAfterRestart > 0, 'answers resumed after the restart');
    const text = await gateway.metrics();
    assert.ok(sumMetric(text, 'cascade_gateway_requests_total', ['transport="mqtt"']) >= s.answered);
  });
});
