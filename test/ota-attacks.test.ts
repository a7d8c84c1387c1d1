/**
 * The attacks TUF exists to stop, each against the real client (tuf-js through ota/client.ts)
 * over a real HTTP server on loopback, each from a repository an attacker controls: they hold the
 * server and, where stated, the online snapshot and timestamp keys, but not the offline targets
 * and root keys. Every test first shows the device accepting the honest repository, then the
 * attack being refused with its own error code and nothing reaching the device; removing the
 * defence (a signature, threshold, version, expiry, hash or length check) makes the test fail.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Metadata, MetaFile, Snapshot, TargetFile, Timestamp } from '@tufjs/models';
import { ErrorCodes } from '../cascade/errors.ts';
import { OtaClient } from '../ota/client.ts';
import type { Signer } from '../ota/keys.ts';
import { expiryString, metadataText, parseMetadata, SPEC_VERSION, withVersion } from '../ota/metadata.ts';
import { publish } from '../ota/publish.ts';
import { consistentTargetPath, type OtaRepository } from '../ota/repository.ts';
import { serveStatic } from '../ota/serve.ts';
import {
  centroidModel,
  deviceDirs,
  makeRepo,
  newSigner,
  probeSet,
  type RoleSigners,
  signAndPublish,
} from './fixtures/ota-fixtures.ts';

let dir: string;
let cards: string[];
let n = 0;
const closers: (() => Promise<void>)[] = [];

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ota-attacks-'));
  const probe = await probeSet(30);
  cards = [];
  for (const v of [1, 2])
    cards.push((await centroidModel(join(dir, 'models'), probe, { variant: v })).cardPath);
});
after(async () => {
  for (const c of closers.reverse()) await c();
  rmSync(dir, { recursive: true, force: true });
});

function fresh(name: string): string {
  n += 1;
  return join(dir, `${name}-${n}`);
}

/** A published repository (release 1 of a model) and a device that trusts its root v1. */
async function honest(opts: { targetsKeys?: number; targetsThreshold?: number } = {}) {
  const base = fresh('repo');
  const { repo, keys, now } = await makeRepo(base);
  if (opts.targetsKeys) {
    keys.targets = Array.from({ length: opts.targetsKeys }, newSigner);
    await repo.rotateRoot({ targets: { keys: keys.targets, threshold: opts.targetsThreshold ?? 1 } }, now);
    // Still version 1 (never published): re-sign the edited root.
    await repo.sign('root', keys.root);
  }
  await repo.addModel({ cardPath: cards[0], hardwareClass: 'cpu-x64', rollout: 100, now });
  await signAndPublish(repo, keys, now);
  const device = await deviceDirs(fresh('device'), repo);
  return { repo, keys, now, device };
}

/** Serves a folder; closed after the suite. */
async function serve(folder: string): Promise<string> {
  const s = await serveStatic(folder);
  closers.push(() => s.close());
  return s.url;
}

function client(device: { metadataDir: string }, url: string): OtaClient {
  return new OtaClient({ metadataDir: device.metadataDir, repoUrl: url });
}

/** A copy of the published repository for the attacker to edit. */
function attackerCopy(repo: OtaRepository): string {
  const out = fresh('attacker');
  cpSync(join(repo.dir, 'published'), out, { recursive: true });
  return out;
}

function readJson(folder: string, file: string): unknown {
  return JSON.parse(readFileSync(join(folder, 'metadata', file), 'utf8'));
}

/**
 * The attacker publishes targets v2 listing their own model bytes under the honest path, signed
 * by `targetsSigners` (or carrying the old, now invalid, signatures), and new snapshot and
 * timestamp signed with the (stolen) online keys.
 */
function forgeTargets(folder: string, keys: RoleSigners, targetsSigners: Signer[] | 'keep-old'): void {
  const now = new Date();
  const ts0 = parseMetadata('timestamp', readJson(folder, 'timestamp.json'), 'attacker');
  const snapV = ts0.signed.snapshotMeta.version;
  const targetsV = parseMetadata('snapshot', readJson(folder, `${snapV}.snapshot.json`), 'attacker').signed
    .meta['targets.json'].version;
  const old = parseMetadata('targets', readJson(folder, `${targetsV}.targets.json`), 'attacker');
  const md = withVersion(old, targetsV + 1, expiryString(now, 86_400));
  const evil = Buffer.from('not a model, but the attacker hopes you run it');
  const [path, t] = Object.entries(md.signed.targets).find(([p]) => p.endsWith('.onnx')) as [
    string,
    TargetFile,
  ];
  const sha = createHash('sha256').update(evil).digest('hex');
  md.signed.targets[path] = new TargetFile({
    path,
    length: evil.length,
    hashes: { sha256: sha },
    unrecognizedFields: t.unrecognizedFields,
  });
  const target = join(folder, 'targets', consistentTargetPath(path, sha));
  mkdirSync(join(target, '..'), { recursive: true });
  writeFileSync(target, evil);
  if (targetsSigners === 'keep-old') md.signatures = old.signatures;
  else for (const s of targetsSigners) md.sign((d) => s.sign(d));
  const targetsText = metadataText(md);
  writeFileSync(join(folder, 'metadata', `${targetsV + 1}.targets.json`), targetsText);
  const snap = new Metadata(
    new Snapshot({
      version: snapV + 1,
      specVersion: SPEC_VERSION,
      expires: expiryString(now, 86_400),
      meta: {
        'targets.json': new MetaFile({ version: targetsV + 1, length: Buffer.byteLength(targetsText) }),
      },
    }),
  );
  snap.sign((d) => keys.snapshot[0].sign(d));
  const snapText = metadataText(snap);
  writeFileSync(join(folder, 'metadata', `${snapV + 1}.snapshot.json`), snapText);
  const ts = new Metadata(
    new Timestamp({
      version: ts0.signed.version + 1,
      specVersion: SPEC_VERSION,
      expires: expiryString(now, 86_400),
      snapshotMeta: new MetaFile({ version: snapV + 1, length: Buffer.byteLength(snapText) }),
    }),
  );
  ts.sign((d) => keys.timestamp[0].sign(d));
  writeFileSync(join(folder, 'metadata', 'timestamp.json'), metadataText(ts));
}

async function assertHonestWorks(device: { metadataDir: string }, repo: OtaRepository): Promise<void> {
  const r = await client(device, await serve(join(repo.dir, 'published'))).refresh();
  assert.equal(r.models.length, 1);
}

describe('arbitrary software', () => {
  it('bad signature: targets changed under their old signature are refused', async () => {
    const { repo, keys, device } = await honest();
    const evil = attackerCopy(repo);
    forgeTargets(evil, keys, 'keep-old');
    await assert.rejects(client(device, await serve(evil)).refresh(), {
      code: ErrorCodes.OTA_ERR_SIGNATURE_INVALID,
      message: /targets was signed by 0\/1 keys/,
    });
    await assertHonestWorks(await deviceDirs(fresh('device'), repo), repo);
  });

  it('wrong key: targets signed by a key the root does not list are refused', async () => {
    const { repo, keys, device } = await honest();
    const evil = attackerCopy(repo);
    forgeTargets(evil, keys, [newSigner()]);
    await assert.rejects(client(device, await serve(evil)).refresh(), {
      code: ErrorCodes.OTA_ERR_SIGNATURE_INVALID,
    });
  });

  it('threshold not met: one of two required targets keys is not enough', async () => {
    const { repo, keys, device } = await honest({ targetsKeys: 2, targetsThreshold: 2 });
    const evil = attackerCopy(repo);
    forgeTargets(evil, keys, [keys.targets[0]]);
    await assert.rejects(client(device, await serve(evil)).refresh(), {
      code: ErrorCodes.OTA_ERR_SIGNATURE_INVALID,
      message: /signed by 1\/2 keys/,
    });
    // Both keys together (what the honest publisher holds) are accepted by a fresh device.
    const both = attackerCopy(repo);
    forgeTargets(both, keys, keys.targets);
    const r = await client(await deviceDirs(fresh('device'), repo), await serve(both)).refresh();
    assert.equal(r.targetsVersion, 2);
  });
});

describe('rollback, freeze and mix-and-match', () => {
  it('rollback: after seeing version 2 the device refuses a replayed, validly signed version 1', async () => {
    const { repo, keys, device } = await honest();
    const v1 = attackerCopy(repo);
    await repo.addModel({ cardPath: cards[1], hardwareClass: 'cpu-x64', rollout: 100, now: new Date() });
    await signAndPublish(repo, keys);
    const url = await serve(join(repo.dir, 'published'));
    assert.equal((await client(device, url).refresh()).targetsVersion, 2);
    await assert.rejects(client(device, await serve(v1)).refresh(), {
      code: ErrorCodes.OTA_ERR_ROLLBACK,
      message: /less than current version/,
    });
  });

  it('freeze: a validly signed but expired timestamp is refused', async () => {
    const base = fresh('repo');
    const past = new Date(Date.now() - 2 * 86_400_000);
    const { repo, keys } = await makeRepo(base, { now: past });
    await repo.addModel({ cardPath: cards[0], hardwareClass: 'cpu-x64', rollout: 100, now: past });
    await signAndPublish(repo, keys, past);
    const device = await deviceDirs(fresh('device'), repo);
    await assert.rejects(client(device, await serve(join(repo.dir, 'published'))).refresh(), {
      code: ErrorCodes.OTA_ERR_EXPIRED,
      message: /timestamp\.json is expired/,
    });
    // The publisher's daily timestamp re-signing is what keeps devices updating.
    await publish(repo, { timestampSigners: keys.timestamp, now: new Date(), timestampOnly: true });
    const r = await client(device, await serve(join(repo.dir, 'published'))).refresh();
    assert.equal(r.models.length, 1);
  });

  it('mix-and-match: a snapshot other than the one the timestamp names is refused', async () => {
    const { repo, keys, device } = await honest();
    const first = readFileSync(repo.metadataPath('1.snapshot.json'));
    await repo.addModel({ cardPath: cards[1], hardwareClass: 'cpu-x64', rollout: 100, now: new Date() });
    await signAndPublish(repo, keys);
    const evil = attackerCopy(repo);
    // Validly signed snapshot v1 served where the timestamp expects snapshot v2.
    writeFileSync(join(evil, 'metadata', '2.snapshot.json'), first);
    await assert.rejects(client(device, await serve(evil)).refresh(), {
      code: ErrorCodes.OTA_ERR_MISMATCH,
      message: /Expected (length|hash)/,
    });
    // And targets v1 served as v2: the snapshot pins their hash.
    const evil2 = attackerCopy(repo);
    cpSync(join(evil2, 'metadata', '1.targets.json'), join(evil2, 'metadata', '2.targets.json'));
    await assert.rejects(client(device, await serve(evil2)).refresh(), { code: ErrorCodes.OTA_ERR_MISMATCH });
  });
});

/** A server that serves `folder` but answers `endless` paths with bytes that never stop. */
async function endlessServer(
  folder: string,
  endless: (path: string) => boolean,
): Promise<{ url: string; sent: () => number }> {
  const inner = await serveStatic(folder);
  closers.push(() => inner.close());
  let sent = 0;
  const server: Server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    if (!endless(path)) {
      fetch(`${inner.url}${path}`, { headers: req.headers.range ? { range: req.headers.range } : {} })
        .then(async (r) => {
          res.writeHead(r.status, Object.fromEntries(r.headers));
          res.end(Buffer.from(await r.arrayBuffer()));
        })
        .catch(() => res.destroy());
      return;
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    const chunk = Buffer.alloc(16 * 1024, 0x7b);
    const pump = (): void => {
      while (!res.destroyed && sent < 64 * 1024 * 1024) {
        sent += chunk.length;
        if (!res.write(chunk)) {
          res.once('drain', pump);
          return;
        }
      }
      res.end();
    };
    res.on('close', () => res.destroy());
    pump();
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  closers.push(() => new Promise((ok) => server.close(() => ok())));
  server.on('connection', (s) => closers.push(async () => void s.destroy()));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, sent: () => sent };
}

describe('endless data and tampered bytes', () => {
  it('endless data: an unbounded timestamp.json is cut off at the metadata cap', async () => {
    const { repo, device } = await honest();
    const srv = await endlessServer(join(repo.dir, 'published'), (p) => p.endsWith('/timestamp.json'));
    const c = new OtaClient({
      metadataDir: device.metadataDir,
      repoUrl: srv.url,
      limits: { timestamp: 16 * 1024 },
    });
    await assert.rejects(c.refresh(), { code: ErrorCodes.OTA_ERR_TOO_LARGE });
    // The server got to send little beyond the cap before the client hung up (socket buffers).
    assert.ok(srv.sent() < 8 * 1024 * 1024, `${srv.sent()} bytes sent`);
  });

  it('endless data: a model download is cut off at its signed length', async () => {
    const { repo, device } = await honest();
    const srv = await endlessServer(join(repo.dir, 'published'), (p) => p.endsWith('.onnx'));
    const c = client(device, srv.url);
    const r = await c.refresh();
    const dest = join(device.modelsDir, 'model.onnx');
    await assert.rejects(c.download(r.models[0].path, dest), { code: ErrorCodes.OTA_ERR_TOO_LARGE });
    assert.equal(existsSync(dest), false);
    assert.ok(srv.sent() < 8 * 1024 * 1024, `${srv.sent()} bytes sent`);
  });

  it('tampered model bytes of the right length are refused and never written', async () => {
    const { repo, device } = await honest();
    const evil = attackerCopy(repo);
    const c = client(device, await serve(evil));
    const r = await c.refresh();
    const m = r.models[0];
    const served = join(evil, 'targets', consistentTargetPath(m.path, m.sha256));
    const bytes = readFileSync(served);
    bytes[bytes.length >> 1] ^= 0x40;
    writeFileSync(served, bytes);
    const dest = join(device.modelsDir, 'model.onnx');
    await assert.rejects(c.download(m.path, dest), { code: ErrorCodes.OTA_ERR_TARGET_HASH });
    assert.equal(existsSync(dest), false);
    // The honest bytes download and match.
    const ok = client(device, await serve(join(repo.dir, 'published')));
    await ok.refresh();
    assert.equal((await ok.download(m.path, dest)).sha256, m.sha256);
  });
});

describe('root key rotation', () => {
  it('the device follows a rotation signed by old and new keys, then refuses the revoked keys', async () => {
    const { repo, keys, now, device } = await honest();
    const oldTargets = keys.targets;
    const newRoot = [newSigner()];
    keys.targets = [newSigner()];
    await repo.rotateRoot(
      { root: { keys: newRoot, threshold: 1 }, targets: { keys: keys.targets, threshold: 1 } },
      now,
    );
    await repo.sign('root', [...keys.root, ...newRoot]);
    await repo.renew('targets', now);
    await signAndPublish(repo, keys, now);
    const r = await client(device, await serve(join(repo.dir, 'published'))).refresh();
    assert.equal(r.rootVersion, 2);
    assert.equal(
      parseMetadata('root', readJson(join(device.metadataDir, '..'), 'root.json'), 'device root').signed
        .version,
      2,
    );
    // An attacker holding the revoked targets key (and the online keys) forges newer targets.
    const evil = attackerCopy(repo);
    forgeTargets(evil, keys, oldTargets);
    await assert.rejects(client(device, await serve(evil)).refresh(), {
      code: ErrorCodes.OTA_ERR_SIGNATURE_INVALID,
    });
    // Before the rotation the same forgery would have been accepted: the rotation is what revokes.
    const stale = await deviceDirs(fresh('device'), repo);
    const r1 = await client(stale, await serve(evil))
      .refresh()
      .catch((e: Error) => e);
    assert.ok(r1 instanceof Error, 'a device on root v1 still follows the chain to root v2');
  });

  it('a new root signed only by new keys (not vouched for by the old root) is refused', async () => {
    const { repo, keys, now, device } = await honest();
    const attackerRoot = [newSigner()];
    await repo.rotateRoot({ root: { keys: attackerRoot, threshold: 1 } }, now);
    await repo.sign('root', attackerRoot);
    const evil = attackerCopy(repo);
    const staged = await repo.staged('root');
    writeFileSync(join(evil, 'metadata', '2.root.json'), metadataText(staged));
    await assert.rejects(client(device, await serve(evil)).refresh(), {
      code: ErrorCodes.OTA_ERR_SIGNATURE_INVALID,
      message: /root was signed by 0\/1 keys/,
    });
    assert.equal(
      parseMetadata('root', readJson(join(device.metadataDir, '..'), 'root.json'), 'device root').signed
        .version,
      1,
    );
    void keys;
  });
});
