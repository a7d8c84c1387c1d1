import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { loadServingEngine, pointwiseTable, type ServingEngine } from '../cascade/service/engine.ts';
import type { InputSpec } from '../models/card.ts';
import type { ImageDataset } from '../models/data/dataset.ts';
import { loadBundledSample } from '../models/data/load.ts';
import { preprocess } from '../models/preprocess.ts';
import { loadRegistry, modelForTier } from '../models/registry.ts';

/** The reference preprocessing (models/preprocess.ts) of n gray images at the spec's size. */
function reference(spec: InputSpec, pixels: Uint8Array, n: number): Float32Array {
  const px = spec.height * spec.width;
  const out = new Float32Array(n * px);
  for (let i = 0; i < n; i++)
    preprocess(
      { data: pixels.subarray(i * px, (i + 1) * px), width: spec.width, height: spec.height, format: 'gray' },
      spec,
      out.subarray(i * px, (i + 1) * px),
    );
  return out;
}

function sameBits(a: Float32Array, b: Float32Array): boolean {
  return a.length === b.length && a.every((v, i) => Object.is(v, b[i]));
}

describe('serving engine preprocessing', () => {
  let engine: ServingEngine;
  let data: ImageDataset;
  before(async () => {
    data = await loadBundledSample();
    engine = await loadServingEngine(modelForTier(await loadRegistry(), 'gateway').card, { thread: 'main' });
  });
  after(async () => {
    await engine?.dispose();
  });

  it('gives bit for bit what the reference gives, into a new array or a batch slice', () => {
    const n = 16;
    const per = engine.tensorFloats;
    const pixels = data.images.subarray(0, n * engine.imageBytes);
    const want = reference(engine.card.input, pixels, n);
    assert.ok(sameBits(engine.preprocess(pixels, n), want));
    // Every byte value, not only those of the sample images.
    const all = Uint8Array.from({ length: engine.imageBytes }, (_, i) => (i * 7) % 256);
    assert.ok(sameBits(engine.preprocess(all, 1), reference(engine.card.input, all, 1)));
    const batch = new Float32Array((n + 2) * per).fill(-7);
    engine.preprocessInto(pixels, n, batch.subarray(per, (n + 1) * per));
    assert.ok(sameBits(batch.subarray(per, (n + 1) * per), want));
    assert.equal(batch[per - 1], -7, 'nothing written before the slice');
    assert.equal(batch[(n + 1) * per], -7, 'nothing written after it');
  });

  it('refuses pixels or outputs of the wrong size', () => {
    const one = new Uint8Array(engine.imageBytes);
    assert.throws(() => engine.preprocess(one.subarray(1), 1), RangeError);
    assert.throws(() => engine.preprocessInto(one, 1, new Float32Array(engine.tensorFloats - 1)), RangeError);
    assert.throws(() => engine.preprocessInto(one, 2, new Float32Array(2 * engine.tensorFloats)), RangeError);
  });
});

describe('pointwiseTable', () => {
  const gray = (height: number, width: number): InputSpec => ({
    name: 'input',
    layout: 'NCHW',
    height,
    width,
    colour: 'gray',
    mean: [0.286],
    std: [0.353],
  });

  it('reads the table off a pointwise reference, also for inputs of fewer than 256 pixels', () => {
    for (const spec of [gray(28, 28), gray(4, 4)]) {
      const table = pointwiseTable(spec, (p, out) => out.set(reference(spec, p, 1)));
      assert.ok(table, `${spec.height}×${spec.width}`);
      const every = Uint8Array.from({ length: 256 }, (_, v) => v);
      for (let v = 0; v < 256; v += 17) {
        const img = new Uint8Array(spec.height * spec.width).fill(every[v]);
        assert.ok(Object.is(table[v], reference(spec, img, 1)[0]), `value ${v}`);
      }
    }
  });

  it('gives none when an output depends on other pixels, or for colour inputs', () => {
    const spec = gray(28, 28);
    const blur = (p: Uint8Array, out: Float32Array): void => {
      for (let i = 0; i < p.length; i++) out[i] = (p[i] + p[(i + 1) % p.length]) / 510;
    };
    assert.equal(pointwiseTable(spec, blur), undefined);
    const rgb: InputSpec = { ...spec, colour: 'rgb', mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25] };
    assert.equal(
      pointwiseTable(rgb, () => {}),
      undefined,
    );
  });
});
