/**
 * Privacy mode end to end: a real device (dataset-replay camera, INT8 student, policy) offloads
 * through Mosquitto to a real gateway while an observer subscribed to `#` inspects every message
 * that crosses the broker. With privacy on, no offload carries pixels: only the model's input
 * tensor (or features), never a JPEG, never a camera-size image. The control run, privacy off
 * with a policy that allows only JPEG, shows the observer does see pixels when they are sent; the
 * same policy with privacy on sends nothing at all.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import mqtt, { type MqttClient } from 'mqtt';
import { type MosquittoBroker, mosquittoPath, startMosquitto } from '../bench/load/mosquitto.ts';
import { type ContentType, decode } from '../cascade/protocol.ts';
import { DeviceApp, type DeviceReport } from '../device/app.ts';
import { loadDeviceConfig } from '../device/config.ts';
import { buildApp, type GatewayApp } from '../gateway/app.ts';
import { loadGatewayConfig } from '../gateway/config.ts';

const SKIP = mosquittoPath() ? undefined : 'mosquitto is not installed (apt-get install mosquitto)';
const JPEG_SOI = Buffer.from([0xff, 0xd8, 0xff]);

interface Seen {
  topic: string;
  contentType: ContentType;
  privacy: boolean;
  payloadBytes: number;
  jpegMagic: boolean;
}

describe('privacy mode: what crosses the broker', { skip: SKIP }, () => {
  let broker: MosquittoBroker;
  let gw: GatewayApp;
  let observer: MqttClient;
  let dir: string;
  const seen: Seen[] = [];

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'cascade-privacy-'));
    broker = await startMosquitto();
    gw = await buildApp(
      loadGatewayConfig({ flags: { broker: broker.url, httpPort: 0, logLevel: 'silent' } }),
      { defaultMetrics: false },
    );
    await gw.start();
    observer = await mqtt.connectAsync(broker.url, { clientId: 'observer', reconnectPeriod: 0 });
    observer.on('message', (topic, payload) => {
      if (!topic.endsWith('/offload')) return;
      const m = decode(payload);
      if (m.kind !== 'offload') return;
      seen.push({
        topic,
        contentType: m.contentType,
        privacy: m.privacy,
        payloadBytes: m.payload.length,
        jpegMagic: Buffer.from(m.payload.subarray(0, 3)).equals(JPEG_SOI),
      });
    });
    await observer.subscribeAsync('#', { qos: 0 });
  });

  after(async () => {
    await observer?.endAsync(true);
    await gw?.close();
    await broker?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Runs one device to the end of its frames; `jpegOnly` allows the policy nothing but JPEG. */
  async function runDevice(id: string, privacy: boolean, jpegOnly = false): Promise<DeviceReport> {
    const policyFile = join(dir, `${id}-policy.json`);
    writeFileSync(
      policyFile,
      JSON.stringify(jpegOnly ? { payloads: ['jpeg-q75'], minGain: 0, costPerMB: 0 } : { minGain: 0 }),
    );
    const config = loadDeviceConfig({
      flags: {
        deviceId: id,
        budgetMs: 200,
        broker: { url: broker.url },
        source: { kind: 'replay', fps: 0, frames: 120, seed: 3 },
        policy: { privacy, file: policyFile },
        log: { level: 'silent' },
      },
    });
    const app = await DeviceApp.build(config);
    await app.start();
    return app.finished;
  }

  it('privacy on: every offload is the model-input tensor, never a JPEG or a camera frame', async () => {
    const report = await runDevice('cam-private', true);
    await new Promise((r) => setTimeout(r, 200));
    const mine = seen.filter((s) => s.topic === 'cascade/v1/cam-private/offload');
    assert.ok(report.offloads > 0, 'the device offloaded something');
    assert.equal(mine.length, report.offloads, 'the observer saw every offload');
    for (const s of mine) {
      assert.ok(s.contentType === 'tensorU8' || s.contentType === 'featuresF32', s.contentType);
      assert.equal(s.privacy, true);
      assert.equal(s.jpegMagic, false);
      assert.ok(s.payloadBytes <= 28 * 28 * 4, `payload of ${s.payloadBytes} bytes is not a 640x480 frame`);
    }
  });

  it('a policy that allows only JPEG: privacy off sends JPEG pixels (the observer sees them), privacy on sends nothing', async () => {
    const open = await runDevice('cam-open', false, true);
    const closed = await runDevice('cam-closed', true, true);
    await new Promise((r) => setTimeout(r, 200));
    const openSeen = seen.filter((s) => s.topic === 'cascade/v1/cam-open/offload');
    assert.ok(open.offloads > 0);
    assert.ok(
      openSeen.length > 0 && openSeen.every((s) => s.contentType === 'jpeg' && s.jpegMagic && !s.privacy),
      `content types seen: ${[...new Set(openSeen.map((s) => s.contentType))].join(', ')}`,
    );
    assert.equal(closed.offloads, 0, 'no pixels allowed and no other payload: every frame stays local');
    assert.equal(seen.filter((s) => s.topic === 'cascade/v1/cam-closed/offload').length, 0);
    assert.equal(closed.results.device, closed.processed);
  });
});
