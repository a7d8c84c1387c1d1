import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  entropyThreshold,
  HISTOGRAM_BINS,
  MagnitudeHistogram,
  percentileThreshold,
  TensorStats,
} from '../distill/onnx/histogram.ts';
import { mulberry32 } from '../models/data/rng.ts';

const rng = mulberry32(17);
const gaussian = (): number => Math.sqrt(-2 * Math.log(1 - rng())) * Math.cos(2 * Math.PI * rng());

describe('MagnitudeHistogram', () => {
  it('grows its range by exact bin merges, as if built at the final width', () => {
    const h = new MagnitudeHistogram();
    const first = Float32Array.from({ length: 5000 }, () => rng());
    const second = Float32Array.from({ length: 5000 }, () => rng() * 7);
    h.add(first);
    const w0 = h.width;
    h.add(second);
    assert.equal(h.width, w0 * 8);
    assert.equal(h.count, 10000);
    const direct = new Float64Array(HISTOGRAM_BINS);
    for (const v of [...first, ...second])
      direct[Math.min(Math.floor(v * (1 / h.width)), HISTOGRAM_BINS - 1)]++;
    assert.deepEqual([...h.bins], [...direct]);
  });
});

describe('thresholds', () => {
  it('percentile clips only the allowed tail', () => {
    const s = new TensorStats();
    s.add(Float32Array.from({ length: 20000 }, () => rng()));
    s.add(Float32Array.of(100, -50));
    const t = percentileThreshold(s.pos, 1e-4, s.count);
    assert.ok(t > 0.99 && t < 1.01, `threshold ${t}`);
    assert.equal(percentileThreshold(s.pos, 0, s.count), 100);
    assert.equal(percentileThreshold(s.neg, 1e-4, s.count), 0);
  });

  it('entropy keeps a uniform range and clips a long-tailed one', () => {
    const uniform = new MagnitudeHistogram();
    uniform.add(Float32Array.from({ length: 50000 }, () => rng()));
    assert.ok(entropyThreshold(uniform) > 0.9 * uniform.max);
    const tailed = new MagnitudeHistogram();
    tailed.add(Float32Array.from({ length: 50000 }, () => Math.abs(gaussian())));
    tailed.add(Float32Array.of(40));
    const t = entropyThreshold(tailed);
    assert.ok(t > 2 && t < 10, `threshold ${t}`);
  });

  it('TensorStats splits signs and tracks exact extremes', () => {
    const s = new TensorStats();
    s.add(Float32Array.of(-3, -1, 0, 2, 5));
    assert.equal(s.min, -3);
    assert.equal(s.max, 5);
    assert.equal(s.pos.count, 3);
    assert.equal(s.neg.count, 2);
    assert.equal(s.neg.max, 3);
  });
});
