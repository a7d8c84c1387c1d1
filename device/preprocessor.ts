/**
 * Double-buffered preprocessing: camera frame (or its ROI) → the model input in one of two
 * preallocated buffers, A and B, off the main thread, so that frame n+1 is preprocessed while
 * frame n is inferred. Backends, all driven by the model card's input spec and bit-identical:
 *
 * - 'native': the C++ kernel (native/preprocess.ts) writing straight into the inference buffer,
 *   on a persistent thread of its own ({@link NativePreprocessThread});
 * - 'worker': the TypeScript reference in a worker thread, over shared memory (frames in a
 *   shared pool, outputs in two SharedArrayBuffers copied into the inference buffer: 784 floats
 *   for the device model; onnxruntime-node refuses shared tensors);
 * - 'inline': the TypeScript reference on the calling thread (no overlap: tests, fallback).
 *
 * Hand-off ('sync', the default): {@link Preprocessor.start} publishes the job (an atomic store,
 * a futex wake only when the other thread sleeps) and returns; {@link Preprocessor.wait} spins
 * briefly, then blocks the calling thread until the job is done. A frame loop runs start(n+1) →
 * infer(n) → wait() with no event-loop turn in between: onnxruntime-node runs the session on the
 * calling thread (after one setImmediate), so the main thread blocks only for what remains of
 * the preprocessing after inference. Measured here, start → wait return costs ~1.5 µs for an
 * empty job against ~13 µs for a libuv round trip, and ~30 µs when the other thread has to be
 * woken from sleep in this VM: hence the spins. 'async' keeps the libuv thread pool (native) or
 * Atomics.waitAsync (worker) behind the promise of {@link Preprocessor.run}; it is also the
 * fallback for a native binary built before the thread existed.
 *
 * 'auto' picks native when the addon loads, else worker. An ROI is first copied into a scratch
 * buffer and preprocessed as a frame of its own: the resampling plan then depends on the ROI's
 * size only, not its position, and stays cached, so a steady stream allocates nothing.
 */
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { InputSpec } from '../models/card.ts';
import { type Frame, preprocess } from '../models/preprocess.ts';
import type { InferenceBuffers } from '../models/runtime.ts';
import { isNativeAvailable, loadPreprocessBinding } from '../native/binding.ts';
import { NativePreprocessThread, preprocessNative } from '../native/preprocess.ts';
import type { CameraFrame, FramePool } from './frames.ts';
import { Ctrl, copyRoi, type WorkerInit } from './preprocess-shared.ts';

export type PreprocessBackend = 'native' | 'worker' | 'inline';

/** Options of {@link Preprocessor.create}. */
export interface PreprocessorOptions {
  spec: InputSpec;
  /** The two inference buffers A and B the outputs go to. */
  buffers: readonly [InferenceBuffers, InferenceBuffers];
  /** Frame pool; must be `shared` for the worker backend. */
  pool: FramePool;
  /** Default 'auto': native when built, else worker. */
  backend?: PreprocessBackend | 'auto';
  /** Resampling filter; default 'area'. */
  resize?: 'area' | 'bilinear';
  /**
   * 'sync' (default): {@link Preprocessor.start} / {@link Preprocessor.wait} on a persistent
   * thread; 'async': only the promise of {@link Preprocessor.run} (libuv pool / waitAsync).
   */
  handoff?: 'sync' | 'async';
  /**
   * How long `wait()` spins before it blocks (µs). Default 1000 with two or more cores, 0 with
   * one (a spinning thread would only delay the other on a single core). Longer than a stage:
   * a caller that fell asleep wakes late (30–300 µs measured in a VM), the thread then finds no
   * next job within its idle spin and sleeps too, and both keep waking each other late.
   */
  spinUs?: number;
  /** How long the preprocessing thread spins for the next job before it sleeps (µs); default 500 (0 on one core). */
  idleSpinUs?: number;
}

/** The backend 'auto' resolves to, and why. */
export function resolveBackend(want: PreprocessBackend | 'auto'): {
  backend: PreprocessBackend;
  why: string;
} {
  if (want !== 'auto') return { backend: want, why: 'requested' };
  if (isNativeAvailable()) return { backend: 'native', why: `native kernel ${loadPreprocessBinding().path}` };
  return { backend: 'worker', why: 'native kernel not built (npm run build:native): worker thread' };
}

/** Atomics.waitAsync (Node 16+; missing from this TypeScript lib). */
const waitAsync = (
  Atomics as unknown as {
    waitAsync(a: Int32Array, i: number, v: number): { async: boolean; value: Promise<string> | string };
  }
).waitAsync;

const WORKER_BOOT = fileURLToPath(new URL('./preprocess-worker-boot.mjs', import.meta.url));
/** A blocked wait() gives up on a worker that has not answered for this long (it died). */
const WORKER_WAIT_LIMIT_MS = 30_000;

/** Double-buffered preprocessor; one request at a time. */
export class Preprocessor {
  readonly backend: PreprocessBackend;
  /** How jobs are handed over: see {@link PreprocessorOptions.handoff}. */
  readonly handoff: 'sync' | 'async';
  readonly #spec: InputSpec;
  readonly #buffers: readonly [InferenceBuffers, InferenceBuffers];
  readonly #opts: { resize: 'area' | 'bilinear' };
  readonly #scratch: Uint8Array;
  readonly #frame: Frame = { data: new Uint8Array(3), width: 1, height: 1, format: 'rgb', stride: 3 };
  readonly #spinMs: number;
  #busy = false;
  #closed = false;
  // Sync hand-off: the started job's buffer, and (inline) its time.
  #which: 0 | 1 = 0;
  #inlineMs = 0;
  // Native backend, sync hand-off.
  #thread: NativePreprocessThread | null = null;
  // Worker backend.
  #worker: Worker | null = null;
  #ctrl: Int32Array | null = null;
  #times: Float64Array | null = null;
  #outs: Float32Array[] = [];
  #errorText: Uint8Array | null = null;
  #workerError: Error | null = null;

  private constructor(opts: PreprocessorOptions, backend: PreprocessBackend, handoff: 'sync' | 'async') {
    this.backend = backend;
    this.handoff = handoff;
    this.#spec = opts.spec;
    this.#buffers = opts.buffers;
    this.#opts = { resize: opts.resize ?? 'area' };
    this.#scratch = backend === 'worker' ? new Uint8Array(0) : new Uint8Array(opts.pool.bytes);
    this.#spinMs = spinOf('spinUs', opts.spinUs, 1000) / 1000;
  }

  /**
   * Starts a preprocessor (for 'worker': spawns the thread and waits until it runs; for 'native'
   * with the sync hand-off: starts its thread).
   * @throws {RangeError} when the worker backend gets a non-shared pool, or native one a shared
   *   pool, or for spins outside 0–1,000,000 µs.
   * @throws {CascadeError} NATIVE_ERR_UNAVAILABLE when 'native' is requested but not built.
   */
  static async create(opts: PreprocessorOptions): Promise<Preprocessor> {
    const { backend } = resolveBackend(opts.backend ?? 'auto');
    if (backend === 'worker' && !opts.pool.shared) {
      throw new RangeError('preprocessor: the worker backend needs a shared frame pool');
    }
    if (backend !== 'worker' && opts.pool.shared) {
      throw new RangeError(`preprocessor: the ${backend} backend needs a non-shared frame pool`);
    }
    const spinUs = spinOf('spinUs', opts.spinUs, 1000);
    const idleSpinUs = spinOf('idleSpinUs', opts.idleSpinUs, 500);
    let handoff = opts.handoff ?? 'sync';
    if (backend === 'native') {
      // Surfaces NATIVE_ERR_UNAVAILABLE now rather than on the first frame.
      (await import('../native/binding.ts')).preprocessBinding();
      if (!NativePreprocessThread.available()) handoff = 'async';
    }
    const p = new Preprocessor(opts, backend, handoff);
    if (backend === 'native' && handoff === 'sync')
      p.#thread = new NativePreprocessThread({ spinUs, idleSpinUs });
    if (backend === 'worker') await p.#startWorker(opts, idleSpinUs);
    return p;
  }

  async #startWorker(opts: PreprocessorOptions, idleSpinUs: number): Promise<void> {
    const len = opts.buffers[0].input.length;
    const outs = [new SharedArrayBuffer(len * 4), new SharedArrayBuffer(len * 4)];
    const ctrl = new SharedArrayBuffer(Ctrl.LENGTH * 4);
    const times = new SharedArrayBuffer(16);
    const errorText = new SharedArrayBuffer(512);
    const init: WorkerInit = {
      ctrl,
      times,
      frames: opts.pool.buffers().map((b) => b.buffer as SharedArrayBuffer),
      outs,
      errorText,
      spec: opts.spec,
      resize: this.#opts.resize,
      scratchBytes: opts.pool.bytes,
      // The async hand-off has nobody to spin for: its caller is in the event loop.
      idleSpinUs: this.handoff === 'sync' ? idleSpinUs : 0,
    };
    this.#ctrl = new Int32Array(ctrl);
    this.#times = new Float64Array(times);
    this.#outs = outs.map((b) => new Float32Array(b));
    this.#errorText = new Uint8Array(errorText);
    if (!existsSync(WORKER_BOOT)) throw new Error(`preprocessor: ${WORKER_BOOT} is missing`);
    const worker = new Worker(WORKER_BOOT, { workerData: init });
    this.#worker = worker;
    worker.on('error', (err) => {
      this.#workerError = err;
      // Wake a waiting run() so that it reports the failure instead of hanging.
      const c = this.#ctrl;
      if (c) {
        Atomics.store(c, Ctrl.DONE, Atomics.load(c, Ctrl.REQ));
        Atomics.notify(c, Ctrl.DONE);
      }
    });
    await new Promise<void>((resolve, reject) => {
      worker.once('message', () => resolve());
      worker.once('error', reject);
    });
    // Waiting on Atomics does not keep the process alive: the worker is ref'd only while a
    // request runs, so an idle preprocessor never holds the process open.
    worker.unref();
  }

  /**
   * The native kernel's own time in the job last waited for (ms), without the hand-off; NaN
   * for the other backends and the 'async' hand-off.
   */
  get lastRunMs(): number {
    return this.#thread?.lastRunMs ?? Number.NaN;
  }

  /** Sync hand-off (native): `wait()` calls that found the job done while spinning, and those that blocked. */
  get handoffCounters(): { spinHits: number; blocks: number } | null {
    return this.#thread?.counters ?? null;
  }

  /** True while a job started by {@link start} or {@link run} has not been waited for. */
  get busy(): boolean {
    return this.#busy;
  }

  /**
   * Hands `frame` (its ROI when set) → buffer `which` (0 = A, 1 = B) to the preprocessing
   * thread and returns at once ('inline': preprocesses here). The frame must not be released
   * and the buffer not read until {@link wait} returns. Allocates nothing.
   * @throws {TypeError|RangeError} for a frame the preprocessor refuses (nothing is started).
   * @throws {Error} with the 'async' hand-off, when a request is already running, or after close.
   */
  start(frame: CameraFrame, which: 0 | 1): void {
    if (this.#closed) throw new Error('preprocessor: start() after close()');
    if (this.#busy) throw new Error('preprocessor: one request at a time');
    if (this.handoff !== 'sync') throw new Error('preprocessor: start() needs the sync hand-off');
    const out = this.#buffers[which].input;
    this.#which = which;
    if (this.backend === 'worker') {
      this.#postWorker(frame, which);
      this.#busy = true;
      return;
    }
    const f = this.#frameOf(frame);
    if (this.backend === 'native') {
      (this.#thread as NativePreprocessThread).start(f, this.#spec, out, this.#opts);
      this.#busy = true;
      return;
    }
    // Inline: the work happens now (a failure throws here); wait() reports its time.
    const t0 = performance.now();
    preprocess(f, this.#spec, out, this.#opts);
    this.#inlineMs = performance.now() - t0;
    this.#busy = true;
  }

  /**
   * Blocks until the job handed over by {@link start} is done (spinning first, then sleeping).
   * @returns milliseconds from {@link start} to the job's end, as the preprocessing thread saw
   *   it (not when the caller came to wait).
   * @throws {Error} when no job was started; {RangeError|Error} when the job failed (the job is
   *   over either way, and the next {@link start} may follow).
   */
  wait(): number {
    if (!this.#busy || this.handoff !== 'sync') throw new Error('preprocessor: wait() without start()');
    try {
      if (this.backend === 'native') return (this.#thread as NativePreprocessThread).wait();
      if (this.backend === 'worker') return this.#waitWorker();
      return this.#inlineMs;
    } finally {
      this.#busy = false;
    }
  }

  /**
   * Preprocesses `frame` (its ROI when set) into buffer `which` (0 = A, 1 = B), off the main
   * thread, behind a promise. The frame must not be released and the buffer not read until the
   * promise settles.
   * @throws {Error} when a request is already running or after close (rejections).
   * @throws {TypeError|RangeError} for frames the preprocessor refuses (rejections).
   */
  run(frame: CameraFrame, which: 0 | 1): Promise<void> {
    if (this.#closed) return Promise.reject(new Error('preprocessor: run() after close()'));
    if (this.#busy) return Promise.reject(new Error('preprocessor: one request at a time'));
    if (this.backend === 'worker') return this.#runWorker(frame, which);
    const out = this.#buffers[which].input;
    try {
      const f = this.#frameOf(frame);
      if (this.backend === 'inline') {
        preprocess(f, this.#spec, out, this.#opts);
        return Promise.resolve();
      }
      this.#busy = true;
      return preprocessNative(f, this.#spec, out, this.#opts).finally(() => {
        this.#busy = false;
      });
    } catch (err) {
      this.#busy = false;
      return Promise.reject(err);
    }
  }

  /** The frame as the preprocessor sees it: the ROI copied out, or the whole frame. */
  #frameOf(frame: CameraFrame): Frame {
    const f = this.#frame;
    const roi = frame.roi;
    if (roi !== null) {
      copyRoi(frame.data, frame.width, roi, this.#scratch);
      f.data = this.#scratch;
      f.width = roi.width;
      f.height = roi.height;
      f.stride = roi.width * 3;
    } else {
      f.data = frame.data;
      f.width = frame.width;
      f.height = frame.height;
      f.stride = frame.width * 3;
    }
    return f;
  }

  /** Writes a request for the worker and wakes it; returns the request's number. */
  #postWorker(frame: CameraFrame, which: 0 | 1): number {
    const c = this.#ctrl as Int32Array;
    if (this.#workerError) throw this.#workerError;
    c[Ctrl.SLOT] = frame.slot;
    c[Ctrl.OUT] = which;
    c[Ctrl.WIDTH] = frame.width;
    c[Ctrl.HEIGHT] = frame.height;
    const roi = frame.roi;
    c[Ctrl.ROI_X] = roi?.x ?? 0;
    c[Ctrl.ROI_Y] = roi?.y ?? 0;
    c[Ctrl.ROI_W] = roi?.width ?? 0;
    c[Ctrl.ROI_H] = roi?.height ?? 0;
    (this.#times as Float64Array)[0] = performance.timeOrigin + performance.now();
    const req = Atomics.add(c, Ctrl.REQ, 1) + 1;
    Atomics.notify(c, Ctrl.REQ);
    return req;
  }

  /** The worker's outcome of the request just finished: throws its error, else copies out. */
  #collectWorker(which: 0 | 1): void {
    if (this.#workerError) throw this.#workerError;
    const c = this.#ctrl as Int32Array;
    const errLen = c[Ctrl.ERROR];
    if (errLen !== 0) {
      const text = Buffer.from((this.#errorText as Uint8Array).subarray(0, errLen)).toString('utf8');
      throw new RangeError(`preprocessing worker: ${text}`);
    }
    this.#buffers[which].input.set(this.#outs[which]);
  }

  #waitWorker(): number {
    const c = this.#ctrl as Int32Array;
    const req = Atomics.load(c, Ctrl.REQ);
    if (Atomics.load(c, Ctrl.DONE) !== req) {
      const spinEnd = performance.now() + this.#spinMs;
      while (Atomics.load(c, Ctrl.DONE) !== req && performance.now() < spinEnd);
      // Blocking the main thread is the point here; the bound only catches a worker that died
      // without saying so (its 'error' event cannot be delivered while we block).
      const limit = performance.now() + WORKER_WAIT_LIMIT_MS;
      for (let done = Atomics.load(c, Ctrl.DONE); done !== req; done = Atomics.load(c, Ctrl.DONE)) {
        if (Atomics.load(c, Ctrl.DEAD) !== 0) throw new Error('preprocessing worker exited');
        const left = limit - performance.now();
        if (left <= 0) throw new Error(`preprocessing worker did not answer in ${WORKER_WAIT_LIMIT_MS} ms`);
        Atomics.wait(c, Ctrl.DONE, done, Math.min(left, 100));
      }
    }
    this.#collectWorker(this.#which);
    return (this.#times as Float64Array)[1] - (this.#times as Float64Array)[0];
  }

  async #runWorker(frame: CameraFrame, which: 0 | 1): Promise<void> {
    const c = this.#ctrl as Int32Array;
    if (this.#workerError) throw this.#workerError;
    this.#busy = true;
    this.#worker?.ref();
    try {
      const req = this.#postWorker(frame, which);
      for (let done = Atomics.load(c, Ctrl.DONE); done !== req; done = Atomics.load(c, Ctrl.DONE)) {
        const w = waitAsync(c, Ctrl.DONE, done);
        if (w.async) await w.value;
      }
      this.#collectWorker(which);
    } finally {
      this.#busy = false;
      this.#worker?.unref();
    }
  }

  /** Waits for a started job (its outcome is dropped), stops the thread or worker. Safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#busy && this.handoff === 'sync') {
      try {
        this.wait();
      } catch {
        // The job's outcome no longer matters: only that its buffers are no longer in use.
      }
    }
    this.#thread?.close();
    const c = this.#ctrl;
    const w = this.#worker;
    if (c && w) {
      Atomics.store(c, Ctrl.STOP, 1);
      Atomics.add(c, Ctrl.REQ, 1);
      Atomics.notify(c, Ctrl.REQ);
      await w.terminate();
    }
  }
}

/** A spin option in µs; by default `dflt`, or 0 on one core. @throws {RangeError} outside 0–1,000,000. */
function spinOf(name: string, v: number | undefined, dflt: number): number {
  const us = v ?? (availableParallelism() > 1 ? dflt : 0);
  if (!Number.isFinite(us) || us < 0 || us > 1e6) {
    throw new RangeError(`preprocessor: ${name} must be 0-1000000 µs, received ${v}`);
  }
  return us;
}
