/**
 * Graceful shutdown for the services: on SIGTERM or SIGINT, stop intake (unsubscribe, stop
 * accepting connections), drain in-flight work up to a timeout, then close children in order
 * (engine, broker connection, HTTP server). Idempotent: a second call or signal returns the same
 * promise; a third signal exits at once, for the operator who really means it.
 */

/** One step; a failure is reported and the next steps still run. */
export interface ShutdownStep {
  name: string;
  run: () => Promise<void> | void;
}

/** Minimal logger (pino's signature). */
export interface ShutdownLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/** Options of {@link GracefulShutdown}. */
export interface ShutdownOptions {
  /** Longest wait for in-flight work to drain. Default 10 000 ms. */
  drainTimeoutMs?: number;
  logger?: ShutdownLogger;
  /** Injected timers for tests; default the global ones. */
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (handle: unknown) => void;
}

/** What {@link GracefulShutdown.shutdown} reports. */
export interface ShutdownReport {
  reason: string;
  /** True when the drain finished before the timeout. */
  drained: boolean;
  /** Names of the steps that threw. */
  failed: string[];
}

/** The process-like object signals are installed on (tests pass an EventEmitter). */
export interface SignalTarget {
  on(event: 'SIGTERM' | 'SIGINT', listener: () => void): unknown;
  off(event: 'SIGTERM' | 'SIGINT', listener: () => void): unknown;
}

/**
 * Ordered shutdown: every `stopIntake` step, then the drains (all awaited together, bounded by
 * the timeout), then every `close` step, each in registration order.
 */
export class GracefulShutdown {
  readonly #intake: ShutdownStep[] = [];
  readonly #drains: ShutdownStep[] = [];
  readonly #closers: ShutdownStep[] = [];
  readonly #opts: Required<Pick<ShutdownOptions, 'drainTimeoutMs' | 'setTimeout' | 'clearTimeout'>> & {
    logger?: ShutdownLogger;
  };
  #running: Promise<ShutdownReport> | undefined;
  #signals = 0;

  constructor(opts: ShutdownOptions = {}) {
    this.#opts = {
      drainTimeoutMs: opts.drainTimeoutMs ?? 10_000,
      logger: opts.logger,
      setTimeout: opts.setTimeout ?? ((fn, ms) => setTimeout(fn, ms)),
      clearTimeout: opts.clearTimeout ?? ((h) => clearTimeout(h as NodeJS.Timeout)),
    };
  }

  /** True once shutdown has begun (readiness turns false, new work is refused). */
  get stopping(): boolean {
    return this.#running !== undefined;
  }

  /** Adds a step that stops new work from arriving. */
  stopIntake(name: string, run: ShutdownStep['run']): this {
    this.#intake.push({ name, run });
    return this;
  }

  /** Adds a wait for in-flight work to finish (bounded by the drain timeout). */
  drain(name: string, run: ShutdownStep['run']): this {
    this.#drains.push({ name, run });
    return this;
  }

  /** Adds a close step, run after draining, in registration order. */
  close(name: string, run: ShutdownStep['run']): this {
    this.#closers.push({ name, run });
    return this;
  }

  /** Runs the shutdown once; later calls return the same promise. Never rejects. */
  shutdown(reason = 'shutdown'): Promise<ShutdownReport> {
    this.#running ??= this.#run(reason);
    return this.#running;
  }

  async #run(reason: string): Promise<ShutdownReport> {
    const log = this.#opts.logger;
    const failed: string[] = [];
    log?.info({ reason }, 'shutting down: stopping intake');
    for (const s of this.#intake) await this.#step(s, failed);
    let timer: unknown;
    const timeout = new Promise<false>((resolve) => {
      timer = this.#opts.setTimeout(() => resolve(false), this.#opts.drainTimeoutMs);
    });
    const drained = await Promise.race([
      Promise.all(this.#drains.map((s) => this.#step(s, failed))).then(() => true as const),
      timeout,
    ]);
    this.#opts.clearTimeout(timer);
    if (!drained) log?.warn({ timeoutMs: this.#opts.drainTimeoutMs }, 'drain timed out; closing anyway');
    for (const s of this.#closers) await this.#step(s, failed);
    log?.info({ reason, drained, failed }, 'shut down');
    return { reason, drained, failed };
  }

  async #step(s: ShutdownStep, failed: string[]): Promise<void> {
    try {
      await s.run();
    } catch (err) {
      failed.push(s.name);
      this.#opts.logger?.error({ err, step: s.name }, 'shutdown step failed');
    }
  }

  /**
   * Shuts down on SIGTERM and SIGINT; a third signal calls `onForce` (default: exit code 130 at
   * once). Returns the function that removes the listeners.
   * @param onDone called with the report when the shutdown finishes (e.g. to set the exit code).
   */
  installSignals(
    target: SignalTarget,
    onDone: (r: ShutdownReport) => void = () => {},
    onForce: () => void = () => process.exit(130),
  ): () => void {
    const handler = (signal: 'SIGTERM' | 'SIGINT') => () => {
      this.#signals++;
      if (this.#signals >= 3) {
        onForce();
        return;
      }
      void this.shutdown(signal).then(onDone);
    };
    const term = handler('SIGTERM');
    const int = handler('SIGINT');
    target.on('SIGTERM', term);
    target.on('SIGINT', int);
    return () => {
      target.off('SIGTERM', term);
      target.off('SIGINT', int);
    };
  }
}

/**
 * Counts in-flight work and resolves {@link idle} when it reaches zero: what a drain step waits on.
 */
export class InFlight {
  #n = 0;
  #waiters: (() => void)[] = [];

  get count(): number {
    return this.#n;
  }

  /** Marks one unit started; call the returned function once when it ends. */
  begin(): () => void {
    this.#n++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.#n--;
      if (this.#n === 0) for (const w of this.#waiters.splice(0)) w();
    };
  }

  /** Resolves when nothing is in flight. */
  idle(): Promise<void> {
    if (this.#n === 0) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push(resolve));
  }
}
