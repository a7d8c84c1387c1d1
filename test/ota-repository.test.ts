/**
 * ota/repository.ts and ota/publish.ts: the publisher's workspace and the static repository it
 * writes. Threshold signing by several key holders (offline copies merged), publish refusing
 * what a client would refuse, monotonic releases, rollout updates, pruning, the timestamp-only
 * refresh, root rotation signed by old and new keys, and the files a static server must serve.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ErrorCodes } from '../cascade/errors.ts';
import { listModelTargets } from '../ota/manifest.ts';
import { parseMetadata } from '../ota/metadata.ts';
import { publish } from '../ota/publish.ts';
import { consistentTargetPath } from '../ota/repository.ts';
import { centroidModel, makeRepo, newSigner, probeSet } from './fixtures/ota-fixtures.ts';

let dir: string;
let cardA: string;
let cardB: string;
before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ota-repo-'));
  const probe = await probeSet(50);
  cardA = (await centroidModel(join(dir, 'models'), probe, { variant: 1 })).cardPath;
  cardB = (await centroidModel(join(dir, 'models'), probe, { variant: 2 })).cardPath;
});
after(() => rmSync(dir, { recursive: true, force: true }));

describe('threshold signing', () => {
  it('needs k of n root keys; an offline copy signed elsewhere merges in', async () => {
    const { repo, keys } = await makeRepo(join(dir, 't1'), { rootKeys: 3, rootThreshold: 2, rootSigners: 1 });
    const r0 = await repo.report('root');
    assert.deepEqual([r0.valid.length, r0.threshold, r0.ok], [1, 2, false]);
    // A second key holder signs a copy of the file on another machine.
    const copy = parseMetadata(
      'root',
      JSON.parse(readFileSync(join(repo.dir, 'staged/root.json'), 'utf8')),
      'copy',
    );
    for (const id of Object.keys(copy.signatures)) delete copy.signatures[id];
    copy.sign((d) => keys.root[2].sign(d));
    const added = await repo.merge('root', copy.toJSON(), 'copy');
    assert.deepEqual(added, [keys.root[2].keyId]);
    const r = await repo.report('root');
    assert.ok(r.ok);
    assert.ok(r.valid.includes(keys.root[2].keyId));
  });

  it('refuses to merge a copy of different content or a signature that does not verify', async () => {
    const { repo, keys } = await makeRepo(join(dir, 't2'), { rootKeys: 2, rootThreshold: 2 });
    const json = JSON.parse(readFileSync(join(repo.dir, 'staged/root.json'), 'utf8'));
    json.signed.expires = '2099-01-01T00:00:00Z';
    await assert.rejects(repo.merge('root', json, 'edited'), { code: ErrorCodes.OTA_ERR_MISMATCH });
    const forged = JSON.parse(readFileSync(join(repo.dir, 'staged/root.json'), 'utf8'));
    forged.signatures[0].sig = '00'.repeat(64);
    await assert.rejects(repo.merge('root', forged, 'forged'), {
      code: ErrorCodes.OTA_ERR_SIGNATURE_INVALID,
    });
    await assert.rejects(repo.sign('targets', [keys.snapshot[0]]), { code: ErrorCodes.OTA_ERR_KEY });
  });

  it('publish refuses a root below its threshold, unsigned targets and missing online keys', async () => {
    const { repo, keys } = await makeRepo(join(dir, 't3'), { rootKeys: 3, rootThreshold: 2 });
    const now = new Date();
    await repo.addModel({ cardPath: cardA, hardwareClass: 'cpu-x64', rollout: 100, now });
    const opts = { snapshotSigners: keys.snapshot, timestampSigners: keys.timestamp, now };
    await assert.rejects(publish(repo, opts), {
      code: ErrorCodes.OTA_ERR_SIGNATURE_INVALID,
      message: /targets/,
    });
    await repo.sign('targets', keys.targets);
    await assert.rejects(publish(repo, { ...opts, snapshotSigners: [] }), { message: /snapshot: 0 of 1/ });
    await assert.rejects(publish(repo, { ...opts, snapshotSigners: [newSigner()] }), {
      code: ErrorCodes.OTA_ERR_KEY,
    });
    assert.equal(existsSync(repo.metadataPath('timestamp.json')), false, 'nothing written on failure');
    const r = await publish(repo, opts);
    assert.deepEqual([r.root, r.targets, r.snapshot, r.timestamp], [1, 1, 1, 1]);
  });
});

describe('targets and publishing', () => {
  it('writes a consistent-snapshot repository with the model manifest in custom', async () => {
    const { repo, keys, now } = await makeRepo(join(dir, 'p1'));
    const added = await repo.addModel({ cardPath: cardA, hardwareClass: 'cpu-arm64', rollout: 25, now });
    assert.equal(added.release, 1);
    await repo.sign('targets', keys.targets);
    const r = await publish(repo, { snapshotSigners: keys.snapshot, timestampSigners: keys.timestamp, now });
    for (const f of ['1.root.json', 'root.json', '1.targets.json', '1.snapshot.json', 'timestamp.json']) {
      assert.ok(r.written.includes(`metadata/${f}`), f);
    }
    const targets = parseMetadata(
      'targets',
      JSON.parse(readFileSync(repo.metadataPath('1.targets.json'), 'utf8')),
      't',
    );
    const { models } = listModelTargets(targets.signed.targets);
    assert.equal(models.length, 1);
    const m = models[0];
    assert.equal(m.meta.hardwareClass, 'cpu-arm64');
    assert.equal(m.meta.rollout, 25);
    assert.equal(m.meta.tier, 'device');
    assert.match(m.meta.thresholds.accept, /^0\.5$/);
    const served = repo.publishedPath(`targets/${consistentTargetPath(m.path, m.sha256)}`);
    assert.ok(existsSync(served), 'model served under its hash');
    assert.ok(
      existsSync(repo.publishedPath(`targets/${consistentTargetPath(m.meta.card.path, m.meta.card.sha256)}`)),
    );
    // Snapshot and timestamp pin the exact bytes of the files they reference.
    const ts = parseMetadata(
      'timestamp',
      JSON.parse(readFileSync(repo.metadataPath('timestamp.json'), 'utf8')),
      'ts',
    );
    const snapBytes = readFileSync(repo.metadataPath('1.snapshot.json'));
    assert.doesNotThrow(() => ts.signed.snapshotMeta.verify(snapBytes));
    // Short expiry for timestamp (1 day) and snapshot (7 days).
    const left = (new Date(ts.signed.expires).getTime() - now.getTime()) / 3600_000;
    assert.ok(left > 23 && left <= 24, `${left} h`);
  });

  it('releases only increase; the same model again only changes its rollout', async () => {
    const { repo, now } = await makeRepo(join(dir, 'p2'));
    assert.equal((await repo.addModel({ cardPath: cardA, hardwareClass: 'x', rollout: 10, now })).release, 1);
    const again = await repo.addModel({ cardPath: cardA, hardwareClass: 'x', rollout: 60, now });
    assert.deepEqual([again.release, again.updated], [1, true]);
    assert.equal((await repo.addModel({ cardPath: cardB, hardwareClass: 'x', rollout: 5, now })).release, 2);
    await assert.rejects(
      repo.addModel({ cardPath: cardA, hardwareClass: 'x', rollout: 5, release: 2, now }),
      {
        code: ErrorCodes.OTA_ERR_REPO,
        message: /must increase/,
      },
    );
    // Another hardware class is its own channel.
    assert.equal((await repo.addModel({ cardPath: cardB, hardwareClass: 'y', rollout: 5, now })).release, 1);
    const { models } = listModelTargets((await repo.staged('targets')).signed.targets);
    assert.equal(models.find((m) => m.meta.hardwareClass === 'x' && m.meta.release === 1)?.meta.rollout, 60);
  });

  it('keeps only the newest releases per channel', async () => {
    const { repo, now } = await makeRepo(join(dir, 'p3'));
    const probe = await probeSet(20);
    for (let v = 1; v <= 4; v++) {
      const c = await centroidModel(join(dir, 'p3models'), probe, { variant: 10 + v });
      await repo.addModel({ cardPath: c.cardPath, hardwareClass: 'x', rollout: 100, keep: 2, now });
    }
    const t = (await repo.staged('targets')).signed.targets;
    const releases = listModelTargets(t)
      .models.map((m) => m.meta.release)
      .sort();
    assert.deepEqual(releases, [3, 4]);
    assert.equal(Object.keys(t).length, 4, 'two models and their cards');
  });

  it('refuses a card whose model file does not match it', async () => {
    const { repo, now } = await makeRepo(join(dir, 'p4'));
    const probe = await probeSet(20);
    const c = await centroidModel(join(dir, 'p4models'), probe, { variant: 99 });
    const card = JSON.parse(readFileSync(c.cardPath, 'utf8'));
    card.files[0].sha256 = 'f'.repeat(64);
    const bad = join(dir, 'p4models', 'bad.card.json');
    (await import('node:fs')).writeFileSync(bad, JSON.stringify(card));
    await assert.rejects(repo.addModel({ cardPath: bad, hardwareClass: 'x', rollout: 100, now }), {
      code: ErrorCodes.MODEL_ERR_INVALID,
    });
  });

  it('re-signs only the timestamp, and refuses that while other roles have changes', async () => {
    const { repo, keys, now } = await makeRepo(join(dir, 'p5'));
    await repo.addModel({ cardPath: cardA, hardwareClass: 'x', rollout: 100, now });
    await repo.sign('targets', keys.targets);
    await publish(repo, { snapshotSigners: keys.snapshot, timestampSigners: keys.timestamp, now });
    const r = await publish(repo, { timestampSigners: keys.timestamp, now, timestampOnly: true });
    assert.deepEqual([r.snapshot, r.timestamp, r.written], [1, 2, ['metadata/timestamp.json']]);
    await repo.addModel({ cardPath: cardB, hardwareClass: 'x', rollout: 100, now });
    await repo.sign('targets', keys.targets);
    await assert.rejects(publish(repo, { timestampSigners: keys.timestamp, now, timestampOnly: true }), {
      code: ErrorCodes.OTA_ERR_REPO,
    });
  });
});

describe('root rotation', () => {
  it('publishes a new root only when signed by the old and the new root thresholds', async () => {
    const { repo, keys, now } = await makeRepo(join(dir, 'r1'), { rootKeys: 2, rootThreshold: 2 });
    await repo.sign('targets', keys.targets);
    await publish(repo, { snapshotSigners: keys.snapshot, timestampSigners: keys.timestamp, now });
    const fresh = [newSigner(), newSigner()];
    const newTargets = newSigner();
    const next = await repo.rotateRoot(
      { root: { keys: fresh, threshold: 2 }, targets: { keys: [newTargets], threshold: 1 } },
      now,
    );
    assert.equal(next.signed.version, 2);
    const opts = { snapshotSigners: keys.snapshot, timestampSigners: keys.timestamp, now };
    await repo.sign('root', fresh);
    await assert.rejects(publish(repo, opts), {
      code: ErrorCodes.OTA_ERR_SIGNATURE_INVALID,
      message: /previous root/,
    });
    await repo.sign('root', [keys.root[0]]);
    await assert.rejects(publish(repo, opts), { message: /1 of the previous root's 2/ });
    await repo.sign('root', [keys.root[1]]);
    // The published targets were signed by the old targets key, which the new root no longer lists.
    await assert.rejects(publish(repo, opts), { message: /targets v1: 0 of 1/ });
    await repo.renew('targets', now);
    await repo.sign('targets', [newTargets]);
    const r = await publish(repo, opts);
    assert.deepEqual([r.root, r.targets], [2, 2]);
    assert.ok(existsSync(repo.metadataPath('2.root.json')));
  });
});

describe('status', () => {
  it('reports versions, signatures, targets and what needs attention', async () => {
    const { repo, keys, now } = await makeRepo(join(dir, 's1'), { expiry: { timestamp: 3600 } });
    await repo.addModel({ cardPath: cardA, hardwareClass: 'x', rollout: 40, now });
    await repo.sign('targets', keys.targets);
    await publish(repo, { snapshotSigners: keys.snapshot, timestampSigners: keys.timestamp, now });
    await repo.addModel({ cardPath: cardB, hardwareClass: 'x', rollout: 10, now });
    const later = new Date(now.getTime() + 3000_000);
    const s = await repo.status(later);
    const ts = s.roles.find((r) => r.role === 'timestamp');
    assert.equal(ts?.published?.version, 1);
    assert.ok(
      s.warnings.some((w) => /timestamp expires in/.test(w)),
      s.warnings.join('; '),
    );
    assert.ok(
      s.warnings.some((w) => /staged targets v2 needs 1 more signature/.test(w)),
      s.warnings.join('; '),
    );
    assert.deepEqual(s.targets.map((t) => [t.release, t.rollout]).sort(), [
      [1, 40],
      [2, 10],
    ]);
    const expired = await repo.status(new Date(now.getTime() + 7200_000));
    assert.ok(expired.warnings.some((w) => /timestamp has expired/.test(w)));
  });
});
