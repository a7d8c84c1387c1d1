/**
 * bench:ota — what a signed model update costs a camera, on loopback:
 *
 *   npm run bench:ota -- [--releases N] [--refreshes N] [--json]
 *
 * A TUF repository (ota/) served over HTTP publishes the trained INT8 device student again and
 * again as new releases (each with a new card version); one OTA agent with a ModelSlot updates
 * while two frame lanes run the model back to back. Reports medians of: a cold refresh (only the
 * trusted root cached), a warm refresh (nothing new), a full update (refresh, download, verify,
 * atomic install, load, swap, health check on 200 probe images, confirm), and per-frame latency
 * in steady state versus while an update runs, plus frames lost (must be 0).
 */
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { numberOpt, parse } from '../cascade/args.ts';
import { ModelSlot } from '../device/model-slot.ts';
import { OtaAgent } from '../device/ota-agent.ts';
import { loadProbeSet } from '../device/ota-health.ts';
import { OnnxClassifier } from '../models/runtime.ts';
import { OtaClient } from '../ota/client.ts';
import { generateKeyFiles, loadPublicKey, loadSigner } from '../ota/keys.ts';
import { ROLE_NAMES, type RoleKeys, type RoleName } from '../ota/metadata.ts';
import { publish } from '../ota/publish.ts';
import { OtaRepository } from '../ota/repository.ts';
import { serveStatic } from '../ota/serve.ts';

const DEVICE_CARD = fileURLToPath(new URL('../models/device/card.json', import.meta.url));

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? Number.NaN : s[Math.floor((s.length - 1) / 2)];
}

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? Number.NaN : s[Math.min(s.length - 1, Math.floor(q * s.length))];
}

const round = (x: number): number => Math.round(x * 100) / 100;

async function main(): Promise<void> {
  const { values: v } = parse(process.argv.slice(2), {
    releases: { type: 'string' },
    refreshes: { type: 'string' },
    json: { type: 'boolean' },
  });
  const releases = numberOpt('--releases', v.releases, { integer: true, min: 1 }) ?? 5;
  const refreshes = numberOpt('--refreshes', v.refreshes, { integer: true, min: 1 }) ?? 15;
  const dir = mkdtempSync(join(tmpdir(), 'bench-ota-'));
  try {
    const roles = {} as Record<RoleName, RoleKeys>;
    const signers = {} as Record<RoleName, Awaited<ReturnType<typeof loadSigner>>>;
    for (const role of ROLE_NAMES) {
      const k = await generateKeyFiles(join(dir, role));
      signers[role] = await loadSigner(k.privatePath);
      roles[role] = { keys: [await loadPublicKey(k.publicPath)], threshold: 1 };
    }
    const repo = await OtaRepository.init(join(dir, 'repo'), { roles, now: new Date() });
    await repo.sign('root', [signers.root]);
    const card = JSON.parse(readFileSync(DEVICE_CARD, 'utf8'));
    const release = async (k: number): Promise<void> => {
      const d = join(dir, 'src', `v${k}`);
      mkdirSync(d, { recursive: true });
      copyFileSync(join(DEVICE_CARD, '..', card.files[0].file), join(d, card.files[0].file));
      writeFileSync(join(d, 'card.json'), JSON.stringify({ ...card, version: `bench-${k}` }));
      await repo.addModel({
        cardPath: join(d, 'card.json'),
        hardwareClass: 'bench',
        rollout: 100,
        now: new Date(),
      });
      await repo.sign('targets', [signers.targets]);
      await publish(repo, {
        snapshotSigners: [signers.snapshot],
        timestampSigners: [signers.timestamp],
        now: new Date(),
      });
    };
    await release(1);
    const srv = await serveStatic(join(repo.dir, 'published'));
    const rootFile = repo.metadataPath('1.root.json');

    const cold: number[] = [];
    const warm: number[] = [];
    const warmDir = join(dir, 'warm');
    mkdirSync(warmDir);
    copyFileSync(rootFile, join(warmDir, 'root.json'));
    for (let i = 0; i < refreshes; i++) {
      const md = join(dir, `cold${i}`);
      mkdirSync(md);
      copyFileSync(rootFile, join(md, 'root.json'));
      let t = performance.now();
      await new OtaClient({ metadataDir: md, repoUrl: srv.url }).refresh();
      cold.push(performance.now() - t);
      t = performance.now();
      await new OtaClient({ metadataDir: warmDir, repoUrl: srv.url }).refresh();
      if (i > 0) warm.push(performance.now() - t);
    }

    const probe = await loadProbeSet();
    const slot = new ModelSlot(await OnnxClassifier.load(DEVICE_CARD, { intraOpThreads: 1 }));
    const agent = new OtaAgent({
      repoUrl: srv.url,
      metadataDir: join(dir, 'device', 'metadata'),
      trustedRoot: rootFile,
      modelsDir: join(dir, 'device', 'models'),
      deviceId: 'bench-cam',
      hardwareClass: 'bench',
      model: slot,
      probe,
      loadOptions: { intraOpThreads: 1 },
      startDelayMaxMs: 3_600_000,
    });
    await agent.start();
    const frames: { start: number; ms: number }[] = [];
    let running = true;
    let next = 0;
    const size = probe.height * probe.width * probe.channels;
    const lane = async (): Promise<void> => {
      while (running) {
        const f = next++ % probe.n;
        const start = performance.now();
        await slot.run((m) => m.classify(probe.images.subarray(f * size, (f + 1) * size), 1));
        frames.push({ start, ms: performance.now() - start });
        await new Promise((r) => setImmediate(r));
      }
    };
    const lanes = [lane(), lane()];
    const updates: number[] = [];
    const windows: [number, number][] = [];
    await new Promise((r) => setTimeout(r, 500));
    for (let k = 1; k <= releases; k++) {
      if (k > 1) await release(k);
      await new Promise((r) => setTimeout(r, 300));
      const t = performance.now();
      const s = await agent.checkNow();
      const end = performance.now();
      if (s.current?.version !== `bench-${k}`)
        throw new Error(`release ${k} not installed: ${JSON.stringify(s)}`);
      updates.push(end - t);
      windows.push([t, end]);
    }
    running = false;
    await Promise.all(lanes);
    await agent.close();
    await slot.current.dispose();
    await srv.close();
    const during = frames
      .filter((f) => windows.some(([a, b]) => f.start + f.ms >= a && f.start <= b))
      .map((f) => f.ms);
    const steady = frames
      .filter((f) => !windows.some(([a, b]) => f.start + f.ms >= a && f.start <= b))
      .map((f) => f.ms);
    const result = {
      modelBytes: card.files[0].bytes,
      coldRefreshMs: round(median(cold)),
      warmRefreshMs: round(median(warm)),
      updateMs: round(median(updates)),
      frames: frames.length,
      framesLost: next - frames.length,
      steadyFrameMs: { p50: round(quantile(steady, 0.5)), p99: round(quantile(steady, 0.99)) },
      duringUpdateFrameMs: {
        p50: round(quantile(during, 0.5)),
        p99: round(quantile(during, 0.99)),
        n: during.length,
      },
      releases,
    };
    process.stdout.write(`${JSON.stringify(result, null, v.json ? 0 : 2)}\n`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
