import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { FrameLedger, percentile } from '../bench/load/ledger.ts';

describe('FrameLedger', () => {
  it('puts every frame in exactly one state by what arrives before its deadline', () => {
    const l = new FrameLedger();
    l.sent('a', 1, 0, 100);
    l.sent('a', 2, 10, 100);
    l.sent('b', 1, 20, 100);
    l.sent('b', 2, 30, 100);
    assert.equal(l.answer('a', 1, 'ok', 40), 'answered');
    assert.equal(l.answer('a', 2, 'overloaded', 15), 'refused');
    assert.equal(l.answer('b', 1, 'ok', 121), 'missed', 'an answer after the deadline is a miss');
    assert.equal(l.sweep(131), 1, 'b#2 passes its deadline unanswered');
    assert.equal(l.answer('b', 2, 'ok', 200), undefined, 'late answer changes nothing');
    const s = l.summary();
    assert.deepEqual([s.frames, s.answered, s.refused, s.missed, s.late, s.unaccounted], [4, 1, 1, 2, 2, 0]);
    assert.deepEqual(s.refusedBy, { overloaded: 1 });
    assert.equal(s.withinBudget, 0.25);
    assert.equal(s.maxMs, 170, 'late answers count in the latency distribution');
  });

  it('counts open frames, duplicate and unknown answers as unaccounted', () => {
    const l = new FrameLedger();
    l.sent('a', 1, 0, 50);
    l.sent('a', 2, 0, 50);
    l.answer('a', 1, 'ok', 5);
    l.answer('a', 1, 'ok', 6);
    l.answer('z', 9, 'ok', 7);
    const s = l.summary();
    assert.equal(s.duplicates, 1);
    assert.equal(s.unknown, 1);
    assert.equal(s.unaccounted, 3, 'a#2 still open + one duplicate + one unknown');
    assert.throws(() => l.sent('a', 1, 10, 50), RangeError);
  });

  it('sweeps frames of mixed budgets in deadline order, not send order', () => {
    const l = new FrameLedger();
    l.sent('a', 1, 0, 500);
    l.sent('a', 2, 0, 50);
    assert.equal(l.sweep(60), 1);
    assert.equal(l.open, 1);
  });

  it('property: frames = answered + refused + missed after the last deadline, for any arrival pattern', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            budget: fc.integer({ min: 1, max: 200 }),
            sentAt: fc.integer({ min: 0, max: 1000 }),
            replies: fc.array(
              fc.record({
                delay: fc.integer({ min: 0, max: 400 }),
                status: fc.constantFrom('ok', 'expired', 'overloaded', 'error' as const),
              }),
              { maxLength: 2 },
            ),
          }),
          { maxLength: 60 },
        ),
        (frames) => {
          const l = new FrameLedger();
          const events: { at: number; i: number; status: 'ok' | 'expired' | 'overloaded' | 'error' }[] = [];
          frames.forEach((f, i) => {
            l.sent('d', i, f.sentAt, f.budget);
            for (const r of f.replies) events.push({ at: f.sentAt + r.delay, i, status: r.status });
          });
          events.sort((a, b) => a.at - b.at);
          for (const e of events) {
            l.sweep(e.at);
            l.answer('d', e.i, e.status, e.at);
          }
          l.sweep(10_000);
          const s = l.summary();
          const second = frames.filter((f) => f.replies.length === 2).length;
          return (
            s.frames === frames.length &&
            s.answered + s.refused + s.missed === s.frames &&
            s.unaccounted === s.duplicates &&
            s.duplicates + s.late <= second + frames.filter((f) => f.replies.length > 0).length
          );
        },
      ),
    );
  });
});

describe('percentile', () => {
  it('nearest rank', () => {
    const xs = Float64Array.from({ length: 100 }, (_, i) => i + 1);
    assert.equal(percentile(xs, 0.5), 50);
    assert.equal(percentile(xs, 0.99), 99);
    assert.equal(percentile(xs, 1), 100);
    assert.equal(percentile([], 0.5), 0);
  });
});
