/**
 * End to end, as in `cascade demo`: a publisher using the `cascade ota` CLI (keygen, init, two
 * root keys with threshold 2 signed on separate copies and merged, add-target, sign, publish
 * --announce), the published repository on a loopback HTTP server, an MQTT broker, and a fleet
 * of eight cameras, each an OTA agent with its own trust store, model store and a frame loop
 * running the model continuously (two frames in flight) through a ModelSlot. Release 1 reaches
 * every camera; release 2 at 50 % reaches exactly the cameras whose stable hash falls in the
 * rollout, the others keep release 1 until the rollout is raised to 100 %. No camera loses a
 * frame or answers one with an older model after a newer one.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, it } from 'node:test';
import { connectAsync, type MqttClient } from 'mqtt';
import { ModelSlot } from '../device/model-slot.ts';
import { OtaAgent, type OtaStatus } from '../device/ota-agent.ts';
import type { ProbeSet } from '../device/ota-health.ts';
import { OnnxClassifier } from '../models/runtime.ts';
import { main as ota } from '../ota/cli.ts';
import { inRollout } from '../ota/manifest.ts';
import { serveStatic } from '../ota/serve.ts';
import { centroidModel, probeSet, startBroker } from './fixtures/ota-fixtures.ts';

const DEVICE_CARD = new URL('../models/device/card.json', import.meta.url).pathname;
const CAMERAS = 8;
let dir: string;
let probe: ProbeSet;
let broker: Awaited<ReturnType<typeof startBroker>>;
const cleanups: (() => Promise<unknown>)[] = [];

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ota-e2e-'));
  probe = await probeSet(100);
  broker = await startBroker();
});
after(async () => {
  for (const c of cleanups.reverse()) await c();
  await broker.close();
  rmSync(dir, { recursive: true, force: true });
});

/** Runs `cascade ota …` in this process; returns what it printed. */
async function cli(...argv: string[]): Promise<string> {
  const lines: string[] = [];
  await ota(argv, (l) => lines.push(l));
  return lines.join('\n');
}

async function mqttClient(): Promise<MqttClient> {
  const c = await connectAsync(broker.url, { reconnectPeriod: 0 });
  (c.stream as Socket).setNoDelay?.(true);
  cleanups.push(() => c.endAsync(true));
  return c;
}

interface Camera {
  id: string;
  agent: OtaAgent;
  slot: ModelSlot;
  frames: { id: number; model: string }[];
  errors: unknown[];
  stop(): Promise<void>;
}

/** A camera: agent + slot + a frame loop with two frames in flight. */
async function camera(id: string, repoUrl: string, root: string): Promise<Camera> {
  const base = join(dir, id);
  const slot = new ModelSlot(await OnnxClassifier.load(DEVICE_CARD, { intraOpThreads: 1 }));
  const agent = new OtaAgent({
    repoUrl,
    metadataDir: join(base, 'metadata'),
    trustedRoot: root,
    modelsDir: join(base, 'models'),
    deviceId: id,
    hardwareClass: 'cpu-x64',
    model: slot,
    mqtt: await mqttClient(),
    probe,
    loadOptions: { intraOpThreads: 1 },
    startDelayMaxMs: 3_600_000,
    announceDelayMaxMs: 200,
    announceMinIntervalMs: 0,
  });
  const cam: Camera = { id, agent, slot, frames: [], errors: [], stop: async () => {} };
  let running = true;
  let next = 0;
  const size = probe.height * probe.width;
  const lane = async (): Promise<void> => {
    while (running) {
      const f = next++;
      const px = probe.images.subarray((f % probe.n) * size, ((f % probe.n) + 1) * size);
      try {
        const model = await slot.run(async (m) => {
          await m.classify(px, 1);
          return `${m.card.name}@${m.card.version}`;
        });
        cam.frames.push({ id: f, model });
      } catch (err) {
        cam.errors.push(err);
      }
      await new Promise((r) => setTimeout(r, 5));
    }
  };
  const lanes = [lane(), lane()];
  cam.stop = async () => {
    running = false;
    await Promise.all(lanes);
    await agent.close();
    await slot.current.dispose();
  };
  await agent.start();
  return cam;
}

/** Resolves when `pred` holds for the camera's status (checked now and on every status event). */
function until(cam: Camera, pred: (s: OtaStatus) => boolean): Promise<OtaStatus> {
  return new Promise((resolve) => {
    if (pred(cam.agent.status)) return resolve(cam.agent.status);
    const on = (s: OtaStatus): void => {
      if (pred(s)) {
        cam.agent.off('status', on);
        resolve(s);
      }
    };
    cam.agent.on('status', on);
  });
}

it('a fleet updates through the CLI, MQTT and HTTP, honouring the rollout without losing frames', async () => {
  const keys = join(dir, 'keys');
  mkdirSync(keys);
  for (const k of ['root-a', 'root-b', 'targets', 'snapshot', 'timestamp'])
    await cli('keygen', '--out', join(keys, k));
  const repo = join(dir, 'repo');
  const k = (name: string, ext: string): string => join(keys, `${name}.${ext}`);
  await cli(
    'init',
    '--repo',
    repo,
    '--root-key',
    k('root-a', 'pub'),
    '--root-key',
    k('root-b', 'pub'),
    '--root-threshold',
    '2',
    '--targets-key',
    k('targets', 'pub'),
    '--snapshot-key',
    k('snapshot', 'pub'),
    '--timestamp-key',
    k('timestamp', 'pub'),
  );
  // Two root key holders sign separately; the second on a copy of the file, merged back.
  const copy = join(dir, 'root-copy.json');
  copyFileSync(join(repo, 'staged', 'root.json'), copy);
  assert.match(
    await cli('sign', '--repo', repo, '--role', 'root', '--key', k('root-a', 'key')),
    /root: 1\/2 signatures/,
  );
  await cli('sign', '--file', copy, '--key', k('root-b', 'key'));
  assert.match(
    await cli('sign', '--repo', repo, '--role', 'root', '--merge', copy),
    /2\/2 signatures \(threshold met\)/,
  );

  const models = join(dir, 'models');
  const r1 = await centroidModel(models, probe, { variant: 1, version: 'r1' });
  const r2 = await centroidModel(models, probe, { variant: 2, version: 'r2' });
  const release = async (card: string, rollout: number): Promise<void> => {
    await cli(
      'add-target',
      '--repo',
      repo,
      '--card',
      card,
      '--hardware-class',
      'cpu-x64',
      '--rollout',
      String(rollout),
    );
    await cli('sign', '--repo', repo, '--role', 'targets', '--key', k('targets', 'key'));
    await cli(
      'publish',
      '--repo',
      repo,
      '--snapshot-key',
      k('snapshot', 'key'),
      '--timestamp-key',
      k('timestamp', 'key'),
      '--announce',
      broker.url,
    );
  };
  await release(r1.cardPath, 100);
  const srv = await serveStatic(join(repo, 'published'));
  cleanups.push(() => srv.close());
  const root = join(dir, 'root.json');
  copyFileSync(join(repo, 'published', 'metadata', '1.root.json'), root);
  const verified = await cli('verify', '--repo', srv.url, '--root', root, '--download');
  assert.match(verified, /downloaded and verified/);

  const ids = Array.from({ length: CAMERAS }, (_, i) => `cam-${String(i).padStart(3, '0')}`);
  const canary = new Set(ids.filter((id) => inRollout(id, 'device/cpu-x64', 50)));
  assert.ok(canary.size > 0 && canary.size < CAMERAS, 'both groups present (fixed ids)');
  const cams = await Promise.all(ids.map((id) => camera(id, srv.url, root)));
  cleanups.push(async () => Promise.all(cams.map((c) => c.stop())));

  // Release 1 was published before the cameras started: they take it on their first check.
  await Promise.all(cams.map((c) => c.agent.checkNow()));
  for (const c of cams) assert.equal(c.agent.status.current?.version, 'r1', c.id);

  // Release 2 at 50 %: announced over MQTT, taken by the canaries only.
  const since = new Date().toISOString();
  await release(r2.cardPath, 50);
  const done = (s: OtaStatus): boolean => s.state !== 'pending' && (s.lastCheck ?? '') >= since;
  const after50 = await Promise.all(cams.map((c) => until(c, done)));
  const onR2 = new Set(cams.filter((_, i) => after50[i].current?.version === 'r2').map((c) => c.id));
  assert.deepEqual([...onR2].sort(), [...canary].sort());
  for (const [i, c] of cams.entries()) {
    if (!canary.has(c.id)) assert.equal(after50[i].reason, 'not-in-rollout', c.id);
  }

  // Raised to 100 %: everyone else follows.
  const since2 = new Date().toISOString();
  await release(r2.cardPath, 100);
  await Promise.all(
    cams.map((c) => until(c, (s) => s.current?.version === 'r2' && (s.lastCheck ?? '') >= since2)),
  );

  await Promise.all(cams.map((c) => c.stop()));
  const shipped = JSON.parse(readFileSync(DEVICE_CARD, 'utf8')) as { name: string; version: string };
  const order = [`${shipped.name}@${shipped.version}`, `${r1.card.name}@r1`, `${r2.card.name}@r2`];
  for (const c of cams) {
    assert.deepEqual(c.errors, [], c.id);
    const ids = c.frames.map((f) => f.id).sort((a, b) => a - b);
    assert.deepEqual(
      ids,
      Array.from({ length: ids.length }, (_, i) => i),
      `${c.id}: frames lost`,
    );
    assert.ok(c.frames.length > 20, `${c.id}: ${c.frames.length} frames`);
    // By frame number, the model only ever moves forward: factory → r1 → r2.
    const byId = [...c.frames].sort((a, b) => a.id - b.id).map((f) => order.indexOf(f.model));
    assert.ok(!byId.includes(-1), `${c.id}: unknown model`);
    for (let i = 1; i < byId.length; i++) assert.ok(byId[i] >= byId[i - 1], `${c.id}: frame ${i} went back`);
    assert.equal(byId.at(-1), 2, c.id);
  }
  assert.match(readFileSync(join(repo, 'published', 'metadata', 'timestamp.json'), 'utf8'), /"version": 3/);
});
