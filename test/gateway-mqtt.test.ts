import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { IPublishPacket } from 'mqtt';
import sharp from 'sharp';
import { MOSQUITTO_SKIP, type MosquittoBroker, startMosquitto } from '../bench/load/mosquitto.ts';
import { startEmbeddedBroker } from '../cascade/broker.ts';
import { MqttConnection } from '../cascade/mqtt.ts';
import { type AnswerMessage, decodeAs, encode, Topics } from '../cascade/protocol.ts';
import { metricValue } from '../cascade/service/metrics.ts';
import { buildApp, type GatewayApp } from '../gateway/app.ts';
import { loadGatewayConfig } from '../gateway/config.ts';
import type { ImageDataset } from '../models/data/dataset.ts';
import { loadBundledSample } from '../models/data/load.ts';
import { TRACE, tensorOffload, tensorOffloadBytes } from './fixtures/offloads.ts';

let data: ImageDataset;
const PX = 28 * 28;
const image = (i: number): Uint8Array => data.images.subarray(i * PX, (i + 1) * PX);

before(async () => {
  data = await loadBundledSample();
});

async function gateway(broker: string, flags: Record<string, unknown> = {}): Promise<GatewayApp> {
  const config = loadGatewayConfig({
    flags: { broker, httpPort: 0, logLevel: 'silent', shared: false, ...flags },
  });
  const app = await buildApp(config, { defaultMetrics: false });
  await app.start();
  return app;
}

/** A device-side client collecting answers by frame id. */
async function device(url: string, id: string, protocol: 4 | 5 = 4) {
  const conn = new MqttConnection({
    url,
    clientId: `test-${id}-${randomBytes(2).toString('hex')}`,
    protocolVersion: protocol,
  });
  const answers = new Map<number, AnswerMessage>();
  const packets: IPublishPacket[] = [];
  let duplicates = 0;
  const waiters: (() => void)[] = [];
  conn.client.on('message', (_topic, payload, packet) => {
    const a = decodeAs(payload, 'answer');
    if (answers.has(a.frameId)) duplicates++;
    answers.set(a.frameId, a);
    packets.push(packet);
    for (const w of waiters.splice(0)) w();
  });
  await conn.subscribe(Topics.answer(id), 1);
  await conn.waitConnected();
  await conn.client.subscribeAsync(Topics.answer(id), { qos: 1 });
  return {
    conn,
    answers,
    packets,
    get duplicates() {
      return duplicates;
    },
    publish: (bytes: Buffer, deviceTopic = id) =>
      conn.client.publishAsync(Topics.offload(deviceTopic), bytes, { qos: 1 }),
    async waitFor(n: number, timeoutMs = 20_000): Promise<void> {
      const until = Date.now() + timeoutMs;
      while (answers.size < n) {
        if (Date.now() > until) throw new Error(`only ${answers.size} of ${n} answers`);
        await new Promise<void>((r) => {
          waiters.push(r);
          setTimeout(r, 100);
        });
      }
    },
  };
}

async function until(
  what: string,
  check: () => Promise<boolean> | boolean,
  timeoutMs = 20_000,
): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function roundTrip(url: string, protocol: 4 | 5, shared: boolean): Promise<void> {
  const app = await gateway(url, { protocol, shared });
  const dev = await device(url, 'cam-1', protocol);
  try {
    const n = 40;
    for (let i = 0; i < n; i++) await dev.publish(tensorOffloadBytes('cam-1', i, image(i), 500));
    await dev.waitFor(n);
    let correct = 0;
    for (let i = 0; i < n; i++) {
      const a = dev.answers.get(i);
      assert.ok(a, `answer to frame ${i}`);
      assert.equal(a.status, 'ok');
      assert.equal(a.tier, 'gateway');
      assert.equal(a.deviceId, 'cam-1');
      assert.equal(a.modelVersion, app.card.version);
      assert.ok(a.topk.length === 3 && a.topk[0].prob >= a.topk[1].prob);
      assert.ok(a.serviceMs > 0 && a.queueMs >= 0, 'the answer carries service and queue time');
      assert.equal(a.trace.traceId, TRACE.traceId, 'the trace id flows device → gateway → device');
      assert.notEqual(a.trace.spanId, TRACE.spanId, 'the gateway opens its own span');
      if (a.topk[0].label === data.labels[i]) correct++;
    }
    assert.ok(correct >= n * 0.75, `gateway model on real images: ${correct}/${n} correct`);
    if (protocol === 5) {
      const expiry = dev.packets[0].properties?.messageExpiryInterval;
      assert.ok(expiry !== undefined && expiry >= 1, 'MQTT 5 answers carry message expiry');
    }
    assert.equal(
      await metricValue(app.metrics.registry, 'cascade_gateway_requests_total', {
        transport: 'mqtt',
        status: 'ok',
      }),
      n,
    );
  } finally {
    await dev.conn.close(true);
    await app.close();
  }
}

describe('gateway over the embedded broker (aedes, MQTT 3.1.1, plain subscription)', () => {
  it('answers tensor offloads with the gateway model, times and the trace id', async () => {
    const broker = await startEmbeddedBroker();
    try {
      await roundTrip(broker.url, 4, false);
    } finally {
      await broker.close();
    }
  });

  it('serves JPEG payloads, answers expired and unsupported payloads, rejects a foreign topic', async () => {
    const broker = await startEmbeddedBroker();
    const app = await gateway(broker.url);
    const dev = await device(broker.url, 'cam-2');
    const other = await device(broker.url, 'cam-3');
    try {
      const jpeg = await sharp(Buffer.from(image(5)), { raw: { width: 28, height: 28, channels: 1 } })
        .resize(96, 96)
        .jpeg({ quality: 90 })
        .toBuffer();
      const base = tensorOffload('cam-2', 0, image(5));
      await dev.publish(
        encode({ ...base, frameId: 1, contentType: 'jpeg', tensor: undefined, payload: jpeg }),
      );
      await dev.publish(encode({ ...base, frameId: 2, budgetLeftMs: 0 }));
      await dev.publish(
        encode({
          ...base,
          frameId: 3,
          contentType: 'featuresF32',
          tensor: undefined,
          privacy: true,
          payload: new Uint8Array(64),
        }),
      );
      await dev.publish(
        encode({
          ...base,
          frameId: 4,
          contentType: 'jpeg',
          tensor: undefined,
          payload: Buffer.from('not a jpeg'),
        }),
      );
      // cam-3 speaks for cam-2: refused, nobody answered.
      await other.publish(encode({ ...base, frameId: 5 }), 'cam-3');
      await dev.waitFor(4);
      const jpegAnswer = dev.answers.get(1);
      assert.equal(jpegAnswer?.status, 'ok');
      assert.equal(jpegAnswer?.topk[0].label, data.labels[5], 'the JPEG frame is classified');
      assert.equal(dev.answers.get(2)?.status, 'expired', 'a frame without budget is answered as expired');
      assert.equal(dev.answers.get(3)?.status, 'error');
      assert.equal(dev.answers.get(3)?.reason, 'unsupported-payload');
      assert.equal(dev.answers.get(4)?.reason, 'bad-payload');
      await until(
        'the topic reject',
        async () =>
          (await metricValue(app.metrics.registry, 'cascade_gateway_rejects_total', { reason: 'topic' })) ===
          1,
      );
      assert.equal(other.answers.size, 0);
      assert.equal(dev.answers.has(5), false);
      assert.equal(
        await metricValue(app.metrics.registry, 'cascade_gateway_deadline_misses_total', { kind: 'expired' }),
        1,
      );
    } finally {
      await dev.conn.close(true);
      await other.conn.close(true);
      await app.close();
      await broker.close();
    }
  });

  it('answers every frame it took after intake stopped (delivered before the UNSUBACK), dropping none', async () => {
    const broker = await startEmbeddedBroker();
    const app = await gateway(broker.url);
    const dev = await device(broker.url, 'cam-stop');
    try {
      const n = 300;
      const frames = Array.from({ length: n }, (_, i) =>
        tensorOffloadBytes('cam-stop', i, image(i % 100), 5000),
      );
      // Intake stops at the first answer, while most frames are still on their way to the gateway.
      let stopped: Promise<void> | undefined;
      let answeredAtStop = 0;
      dev.conn.client.once('message', () => {
        answeredAtStop = dev.answers.size;
        stopped = app.consumer?.stopIntake();
      });
      await Promise.all(frames.map((f) => dev.publish(f)));
      await until('intake stopped', () => stopped !== undefined);
      await stopped;
      await app.consumer?.drain();
      const bytes = await metricValue(app.metrics.registry, 'cascade_gateway_received_bytes_total', {
        transport: 'mqtt',
      });
      const taken = Math.round(bytes / frames[0].length);
      assert.ok(
        taken > answeredAtStop + 1,
        `frames arrived after intake stopped (${taken} taken, ${answeredAtStop} answered then)`,
      );
      await dev.waitFor(taken, 10_000);
      assert.equal(dev.answers.size, taken, 'every frame taken is answered');
      assert.equal(
        await metricValue(app.metrics.registry, 'cascade_gateway_requests_total', {
          transport: 'mqtt',
          status: 'ok',
        }),
        taken,
      );
    } finally {
      await dev.conn.close(true);
      await app.close();
      await broker.close();
    }
  });

  it('survives 5,000 random and mutated messages, counting every one', async () => {
    const broker = await startEmbeddedBroker();
    const app = await gateway(broker.url, { maxQueue: 100_000 });
    const dev = await device(broker.url, 'fuzz');
    try {
      const valid = tensorOffloadBytes('fuzz', 1, image(0), 1000);
      let seed = 12345;
      const rand = (n: number): number => {
        seed = (seed * 1103515245 + 12345) & 0x7fffffff;
        return seed % n;
      };
      const N = 5000;
      const sends: Promise<unknown>[] = [];
      for (let i = 0; i < N; i++) {
        let msg: Buffer;
        switch (i % 5) {
          case 0:
            msg = randomBytes(rand(300));
            break;
          case 1: {
            msg = Buffer.from(valid);
            for (let k = 0; k < 1 + rand(4); k++) msg[rand(Math.min(msg.length, 120))] = rand(256);
            break;
          }
          case 2:
            msg = valid.subarray(0, rand(valid.length));
            break;
          case 3:
            msg = Buffer.concat([valid, randomBytes(1 + rand(16))]);
            break;
          default: {
            msg = Buffer.from(valid);
            msg[2] = 2 + rand(250); // unknown version
          }
        }
        sends.push(dev.conn.client.publishAsync(Topics.offload('fuzz'), msg, { qos: 1 }));
        if (sends.length >= 200) await Promise.all(sends.splice(0));
      }
      await Promise.all(sends);
      const counted = async (): Promise<number> => {
        const rejected = await metricValue(app.metrics.registry, 'cascade_gateway_rejects_total');
        const payload = await metricValue(app.metrics.registry, 'cascade_gateway_rejects_total', {
          reason: 'payload',
        });
        const served = await metricValue(app.metrics.registry, 'cascade_gateway_requests_total', {
          transport: 'mqtt',
        });
        return rejected - payload + served;
      };
      await until('every fuzz message counted', async () => (await counted()) === N, 60_000);
      assert.ok(
        (await metricValue(app.metrics.registry, 'cascade_gateway_rejects_total', { reason: 'version' })) >=
          N / 5,
      );
      assert.ok(
        (await metricValue(app.metrics.registry, 'cascade_gateway_rejects_total', { reason: 'truncated' })) >
          0,
      );
      // Still serving.
      await dev.publish(tensorOffloadBytes('fuzz', 999_999, image(1), 1000));
      await until('a valid frame answered after the fuzz', () => dev.answers.get(999_999)?.status === 'ok');
    } finally {
      await dev.conn.close(true);
      await app.close();
      await broker.close();
    }
  });
});

describe('gateway over Mosquitto (shared subscription)', { skip: MOSQUITTO_SKIP }, () => {
  let mosq: MosquittoBroker;
  before(async () => {
    mosq = await startMosquitto();
  });
  after(async () => {
    await mosq?.close();
  });

  it('round-trips over MQTT 3.1.1', async () => {
    await roundTrip(mosq.url, 4, true);
  });

  it('round-trips over MQTT 5 with message expiry on answers', async () => {
    await roundTrip(mosq.url, 5, true);
  });

  it('answers a burst far beyond the broker’s in-flight window (its PUBACKs are grouped, not withheld)', async () => {
    // Mosquitto's default max_inflight_messages is 20: offloads beyond the window wait for the
    // gateway's PUBACKs, so a gateway that held them back would stall here.
    const app = await gateway(mosq.url, { shared: true });
    const dev = await device(mosq.url, 'cam-b');
    try {
      const n = 400;
      await Promise.all(
        Array.from({ length: n }, (_, i) =>
          dev.publish(tensorOffloadBytes('cam-b', i, image(i % 100), 10_000)),
        ),
      );
      await dev.waitFor(n);
      assert.equal(dev.duplicates, 0);
      for (let i = 0; i < n; i++) assert.equal(dev.answers.get(i)?.status, 'ok', `frame ${i}`);
      await app.consumer?.drain();
      assert.equal(await metricValue(app.metrics.registry, 'cascade_gateway_published_total'), n);
      assert.equal(await metricValue(app.metrics.registry, 'cascade_gateway_publish_failures_total'), 0);
    } finally {
      await dev.conn.close(true);
      await app.close();
    }
  });

  it('survives a broker restart mid-stream and accounts for every frame it took', async () => {
    const app = await gateway(mosq.url, { shared: true });
    const dev = await device(mosq.url, 'cam-r');
    try {
      let sent = 0;
      const send = async (n: number): Promise<void> => {
        for (let i = 0; i < n; i++) {
          const id = sent++;
          // Offline publishes stay queued in the client; do not wait for their PUBACK here.
          void dev.publish(tensorOffloadBytes('cam-r', id, image(id % 100), 5000)).catch(() => {});
          await new Promise((r) => setTimeout(r, 2));
        }
      };
      await send(60);
      await mosq.stop(true);
      await send(30);
      await mosq.start();
      await until('gateway reconnected', () => app.consumer?.connected === true);
      await until('device reconnected', () => dev.conn.connected);
      await dev.conn.client.subscribeAsync(Topics.answer('cam-r'), { qos: 1 });
      const before = dev.answers.size;
      const first = sent;
      await send(30);
      await until('frames after the restart answered', () => {
        for (let id = first; id < sent; id++) if (!dev.answers.has(id)) return false;
        return true;
      });
      assert.ok(dev.answers.size >= before + 30);
      // Gateway-side accounting: every frame it took was answered and published, or counted failed.
      await app.consumer?.drain();
      const served = await metricValue(app.metrics.registry, 'cascade_gateway_requests_total', {
        transport: 'mqtt',
      });
      const published = await metricValue(app.metrics.registry, 'cascade_gateway_published_total');
      const failed = await metricValue(app.metrics.registry, 'cascade_gateway_publish_failures_total');
      assert.equal(
        served,
        published + failed,
        `served ${served} = published ${published} + failed ${failed}`,
      );
      assert.ok(served <= sent, 'no phantom frames');
      for (const id of dev.answers.keys()) assert.ok(id < sent, 'answers only to frames sent');
    } finally {
      await dev.conn.close(true);
      await app.close();
    }
  });
});
