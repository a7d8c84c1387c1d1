import assert from 'node:assert/strict';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import mqtt from 'mqtt';
import sharp from 'sharp';
import { MOSQUITTO_SKIP, startMosquitto } from '../bench/load/mosquitto.ts';
import { startEmbeddedBroker } from '../cascade/broker.ts';
import { MqttConnection } from '../cascade/mqtt.ts';
import {
  type AnswerMessage,
  decodeAs,
  encode,
  type OffloadMessage,
  type ResultMessage,
  Topics,
  tensorToPixels,
} from '../cascade/protocol.ts';
import { createLogger } from '../cascade/service/log.ts';
import { DeviceApp } from '../device/app.ts';
import { loadDeviceConfig } from '../device/config.ts';
import { buildApp as buildGateway } from '../gateway/app.ts';
import { loadGatewayConfig } from '../gateway/config.ts';
import type { ImageDataset } from '../models/data/dataset.ts';
import { loadBundledSample } from '../models/data/load.ts';

let ds: ImageDataset;
let dir: string;
let offloadEverything: string;
let card: string;
const silent = () => createLogger({ service: 'device', level: 'silent' });

before(async () => {
  ds = await loadBundledSample();
  dir = await mkdtemp(join(tmpdir(), 'cascade-offload-'));
  // A device card without its reliability table: the policy then falls back to the calibrated
  // threshold, which the policy file sets to 1, so every frame is worth offloading whenever an
  // answer is likely in time (deadline target lowered to 0.5).
  const json = JSON.parse(await readFile('models/device/card.json', 'utf8'));
  json.reliability = [];
  card = join(dir, 'card.json');
  await writeFile(card, JSON.stringify(json));
  await copyFile('models/device/device-int8.onnx', join(dir, 'device-int8.onnx'));
  offloadEverything = join(dir, 'policy.json');
  await writeFile(
    offloadEverything,
    JSON.stringify({ acceptThreshold: 1, deadlineTarget: 0.5, probeIntervalMs: 50 }),
  );
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

function device(
  broker: string,
  opts: { id: string; frames: number; fps?: number; policy?: string; budgetMs?: number; mqtt5?: boolean },
) {
  const config = loadDeviceConfig({
    flags: {
      deviceId: opts.id,
      // A generous budget: a loaded test machine must not turn the first slow answers into misses.
      budgetMs: opts.budgetMs ?? 250,
      broker: {
        url: broker,
        backoffInitialMs: 20,
        backoffMaxMs: 200,
        protocolVersion: opts.mqtt5 ? 5 : 4,
      },
      source: { fps: opts.fps ?? 50, frames: opts.frames, shard: { index: 0, count: 50 } },
      policy: { file: opts.policy },
      model: { card },
      drainTimeoutMs: 3000,
    },
  });
  return DeviceApp.build(config, { dataset: ds, logger: silent() });
}

/** Subscribes to every device's results. */
async function watchResults(url: string): Promise<{ conn: MqttConnection; results: ResultMessage[] }> {
  const conn = new MqttConnection({ url, clientId: `watch-${Math.random()}` });
  const results: ResultMessage[] = [];
  conn.client.on('message', (topic, payload) => {
    if (Topics.deviceOf(topic, 'results')) results.push(decodeAs(payload, 'result'));
  });
  await conn.waitConnected();
  await conn.subscribe(Topics.allResults, 1);
  return { conn, results };
}

/** A stand-in gateway: answers each offload with `label(m)` after `delayMs`, or never. */
async function answerer(url: string, opts: { delayMs?: number; silent?: boolean } = {}) {
  const conn = new MqttConnection({ url, clientId: `answerer-${Math.random()}` });
  const seen: OffloadMessage[] = [];
  conn.client.on('message', (_topic, payload) => {
    const m = decodeAs(payload, 'offload');
    seen.push(m);
    if (opts.silent) return;
    const answer: AnswerMessage = {
      kind: 'answer',
      deviceId: m.deviceId,
      frameId: m.frameId,
      status: 'ok',
      tier: 'gateway',
      modelVersion: 'stand-in',
      topk: [{ label: (m.topk[0].label + 1) % 10, prob: 0.99 }],
      queueMs: 0.5,
      serviceMs: 1,
      cloudMs: 0,
      retryAfterMs: 0,
      reason: '',
      trace: m.trace,
    };
    setTimeout(
      () => conn.client.publish(Topics.answer(m.deviceId), encode(answer), { qos: 1 }),
      opts.delayMs ?? 0,
    );
  });
  await conn.waitConnected();
  await conn.subscribe(Topics.allOffloads, 1);
  return { conn, seen };
}

/** Every frame was processed (one result each) or dropped (a live camera's start-up may drop some). */
function accounted(report: Awaited<ReturnType<DeviceApp['shutdown']>>, frames: number): void {
  assert.equal(report.frames, frames);
  const d = report.dropped;
  assert.equal(report.processed + d.backpressure + d.source + d.error, frames);
  assert.equal(report.results.device + report.results.gateway + report.results.cloud, report.processed);
  assert.equal(report.unpublished, 0);
}

async function until(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('device offload over MQTT (embedded broker)', () => {
  it('offloads the quantized model input and publishes the remote answer as the result', async () => {
    const broker = await startEmbeddedBroker();
    const watch = await watchResults(broker.url);
    const gw = await answerer(broker.url);
    const app = await device(broker.url, { id: 'cam-rt', frames: 20, policy: offloadEverything });
    try {
      await app.start();
      const report = await app.finished;
      await until(() => watch.results.length >= report.processed, 5000, 'results');
      accounted(report, 20);
      assert.ok(
        report.offloads >= report.processed / 2,
        `${report.offloads} offloads of ${report.processed}: ${JSON.stringify(report.reasons)}`,
      );
      assert.equal(report.misses, 0);
      assert.equal(report.results.gateway, report.offloads);
      assert.equal(gw.seen.length, report.offloads);
      const byFrame = new Map(gw.seen.map((m) => [m.frameId, m]));
      for (const r of watch.results) {
        const m = byFrame.get(r.frameId);
        assert.equal(r.truth, ds.labels[r.frameId * 50]);
        if (m === undefined) {
          assert.equal(r.tier, 'device');
          assert.ok(r.reason.startsWith('local:'), r.reason);
          continue;
        }
        assert.equal(r.tier, 'gateway');
        assert.equal(r.missed, false);
        assert.equal(r.label, (m.topk[0].label + 1) % 10, 'the remote answer is the result');
        assert.equal(r.trace.traceId, m.trace.traceId, 'the result continues the offload trace');
        assert.ok(r.reason.startsWith('offload:'));
        // The payload is the model's uint8 input: it recovers the dataset image (up to lighting and noise).
        assert.equal(m.contentType, 'tensorU8');
        assert.equal(m.payload.length, 784);
        assert.ok(m.tensor && m.tensor.zeroPoint === 73);
        const px = tensorToPixels(m.tensor, m.payload, new Uint8Array(784));
        const img = ds.images.subarray(r.frameId * 50 * 784, (r.frameId * 50 + 1) * 784);
        let diff = 0;
        for (let i = 0; i < 784; i++) diff += Math.abs(px[i] - img[i]);
        assert.ok(diff / 784 < 6, `frame ${r.frameId}: mean pixel difference ${diff / 784}`);
        assert.ok(m.budgetLeftMs > 0 && m.budgetLeftMs < 250);
      }
    } finally {
      await app.shutdown();
      await gw.conn.close();
      await watch.conn.close();
      await broker.close();
    }
  });

  it('sends a JPEG of the ROI when the policy picks one, and never in privacy mode', async () => {
    const jpegOnly = join(dir, 'jpeg-policy.json');
    await writeFile(
      jpegOnly,
      JSON.stringify({
        acceptThreshold: 1,
        deadlineTarget: 0.5,
        probeIntervalMs: 50,
        payloads: ['jpeg-q75'],
      }),
    );
    const broker = await startEmbeddedBroker();
    const gw = await answerer(broker.url);
    const app = await device(broker.url, { id: 'cam-jpeg', frames: 8, policy: jpegOnly });
    const priv = await DeviceApp.build(
      loadDeviceConfig({
        flags: {
          deviceId: 'cam-private',
          budgetMs: 250,
          broker: { url: broker.url },
          source: { fps: 50, frames: 8 },
          model: { card },
          policy: { file: jpegOnly, privacy: true },
        },
      }),
      { dataset: ds, logger: silent() },
    );
    try {
      await Promise.all([app.start(), priv.start()]);
      const [report, privReport] = await Promise.all([app.finished, priv.finished]);
      assert.ok(report.offloads >= 1);
      const jpegs = gw.seen.filter((m) => m.deviceId === 'cam-jpeg');
      assert.equal(jpegs.length, report.offloads);
      for (const m of jpegs) {
        assert.equal(m.contentType, 'jpeg');
        assert.equal(m.privacy, false);
        const meta = await sharp(m.payload).metadata();
        assert.equal(meta.format, 'jpeg');
        assert.equal(meta.width, meta.height, 'the square ROI of the item, not the frame');
        assert.equal((meta.width ?? 0) % 28, 0);
      }
      assert.equal(report.results.gateway, report.offloads - report.misses);
      assert.equal(privReport.offloads, 0, 'privacy mode: no pixels leave, and JPEG was the only payload');
      assert.equal(gw.seen.filter((m) => m.deviceId === 'cam-private').length, 0);
      assert.equal(privReport.reasons['local:privacy'], privReport.processed);
    } finally {
      await app.shutdown();
      await priv.shutdown();
      await gw.conn.close();
      await broker.close();
    }
  });

  it('round-trips through a real gateway', async () => {
    const broker = await startEmbeddedBroker();
    const gateway = await buildGateway(
      loadGatewayConfig({
        flags: { broker: broker.url, shared: false, httpPort: 0, httpHost: '127.0.0.1', logLevel: 'silent' },
      }),
      { defaultMetrics: false },
    );
    await gateway.start();
    const watch = await watchResults(broker.url);
    const app = await device(broker.url, { id: 'cam-gw', frames: 24, policy: offloadEverything });
    try {
      await app.start();
      const report = await app.finished;
      await until(() => watch.results.length >= report.processed, 5000, 'results');
      accounted(report, 24);
      assert.equal(report.results.cloud, 0, 'no cloud configured: the gateway answers itself');
      assert.ok(report.results.gateway >= report.processed / 2, `gateway answered ${report.results.gateway}`);
      assert.equal(report.results.gateway, report.offloads - report.misses);
      const correct = watch.results.filter((r) => r.label === r.truth).length;
      assert.ok(correct / watch.results.length > 0.7, `accuracy ${correct}/${watch.results.length}`);
      for (const r of watch.results)
        assert.equal(r.missed, r.tier === 'device' && r.reason.startsWith('offload:'));
    } finally {
      await app.shutdown();
      await gateway.close();
      await watch.conn.close();
      await broker.close();
    }
  });

  it('lets the local answer stand when no answer comes within the budget, and counts late answers', async () => {
    const broker = await startEmbeddedBroker();
    const watch = await watchResults(broker.url);
    const gw = await answerer(broker.url, { delayMs: 80 });
    const app = await device(broker.url, {
      id: 'cam-late',
      frames: 30,
      fps: 25,
      budgetMs: 50,
      policy: offloadEverything,
    });
    try {
      await app.start();
      const report = await app.finished;
      await until(() => watch.results.length >= report.processed, 5000, 'results');
      accounted(report, 30);
      assert.ok(report.offloads >= 1);
      assert.equal(report.misses, report.offloads, 'every offload missed its deadline');
      assert.equal(report.results.gateway, 0);
      for (const r of watch.results) {
        assert.equal(r.tier, 'device');
        assert.equal(r.missed, r.reason.startsWith('offload:'));
        if (r.missed) {
          const m = gw.seen.find((x) => x.frameId === r.frameId);
          assert.ok(m);
          assert.equal(r.label, m.topk[0].label, 'the local answer stands');
        }
      }
      assert.ok(report.late >= 1, 'answers after the deadline are counted as late');
    } finally {
      await app.shutdown();
      await gw.conn.close();
      await watch.conn.close();
      await broker.close();
    }
  });

  it('keeps classifying locally while the broker is down, never queues offloads, and reconnects', async () => {
    let broker = await startEmbeddedBroker();
    const port = broker.port;
    const app = await device(broker.url, { id: 'cam-down', frames: 150, fps: 60, policy: offloadEverything });
    const gw = await answerer(broker.url);
    try {
      await app.start();
      await until(() => app.counts.processed >= 20, 10_000, 'frames before the outage');
      await gw.conn.close();
      await broker.close();
      await until(() => app.conn?.connected === false, 5000, 'the device to notice');
      const offloadsAtOutage = app.report().offloads;
      const processedAtOutage = app.counts.processed;
      await until(
        () => app.counts.processed >= processedAtOutage + 20,
        10_000,
        'local frames during the outage',
      );
      assert.equal(app.report().offloads, offloadsAtOutage, 'no offload while disconnected');
      const client = app.conn?.client;
      assert.ok(client);
      const queue = (client as unknown as { queue: unknown[] }).queue;
      assert.equal(queue.length, 0, 'mqtt.js holds no offline queue');
      broker = await startEmbeddedBroker({ port });
      await until(() => app.conn?.connected === true, 10_000, 'the device to reconnect');
      const report = await app.finished;
      // unpublished 0: results kept during the outage were published after it.
      accounted(report, 150);
      assert.ok(
        (report.reasons['local:offline'] ?? 0) >= 1,
        'frames that would have been offloaded say offline',
      );
    } finally {
      await app.shutdown();
      await broker.close();
    }
  });
});

describe('device offload over MQTT 5 (Mosquitto)', { skip: MOSQUITTO_SKIP }, () => {
  it('sets message expiry from the budget and the traceparent user property; a real gateway answers', async () => {
    const broker = await startMosquitto();
    const gateway = await buildGateway(
      loadGatewayConfig({
        flags: { broker: broker.url, protocol: 5, httpPort: 0, httpHost: '127.0.0.1', logLevel: 'silent' },
      }),
      { defaultMetrics: false },
    );
    await gateway.start();
    const spy = await mqtt.connectAsync(broker.url, { protocolVersion: 5, reconnectPeriod: 0 });
    const props: { expiry?: number; traceparent?: unknown; traceId: string }[] = [];
    spy.on('message', (_t, payload, packet) => {
      const m = decodeAs(payload, 'offload');
      props.push({
        expiry: packet.properties?.messageExpiryInterval,
        traceparent: packet.properties?.userProperties?.traceparent,
        traceId: m.trace.traceId,
      });
    });
    await spy.subscribeAsync(Topics.allOffloads, { qos: 1 });
    const app = await device(broker.url, {
      id: 'cam-v5',
      frames: 24,
      policy: offloadEverything,
      mqtt5: true,
    });
    try {
      await app.start();
      const report = await app.finished;
      accounted(report, 24);
      assert.ok(report.offloads >= 1);
      assert.equal(report.results.gateway + report.results.cloud, report.offloads - report.misses);
      await until(() => props.length >= report.offloads, 3000, 'offload copies');
      for (const p of props) {
        assert.equal(p.expiry, 1, 'a 250 ms budget expires after 1 s (whole seconds, at least 1)');
        assert.match(String(p.traceparent), new RegExp(`^00-${p.traceId}-[0-9a-f]{16}-01$`));
      }
    } finally {
      await app.shutdown();
      await spy.endAsync();
      await gateway.close();
      await broker.close();
    }
  });
});
