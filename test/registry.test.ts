import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ErrorCodes } from '../cascade/errors.ts';
import { DEFAULT_REGISTRY_PATH, loadRegistry, modelForTier, writeRegistry } from '../models/registry.ts';

let dir: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cascade-registry-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('registry', () => {
  it('round-trips with card paths stored relative and loaded absolute', async () => {
    const path = join(dir, 'models', 'registry.json');
    await writeRegistry(
      [
        { name: 'dev-a', tier: 'device', card: join(dir, 'models', 'device', 'card.json') },
        { name: 'teacher', tier: 'cloud', card: join(dir, 'elsewhere', 'teacher.card.json') },
      ],
      path,
    );
    const stored = JSON.parse(await readFile(path, 'utf8'));
    assert.deepEqual(stored, {
      schemaVersion: 1,
      models: [
        { name: 'dev-a', tier: 'device', card: 'device/card.json' },
        { name: 'teacher', tier: 'cloud', card: '../elsewhere/teacher.card.json' },
      ],
    });
    const models = await loadRegistry(path);
    assert.equal(models[0].card, join(dir, 'models', 'device', 'card.json'));
    assert.equal(modelForTier(models, 'cloud').name, 'teacher');
    assert.throws(() => modelForTier(models, 'gateway'), { code: ErrorCodes.MODEL_ERR_INVALID });
  });

  it('rejects missing, malformed and duplicate registries with the path named', async () => {
    await assert.rejects(loadRegistry(join(dir, 'none.json')), /none\.json: registry not found/);
    const bad = join(dir, 'bad.json');
    await writeFile(
      bad,
      JSON.stringify({ schemaVersion: 1, models: [{ name: 'x', tier: 'edge', card: 'c' }] }),
    );
    await assert.rejects(loadRegistry(bad), /bad\.json: not a valid registry: \/models\/0\/tier/);
    await writeFile(bad, '{');
    await assert.rejects(loadRegistry(bad), /bad\.json: registry is not valid JSON/);
    await assert.rejects(
      writeRegistry(
        [
          { name: 'x', tier: 'device', card: '/a' },
          { name: 'x', tier: 'cloud', card: '/b' },
        ],
        join(dir, 'dup.json'),
      ),
      /model "x" is listed twice/,
    );
  });

  it('defaults to registry.json beside the module', () => {
    assert.match(DEFAULT_REGISTRY_PATH, /models[\\/]registry\.json$/);
  });
});
