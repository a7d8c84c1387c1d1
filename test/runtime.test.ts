import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import { MAX_CHUNK, OnnxClassifier } from '../models/runtime.ts';
import { writeTinyModel } from './fixtures/tiny-model.ts';

let dir: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cascade-runtime-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Identity-like model on 2×2 gray images: class k scores pixel k. */
function pixelPicker(): Float32Array {
  const w = new Float32Array(4 * 4);
  for (let k = 0; k < 4; k++) w[k * 4 + k] = 1;
  return w;
}

describe('OnnxClassifier.load', () => {
  it('rejects a model whose sha256 does not match its card, naming the file', async () => {
    const { cardPath } = await writeTinyModel({
      dir,
      name: 'tampered',
      tier: 'device',
      height: 2,
      width: 2,
      classes: 4,
      weights: pixelPicker(),
    });
    const file = join(dir, 'tampered.onnx');
    const bytes = await readFile(file);
    bytes[bytes.length - 1] ^= 0xff; // same size, different content
    await writeFile(file, bytes);
    await assert.rejects(OnnxClassifier.load(cardPath), (err: unknown) => {
      assert.ok(err instanceof CascadeError);
      assert.equal(err.code, ErrorCodes.MODEL_ERR_INVALID);
      assert.match(err.message, /tampered\.onnx: sha256 [0-9a-f]{64} does not match/);
      return true;
    });
    await writeFile(file, bytes.subarray(1));
    await assert.rejects(OnnxClassifier.load(cardPath), /tampered\.onnx: \d+ bytes, but its card/);
  });

  it('rejects missing cards, invalid cards and unknown flavours', async () => {
    await assert.rejects(OnnxClassifier.load(join(dir, 'nope.json')), { code: ErrorCodes.MODEL_ERR_INVALID });
    const bad = join(dir, 'bad.card.json');
    await writeFile(bad, JSON.stringify({ schemaVersion: 1 }));
    await assert.rejects(OnnxClassifier.load(bad), /bad\.card\.json: not a valid model card/);
    const { cardPath } = await writeTinyModel({
      dir,
      name: 'flavours',
      tier: 'device',
      height: 2,
      width: 2,
      classes: 4,
      weights: pixelPicker(),
    });
    await assert.rejects(OnnxClassifier.load(cardPath, { file: 'qdq-trt' }), /no file or form "qdq-trt"/);
    const m = await OnnxClassifier.load(cardPath, { file: 'fp32', intraOpThreads: 1 });
    await m.dispose();
  });
});

describe('OnnxClassifier.preprocess', () => {
  it('normalises a 2×2 RGB image into NCHW and NHWC by hand', async () => {
    const common = {
      dir,
      tier: 'gateway' as const,
      height: 2,
      width: 2,
      colour: 'rgb' as const,
      classes: 2,
      weights: new Float32Array(12 * 2),
      mean: [0.5, 0.25, 0],
      std: [0.5, 0.25, 2],
    };
    // Pixels (r, g, b): p0 = (255, 0, 51), p1 = (0, 255, 102), p2 = (51, 102, 153), p3 = (255, 255, 255)
    const px = Uint8Array.from([255, 0, 51, 0, 255, 102, 51, 102, 153, 255, 255, 255]);
    const norm = (v: number, c: number) => (v / 255 - common.mean[c]) / common.std[c];
    const r = [255, 0, 51, 255].map((v) => norm(v, 0));
    const g = [0, 255, 102, 255].map((v) => norm(v, 1));
    const b = [51, 102, 153, 255].map((v) => norm(v, 2));

    const nchw = await OnnxClassifier.load((await writeTinyModel({ ...common, name: 'nchw' })).cardPath, {
      intraOpThreads: 1,
    });
    const x1 = nchw.preprocess(px, 1);
    const want1 = [...r, ...g, ...b];
    for (const [i, v] of want1.entries())
      assert.ok(Math.abs(x1[i] - v) < 1e-6, `NCHW[${i}] ${x1[i]} != ${v}`);
    assert.equal(x1[0], 1);
    assert.equal(x1[4], -1);

    const nhwc = await OnnxClassifier.load(
      (await writeTinyModel({ ...common, name: 'nhwc', layout: 'NHWC' })).cardPath,
      { intraOpThreads: 1 },
    );
    const x2 = nhwc.preprocess(px, 1);
    const want2 = [0, 1, 2, 3].flatMap((p) => [r[p], g[p], b[p]]);
    for (const [i, v] of want2.entries())
      assert.ok(Math.abs(x2[i] - v) < 1e-6, `NHWC[${i}] ${x2[i]} != ${v}`);

    const bgr = await OnnxClassifier.load(
      (await writeTinyModel({ ...common, name: 'bgr', colour: 'bgr', mean: [0], std: [1] })).cardPath,
      { intraOpThreads: 1 },
    );
    const x3 = bgr.preprocess(px, 1);
    assert.ok(Math.abs(x3[0] - 51 / 255) < 1e-6); // channel 0 is blue
    assert.ok(Math.abs(x3[8] - 1) < 1e-6); // channel 2 is red

    assert.throws(() => nchw.preprocess(px.subarray(1), 1), RangeError);
    await Promise.all([nchw.dispose(), nhwc.dispose(), bgr.dispose()]);
  });

  it('converts RGB to gray for gray models', async () => {
    const m = await OnnxClassifier.load(
      (
        await writeTinyModel({
          dir,
          name: 'luma',
          tier: 'device',
          height: 1,
          width: 1,
          classes: 2,
          weights: new Float32Array(2),
        })
      ).cardPath,
      { intraOpThreads: 1 },
    );
    const x = m.preprocess(Uint8Array.from([255, 0, 0]), 1);
    assert.ok(Math.abs(x[0] - 0.299) < 1e-6);
    await m.dispose();
  });
});

describe('OnnxClassifier.classify', () => {
  it('runs the tiny model with temperature-scaled confidences, in chunks', async () => {
    const { cardPath } = await writeTinyModel({
      dir,
      name: 'picker',
      tier: 'device',
      height: 2,
      width: 2,
      classes: 4,
      weights: pixelPicker(),
      bias: Float32Array.from([0, 0, 0, 0.5]),
      temperature: 2,
    });
    const m = await OnnxClassifier.load(cardPath, { intraOpThreads: 1 });
    assert.equal(m.classes, 4);
    const n = MAX_CHUNK + 3;
    const px = new Uint8Array(n * 4);
    for (let i = 0; i < n; i++) px[i * 4 + (i % 4)] = 255; // image i lights pixel i % 4
    const { pred, conf, logits } = await m.classify(px, n);
    assert.equal(pred.length, n);
    for (let i = 0; i < n; i++) assert.equal(pred[i], i % 4, `image ${i}`);
    // Image 0: logits [1, 0, 0, 0.5] at T = 2.
    assert.deepEqual([...logits.subarray(0, 4)], [1, 0, 0, 0.5]);
    const e = [0.5, 0, 0, 0.25].map(Math.exp);
    assert.ok(Math.abs(conf[0] - e[0] / (e[0] + e[1] + e[2] + e[3])) < 1e-6);
    // The last chunk is computed too.
    assert.deepEqual([...logits.subarray((n - 1) * 4)], [0, 0, 1, 0.5]);
    await m.dispose();
    await m.dispose();
    await assert.rejects(m.classify(px, n), /after dispose/);
  });
});
