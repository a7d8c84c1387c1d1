/**
 * Double-buffered preprocessing: camera frame (or its ROI) → the model input in one of two
 * preallocated buffers, A and B, off the main thread, so that frame n+1 is preprocessed while
 * frame n is inferred. Backends, all driven by the model card's input spec and bit-identical:
 *
 * - 'native': the C++ kernel (native/preprocess.ts) on the libuv thread pool, writing straight
 *   into the inference buffer;
 * - 'worker': the TypeScript reference in a worker thread, over shared memory (frames in a
 *   shared pool, outputs in two SharedArrayBuffers copied into the inference buffer: 784 floats
 *   for the device model; onnxruntime-node refuses shared tensors);
 * - 'inline': the TypeScript reference on the calling thread (no overlap: tests, fallback).
 *
 * 'auto' picks native when the addon loads, else worker. An ROI is first copied into a scratch
 * buffer and preprocessed as a frame of its own: the resampling plan then depends on the ROI's
 * size only, not its position, and stays cached, so a steady stream allocates nothing.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { InputSpec } from '../models/card.ts';
import { type Frame, preprocess } from '../models/preprocess.ts';
import type { InferenceBuffers } from '../models/runtime.ts';
import { isNativeAvailable, loadPreprocessBinding } from '../native/binding.ts';
import { preprocessNative } from '../native/preprocess.ts';
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

/** Double-buffered preprocessor; one request at a time. */
export class Preprocessor {
  readonly backend: PreprocessBackend;
  readonly #spec: InputSpec;
  readonly #buffers: readonly [InferenceBuffers, InferenceBuffers];
  readonly #opts: { resize: 'area' | 'bilinear' };
  readonly #scratch: Uint8Array;
  readonly #frame: Frame = { data: new Uint8Array(3), width: 1, height: 1, format: 'rgb', stride: 3 };
  #busy = false;
  #closed = false;
  // Worker backend.
  #worker: Worker | null = null;
  #ctrl: Int32Array | null = null;
  #outs: Float32Array[] = [];
  #errorText: Uint8Array | null = null;
  #workerError: Error | null = null;

  private constructor(opts: PreprocessorOptions, backend: PreprocessBackend) {
    this.backend = backend;
    this.#spec = opts.spec;
    this.#buffers = opts.buffers;
    this.#opts = { resize: opts.resize ?? 'area' };
    this.#scratch = backend === 'worker' ? new Uint8Array(0) : new Uint8Array(opts.pool.bytes);
  }

  /**
   * Starts a preprocessor (for 'worker': spawns the thread and waits until it runs).
   * @throws {RangeError} when the worker backend gets a non-shared pool, or native one a shared pool.
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
    const p = new Preprocessor(opts, backend);
    if (backend === 'native') {
      // Surfaces NATIVE_ERR_UNAVAILABLE now rather than on the first frame.
      (await import('../native/binding.ts')).preprocessBinding();
    }
    if (backend === 'worker') await p.#startWorker(opts);
    return p;
  }

  async #startWorker(opts: PreprocessorOptions): Promise<void> {
    const len = opts.buffers[0].input.length;
    const outs = [new SharedArrayBuffer(len * 4), new SharedArrayBuffer(len * 4)];
    const ctrl = new SharedArrayBuffer(Ctrl.LENGTH * 4);
    const errorText = new SharedArrayBuffer(512);
    const init: WorkerInit = {
      ctrl,
      frames: opts.pool.buffers().map((b) => b.buffer as SharedArrayBuffer),
      outs,
      errorText,
      spec: opts.spec,
      resize: this.#opts.resize,
      scratchBytes: opts.pool.bytes,
    };
    this.#ctrl = new Int32Array(ctrl);
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
   * Preprocesses `frame` (its ROI when set) into buffer `which` (0 = A, 1 = B). The frame must
   * not be released and the buffer not read until the promise settles.
   * @throws {Error} when a request is already running or after close (rejections).
   * @throws {TypeError|RangeError} for frames the preprocessor refuses (rejections).
   */
  run(frame: CameraFrame, which: 0 | 1): Promise<void> {
    if (this.#closed) return Promise.reject(new Error('preprocessor: run() after close()'));
    if (this.#busy) return Promise.reject(new Error('preprocessor: one request at a time'));
    const out = this.#buffers[which].input;
    if (this.backend === 'worker') return this.#runWorker(frame, which, out);
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

  async #runWorker(frame: CameraFrame, which: 0 | 1, out: Float32Array): Promise<void> {
    const c = this.#ctrl as Int32Array;
    if (this.#workerError) throw this.#workerError;
    this.#busy = true;
    this.#worker?.ref();
    try {
      c[Ctrl.SLOT] = frame.slot;
      c[Ctrl.OUT] = which;
      c[Ctrl.WIDTH] = frame.width;
      c[Ctrl.HEIGHT] = frame.height;
      const roi = frame.roi;
      c[Ctrl.ROI_X] = roi?.x ?? 0;
      c[Ctrl.ROI_Y] = roi?.y ?? 0;
      c[Ctrl.ROI_W] = roi?.width ?? 0;
      c[Ctrl.ROI_H] = roi?.height ?? 0;
      const req = Atomics.add(c, Ctrl.REQ, 1) + 1;
      Atomics.notify(c, Ctrl.REQ);
      for (let done = Atomics.load(c, Ctrl.DONE); done !== req; done = Atomics.load(c, Ctrl.DONE)) {
        const w = waitAsync(c, Ctrl.DONE, done);
        if (w.async) await w.value;
      }
      if (this.#workerError) throw this.#workerError;
      const errLen = c[Ctrl.ERROR];
      if (errLen !== 0) {
        const text = Buffer.from((this.#errorText as Uint8Array).subarray(0, errLen)).toString('utf8');
        throw new RangeError(`preprocessing worker: ${text}`);
      }
      out.set(this.#outs[which]);
    } finally {
      this.#busy = false;
      this.#worker?.unref();
    }
  }

  /** Stops the worker (if any). Safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
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
