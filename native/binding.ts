/**
 * The one place that loads native addons (onnxruntime's binding.ts pattern): it declares their
 * surface as TypeScript interfaces, tries each candidate binary, gathers every failure, and
 * explains in one message what is missing and how to fix it (sharp's loader). Nothing else in
 * the project requires a `.node` file.
 *
 * Candidates, first found wins:
 * - `CASCADE_NATIVE_PATH` (preprocessing) / `CASCADE_TENSORRT_PATH` (TensorRT): when set, only
 *   that file is tried, so a sanitizer or debug build is never silently replaced by the default;
 * - native/build/{Release,RelWithDebInfo,Debug}/<name>.node, as built by `npm install` or
 *   `npm run build:native`.
 *
 * Like sharp's and onnxruntime's loaders, this module reads its environment variables itself:
 * the binary has to be chosen before any entry point could pass one in.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);

/**
 * The kernel's arguments, in order: source pixels, output tensor, the resampling tables (x and y
 * source indices and weights) and the packed integer and float parameters (native/preprocess.ts).
 */
export type KernelJob = [
  src: Uint8Array,
  out: Float32Array | Uint8Array | Int8Array,
  xIdx: Int32Array,
  xW: Int32Array,
  yIdx: Int32Array,
  yW: Int32Array,
  ints: Int32Array,
  floats: Float64Array,
];

/** Surface of cascade_native.node (native/src/addon.cc). */
export interface PreprocessBinding {
  /** [sync] Runs the kernel on the calling thread. @throws {TypeError|RangeError} code NATIVE_ERR_INVALID_ARG. */
  preprocessSync(...job: KernelJob): void;
  /** [async] Same, on the libuv thread pool; the buffers must not be transferred until it settles. */
  preprocess(...job: KernelJob): Promise<void>;
  /**
   * A persistent preprocessing thread with a synchronous hand-off (native/src/preprocess-thread.h).
   * Absent from binaries built before it existed: callers fall back to {@link preprocess}.
   * @param spinNs how long `wait()` spins before it blocks (0–1e9).
   * @param idleSpinNs how long the thread spins for the next job before it sleeps (0–1e9).
   * @param stats where `wait()` reports (see {@link PreprocessThreadHandle.wait}); ≥ 4 elements.
   * @throws {RangeError|TypeError} code NATIVE_ERR_INVALID_ARG for spins outside 0–1e9 or bad stats.
   */
  readonly PreprocessThread?: new (
    spinNs: number,
    idleSpinNs: number,
    stats: Float64Array,
  ) => PreprocessThreadHandle;
  readonly info: { napiVersion: number; sanitizers: string; intParams: number; floatParams: number };
}

/** One persistent preprocessing thread; one job at a time, driven by one JS thread. */
export interface PreprocessThreadHandle {
  /**
   * [sync] Validates like `preprocessSync` and hands the job to the thread; returns at once. The
   * buffers must not be transferred or resized until `wait()` returns.
   * @throws {TypeError|RangeError} code NATIVE_ERR_INVALID_ARG for a bad job (nothing started).
   * @throws {Error} while a job runs, or after `close()`.
   */
  start(...job: KernelJob): void;
  /**
   * [sync] Blocks the calling thread until the job is done (spinning first), then writes the
   * constructor's stats array (no return value: a returned double would be a heap allocation per
   * frame): [0] ms from `start()` to the thread finishing the job, [1] the kernel's own ms, [2]
   * waits that found the job done while spinning, [3] waits that had to block.
   * @throws {Error} when no job was started, or the kernel failed (the job is over either way).
   */
  wait(): void;
  /** [sync] Waits for a running job, then stops and joins the thread. Idempotent. */
  close(): void;
  /** True between `start()` and `wait()`. */
  readonly busy: boolean;
}

/** Outcome of loading one addon: the binding, where it came from, or why not. */
export interface LoadResult<T> {
  binding: T | null;
  /** The file loaded. */
  path: string | null;
  /** One line per candidate that failed (empty when the first candidate loaded). */
  failures: string[];
}

const BUILD_CONFIGS = ['Release', 'RelWithDebInfo', 'Debug'];

function firstLine(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0];
}

function load<T>(name: string, envVar: string, check: (b: unknown) => b is T): LoadResult<T> {
  const override = process.env[envVar];
  const candidates = override
    ? [resolve(override)]
    : BUILD_CONFIGS.map((c) => join(here, 'build', c, `${name}.node`));
  const failures: string[] = [];
  for (const file of candidates) {
    if (!existsSync(file)) {
      failures.push(`${file}: not found${override ? ` (from ${envVar})` : ''}`);
      continue;
    }
    try {
      const b: unknown = require(file);
      if (check(b)) return { binding: b, path: file, failures };
      failures.push(
        `${file}: loaded, but it is not a compatible ${name} (rebuild with npm run build:native)`,
      );
    } catch (err) {
      const why = firstLine(err);
      const hint = /undefined symbol: __(asan|ubsan)/.test(why)
        ? ' (a sanitizer build: preload libasan, see npm run test:native-asan)'
        : '';
      failures.push(`${file}: ${why}${hint}`);
    }
  }
  return { binding: null, path: null, failures };
}

function isPreprocessBinding(b: unknown): b is PreprocessBinding {
  const o = b as Partial<PreprocessBinding> | null;
  return (
    typeof o?.preprocess === 'function' &&
    typeof o.preprocessSync === 'function' &&
    o.info?.intParams === 22 &&
    o.info.floatParams === 11
  );
}

let preprocessResult: LoadResult<PreprocessBinding> | undefined;

/** Loads cascade_native.node once; later calls return the same result. Never throws. */
export function loadPreprocessBinding(): LoadResult<PreprocessBinding> {
  preprocessResult ??= load('cascade_native', 'CASCADE_NATIVE_PATH', isPreprocessBinding);
  return preprocessResult;
}

/** True when the native preprocessing kernel is built and loads. */
export function isNativeAvailable(): boolean {
  return loadPreprocessBinding().binding !== null;
}

/**
 * The native preprocessing binding.
 * @throws {CascadeError} NATIVE_ERR_UNAVAILABLE listing every candidate tried and the fixes.
 */
export function preprocessBinding(): PreprocessBinding {
  const r = loadPreprocessBinding();
  if (r.binding) return r.binding;
  throw new CascadeError(
    ErrorCodes.NATIVE_ERR_UNAVAILABLE,
    `native preprocessing kernel unavailable: ${r.failures.join('; ')}. ` +
      'Build it with `npm run build:native` (needs cmake and a C++17 compiler), ' +
      'or set CASCADE_NATIVE_PATH to a built cascade_native.node',
  );
}

/** Surface of cascade_tensorrt.node (native/tensorrt/); see native/tensorrt.ts for the contract. */
export interface TensorRtBinding {
  /** TensorRT version the binding was built against, e.g. "10.7.0". */
  readonly tensorrtVersion: string;
  /** [sync] CUDA devices visible; 0 when no GPU or driver. */
  deviceCount(): number;
  /** [sync] Name of device `index`. */
  deviceName(index: number): string;
  /**
   * [async] Builds (or loads from `cachePath` when present and valid) a serialized engine from
   * ONNX bytes. Resolves to an opaque engine handle.
   */
  loadEngine(options: TensorRtEngineOptions): Promise<TensorRtEngineHandle>;
}

/** Options of {@link TensorRtBinding.loadEngine}; validated in native/tensorrt.ts. */
export interface TensorRtEngineOptions {
  onnx: Uint8Array;
  /** Serialized engine cache file; written after a build, read when it exists. */
  cachePath: string;
  device: number;
  /** Enable INT8 (explicit quantization from the QDQ graph) and FP16 fallback. */
  int8: boolean;
  fp16: boolean;
  inputName: string;
  outputName: string;
  /** Per-sample input dims (C, H, W or H, W, C); the batch dimension is dynamic. */
  sampleDims: number[];
  /** Optimization profile batch sizes. */
  minBatch: number;
  optBatch: number;
  maxBatch: number;
  /** Execution contexts (each with its own CUDA stream and pinned buffers). */
  contexts: number;
  workspaceBytes: number;
}

/** A loaded engine (native/tensorrt/binding.cc EngineWrap). */
export interface TensorRtEngineHandle {
  /**
   * [async] Runs n samples on execution context `ctx` (0 ≤ ctx < contexts, one run per context at
   * a time): copies `input` (n × sampleSize) through pinned memory to the GPU, enqueues on the
   * context's stream, copies `output` (n × outputSize) back.
   */
  run(ctx: number, input: Float32Array, n: number, output: Float32Array): Promise<void>;
  /** [sync] Releases the engine once in-flight runs complete; idempotent. */
  dispose(): void;
  readonly outputSize: number;
  readonly sampleSize: number;
  readonly contexts: number;
  readonly minBatch: number;
  readonly maxBatch: number;
  /** True when the engine came from the cache file rather than a build. */
  readonly fromCache: boolean;
  /** e.g. "int8 (explicit Q/DQ) + fp16 fallback", or "as cached". */
  readonly precision: string;
}

function isTensorRtBinding(b: unknown): b is TensorRtBinding {
  const o = b as Partial<TensorRtBinding> | null;
  return typeof o?.loadEngine === 'function' && typeof o.deviceCount === 'function';
}

let tensorRtResult: LoadResult<TensorRtBinding> | undefined;

/** Loads cascade_tensorrt.node once (built only where TensorRT and CUDA were found). Never throws. */
export function loadTensorRtBinding(): LoadResult<TensorRtBinding> {
  tensorRtResult ??= load('cascade_tensorrt', 'CASCADE_TENSORRT_PATH', isTensorRtBinding);
  return tensorRtResult;
}
