/**
 * device/stage-stats.ts: rings drain to the sink in order and are overwritten without one; the
 * kept history gives medians and means (what bench:device bounds its frame rate with), from an
 * offset, and NaN where nothing was kept.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type Stage, StageStats } from '../device/stage-stats.ts';

describe('StageStats', () => {
  it('drains every sample to the sink when a ring fills, and on drain()', () => {
    const stats = new StageStats(4);
    const got: [Stage, number][] = [];
    stats.setSink((stage, ms) => got.push([stage, ms]));
    for (let i = 0; i < 6; i++) stats.record('infer', i);
    stats.record('preprocess', 9);
    // The fifth sample forced a drain of the first four.
    assert.deepEqual(
      got,
      [0, 1, 2, 3].map((ms) => ['infer', ms]),
    );
    stats.drain();
    assert.deepEqual(got.slice(4), [
      ['preprocess', 9],
      ['infer', 4],
      ['infer', 5],
    ]);
  });

  it('keeps a history for medians and means, a tail skewing the mean but not the median', () => {
    const stats = new StageStats(8, 100);
    for (const ms of [1, 1, 1, 1, 11]) stats.record('infer', ms);
    assert.equal(stats.count('infer'), 5);
    assert.equal(stats.median('infer'), 1);
    assert.equal(stats.mean('infer'), 3);
    // From an offset: the last two samples only.
    assert.equal(stats.median('infer', 3), 6);
    assert.equal(stats.mean('infer', 3), 6);
  });

  it('stops keeping history at its size and gives NaN where there is none', () => {
    const kept = new StageStats(8, 3);
    for (let i = 1; i <= 5; i++) kept.record('total', i);
    assert.equal(kept.count('total'), 3);
    assert.equal(kept.mean('total'), 2);
    assert.ok(Number.isNaN(kept.mean('queue')));
    assert.ok(Number.isNaN(kept.mean('total', 3)));
    const none = new StageStats(8);
    none.record('infer', 1);
    assert.ok(Number.isNaN(none.median('infer')));
    assert.ok(Number.isNaN(none.mean('infer')));
  });
});
