/**
 * End-to-end smoke run of `cascade distill all` and `cascade eval` on a tiny real dataset made
 * from the bundled Fashion-MNIST sample: every step (teacher, both students with and without
 * KD, export, INT8 quantization, calibration, cards, registry, eval) runs for real, briefly.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseModelCard } from '../models/card.ts';
import { subset } from '../models/data/dataset.ts';
import { writeIdx } from '../models/data/idx.ts';
import { loadBundledSample } from '../models/data/load.ts';

const ROOT = new URL('..', import.meta.url).pathname;

function cascade(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'cascade/cli.ts'), ...args], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 240_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('cascade distill all → cascade eval (smoke)', () => {
  let dir: string;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'distill-e2e-'));
    mkdirSync(join(dir, 'data'));
    const sample = await loadBundledSample();
    // 1600 images to train on, 400 held out as the test split.
    const idx = Array.from({ length: sample.n }, (_, i) => i);
    const trainSet = subset(
      sample,
      idx.filter((i) => i % 5 !== 0),
    );
    const testSet = subset(
      sample,
      idx.filter((i) => i % 5 === 0),
    );
    for (const [split, ds] of [
      ['train', trainSet],
      ['t10k', testSet],
    ] as const) {
      await writeIdx(join(dir, 'data', `${split}-images-idx3-ubyte.gz`), [ds.n, 28, 28], ds.images);
      await writeIdx(join(dir, 'data', `${split}-labels-idx1-ubyte.gz`), [ds.n], ds.labels);
    }
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('trains, quantizes, calibrates and writes cards and a registry', () => {
    const r = cascade([
      'distill',
      'all',
      '--data',
      join(dir, 'data'),
      '--runs',
      join(dir, 'runs'),
      '--out',
      join(dir, 'models'),
      '--epochs',
      '2',
      '--max-steps',
      '6',
      '--batch',
      '32',
      '--calibration-samples',
      '128',
    ]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /backend 'wasm'/, 'the training log names the backend');
    assert.match(r.stderr, /KD .* vs no KD/, 'the KD gain is measured against the baseline');
    for (const tier of ['device', 'gateway', 'cloud']) {
      const path = join(dir, 'models', tier, 'card.json');
      const card = parseModelCard(JSON.parse(readFileSync(path, 'utf8')), path);
      assert.equal(card.tier, tier);
      assert.ok(card.temperature > 0);
      assert.ok(card.reliability.length > 0);
      if (tier !== 'cloud') {
        assert.ok(card.input.quant, `${tier} card records the INT8 input quantization`);
        assert.ok(card.reliability[0].next !== undefined, `${tier} reliability has next-tier columns`);
      }
    }
    const gw = JSON.parse(readFileSync(join(dir, 'models', 'gateway', 'card.json'), 'utf8'));
    assert.deepEqual(
      gw.files.map((f: { form: string }) => f.form),
      ['qdq-cpu', 'qdq-trt'],
      'the gateway ships both QDQ flavours',
    );
  });

  it('evaluates every tier and the cascade as one JSON object', () => {
    const r = cascade([
      'eval',
      '--data',
      join(dir, 'data'),
      '--registry',
      join(dir, 'models', 'registry.json'),
      '--json',
    ]);
    assert.equal(r.status, 0, r.stderr);
    const report = JSON.parse(r.stdout);
    assert.equal(report.n, 400);
    for (const tier of ['device', 'gateway', 'cloud']) {
      const t = report.tiers[tier];
      for (const k of ['accuracy', 'ece']) assert.ok(t[k] >= 0 && t[k] <= 1, `${tier}.${k} in [0,1]`);
      assert.ok(t.params > 0 && t.bytes > 0);
    }
    const { device, gateway, cloud } = report.cascade.resolved;
    assert.ok(Math.abs(device + gateway + cloud - 1) < 1e-9);
    assert.ok(report.cascade.accuracy >= 0 && report.cascade.accuracy <= 1);
    // A short run on 1,600 images still learns something: far above chance (0.1).
    assert.ok(report.tiers.cloud.accuracy > 0.3, `teacher accuracy ${report.tiers.cloud.accuracy}`);
  });

  it('quantizes and calibrates an fp32 ONNX classifier given as a file', () => {
    const model = join(dir, 'models', 'cloud', 'teacher.onnx');
    const common = ['--data', join(dir, 'data'), '--calibration-samples', '64'];
    const q = cascade(['distill', 'quantize', '--model', model, '--out', join(dir, 'q'), ...common]);
    assert.equal(q.status, 0, q.stderr);
    const qr = JSON.parse(q.stdout);
    assert.deepEqual(
      qr.files.map((f: { form: string }) => f.form),
      ['qdq-cpu', 'qdq-trt'],
    );
    for (const f of qr.files) assert.ok(f.bytes > 0 && f.valAccuracy >= 0 && f.valAccuracy <= 1);
    const c = cascade(['distill', 'calibrate', '--model', model, ...common]);
    assert.equal(c.status, 0, c.stderr);
    const cr = JSON.parse(c.stdout);
    assert.ok(cr.temperature > 0);
    assert.ok(
      cr.eceAfter <= cr.eceBefore + 1e-9,
      'temperature scaling does not worsen ECE on the data it was fit on',
    );
  });
});
