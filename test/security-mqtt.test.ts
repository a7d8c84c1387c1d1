/**
 * MQTT security with a real Mosquitto running the shipped deploy/mosquitto/mosquitto.conf (only
 * its paths and ports rewritten) and the shipped ACL file, with certificates issued by the shipped
 * deploy/mosquitto/make-certs.sh (openssl): mutual TLS with the certificate CN as username, the
 * username/password listener, and the per-device topic ACL seen from both sides.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { startGateway, sumMetric } from '../bench/load/gateways.ts';
import { type MosquittoBroker, mosquittoPath, startMosquitto, toolPath } from '../bench/load/mosquitto.ts';
import { MqttConnection } from '../cascade/mqtt.ts';
import { decode, encode, newTrace, Topics } from '../cascade/protocol.ts';
import { tensorOffloadBytes } from './fixtures/offloads.ts';

const deployDir = fileURLToPath(new URL('../deploy/mosquitto/', import.meta.url));
const SHIPPED_CONF = join(deployDir, 'mosquitto.conf');
const SHIPPED_ACL = join(deployDir, 'acl');
const MAKE_CERTS = join(deployDir, 'make-certs.sh');

const missing = !mosquittoPath()
  ? 'mosquitto is not installed (apt-get install mosquitto)'
  : !toolPath('openssl')
    ? 'openssl is not installed'
    : !toolPath('mosquitto_passwd')
      ? 'mosquitto_passwd is not installed'
      : undefined;

/**
 * The shipped config with its listeners moved to free loopback ports and its container paths
 * pointed at the test's files; the ACL path points at the shipped file itself.
 */
function rewriteShippedConfig(text: string, certs: string, passwd: string): string {
  return text
    .replace(/^listener 8883$/m, 'listener {{port}} 127.0.0.1')
    .replace(/^listener 8884$/m, 'listener {{port2}} 127.0.0.1')
    .replaceAll('/mosquitto/certs/', `${certs}/`)
    .replaceAll('/mosquitto/config/acl', SHIPPED_ACL)
    .replaceAll('/mosquitto/config/passwd', passwd)
    .replaceAll('/mosquitto/data/', '{{dir}}/');
}

function offload(deviceId: string, frameId: number): Buffer {
  return encode({
    kind: 'offload',
    deviceId,
    frameId,
    captureTime: Date.now(),
    budgetLeftMs: 80,
    modelVersion: 'test',
    topk: [{ label: 3, prob: 0.4 }],
    trace: newTrace(randomBytes),
    contentType: 'featuresF32',
    privacy: true,
    payload: new Uint8Array(40),
  });
}

/** A uniform grey 28×28 image for tensor offloads. */
const GREY = new Uint8Array(28 * 28).fill(90);

function answer(deviceId: string, frameId: number): Buffer {
  return encode({
    kind: 'answer',
    deviceId,
    frameId,
    status: 'ok',
    tier: 'gateway',
    modelVersion: 'test',
    topk: [{ label: 3, prob: 0.9 }],
    queueMs: 1,
    serviceMs: 2,
    cloudMs: 0,
    retryAfterMs: 0,
    reason: 'answer',
    trace: newTrace(randomBytes),
  });
}

/** Collects every message a client receives. */
function collect(client: MqttClient): { topic: string; frameId: number; deviceId: string }[] {
  const seen: { topic: string; frameId: number; deviceId: string }[] = [];
  client.on('message', (topic, payload) => {
    try {
      const m = decode(payload);
      seen.push({ topic, frameId: m.frameId, deviceId: m.deviceId });
    } catch {
      seen.push({ topic, frameId: -1, deviceId: '' });
    }
  });
  return seen;
}

async function until(what: string, ok: () => boolean, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('MQTT security with the shipped Mosquitto config and ACL', { skip: missing }, () => {
  let broker: MosquittoBroker;
  let certs: string;
  let rogue: string;
  let config: string;
  const open: { close(force?: boolean): Promise<void> }[] = [];

  before(async () => {
    const passwd = 'passwd';
    broker = await startMosquitto({
      ports: 2,
      config: rewriteShippedConfig(readFileSync(SHIPPED_CONF, 'utf8'), '{{dir}}/certs', `{{dir}}/${passwd}`),
      prepare: (dir) => {
        certs = join(dir, 'certs');
        rogue = join(dir, 'rogue');
        const ids = ['cascade-gateway', 'cascade-ota', 'cam-a', 'cam-b'];
        for (const [out, names] of [
          [certs, ids],
          [rogue, ['cam-a']],
        ] as const) {
          const r = spawnSync('bash', [MAKE_CERTS, out, 'localhost', ...names], { encoding: 'utf8' });
          assert.equal(r.status, 0, r.stderr);
        }
        const pw = join(dir, passwd);
        for (const [user, secret, create] of [
          ['cam-p', 's3cret-p', true],
          ['cascade-gateway', 'gw-secret', false],
        ] as const) {
          const r = spawnSync('mosquitto_passwd', [...(create ? ['-c'] : []), '-b', pw, user, secret], {
            encoding: 'utf8',
          });
          assert.equal(r.status, 0, r.stderr);
        }
        config = readFileSync(join(dir, 'mosquitto.conf'), 'utf8');
        mkdirSync(join(dir, 'data'), { recursive: true });
      },
    });
  });

  after(async () => {
    for (const c of open) await c.close(true).catch(() => {});
    await broker?.close();
  });

  const tls = (name: string, from = certs): { ca: Buffer; cert: Buffer; key: Buffer } => ({
    ca: readFileSync(join(certs, 'ca.crt')),
    cert: readFileSync(join(from, `${name}.crt`)),
    key: readFileSync(join(from, `${name}.key`)),
  });

  /** A connection through the project's client (TLS options, TCP_NODELAY, backoff). */
  async function device(name: string, protocolVersion: 4 | 5 = 4): Promise<MqttConnection> {
    const c = new MqttConnection({
      url: `mqtts://127.0.0.1:${broker.port}`,
      clientId: `${name}-${protocolVersion}-${open.length}`,
      protocolVersion,
      ...tls(name),
    });
    open.push(c);
    await c.waitConnected(5000);
    return c;
  }

  /** A one-shot connection attempt: resolves the client or rejects with the refusal. */
  async function attempt(port: number, opts: IClientOptions): Promise<MqttClient> {
    const c = await mqtt.connectAsync(`mqtts://127.0.0.1:${port}`, {
      reconnectPeriod: 0,
      connectTimeout: 3000,
      ca: readFileSync(join(certs, 'ca.crt')),
      ...opts,
    });
    open.push({ close: (force) => c.endAsync(force) });
    return c;
  }

  it('runs the shipped config with only ports and paths rewritten', () => {
    const settings = config.replace(/^#.*$/gm, '');
    assert.doesNotMatch(settings, / \/mosquitto\//, 'every container path is rewritten');
    assert.match(config, new RegExp(`acl_file ${SHIPPED_ACL.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
    assert.match(config, /require_certificate true/);
    assert.match(config, /use_identity_as_username true/);
    assert.match(config, /allow_anonymous false/);
  });

  it('mTLS: a device certificate from the CA connects; no certificate, a foreign CA or plain TCP do not', async () => {
    await device('cam-a');
    await assert.rejects(attempt(broker.port, {}), 'TLS without a client certificate');
    await assert.rejects(attempt(broker.port, tls('cam-a', rogue)), 'certificate from another CA');
    await assert.rejects(
      mqtt.connectAsync(`mqtt://127.0.0.1:${broker.port}`, { reconnectPeriod: 0, connectTimeout: 1500 }),
      'plain MQTT on the TLS port',
    );
  });

  it('ACL: a device publishes only its own offload topic; the gateway shared subscription receives it', async () => {
    const gw = await device('cascade-gateway', 5);
    const got = collect(gw.client);
    await gw.subscribe(Topics.sharedOffloads('acl-test'));
    const a5 = await device('cam-a', 5);
    const a4 = await device('cam-a', 4);

    await a5.client.publishAsync(Topics.offload('cam-a'), offload('cam-a', 1), { qos: 1 });
    // MQTT 5: the broker answers the spoof with PUBACK 0x87 (not authorized).
    await assert.rejects(
      a5.client.publishAsync(Topics.offload('cam-b'), offload('cam-b', 2), { qos: 1 }),
      (err: Error & { code?: number }) => err.code === 135,
    );
    // MQTT 3.1.1 has no negative PUBACK: the broker drops it. Messages of one connection keep
    // their order, so once the marker after the spoof arrives the spoof would have too.
    await a4.client.publishAsync(Topics.offload('cam-b'), offload('cam-b', 3), { qos: 1 });
    await a4.client.publishAsync(Topics.offload('cam-a'), offload('cam-a', 4), { qos: 1 });
    await until('the marker offload', () => got.some((m) => m.frameId === 4));
    assert.deepEqual(
      got.map((m) => [m.topic, m.frameId]),
      [
        ['cascade/v1/cam-a/offload', 1],
        ['cascade/v1/cam-a/offload', 4],
      ],
    );
  });

  it('ACL: a device reads only its own answers, never other devices’ answers or offloads', async () => {
    const a = await device('cam-a');
    const b = await device('cam-b');
    const gw = await device('cascade-gateway');
    const seenA = collect(a.client);
    const seenB = collect(b.client);
    // cam-a tries to read everything; the broker only delivers what its ACL allows.
    for (const t of ['#', 'cascade/v1/+/answer', 'cascade/v1/+/offload', Topics.answer('cam-a')]) {
      await a.client.subscribeAsync(t, { qos: 1 });
    }
    await b.client.subscribeAsync(Topics.answer('cam-b'), { qos: 1 });
    await b.client.publishAsync(Topics.offload('cam-b'), offload('cam-b', 10), { qos: 1 });
    await gw.client.publishAsync(Topics.answer('cam-b'), answer('cam-b', 11), { qos: 1 });
    await gw.client.publishAsync(Topics.answer('cam-a'), answer('cam-a', 12), { qos: 1 });
    await until('both answers', () => seenA.some((m) => m.frameId === 12) && seenB.length > 0);
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(
      [...new Set(seenA.map((m) => `${m.topic}#${m.frameId}`))],
      ['cascade/v1/cam-a/answer#12'],
    );
    assert.deepEqual(
      seenB.map((m) => m.frameId),
      [11],
    );
  });

  it('ACL: the gateway identity cannot publish offloads in a device’s name', async () => {
    const gw = await device('cascade-gateway', 5);
    await assert.rejects(
      gw.client.publishAsync(Topics.offload('cam-a'), offload('cam-a', 20), { qos: 1 }),
      (err: Error & { code?: number }) => err.code === 135,
    );
  });

  it('ACL: the OTA announcement reaches devices; only the OTA identity may send it', async () => {
    const a = await device('cam-a');
    const ota = await device('cascade-ota', 5);
    const seen: string[] = [];
    a.client.on('message', (topic, payload) => seen.push(`${topic} ${payload.toString()}`));
    await a.client.subscribeAsync('cascade/v1/ota/announce', { qos: 1 });
    await ota.client.publishAsync('cascade/v1/ota/announce', '{"version":7}', { qos: 1 });
    await until('the announcement', () => seen.length > 0);
    const b = await device('cam-b', 5);
    await assert.rejects(
      b.client.publishAsync('cascade/v1/ota/announce', '{"version":8}', { qos: 1 }),
      (err: Error & { code?: number }) => err.code === 135,
    );
    assert.deepEqual(seen, ['cascade/v1/ota/announce {"version":7}']);
  });

  it('password listener: mosquitto_passwd credentials over TLS; the username is the ACL identity', async () => {
    const gw = await device('cascade-gateway');
    const got = collect(gw.client);
    await gw.subscribe(Topics.sharedOffloads('password-test'));
    const ok = new MqttConnection({
      url: `mqtts://127.0.0.1:${broker.port2}`,
      clientId: 'cam-p-client',
      username: 'cam-p',
      password: 's3cret-p',
      ca: readFileSync(join(certs, 'ca.crt')),
      protocolVersion: 5,
    });
    open.push(ok);
    await ok.waitConnected(5000);
    await ok.client.publishAsync(Topics.offload('cam-p'), offload('cam-p', 30), { qos: 1 });
    await assert.rejects(
      ok.client.publishAsync(Topics.offload('cam-a'), offload('cam-a', 31), { qos: 1 }),
      (err: Error & { code?: number }) => err.code === 135,
    );
    await until('cam-p offload', () => got.some((m) => m.frameId === 30));
    assert.deepEqual(
      got.map((m) => m.frameId),
      [30],
    );
    await assert.rejects(attempt(broker.port2, { username: 'cam-p', password: 'wrong' }), 'wrong password');
    await assert.rejects(attempt(broker.port2, {}), 'anonymous');
    await assert.rejects(attempt(broker.port2, { username: 'cam-z', password: 's3cret-p' }), 'unknown user');
  });
  it('gateway process over mutual TLS: its certificate (CN cascade-gateway) is its identity; it answers a device', async () => {
    const gw = await startGateway({
      broker: `mqtts://localhost:${broker.port}`,
      name: 'gateway-mtls',
      args: [
        '--shared-group',
        'mtls',
        '--mqtt-ca',
        join(certs, 'ca.crt'),
        '--mqtt-cert',
        join(certs, 'cascade-gateway.crt'),
        '--mqtt-key',
        join(certs, 'cascade-gateway.key'),
      ],
    });
    open.push({ close: async () => void (await gw.stop()) });
    const b = await device('cam-b');
    const seen = collect(b.client);
    await b.client.subscribeAsync(Topics.answer('cam-b'), { qos: 1 });
    await b.client.publishAsync(Topics.offload('cam-b'), tensorOffloadBytes('cam-b', 51, GREY, 5000), {
      qos: 1,
    });
    await until('the answer over mTLS', () => seen.some((m) => m.frameId === 51), 15_000);
    assert.equal(sumMetric(await gw.metrics(), 'cascade_gateway_requests_total', ['transport="mqtt"']), 1);
    // Another shared group would get the next test's offloads too.
    await gw.stop();
  });

  it('gateway refuses to start with a certificate but no key, or an unreadable CA, naming the key', async () => {
    for (const [args, expected] of [
      [['--mqtt-cert', join(certs, 'cascade-gateway.crt')], /mqttCertFile is set but mqttKeyFile is not/],
      [
        ['--mqtt-ca', join(certs, 'no-such-ca.crt')],
        /mqttCaFile .*no-such-ca\.crt: cannot read it \(ENOENT\)/,
      ],
    ] as const) {
      await assert.rejects(
        startGateway({
          broker: `mqtts://localhost:${broker.port}`,
          name: 'gateway-bad-tls',
          args: [...args],
        }),
        expected,
      );
    }
  });

  it('gateway process as deployed (password listener, NODE_EXTRA_CA_CERTS): rejects an envelope naming another device on a device’s own topic', async () => {
    // What the ACL cannot see: cam-a may publish on its own topic, but the envelope inside claims
    // to be cam-b. The gateway checks the envelope against the topic (reject reason `topic`)
    // and answers nobody; cam-a's honest frame is answered.
    const gw = await startGateway({
      broker: `mqtts://localhost:${broker.port2}`,
      name: 'gateway-tls',
      args: ['--protocol', '5', '--shared-group', 'topic-check'],
      env: {
        NODE_EXTRA_CA_CERTS: join(certs, 'ca.crt'),
        CASCADE_GATEWAY_MQTT_USERNAME: 'cascade-gateway',
        CASCADE_GATEWAY_MQTT_PASSWORD: 'gw-secret',
      },
    });
    open.push({ close: async () => void (await gw.stop()) });
    const a = await device('cam-a', 5);
    const b = await device('cam-b', 5);
    const seenA = collect(a.client);
    const seenB = collect(b.client);
    await a.client.subscribeAsync(Topics.answer('cam-a'), { qos: 1 });
    await b.client.subscribeAsync(Topics.answer('cam-b'), { qos: 1 });
    const tensor = tensorOffloadBytes('cam-a', 41, GREY, 5000);
    const spoof = Buffer.from(tensor);
    // Same envelope with the device id rewritten to cam-b (same length, so no re-encoding).
    spoof.write('cam-b', spoof.indexOf('cam-a'), 'utf8');
    assert.equal(decode(spoof).deviceId, 'cam-b');
    await a.client.publishAsync(Topics.offload('cam-a'), spoof, { qos: 1 });
    await a.client.publishAsync(Topics.offload('cam-a'), tensor, { qos: 1 });
    await until('the honest answer', () => seenA.some((m) => m.frameId === 41), 15_000);
    const text = await gw.metrics();
    assert.equal(sumMetric(text, 'cascade_gateway_rejects_total', ['reason="topic"']), 1);
    assert.equal(sumMetric(text, 'cascade_gateway_requests_total', ['transport="mqtt"']), 1);
    assert.deepEqual(seenB, [], 'no answer reached cam-b');
    assert.deepEqual(
      seenA.map((m) => m.frameId),
      [41],
    );
    assert.ok(!gw.log.join('\n').includes('gw-secret'), 'the MQTT password is not logged');
  });
});
