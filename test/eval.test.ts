import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ErrorCodes } from '../cascade/errors.ts';
import { type EvalReport, evaluate, formatEvalTable } from '../distill/eval.ts';
import type { ImageDataset } from '../models/data/dataset.ts';
import { writeRegistry } from '../models/registry.ts';
import { writeTinyModel } from './fixtures/tiny-model.ts';

let dir: string;
let registry: string;

/** 2×2 gray images; class k lights pixel k brightly and the others dimly at random. */
function dataset(n: number): ImageDataset {
  let s = 12345;
  const r = () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
  const images = new Uint8Array(n * 4);
  const labels = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    labels[i] = i % 4;
    for (let p = 0; p < 4; p++) images[i * 4 + p] = Math.floor(r() * 160);
    images[i * 4 + labels[i]] = 100 + Math.floor(r() * 156);
  }
  return {
    name: 'synthetic/test',
    n,
    height: 2,
    width: 2,
    channels: 1,
    images,
    labels,
    classes: ['class0', 'class1', 'class2', 'class3'],
  };
}

/** Pixel-picking weights, scaled; `swap` confuses classes 0 and 1 so the tier makes mistakes. */
function weights(scale: number, swap = false): Float32Array {
  const w = new Float32Array(16);
  for (let k = 0; k < 4; k++) {
    const cls = swap && k < 2 ? 1 - k : k;
    w[k * 4 + cls] = scale;
  }
  return w;
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cascade-eval-'));
  const base = { dir, height: 2, width: 2, classes: 4 };
  const device = await writeTinyModel({
    ...base,
    name: 'device',
    tier: 'device',
    weights: weights(4, true),
    accept: 0.6,
  });
  const gateway = await writeTinyModel({
    ...base,
    name: 'gateway',
    tier: 'gateway',
    weights: weights(6),
    accept: 0.5,
  });
  const cloud = await writeTinyModel({
    ...base,
    name: 'cloud',
    tier: 'cloud',
    weights: weights(20),
    temperature: 2,
  });
  registry = join(dir, 'registry.json');
  await writeRegistry(
    [
      { name: 'cloud', tier: 'cloud', card: cloud.cardPath },
      { name: 'device', tier: 'device', card: device.cardPath },
      { name: 'gateway', tier: 'gateway', card: gateway.cardPath },
    ],
    registry,
  );
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('evaluate', () => {
  it('reports every tier and the cascade with values in range', async () => {
    const data = dataset(200);
    const report: EvalReport = await evaluate({ registry, data, intraOpThreads: 1 });
    assert.deepEqual(Object.keys(report), ['dataset', 'n', 'tiers', 'cascade']);
    assert.deepEqual(Object.keys(report.tiers), ['device', 'gateway', 'cloud']);
    assert.deepEqual(Object.keys(report.cascade), ['accuracy', 'resolved']);
    assert.deepEqual(Object.keys(report.cascade.resolved), ['device', 'gateway', 'cloud']);
    assert.equal(report.dataset, 'synthetic/test');
    assert.equal(report.n, 200);
    for (const t of ['device', 'gateway', 'cloud'] as const) {
      const r = report.tiers[t];
      assert.deepEqual(Object.keys(r), ['accuracy', 'params', 'bytes', 'ece']);
      assert.ok(r.accuracy >= 0 && r.accuracy <= 1, `${t} accuracy ${r.accuracy}`);
      assert.ok(r.ece >= 0 && r.ece <= 1, `${t} ece ${r.ece}`);
      assert.equal(r.params, 20);
      assert.ok(r.bytes > 0);
    }
    // The teacher is right whenever the lit pixel is brightest; the device confuses two classes.
    assert.ok(report.tiers.cloud.accuracy > 0.6);
    assert.ok(report.tiers.device.accuracy < report.tiers.cloud.accuracy);
    const { resolved } = report.cascade;
    assert.ok(Math.abs(resolved.device + resolved.gateway + resolved.cloud - 1) < 1e-9);
    for (const v of [report.cascade.accuracy, resolved.device, resolved.gateway, resolved.cloud]) {
      assert.ok(v >= 0 && v <= 1);
    }
    assert.ok(resolved.device > 0 && resolved.device < 1, `device resolved ${resolved.device}`);
    assert.ok(report.cascade.accuracy > report.tiers.device.accuracy);
    assert.doesNotThrow(() => JSON.stringify(report));

    const table = formatEvalTable(report);
    assert.match(table, /^dataset synthetic\/test \(n = 200\)/);
    assert.match(table, /^device\s+\d+\.\d\d%/m);
    assert.match(table, /^cascade\s+\d+\.\d\d%\s+resolved: device/m);
  });

  it('refuses a dataset that does not fit the models', async () => {
    const data = { ...dataset(8), height: 4, width: 1 };
    await assert.rejects(evaluate({ registry, data }), { code: ErrorCodes.DATA_ERR_MISMATCH });
    const renamed = { ...dataset(8), classes: ['a', 'b', 'c', 'd'] };
    await assert.rejects(evaluate({ registry, data: renamed }), /class 0 is "a", the model's is "class0"/);
  });

  it('needs all three tiers in the registry', async () => {
    const partial = join(dir, 'partial.json');
    await writeRegistry([{ name: 'device', tier: 'device', card: join(dir, 'device.card.json') }], partial);
    await assert.rejects(evaluate({ registry: partial, data: dataset(4) }), /no gateway model registered/);
  });
});
