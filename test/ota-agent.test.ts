/**
 * device/ota-agent.ts end to end on real parts: a published TUF repository on a loopback HTTP
 * server, an in-process MQTT broker (aedes) with mqtt.js clients, real ONNX Runtime models in a
 * ModelSlot. An announcement makes the agent update, swap and report; a model that passes its
 * hashes but fails the health check is swapped out again and rolled back, and never retried; a
 * target for other hardware or a card that contradicts its manifest is never installed; an
 * unreachable repository is reported; a restart keeps the installed model; polling is jittered.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connectAsync, type MqttClient } from 'mqtt';
import { ErrorCodes } from '../cascade/errors.ts';
import { ModelSlot } from '../device/model-slot.ts';
import { OtaAgent, type OtaAgentEvents, type OtaAgentOptions, type OtaStatus } from '../device/ota-agent.ts';
import type { ProbeSet } from '../device/ota-health.ts';
import { OnnxClassifier } from '../models/runtime.ts';
import { ANNOUNCE_TOPIC, statusTopic } from '../ota/manifest.ts';
import type { OtaRepository } from '../ota/repository.ts';
import { serveStatic } from '../ota/serve.ts';
import {
  centroidModel,
  deviceDirs,
  makeRepo,
  probeSet,
  type RoleSigners,
  signAndPublish,
  startBroker,
} from './fixtures/ota-fixtures.ts';

const DEVICE_CARD = new URL('../models/device/card.json', import.meta.url).pathname;
let dir: string;
let probe: ProbeSet;
let good: string[];
let broken: string;
let broker: Awaited<ReturnType<typeof startBroker>>;
const cleanups: (() => Promise<unknown>)[] = [];
let n = 0;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ota-agent-'));
  probe = await probeSet(100);
  good = [];
  for (const v of [1, 2])
    good.push((await centroidModel(join(dir, 'models'), probe, { variant: v })).cardPath);
  broken = (await centroidModel(join(dir, 'models'), probe, { variant: 9, broken: true })).cardPath;
  broker = await startBroker();
});
after(async () => {
  for (const c of cleanups.reverse()) await c();
  await broker.close();
  rmSync(dir, { recursive: true, force: true });
});

async function mqttClient(): Promise<MqttClient> {
  const c = await connectAsync(broker.url, { reconnectPeriod: 0 });
  (c.stream as Socket).setNoDelay?.(true);
  cleanups.push(() => c.endAsync(true));
  return c;
}

/** A repository with `cards` published for `hardwareClass`, served on loopback. */
async function published(cards: string[], hardwareClass = 'cpu-x64', rollout = 100) {
  n += 1;
  const { repo, keys, now } = await makeRepo(join(dir, `repo${n}`));
  for (const cardPath of cards) await repo.addModel({ cardPath, hardwareClass, rollout, now });
  await signAndPublish(repo, keys, now);
  const srv = await serveStatic(join(repo.dir, 'published'));
  cleanups.push(() => srv.close());
  return { repo, keys, url: srv.url, close: () => srv.close() };
}

async function agentFor(
  repo: OtaRepository,
  url: string,
  extra: Partial<OtaAgentOptions> = {},
): Promise<{ agent: OtaAgent; slot: ModelSlot; dirs: { metadataDir: string; modelsDir: string } }> {
  const dirs = await deviceDirs(join(dir, `device${++n}`), repo);
  const slot = new ModelSlot(await OnnxClassifier.load(DEVICE_CARD));
  const agent = new OtaAgent({
    repoUrl: url,
    ...dirs,
    deviceId: `cam-${n}`,
    hardwareClass: 'cpu-x64',
    model: slot,
    probe,
    startDelayMaxMs: 3_600_000,
    announceDelayMaxMs: 0,
    announceMinIntervalMs: 0,
    ...extra,
  });
  cleanups.push(async () => {
    await agent.close();
    await slot.current.dispose();
  });
  return { agent, slot, dirs };
}

function next<K extends keyof OtaAgentEvents>(agent: OtaAgent, event: K): Promise<OtaAgentEvents[K]> {
  return new Promise((resolve) =>
    agent.once(event, ((...args: OtaAgentEvents[K]) => resolve(args)) as never),
  );
}

async function addAndPublish(
  repo: OtaRepository,
  keys: RoleSigners,
  cardPath: string,
  hardwareClass = 'cpu-x64',
) {
  await repo.addModel({ cardPath, hardwareClass, rollout: 100, now: new Date() });
  await signAndPublish(repo, keys);
}

describe('update over MQTT announce', () => {
  it('installs, hot-swaps and reports a new release; a broken one is rolled back and never retried', async () => {
    const { repo, keys, url } = await published([]);
    const watcher = await mqttClient();
    const logged: string[] = [];
    const log = {
      info: (_o: object, msg: string) => logged.push(msg),
      warn: (_o: object, msg: string) => logged.push(msg),
    };
    const { agent, slot, dirs } = await agentFor(repo, url, { mqtt: await mqttClient(), log: log as never });
    const statuses: OtaStatus[] = [];
    agent.on('status', (s) => statuses.push(s));
    await agent.start();
    assert.equal(agent.status.current, null, 'factory model');
    const factory = slot.current;

    // Publisher adds release 1 and announces it.
    await addAndPublish(repo, keys, good[0]);
    const installed = next(agent, 'installed');
    await watcher.publishAsync(ANNOUNCE_TOPIC, JSON.stringify({ timestamp: 2 }), { qos: 1 });
    const [ev] = await installed;
    assert.equal(ev.release.release, 1);
    assert.ok(ev.health.ok);
    assert.notEqual(slot.current, factory);
    assert.equal(slot.current.card.name, ev.card.name);
    await assert.rejects(
      factory.classify(probe.images.subarray(0, 784), 1),
      /after dispose/,
      'old session released',
    );
    const states = statuses.map((s) => s.state);
    assert.deepEqual(states.slice(-2), ['pending', 'current']);

    // The retained status on MQTT, as a fleet dashboard sees it.
    const seen = new Promise<OtaStatus>((resolve) =>
      watcher.on(
        'message',
        (t, p) => t === statusTopic(agent.status.deviceId) && resolve(JSON.parse(p.toString())),
      ),
    );
    await watcher.subscribeAsync(statusTopic(agent.status.deviceId), { qos: 1 });
    const retained = await seen;
    assert.equal(retained.state, 'current');
    assert.equal(retained.current?.release, 1);
    const metrics = await agent.metrics.registry.metrics();
    assert.match(metrics, /cascade_ota_model_release 1/);
    assert.match(metrics, /cascade_ota_state\{state="current"\} 1/);
    assert.match(metrics, /cascade_ota_updates_total\{result="installed"\} 1/);
    assert.match(metrics, /cascade_ota_download_bytes_total [1-9]/);

    // Release 2 passes every hash but is a bad model: swapped in, checked, swapped back out.
    await addAndPublish(repo, keys, broken);
    const running = slot.current;
    const rolled = next(agent, 'rolled-back');
    await watcher.publishAsync(ANNOUNCE_TOPIC, '{}', { qos: 1 });
    const [rb] = await rolled;
    assert.equal(rb.release.release, 2);
    assert.match(rb.reason, /health check failed: probe accuracy/);
    assert.equal(slot.current, running, 'the release-1 session is back');
    assert.equal(slot.swaps, 3, 'in, out');
    assert.ok((await slot.current.classify(probe.images.subarray(0, 784), 1)).pred.length === 1);
    const s = agent.status;
    assert.deepEqual(
      [s.state, s.current?.release, s.lastError?.code],
      ['rolled-back', 1, ErrorCodes.OTA_ERR_HEALTH_CHECK],
    );
    assert.equal(s.failed[0]?.release, 2);
    const pointer = JSON.parse(readFileSync(join(dirs.modelsDir, 'active.json'), 'utf8'));
    assert.equal(pointer.active.release, 1);
    assert.match(
      await agent.metrics.registry.metrics(),
      /cascade_ota_updates_total\{result="rolled_back"\} 1/,
    );

    assert.deepEqual(logged, ['ota: new model installed', 'ota: new model rolled back']);

    // Checking again does not retry the failed release.
    const again = await agent.checkNow();
    assert.deepEqual(
      [again.state, again.current?.release, again.reason],
      ['rolled-back', 1, 'previously-failed'],
    );
    assert.equal(slot.swaps, 3);
  });
});

describe('what is never installed', () => {
  it('a target for another hardware class', async () => {
    const { repo, url } = await published([good[0]], 'gpu-x64');
    const { agent, slot } = await agentFor(repo, url);
    await agent.start();
    const s = await agent.checkNow();
    assert.deepEqual([s.state, s.current, s.reason], ['current', null, 'no-target-for-hardware']);
    assert.equal(slot.swaps, 0);
  });

  it('a model whose signed card contradicts its signed manifest', async () => {
    n += 1;
    const { repo, keys, now } = await makeRepo(join(dir, `repo${n}`));
    await repo.addModel({ cardPath: good[0], hardwareClass: 'cpu-x64', rollout: 100, now });
    // The publisher's manifest says 32×32 input; the card (and the model) are 28×28.
    const staged = join(repo.dir, 'staged', 'targets.json');
    const json = JSON.parse(readFileSync(staged, 'utf8'));
    for (const t of Object.values(json.signed.targets) as {
      custom: { cascade: { kind: string; input: { height: number } } };
    }[]) {
      if (t.custom.cascade.kind === 'model') t.custom.cascade.input.height = 32;
    }
    writeFileSync(staged, JSON.stringify(json));
    await signAndPublish(repo, keys, now);
    const srv = await serveStatic(join(repo.dir, 'published'));
    cleanups.push(() => srv.close());
    const { agent, slot } = await agentFor(repo, srv.url);
    await agent.start();
    const s = await agent.checkNow();
    assert.equal(s.state, 'failed');
    assert.equal(s.lastError?.code, ErrorCodes.OTA_ERR_HARDWARE_MISMATCH);
    assert.match(s.lastError?.message ?? '', /input spec differs/);
    assert.equal(slot.swaps, 0);
    assert.equal(s.current, null);
  });
});

describe('lifecycle', () => {
  it('reports an unreachable repository, keeps its model across a restart, and closes twice', async () => {
    const { repo, url, close } = await published([good[1]]);
    const { agent, slot, dirs } = await agentFor(repo, url);
    await agent.start();
    const s1 = await agent.checkNow();
    assert.equal(s1.current?.release, 1);
    await close();
    const s2 = await agent.checkNow();
    assert.deepEqual(
      [s2.state, s2.lastError?.code, s2.current?.release],
      ['failed', ErrorCodes.OTA_ERR_DOWNLOAD, 1],
    );
    assert.match(
      await agent.metrics.registry.metrics(),
      /cascade_ota_checks_total\{result="OTA_ERR_DOWNLOAD"\} 1/,
    );
    await agent.close();
    await agent.close();
    // Restart: the store recovers to the installed release and the runtime loads it.
    const boot = await OtaAgent.bootModel(dirs.modelsDir, DEVICE_CARD);
    assert.equal(boot.release?.release, 1);
    const m = await OnnxClassifier.load(boot.cardPath);
    assert.equal(m.card.name, slot.current.card.name);
    await m.dispose();
  });

  it('reports a damaged model store instead of throwing', async () => {
    const { repo, url } = await published([]);
    const { agent, dirs } = await agentFor(repo, url);
    await agent.start();
    writeFileSync(join(dirs.modelsDir, 'active.json'), 'not json');
    const s = await agent.checkNow();
    assert.deepEqual([s.state, s.lastError?.code], ['failed', ErrorCodes.OTA_ERR_INSTALL]);
  });

  it('acts on one announcement per interval, so a flood cannot keep it refreshing', async () => {
    const { repo, url } = await published([]);
    const { agent } = await agentFor(repo, url, { mqtt: await mqttClient(), announceMinIntervalMs: 60_000 });
    await agent.start();
    const flood = await mqttClient();
    const first = next(agent, 'status');
    for (let i = 0; i < 20; i++) await flood.publishAsync(ANNOUNCE_TOPIC, '{}', { qos: 1 });
    await first;
    await new Promise((r) => setTimeout(r, 300));
    assert.match(await agent.metrics.registry.metrics(), /cascade_ota_checks_total\{result="ok"\} 1\n/);
  });

  it('polls on a jittered period with injected timers', async () => {
    const { repo, url } = await published([]);
    const delays: number[] = [];
    const pending: (() => void)[] = [];
    const timers = {
      setTimeout: ((fn: () => void, ms: number) => {
        delays.push(ms);
        pending.push(fn);
        return { unref() {} } as unknown as NodeJS.Timeout;
      }) as unknown as typeof setTimeout,
      clearTimeout: (() => {}) as typeof clearTimeout,
    };
    let r = 0;
    const random = (): number => [0, 1, 0.5][r++ % 3];
    const { agent } = await agentFor(repo, url, {
      timers,
      random,
      pollIntervalMs: 60_000,
      pollJitter: 0.25,
      startDelayMaxMs: 10_000,
    });
    await agent.start();
    assert.equal(delays[0], 0, 'first check after a random share of the start delay');
    const checked = next(agent, 'status');
    pending.shift()?.();
    await checked;
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.ok(delays[1] >= 45_000 && delays[1] <= 75_000, String(delays[1]));
  });
});
