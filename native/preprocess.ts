/**
 * Native preprocessing: the same validated plan as the TypeScript reference (models/preprocess.ts),
 * executed by the C++ kernel (native/src/preprocess.cc) on the libuv thread pool, so that the
 * device pipeline overlaps preprocessing of one buffer with inference on the other. Outputs are
 * bit-identical to the reference.
 *
 * {@link preprocessAsync} is what runtimes call: native when the addon is built, the reference
 * otherwise (see {@link preprocessBackend}). {@link NativePreprocessThread} is the low-latency
 * form for a frame loop: a persistent thread, a synchronous `start()` and a synchronous `wait()`,
 * with no event-loop turn between them.
 */
import type { InputSpec } from '../models/card.ts';
import {
  type Frame,
  type InputBuffer,
  type PreprocessOptions,
  prepare,
  preprocess,
} from '../models/preprocess.ts';
import { FormatCode } from '../models/preprocess-plan.ts';
import {
  isNativeAvailable,
  type PreprocessBinding,
  type PreprocessThreadHandle,
  preprocessBinding,
} from './binding.ts';

// Parameter layout shared with native/src/preprocess.h (IntParam, FloatParam).
const ints = new Int32Array(22);
const floats = new Float64Array(11);

function pack(frame: Frame, spec: InputSpec, out: InputBuffer, opts: PreprocessOptions | undefined) {
  const call = prepare(frame, spec, out, opts);
  const { plan, consts: k } = call;
  ints[0] = FormatCode[frame.format];
  ints[1] = frame.width;
  ints[2] = frame.height;
  ints[3] = call.stride;
  ints[4] = call.outKind;
  ints[5] = spec.width;
  ints[6] = spec.height;
  ints[7] = k.outChannels;
  ints[8] = spec.layout === 'NCHW' ? 1 : 0;
  ints[9] = plan.boxX;
  ints[10] = plan.boxY;
  ints[11] = plan.boxW;
  ints[12] = plan.boxH;
  ints[13] = plan.kx;
  ints[14] = plan.ky;
  ints[15] = k.srcChannels;
  ints.set(k.perm, 16);
  ints[19] = k.qZero;
  ints[20] = k.qMin;
  ints[21] = k.qMax;
  floats.set(k.A, 0);
  floats.set(k.B, 3);
  floats.set(k.luma, 6);
  floats[9] = k.padR;
  floats[10] = k.qScale;
  return plan;
}

/**
 * Preprocesses on the libuv thread pool with the native kernel. `frame.data` and `out` must not
 * be transferred or resized until the promise settles.
 * @throws {CascadeError} NATIVE_ERR_UNAVAILABLE when the addon is not built (synchronously).
 * @throws {TypeError|RangeError} as models/preprocess.ts `preprocess` (synchronously).
 */
export function preprocessNative(
  frame: Frame,
  spec: InputSpec,
  out: InputBuffer,
  opts?: PreprocessOptions,
): Promise<void> {
  const b: PreprocessBinding = preprocessBinding();
  const p = pack(frame, spec, out, opts);
  return b.preprocess(frame.data, out, p.xIdx, p.xW, p.yIdx, p.yW, ints, floats);
}

/**
 * The native kernel on the calling thread (benchmarks, batch tools).
 * @throws as {@link preprocessNative}.
 */
export function preprocessNativeSync(
  frame: Frame,
  spec: InputSpec,
  out: InputBuffer,
  opts?: PreprocessOptions,
): void {
  const b = preprocessBinding();
  const p = pack(frame, spec, out, opts);
  b.preprocessSync(frame.data, out, p.xIdx, p.xW, p.yIdx, p.yW, ints, floats);
}

/** Options of {@link NativePreprocessThread}. */
export interface PreprocessThreadOptions {
  /**
   * How long `wait()` spins before it blocks, µs; default 1000. Spinning saves the wake-up
   * (30–300 µs measured in a VM) when the job ends soon; spins yield the core every 5 µs.
   */
  spinUs?: number;
  /**
   * How long the thread spins for the next job before it sleeps, µs; default 500: a frame loop
   * starts the next job within an inference time, and a sleeping thread adds its wake-up.
   */
  idleSpinUs?: number;
}

/**
 * The native kernel on a persistent thread of its own (native/src/preprocess-thread.h): `start()`
 * hands a job over through an atomic (no libuv dispatch, no promise), `wait()` blocks until it is
 * done, spinning first. A frame loop runs start(n+1) → infer(n) → wait() and the caller blocks
 * only for whatever remains of the preprocessing. One job at a time; call {@link close} (or let
 * the object be collected) to stop the thread.
 */
export class NativePreprocessThread {
  readonly #h: PreprocessThreadHandle;
  /** Written by the native wait(): ms start → done, kernel ms, spin hits, blocks. */
  readonly #stats = new Float64Array(4);

  /** True when the built addon has the thread (binaries built before it do not). */
  static available(): boolean {
    return isNativeAvailable() && typeof preprocessBinding().PreprocessThread === 'function';
  }

  /**
   * @throws {CascadeError} NATIVE_ERR_UNAVAILABLE when the addon is not built.
   * @throws {Error} when the addon predates the thread, or the thread cannot be started.
   * @throws {RangeError} for spins outside 0–1,000,000 µs.
   */
  constructor(opts: PreprocessThreadOptions = {}) {
    const Ctor = preprocessBinding().PreprocessThread;
    if (typeof Ctor !== 'function') {
      throw new Error(
        'native preprocessing kernel predates PreprocessThread: rebuild it (npm run build:native)',
      );
    }
    const spin = opts.spinUs ?? 1000;
    const idle = opts.idleSpinUs ?? 500;
    for (const [name, v] of [
      ['spinUs', spin],
      ['idleSpinUs', idle],
    ] as const) {
      if (!Number.isFinite(v) || v < 0 || v > 1e6) {
        throw new RangeError(`NativePreprocessThread: ${name} must be 0-1000000, received ${v}`);
      }
    }
    this.#h = new Ctor(Math.round(spin * 1000), Math.round(idle * 1000), this.#stats);
  }

  /**
   * Hands `frame` → `out` to the thread and returns at once. `frame.data` and `out` must stay
   * untouched until {@link wait} returns.
   * @throws {TypeError|RangeError} as models/preprocess.ts `preprocess` (nothing is started).
   * @throws {Error} while a job runs or after {@link close}.
   */
  start(frame: Frame, spec: InputSpec, out: InputBuffer, opts?: PreprocessOptions): void {
    const p = pack(frame, spec, out, opts);
    this.#h.start(frame.data, out, p.xIdx, p.xW, p.yIdx, p.yW, ints, floats);
  }

  /**
   * Blocks until the started job is done.
   * @returns milliseconds from {@link start} to the thread finishing the job.
   * @throws {Error} when no job was started, or the kernel failed.
   */
  wait(): number {
    this.#h.wait();
    return this.#stats[0];
  }

  /** True between {@link start} and {@link wait}. */
  get busy(): boolean {
    return this.#h.busy;
  }

  /** The kernel's own time in the last job waited for (ms). */
  get lastRunMs(): number {
    return this.#stats[1];
  }

  /** `wait()` calls that found the job done while spinning, and those that blocked. */
  get counters(): { spinHits: number; blocks: number } {
    return { spinHits: this.#stats[2], blocks: this.#stats[3] };
  }

  /** Waits for a running job, then stops and joins the thread. Safe to call twice. */
  close(): void {
    this.#h.close();
  }
}

/** 'native' when the addon is loaded, else 'typescript'. */
export function preprocessBackend(): 'native' | 'typescript' {
  return isNativeAvailable() ? 'native' : 'typescript';
}

/**
 * Preprocesses with the native kernel off the main thread when it is built, else with the
 * TypeScript reference (on the calling thread); both give identical outputs. Argument errors
 * reject the promise.
 * @throws {TypeError|RangeError} (as a rejection) for bad arguments; see models/preprocess.ts.
 */
export async function preprocessAsync(
  frame: Frame,
  spec: InputSpec,
  out: InputBuffer,
  opts?: PreprocessOptions,
): Promise<void> {
  if (isNativeAvailable()) await preprocessNative(frame, spec, out, opts);
  else preprocess(frame, spec, out, opts);
}
