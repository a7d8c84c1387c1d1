/**
 * Power cut during a model install, 200 times: a child process runs the real installer (stage,
 * activate, confirm) and is killed with SIGKILL, either at a random one of its write steps
 * (each chunk written, each fsync, rename and pointer update: every point of the sequence is
 * reachable) or after a random delay. After each kill the device restarts: `recover()` runs,
 * and the model it then runs must be the old one or the new one, with files that verify and an
 * ONNX Runtime session that loads and classifies, never a broken or mixed one.
 *
 * The child is the installer transpiled to plain JavaScript (TypeScript's transpileModule, as
 * tsx would), so each restart costs a bare `node` start instead of a TypeScript loader.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, it } from 'node:test';
import ts from 'typescript';
import { ModelInstaller } from '../device/model-installer.ts';
import { mulberry32 } from '../models/data/rng.ts';
import { OnnxClassifier } from '../models/runtime.ts';
import { centroidModel, probeSet } from './fixtures/ota-fixtures.ts';

const KILLS = 200;
const ROOT = new URL('..', import.meta.url).pathname;
let dir: string;
let child: string;
let models: { card: string; model: string; sha: string }[];
let pixels: Uint8Array;

/** Transpiles the child and what it imports into `out`, keeping the folder layout. */
function transpile(out: string): string {
  const files = [
    'test/fixtures/ota-install-child.ts',
    'device/model-installer.ts',
    'ota/atomic-fs.ts',
    'cascade/errors.ts',
  ];
  for (const f of files) {
    const js = ts.transpileModule(readFileSync(join(ROOT, f), 'utf8'), {
      compilerOptions: {
        module: ts.ModuleKind.ESNext,
        target: ts.ScriptTarget.ES2022,
        rewriteRelativeImportExtensions: true,
      },
    }).outputText;
    const dest = join(out, f.replace(/\.ts$/, '.js'));
    mkdirSync(dirname(dest), { recursive: true });
    writeFileSync(dest, js);
  }
  writeFileSync(join(out, 'package.json'), '{"type":"module"}');
  return join(out, 'test/fixtures/ota-install-child.js');
}

before(async () => {
  // SIGKILL leaves the page cache intact, so the file system does not change what this proves
  // (the atomicity of every visible step); tmpfs, where there is one, just makes it faster.
  dir = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'ota-powercut-'));
  child = transpile(join(dir, 'js'));
  const probe = await probeSet(8);
  pixels = probe.images.slice(0, probe.height * probe.width);
  models = [];
  for (const v of [1, 2, 3]) {
    const { cardPath, card } = await centroidModel(join(dir, 'src'), probe, { variant: v });
    const model = join(dirname(cardPath), card.files[0].file);
    models.push({ card: cardPath, model, sha: card.files[0].sha256 });
  }
});
after(() => rmSync(dir, { recursive: true, force: true }));

interface Child {
  ready: Promise<void>;
  kill(): void;
  /** Starts the install; kills the child `delayMs` after it began, if given. Resolves on exit. */
  go(
    job: { dir: string; card: string; model: string; release: number; killAt: number },
    delayMs?: number,
  ): Promise<{
    signal: NodeJS.Signals | null;
    steps?: number;
  }>;
}

/**
 * Starts an installer child that waits for its job, so the next restart's node start-up
 * overlaps with the current kill and check.
 */
function startChild(): Child {
  // Without extra CA certificates (the child does no TLS) node starts several times faster.
  const env = { ...process.env };
  delete env.NODE_EXTRA_CA_CERTS;
  delete env.NODE_OPTIONS;
  const p = spawn(process.execPath, [child], { stdio: ['pipe', 'pipe', 'inherit'], env });
  let out = '';
  let onGo: (() => void) | undefined;
  let onReady: () => void = () => {};
  const ready = new Promise<void>((ok) => {
    onReady = ok;
  });
  const exited = new Promise<{ signal: NodeJS.Signals | null; steps?: number }>((ok, fail) => {
    p.on('error', fail);
    p.on('exit', (_code, signal) => {
      const done = /done (\d+)/.exec(out);
      ok({ signal, steps: done ? Number(done[1]) : undefined });
    });
  });
  p.stdout.on('data', (d: Buffer) => {
    out += d.toString();
    if (out.includes('ready\n')) onReady();
    if (out.includes('go\n')) onGo?.();
  });
  return {
    ready,
    kill: () => p.kill('SIGKILL'),
    go(job, delayMs) {
      if (delayMs !== undefined) onGo = () => setTimeout(() => p.kill('SIGKILL'), delayMs);
      p.stdin.end(`${JSON.stringify(job)}\n`);
      return exited;
    },
  };
}

it(`${KILLS} SIGKILLs at random points of an install: the device always runs the old or the new model`, async () => {
  const store = join(dir, 'store');
  const rng = mulberry32(20261122);
  // A clean first install tells how many write steps an install has.
  let warm = startChild();
  const job = (m: (typeof models)[number], release: number, killAt: number) => ({
    dir: store,
    card: m.card,
    model: m.model,
    release,
    killAt,
  });
  const first = await warm.go(job(models[0], 1, -1));
  warm = startChild();
  assert.equal(first.signal, null);
  const steps = first.steps ?? 0;
  assert.ok(steps > 10, `${steps} steps`);
  let active = models[0];
  let release = 1;
  const outcomes = { old: 0, new: 0, killed: 0 };
  const killSteps = new Set<number>();
  for (let i = 0; i < KILLS; i++) {
    // Always a model other than the active one, and not the previous (so staging really writes).
    const next = models[(models.indexOf(active) + 1 + (i % 2)) % 3];
    release += 1;
    const byTimer = rng() < 0.25;
    const killAt = byTimer ? -1 : Math.floor(rng() * (steps + 2));
    const c = warm;
    await c.ready;
    warm = startChild();
    const r = await c.go(job(next, release, killAt), byTimer ? rng() * 8 : undefined);
    if (r.signal === 'SIGKILL') outcomes.killed += 1;
    if (!byTimer && killAt < steps) killSteps.add(killAt);

    // Restart.
    const installer = new ModelInstaller(store);
    const { active: ref, repaired } = await installer.recover();
    // Never a damaged release to fall back from: the order of writes alone kept it consistent.
    assert.equal(repaired, undefined, `kill ${i}: ${repaired?.reason}`);
    assert.ok(ref, `kill ${i}: no model at all`);
    assert.ok(ref.modelSha256 === active.sha || ref.modelSha256 === next.sha, `kill ${i}: a third model`);
    const cardPath = installer.cardPath(ref);
    const modelBytes = readFileSync(join(dirname(cardPath), ref.modelFile));
    assert.equal(
      createHash('sha256').update(modelBytes).digest('hex'),
      ref.modelSha256,
      `kill ${i}: torn model`,
    );
    assert.equal(createHash('sha256').update(readFileSync(cardPath)).digest('hex'), ref.cardSha256);
    const m = await OnnxClassifier.load(cardPath, { intraOpThreads: 1 });
    try {
      const { pred } = await m.classify(pixels, 1);
      assert.equal(pred.length, 1);
    } finally {
      await m.dispose();
    }
    assert.deepEqual(
      readdirSync(join(store, 'releases')).filter((f) => f.startsWith('.')),
      [],
      'staging leftovers removed',
    );
    const isNew = ref.modelSha256 === next.sha;
    outcomes[isNew ? 'new' : 'old'] += 1;
    active = isNew ? next : active;
  }
  warm.kill();
  assert.ok(outcomes.killed >= KILLS * 0.6, JSON.stringify(outcomes));
  assert.ok(outcomes.old > 20 && outcomes.new > 20, JSON.stringify(outcomes));
  assert.ok(killSteps.size >= steps * 0.8, `${killSteps.size} of ${steps} step positions hit`);
});
