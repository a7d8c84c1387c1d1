/**
 * A deadline-aware dynamic batcher, shared by the gateway and the cloud teacher. Requests wait
 * in an earliest-deadline-first queue; a batch is dispatched when it is full, when the oldest
 * request has waited `maxDelayMs`, or when waiting longer would make the earliest deadline in
 * the batch miss (deadline − expected service time of the batch), whichever comes first.
 * Requests whose budget runs out while queued are answered `expired` at their deadline, never
 * dropped. Admission control answers `overloaded` at once when the expected wait (the work ahead
 * divided by the workers, plus the request's own service) exceeds the request's budget.
 *
 * The service time of a batch of n is learnt online as a + b·n by least squares over the last
 * batches (falling back to a per-item rate while every batch had the same size). The clock and
 * the timers are injected, so the scheduling is tested without sleeping.
 */

/** Injected clock and timers (ms). */
export interface Scheduler {
  now(): number;
  setTimer(fn: () => void, ms: number): unknown;
  clearTimer(handle: unknown): void;
}

/** The real clock: `performance.now()` and `setTimeout`. */
export const realScheduler: Scheduler = {
  now: () => performance.now(),
  // Not unref'd: a timer exists only while requests wait, and they must keep the process alive.
  setTimer: (fn, ms) => setTimeout(fn, Math.max(0, ms)),
  clearTimer: (h) => clearTimeout(h as NodeJS.Timeout),
};

/** What happened to one request. */
export type BatchOutcome<O> =
  | {
      status: 'ok';
      output: O;
      /** Enqueue to dispatch, ms. */
      queueMs: number;
      /** Run time of the batch that served it, ms. */
      serviceMs: number;
      batchSize: number;
      /** Finished after its deadline (served, but late). */
      late: boolean;
    }
  | { status: 'expired'; queueMs: number }
  | { status: 'overloaded'; retryAfterMs: number; expectedWaitMs: number }
  | { status: 'error'; error: Error; queueMs: number; serviceMs: number }
  | { status: 'closed' };

/** Options of {@link DeadlineBatcher}. */
export interface BatcherOptions<I, O> {
  /** Runs one batch; must return one output per input, in order. */
  run: (inputs: I[]) => Promise<O[]>;
  /** Largest batch. Default 32. */
  maxBatch?: number;
  /** Longest a request waits for companions. Default 2 ms. */
  maxDelayMs?: number;
  /** Batches run at the same time (engine sessions). Default 1. */
  concurrency?: number;
  /** Queue bound: beyond it requests are refused as overloaded whatever their budget. Default 4096. */
  maxQueue?: number;
  /** Service time (ms) assumed for one item before any batch was measured. Default 1. */
  initialServiceMs?: number;
  /** Dispatch this much before the latest start that meets the earliest deadline. Default 0.5 ms. */
  slackMs?: number;
  /** Refuse at admission: default true. False queues everything (the bench's batch-1 baseline uses it). */
  admission?: boolean;
  /** Injected clock and timers; default {@link realScheduler}. */
  scheduler?: Scheduler;
  /** Called after every batch (metrics). */
  onBatch?: (size: number, serviceMs: number) => void;
}

interface Pending<I, O> {
  input: I;
  enqueued: number;
  deadline: number;
  resolve: (o: BatchOutcome<O>) => void;
}

/** Number of recent batches the service-time fit uses. */
const FIT_WINDOW = 64;
/**
 * An idle batcher whose model has refused requests for this long admits them again whenever it
 * is idle (see {@link DeadlineBatcher.refusal}).
 */
const PROBE_AFTER_MS = 1000;

/** Online fit of batch service time as a + b·n over a window of recent batches. */
export class ServiceModel {
  readonly #n: number[] = [];
  readonly #ms: number[] = [];
  #a = 0;
  #b: number;

  constructor(initialPerItemMs: number) {
    this.#b = initialPerItemMs;
  }

  /** Records one batch of `n` items that took `ms`. */
  observe(n: number, ms: number): void {
    if (!(n > 0) || !Number.isFinite(ms) || ms < 0) return;
    this.#n.push(n);
    this.#ms.push(ms);
    if (this.#n.length > FIT_WINDOW) {
      this.#n.shift();
      this.#ms.shift();
    }
    const k = this.#n.length;
    let sn = 0;
    let sm = 0;
    for (let i = 0; i < k; i++) {
      sn += this.#n[i];
      sm += this.#ms[i];
    }
    const mn = sn / k;
    const mm = sm / k;
    let cov = 0;
    let varN = 0;
    for (let i = 0; i < k; i++) {
      cov += (this.#n[i] - mn) * (this.#ms[i] - mm);
      varN += (this.#n[i] - mn) ** 2;
    }
    // Too little spread in batch sizes to separate the fixed cost: a pure per-item rate.
    if (varN < 0.25 * k) {
      this.#a = 0;
      this.#b = mm / mn;
      return;
    }
    const b = Math.max(0, cov / varN);
    const a = mm - b * mn;
    if (a >= 0) {
      this.#a = a;
      this.#b = b;
    } else {
      this.#a = 0;
      this.#b = mm / mn;
    }
  }

  /** Expected service time of a batch of `n`, ms. */
  expected(n: number): number {
    return n <= 0 ? 0 : this.#a + this.#b * n;
  }

  /** The fit: fixed ms per batch and ms per item. */
  get fit(): { fixedMs: number; perItemMs: number; samples: number } {
    return { fixedMs: this.#a, perItemMs: this.#b, samples: this.#n.length };
  }
}

/**
 * The batcher. `submit` never rejects: every request resolves to exactly one {@link BatchOutcome}.
 */
export class DeadlineBatcher<I, O> {
  readonly #run: (inputs: I[]) => Promise<O[]>;
  readonly #maxBatch: number;
  readonly #maxDelay: number;
  readonly #concurrency: number;
  readonly #maxQueue: number;
  readonly #slack: number;
  readonly #admission: boolean;
  readonly #sched: Scheduler;
  readonly #onBatch: ((size: number, serviceMs: number) => void) | undefined;
  readonly #model: ServiceModel;
  /** Sorted by deadline, then arrival. */
  readonly #queue: Pending<I, O>[] = [];
  /** Start time and size of each batch in flight. */
  readonly #inflight = new Set<{ start: number; size: number }>();
  #timer: unknown;
  #timerAt = Number.POSITIVE_INFINITY;
  #closing = false;
  #idleWaiters: (() => void)[] = [];
  /** Start of the current run of refusals while idle (undefined: the model admits). */
  #refusingSince: number | undefined;

  /** @throws {RangeError} for a non-positive maxBatch or concurrency, or a negative delay. */
  constructor(opts: BatcherOptions<I, O>) {
    this.#run = opts.run;
    this.#maxBatch = opts.maxBatch ?? 32;
    this.#maxDelay = opts.maxDelayMs ?? 2;
    this.#concurrency = opts.concurrency ?? 1;
    this.#maxQueue = opts.maxQueue ?? 4096;
    this.#slack = opts.slackMs ?? 0.5;
    this.#admission = opts.admission ?? true;
    this.#sched = opts.scheduler ?? realScheduler;
    this.#onBatch = opts.onBatch;
    this.#model = new ServiceModel(opts.initialServiceMs ?? 1);
    if (!(Number.isInteger(this.#maxBatch) && this.#maxBatch >= 1))
      throw new RangeError(`maxBatch: expected an integer >= 1, received ${this.#maxBatch}`);
    if (!(Number.isInteger(this.#concurrency) && this.#concurrency >= 1))
      throw new RangeError(`concurrency: expected an integer >= 1, received ${this.#concurrency}`);
    if (!(this.#maxDelay >= 0)) throw new RangeError(`maxDelayMs: expected >= 0, received ${this.#maxDelay}`);
  }

  /** Requests waiting (not yet dispatched). */
  get depth(): number {
    return this.#queue.length;
  }

  /** Batches running now. */
  get running(): number {
    return this.#inflight.size;
  }

  /** The learnt service-time model. */
  get serviceModel(): ServiceModel {
    return this.#model;
  }

  /** Records a service time measured outside the batcher (a warm-up run). */
  observeService(n: number, ms: number): void {
    this.#model.observe(n, ms);
  }

  /**
   * Expected wait (ms) before a request submitted now would *finish*: the work in flight and
   * queued ahead, spread over the workers, plus its own batch's service.
   */
  expectedWaitMs(): number {
    const now = this.#sched.now();
    let ahead = 0;
    for (const b of this.#inflight) ahead += Math.max(0, this.#model.expected(b.size) - (now - b.start));
    const queued = this.#queue.length + 1;
    const full = Math.floor(queued / this.#maxBatch);
    const rest = queued % this.#maxBatch;
    ahead += full * this.#model.expected(this.#maxBatch) + this.#model.expected(rest);
    // With free workers the request's batch starts at once; otherwise the backlog is shared.
    const free = this.#concurrency - this.#inflight.size;
    return free > 0 && queued <= this.#maxBatch * free
      ? this.#model.expected(Math.min(queued, this.#maxBatch))
      : ahead / this.#concurrency;
  }

  /**
   * Admission control for a request with `budgetMs` left, now: the expected wait (see
   * {@link expectedWaitMs}) when it is to be refused, else undefined (also when admission control
   * is off). The service model learns only from batches that run, so a model inflated by a stall
   * of the whole machine would refuse every later request, for good: an idle batcher that has
   * refused for {@link PROBE_AFTER_MS} admits requests whenever it is idle again, one batch at a
   * time, until its model admits them by itself.
   */
  refusal(budgetMs: number): number | undefined {
    if (!this.#admission) return undefined;
    const wait = this.expectedWaitMs();
    if (wait <= budgetMs) {
      this.#refusingSince = undefined;
      return undefined;
    }
    if (this.#queue.length > 0 || this.#inflight.size > 0) return wait;
    const now = this.#sched.now();
    this.#refusingSince ??= now;
    return now - this.#refusingSince >= PROBE_AFTER_MS ? undefined : wait;
  }

  /**
   * Queues one request with `budgetMs` left until its deadline.
   * Resolves `overloaded` at once when admission control refuses it (see {@link refusal}),
   * `expired` if its deadline passes before dispatch, `closed` after {@link close}, else `ok` or
   * `error` with its output.
   */
  submit(input: I, budgetMs: number): Promise<BatchOutcome<O>> {
    if (this.#closing) return Promise.resolve({ status: 'closed' });
    const now = this.#sched.now();
    if (!(budgetMs > 0)) return Promise.resolve({ status: 'expired', queueMs: 0 });
    const wait = this.#queue.length >= this.#maxQueue ? this.expectedWaitMs() : this.refusal(budgetMs);
    if (wait !== undefined) {
      const retryAfterMs = Math.max(1, Math.ceil(wait - this.#model.expected(1)));
      return Promise.resolve({ status: 'overloaded', retryAfterMs, expectedWaitMs: wait });
    }
    return new Promise((resolve) => {
      const p: Pending<I, O> = { input, enqueued: now, deadline: now + budgetMs, resolve };
      // Binary search for the first item with a later deadline (stable for equal deadlines).
      let lo = 0;
      let hi = this.#queue.length;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (this.#queue[mid].deadline <= p.deadline) lo = mid + 1;
        else hi = mid;
      }
      this.#queue.splice(lo, 0, p);
      this.#schedule();
    });
  }

  /** Answers queued requests whose deadline has passed. */
  #expire(now: number): void {
    const i = 0;
    while (i < this.#queue.length) {
      const p = this.#queue[i];
      if (p.deadline <= now) {
        this.#queue.splice(i, 1);
        p.resolve({ status: 'expired', queueMs: now - p.enqueued });
      } else {
        // Sorted by deadline: nothing later has expired.
        break;
      }
    }
  }

  /** Dispatches what is due and arms the timer for the next event. */
  #schedule(): void {
    const now = this.#sched.now();
    this.#expire(now);
    while (this.#queue.length > 0 && this.#inflight.size < this.#concurrency) {
      const due = this.#dueAt();
      if (due > now) break;
      this.#dispatch(now);
    }
    let next = Number.POSITIVE_INFINITY;
    if (this.#queue.length > 0) {
      next = this.#queue[0].deadline;
      if (this.#inflight.size < this.#concurrency) next = Math.min(next, this.#dueAt());
    }
    this.#arm(next, now);
    this.#checkIdle();
  }

  /** When the batch at the head of the queue must start. */
  #dueAt(): number {
    const n = Math.min(this.#queue.length, this.#maxBatch);
    if (n >= this.#maxBatch || this.#closing) return Number.NEGATIVE_INFINITY;
    let oldest = Number.POSITIVE_INFINITY;
    for (const p of this.#queue) oldest = Math.min(oldest, p.enqueued);
    const latestStart = this.#queue[0].deadline - this.#model.expected(n) - this.#slack;
    return Math.min(oldest + this.#maxDelay, latestStart);
  }

  #arm(at: number, now: number): void {
    if (at === this.#timerAt) return;
    if (this.#timer !== undefined) this.#sched.clearTimer(this.#timer);
    this.#timer = undefined;
    this.#timerAt = at;
    if (!Number.isFinite(at)) return;
    this.#timer = this.#sched.setTimer(
      () => {
        this.#timer = undefined;
        this.#timerAt = Number.POSITIVE_INFINITY;
        this.#schedule();
      },
      Math.max(0, at - now),
    );
  }

  #dispatch(now: number): void {
    const batch = this.#queue.splice(0, this.#maxBatch);
    const slot = { start: now, size: batch.length };
    this.#inflight.add(slot);
    const finish = (outputs: O[] | Error): void => {
      const end = this.#sched.now();
      const serviceMs = end - now;
      this.#inflight.delete(slot);
      if (outputs instanceof Error) {
        for (const p of batch)
          p.resolve({ status: 'error', error: outputs, queueMs: now - p.enqueued, serviceMs });
      } else {
        this.#model.observe(batch.length, serviceMs);
        this.#onBatch?.(batch.length, serviceMs);
        batch.forEach((p, i) => {
          p.resolve({
            status: 'ok',
            output: outputs[i],
            queueMs: now - p.enqueued,
            serviceMs,
            batchSize: batch.length,
            late: end > p.deadline,
          });
        });
      }
      this.#schedule();
    };
    let started: Promise<O[]>;
    try {
      started = this.#run(batch.map((p) => p.input));
    } catch (err) {
      started = Promise.reject(err);
    }
    started.then(
      (outputs) =>
        finish(
          Array.isArray(outputs) && outputs.length === batch.length
            ? outputs
            : new Error(
                `batch of ${batch.length} returned ${Array.isArray(outputs) ? outputs.length : 'no'} outputs`,
              ),
        ),
      (err: unknown) => finish(err instanceof Error ? err : new Error(String(err))),
    );
  }

  #checkIdle(): void {
    if (this.#queue.length === 0 && this.#inflight.size === 0)
      for (const w of this.#idleWaiters.splice(0)) w();
  }

  /** Resolves when nothing is queued or running. */
  idle(): Promise<void> {
    if (this.#queue.length === 0 && this.#inflight.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  /**
   * Stops intake (later submits resolve `closed`), dispatches what is queued without waiting for
   * companions, and resolves when everything in flight has finished. Safe to call twice.
   */
  close(): Promise<void> {
    this.#closing = true;
    this.#schedule();
    return this.idle();
  }
}
