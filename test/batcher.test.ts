import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type BatchOutcome, DeadlineBatcher, type Scheduler, ServiceModel } from '../cascade/batcher.ts';

/** A manual clock: timers fire only when the test advances time. */
class FakeScheduler implements Scheduler {
  t = 0;
  #timers = new Map<number, { at: number; fn: () => void }>();
  #id = 0;
  now(): number {
    return this.t;
  }
  setTimer(fn: () => void, ms: number): unknown {
    const id = ++this.#id;
    this.#timers.set(id, { at: this.t + ms, fn });
    return id;
  }
  clearTimer(h: unknown): void {
    this.#timers.delete(h as number);
  }
  get pending(): number {
    return this.#timers.size;
  }
  /** Advances to `to`, firing due timers in order. */
  async advance(to: number): Promise<void> {
    for (;;) {
      let next: [number, { at: number; fn: () => void }] | undefined;
      for (const e of this.#timers) if (e[1].at <= to && (!next || e[1].at < next[1].at)) next = e;
      if (!next) break;
      this.#timers.delete(next[0]);
      this.t = Math.max(this.t, next[1].at);
      next[1].fn();
      await flush();
    }
    this.t = to;
    await flush();
  }
}

async function flush(): Promise<void> {
  for (let i = 0; i < 5; i++) await Promise.resolve();
}

/** An engine whose batches finish when the test says so. */
function controlledEngine(sched: FakeScheduler) {
  const batches: {
    inputs: number[];
    done: (ms: number) => Promise<void>;
    fail: (e: Error) => Promise<void>;
  }[] = [];
  const run = (inputs: number[]): Promise<number[]> =>
    new Promise((resolve, reject) => {
      batches.push({
        inputs,
        done: async (ms) => {
          sched.t += ms;
          resolve(inputs.map((x) => x * 10));
          await flush();
        },
        fail: async (e) => {
          reject(e);
          await flush();
        },
      });
    });
  return { run, batches };
}

function track<O>(p: Promise<BatchOutcome<O>>): { value?: BatchOutcome<O> } {
  const box: { value?: BatchOutcome<O> } = {};
  void p.then((v) => {
    box.value = v;
  });
  return box;
}

describe('DeadlineBatcher', () => {
  it('dispatches a full batch at once and the rest after maxDelayMs', async () => {
    const s = new FakeScheduler();
    const e = controlledEngine(s);
    const b = new DeadlineBatcher({ run: e.run, maxBatch: 4, maxDelayMs: 5, scheduler: s, admission: false });
    const outs = [1, 2, 3, 4, 5].map((x) => track(b.submit(x, 1000)));
    await flush();
    assert.equal(e.batches.length, 1, 'a full batch goes at once');
    assert.deepEqual(e.batches[0].inputs, [1, 2, 3, 4]);
    await e.batches[0].done(3);
    assert.deepEqual(outs[0].value, {
      status: 'ok',
      output: 10,
      queueMs: 0,
      serviceMs: 3,
      batchSize: 4,
      late: false,
    });
    assert.equal(e.batches.length, 1, 'the fifth waits for companions');
    await s.advance(4.9);
    assert.equal(e.batches.length, 1);
    await s.advance(5);
    assert.equal(e.batches.length, 2, 'dispatched at maxDelayMs after it arrived');
    assert.deepEqual(e.batches[1].inputs, [5]);
    await e.batches[1].done(1);
    assert.equal(outs[4].value?.status, 'ok');
    assert.equal(outs[4].value?.status === 'ok' && outs[4].value.queueMs, 5);
  });

  it('never waits past the earliest deadline minus the expected service time', async () => {
    const s = new FakeScheduler();
    const e = controlledEngine(s);
    const b = new DeadlineBatcher({
      run: e.run,
      maxBatch: 8,
      maxDelayMs: 50,
      slackMs: 0,
      initialServiceMs: 4,
      scheduler: s,
      admission: false,
    });
    track(b.submit(1, 100));
    track(b.submit(2, 20)); // deadline 20, service of 2 items ≈ 8 ms → start by 12
    await s.advance(11.9);
    assert.equal(e.batches.length, 0);
    await s.advance(12);
    assert.equal(e.batches.length, 1);
    assert.deepEqual(e.batches[0].inputs, [2, 1], 'earliest deadline first');
  });

  it('answers requests whose budget runs out in the queue as expired, at their deadline', async () => {
    const s = new FakeScheduler();
    const e = controlledEngine(s);
    const b = new DeadlineBatcher({ run: e.run, maxBatch: 1, maxDelayMs: 0, scheduler: s, admission: false });
    const first = track(b.submit(1, 100));
    const second = track(b.submit(2, 10));
    await flush();
    assert.equal(e.batches.length, 1, 'one worker busy');
    await s.advance(10);
    assert.deepEqual(second.value, { status: 'expired', queueMs: 10 });
    await e.batches[0].done(5);
    assert.equal(first.value?.status, 'ok');
    assert.equal(e.batches.length, 1, 'the expired request never reached the engine');
    assert.equal((await b.submit(3, 0)).status, 'expired', 'no budget at all: expired at once');
  });

  it('marks answers finished after their deadline as late', async () => {
    const s = new FakeScheduler();
    const e = controlledEngine(s);
    const b = new DeadlineBatcher({ run: e.run, maxBatch: 1, maxDelayMs: 0, scheduler: s, admission: false });
    const out = track(b.submit(1, 5));
    await flush();
    await e.batches[0].done(9);
    assert.equal(out.value?.status === 'ok' && out.value.late, true);
  });

  it('refuses at admission when the expected wait exceeds the budget, with a retry-after', async () => {
    const s = new FakeScheduler();
    const e = controlledEngine(s);
    const b = new DeadlineBatcher({
      run: e.run,
      maxBatch: 2,
      maxDelayMs: 0,
      scheduler: s,
      initialServiceMs: 10,
    });
    const accepted = [1, 2, 3, 4].map((x) => track(b.submit(x, 100)));
    await flush();
    // One batch of 1 running (10 ms), three queued plus the next make two batches of 2 (40 ms).
    assert.ok(b.expectedWaitMs() >= 40, `expected wait ${b.expectedWaitMs()}`);
    const refused = await b.submit(5, 30);
    assert.equal(refused.status, 'overloaded');
    assert.ok(refused.status === 'overloaded' && refused.retryAfterMs >= 30);
    const fits = track(b.submit(6, 100));
    await flush();
    assert.equal(fits.value, undefined, 'a request with enough budget is queued');
    for (let i = 0; i < 3; i++) await e.batches[i].done(20);
    assert.ok(accepted.every((a) => a.value?.status === 'ok'));
    assert.equal((fits.value as BatchOutcome<number> | undefined)?.status, 'ok');
  });

  it('recovers from a service model inflated by a stall: an idle batcher probes after 1 s of refusals', async () => {
    const s = new FakeScheduler();
    const e = controlledEngine(s);
    const b = new DeadlineBatcher({
      run: e.run,
      maxBatch: 4,
      maxDelayMs: 0,
      scheduler: s,
      initialServiceMs: 0.1,
    });
    // The machine stalls: three batches take 2 s each, and the model now expects seconds.
    for (let i = 0; i < 3; i++) {
      track(b.submit(i, 10_000));
      await flush();
      await e.batches[i].done(2000);
    }
    assert.ok(b.serviceModel.expected(1) > 50, `expected ${b.serviceModel.expected(1)} ms`);
    // Refused while idle, as before, for a second …
    assert.equal((await b.submit(10, 50)).status, 'overloaded');
    await s.advance(s.t + 999);
    assert.equal((await b.submit(11, 50)).status, 'overloaded');
    assert.equal(e.batches.length, 3);
    // … then admitted whenever idle, so that the model learns the stall is over.
    await s.advance(s.t + 1);
    const probe = track(b.submit(12, 50));
    await flush();
    assert.equal(e.batches.length, 4, 'admitted and dispatched');
    assert.equal((await b.submit(13, 50)).status, 'overloaded', 'busy: judged by the model as before');
    await e.batches[3].done(0.2);
    assert.equal(probe.value?.status, 'ok');
    for (let i = 4; b.serviceModel.expected(2) > 20; i++) {
      assert.ok(i < 4 + 64, 'the stall leaves the window');
      track(b.submit(i, 50));
      await flush();
      await e.batches[i].done(0.2);
    }
    // The model admits concurrent requests by itself again.
    track(b.submit(100, 50));
    await flush();
    const concurrent = track(b.submit(101, 50));
    await flush();
    assert.equal(concurrent.value, undefined, 'queued behind the running batch, not refused');
  });

  it('bounds the queue whatever the budget', async () => {
    const s = new FakeScheduler();
    const e = controlledEngine(s);
    const b = new DeadlineBatcher({ run: e.run, maxBatch: 1, maxQueue: 2, scheduler: s, admission: false });
    for (let i = 0; i < 3; i++) track(b.submit(i, 1e6));
    await flush();
    assert.equal(b.depth, 2);
    assert.equal((await b.submit(9, 1e6)).status, 'overloaded');
  });

  it('answers every request of a failed batch with the error and keeps serving', async () => {
    const s = new FakeScheduler();
    const e = controlledEngine(s);
    const b = new DeadlineBatcher({ run: e.run, maxBatch: 2, maxDelayMs: 5, scheduler: s, admission: false });
    const a = [track(b.submit(1, 100)), track(b.submit(2, 100))];
    await flush();
    assert.equal(e.batches[0].inputs.length, 2);
    await e.batches[0].fail(new Error('engine'));
    assert.ok(a.every((x) => x.value?.status === 'error'));
    const c = track(b.submit(3, 100));
    await s.advance(s.t + 5);
    await e.batches[1].done(1);
    assert.equal(c.value?.status, 'ok');
  });

  it('a run that throws synchronously or returns the wrong count is an error, not a crash', async () => {
    const s = new FakeScheduler();
    const b = new DeadlineBatcher<number, number>({
      run: (x) => {
        if (x[0] === 1) throw new Error('sync');
        return Promise.resolve([]);
      },
      maxBatch: 1,
      maxDelayMs: 0,
      scheduler: s,
      admission: false,
    });
    const one = await b.submit(1, 100);
    const two = await b.submit(2, 100);
    assert.equal(one.status, 'error');
    assert.equal(two.status === 'error' && two.error.message, 'batch of 1 returned 0 outputs');
  });

  it('close() flushes the queue at once, drains, and refuses later requests', async () => {
    const s = new FakeScheduler();
    const e = controlledEngine(s);
    const b = new DeadlineBatcher({
      run: e.run,
      maxBatch: 8,
      maxDelayMs: 100,
      scheduler: s,
      admission: false,
    });
    const a = track(b.submit(1, 1000));
    await flush();
    assert.equal(e.batches.length, 0);
    let closed = false;
    const closing = b.close().then(() => {
      closed = true;
    });
    await flush();
    assert.equal(e.batches.length, 1, 'flushed without waiting for companions');
    assert.equal(closed, false, 'waits for the batch in flight');
    assert.equal((await b.submit(2, 1000)).status, 'closed');
    await e.batches[0].done(1);
    await closing;
    assert.equal(a.value?.status, 'ok');
    assert.equal(s.pending, 0, 'no timer left behind');
  });

  it('runs up to `concurrency` batches at once', async () => {
    const s = new FakeScheduler();
    const e = controlledEngine(s);
    const b = new DeadlineBatcher({
      run: e.run,
      maxBatch: 1,
      maxDelayMs: 0,
      concurrency: 2,
      scheduler: s,
      admission: false,
    });
    for (let i = 0; i < 3; i++) track(b.submit(i, 100));
    await flush();
    assert.equal(b.running, 2);
    assert.equal(b.depth, 1);
  });
});

describe('ServiceModel', () => {
  it('fits fixed + per-item cost from batches of different sizes', () => {
    const m = new ServiceModel(1);
    for (const n of [1, 2, 4, 8, 16, 1, 4, 16]) m.observe(n, 2 + 0.5 * n);
    assert.ok(Math.abs(m.fit.fixedMs - 2) < 1e-9);
    assert.ok(Math.abs(m.fit.perItemMs - 0.5) < 1e-9);
    assert.ok(Math.abs(m.expected(32) - 18) < 1e-9);
  });
  it('falls back to a per-item rate while every batch has one size', () => {
    const m = new ServiceModel(1);
    m.observe(4, 8);
    m.observe(4, 8);
    assert.equal(m.expected(1), 2);
    assert.equal(m.expected(0), 0);
  });
});
