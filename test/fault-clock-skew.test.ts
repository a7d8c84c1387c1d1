/**
 * Fault: device clocks disagree with the gateway's. Deadlines travel as budget left, never as
 * wall-clock times, and each side measures time on its own monotonic clock, so skew cannot move a
 * frame between answered and expired. Three fleets share one real gateway: clocks on time, one
 * hour ahead, one hour behind (their envelopes carry those capture times); all three get the same
 * treatment. A control fleet with a budget too small to meet shows the gateway does enforce
 * budgets, so the equality is not from deadlines being ignored.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { CameraFleet } from '../bench/load/cameras.ts';
import { type FramePool, loadFramePool } from '../bench/load/frames.ts';
import { type GatewayProcess, startGateway } from '../bench/load/gateways.ts';
import { type MosquittoBroker, mosquittoPath, startMosquitto } from '../bench/load/mosquitto.ts';
import type { AnswerMessage } from '../cascade/protocol.ts';

const SKIP = mosquittoPath() ? undefined : 'mosquitto is not installed (apt-get install mosquitto)';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const HOUR = 3_600_000;

describe('fault: clock skew between devices and the gateway', { skip: SKIP }, () => {
  let broker: MosquittoBroker;
  let pool: FramePool;
  let gateway: GatewayProcess;
  const fleets: CameraFleet[] = [];

  before(async () => {
    broker = await startMosquitto();
    pool = await loadFramePool({ size: 64 });
    gateway = await startGateway({ broker: broker.url, name: 'gw' });
  });
  after(async () => {
    for (const f of fleets) await f.close();
    await gateway?.kill();
    await broker?.close();
  });

  it('an hour of skew either way changes nothing; a budget that cannot be met is still refused', async () => {
    const statuses = new Map<string, Map<string, number>>();
    const worstQueueMs = new Map<string, number>();
    const fleet = (prefix: string, skewMs: number, budgetMs: number): CameraFleet => {
      statuses.set(prefix, new Map());
      const f = new CameraFleet({
        broker: broker.url,
        pool,
        prefix,
        cameras: 6,
        fps: 10,
        budgetMs,
        wallClock: () => Date.now() + skewMs,
        onAnswer: (a: AnswerMessage) => {
          const m = statuses.get(prefix) as Map<string, number>;
          m.set(a.status, (m.get(a.status) ?? 0) + 1);
          worstQueueMs.set(prefix, Math.max(worstQueueMs.get(prefix) ?? 0, a.queueMs));
        },
      });
      fleets.push(f);
      return f;
    };
    const onTime = fleet('on-time', 0, 2000);
    const ahead = fleet('ahead', HOUR, 2000);
    const behind = fleet('behind', -HOUR, 2000);
    const hopeless = fleet('hopeless', 0, 0.05);
    await Promise.all(fleets.map((f) => f.connect()));
    for (const f of fleets) f.start();
    await sleep(4000);
    for (const f of fleets) f.stop();
    await Promise.all(fleets.map((f) => f.settle(500)));

    for (const [name, f] of [
      ['on-time', onTime],
      ['ahead', ahead],
      ['behind', behind],
    ] as const) {
      const s = f.ledger.summary();
      const st = Object.fromEntries(statuses.get(name) ?? []);
      assert.equal(s.unaccounted, 0, `${name}: ${JSON.stringify(s)}`);
      assert.ok(s.frames > 0);
      assert.deepEqual(st, { ok: s.frames }, `${name}: every frame answered ok by the gateway`);
      assert.equal(s.answered, s.frames, `${name}: every answer within the device's own deadline`);
      assert.ok(
        (worstQueueMs.get(name) ?? 0) < 2000,
        `${name}: queue times are the gateway's own, not clock differences`,
      );
    }
    const h = hopeless.ledger.summary();
    const hs = statuses.get('hopeless') ?? new Map<string, number>();
    assert.equal(h.unaccounted, 0);
    assert.equal(hs.get('ok') ?? 0, 0, `a 0.05 ms budget is never met: ${JSON.stringify([...hs])}`);
    assert.ok((hs.get('expired') ?? 0) + (hs.get('overloaded') ?? 0) > 0);
    assert.equal(h.answered, 0);
  });
});
