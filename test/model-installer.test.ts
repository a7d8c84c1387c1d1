/**
 * device/model-installer.ts: staging and activation, the trial/confirm cycle (a restart during a
 * trial goes back to the previous release; unconfirmed twice blocks it), rollback after a failed
 * health check, recovery from leftovers and damaged files, garbage collection, and refusal of
 * bytes that do not match their hashes or unsafe file names.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ErrorCodes } from '../cascade/errors.ts';
import { ModelInstaller, UNCONFIRMED } from '../device/model-installer.ts';

let dir: string;
let n = 0;
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'ota-installer-'));
});
after(() => rmSync(dir, { recursive: true, force: true }));

function store(): ModelInstaller {
  n += 1;
  return new ModelInstaller(join(dir, `s${n}`), { now: () => new Date('2026-11-22T00:00:00Z') });
}

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

function release(r: number) {
  const model = Buffer.from(`model bytes of release ${r} `.repeat(50));
  const card = Buffer.from(JSON.stringify({ name: 'm', release: r }));
  return {
    release: r,
    model: 'm',
    version: `v${r}`,
    modelFile: 'm.onnx',
    card,
    modelBytes: model,
    modelSha256: sha(model),
    cardSha256: sha(card),
  };
}

async function install(s: ModelInstaller, r: number) {
  const ref = await s.stage(release(r));
  await s.activate(ref);
  return ref;
}

describe('install cycle', () => {
  it('runs the factory model until a release is confirmed, then keeps it and the previous one', async () => {
    const s = store();
    assert.equal((await s.recover()).active, null);
    const r1 = await install(s, 1);
    assert.equal((await s.state()).state, 'trial');
    await s.confirm();
    const r2 = await install(s, 2);
    await s.confirm();
    const r3 = await install(s, 3);
    await s.confirm();
    const p = await s.state();
    assert.deepEqual([p.active?.id, p.previous?.id, p.state], [r3.id, r2.id, 'confirmed']);
    assert.deepEqual(
      readdirSync(join(s.dir, 'releases')).sort(),
      [r2.id, r3.id].sort(),
      `${r1.id} collected`,
    );
    assert.ok(existsSync(s.cardPath(r3)));
  });

  it('a restart during a trial goes back to the previous release; twice unconfirmed blocks it', async () => {
    const s = store();
    const r1 = await install(s, 1);
    await s.confirm();
    const r2 = await install(s, 2);
    const rec = await s.recover();
    assert.equal(rec.revertedTrial?.id, r2.id);
    assert.equal(rec.active?.id, r1.id);
    assert.equal((await s.blocked()).size, 0, 'one power cut does not block a release');
    await s.activate(await s.stage(release(2)));
    await s.recover();
    assert.deepEqual([...(await s.blocked())], [r2.modelSha256]);
    assert.equal((await s.state()).failed[0].reason, UNCONFIRMED);
  });

  it('rollback returns to the previous release and blocks the failed one at once', async () => {
    const s = store();
    const r1 = await install(s, 1);
    await s.confirm();
    const r2 = await install(s, 2);
    assert.equal((await s.rollback('health check failed: accuracy 0.1'))?.id, r1.id);
    const p = await s.state();
    assert.deepEqual([p.active?.id, p.previous, p.state], [r1.id, null, 'confirmed']);
    assert.deepEqual([...(await s.blocked())], [r2.modelSha256]);
    assert.equal(existsSync(join(s.dir, 'releases', r2.id)), false);
  });

  it('rolls back to the factory model when there is no previous release', async () => {
    const s = store();
    await install(s, 1);
    assert.equal(await s.rollback('load failed'), null);
    assert.equal((await s.recover()).active, null);
  });
});

describe('recovery', () => {
  it('removes staging folders and temporary pointer files', async () => {
    const s = store();
    const r1 = await install(s, 1);
    await s.confirm();
    mkdirSync(join(s.dir, 'releases', '.staging-dead'));
    writeFileSync(join(s.dir, 'releases', '.staging-dead', 'm.onnx'), 'half');
    writeFileSync(join(s.dir, '.active.json.1234.tmp'), '{"half');
    assert.equal((await s.recover()).active?.id, r1.id);
    assert.deepEqual(readdirSync(join(s.dir, 'releases')), [r1.id]);
    assert.deepEqual(readdirSync(s.dir).sort(), ['active.json', 'releases']);
  });

  it('abandons an active release whose files no longer verify, for the previous one', async () => {
    const s = store();
    const r1 = await install(s, 1);
    await s.confirm();
    const r2 = await install(s, 2);
    await s.confirm();
    writeFileSync(join(s.dir, 'releases', r2.id, 'm.onnx'), 'bit rot');
    const rec = await s.recover();
    assert.equal(rec.active?.id, r1.id);
    assert.match(rec.repaired?.reason ?? '', /does not match its hash/);
    assert.ok((await s.blocked()).has(r2.modelSha256));
  });

  it('reports a pointer that is not its own instead of guessing', async () => {
    const s = store();
    mkdirSync(s.dir, { recursive: true });
    writeFileSync(join(s.dir, 'active.json'), '{"schemaVersion":2}');
    await assert.rejects(s.recover(), { code: ErrorCodes.OTA_ERR_INSTALL });
  });
});

describe('staging', () => {
  it('refuses bytes that do not match their hashes and unsafe model file names', async () => {
    const s = store();
    await assert.rejects(s.stage({ ...release(1), modelSha256: 'f'.repeat(64) }), {
      code: ErrorCodes.OTA_ERR_INSTALL,
    });
    for (const modelFile of ['../escape.onnx', 'card.json', '.hidden', 'a/b.onnx']) {
      await assert.rejects(
        s.stage({ ...release(1), modelFile }),
        { code: ErrorCodes.OTA_ERR_INSTALL },
        modelFile,
      );
    }
    assert.equal(existsSync(join(s.dir, 'escape.onnx')), false);
  });

  it('reuses a complete release folder and rewrites a damaged one', async () => {
    const s = store();
    const r1 = await s.stage(release(1));
    const again = await s.stage(release(1));
    assert.equal(again.id, r1.id);
    writeFileSync(join(s.dir, 'releases', r1.id, 'card.json'), 'x');
    await s.stage(release(1));
    await s.activate(r1);
    await s.confirm();
    assert.equal((await s.recover()).repaired, undefined);
  });
});
