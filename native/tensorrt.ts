/**
 * TensorRT engine through the native binding (native/tensorrt/), as an {@link InferenceEngine}:
 * builds an engine from the card's QDQ ONNX file ('qdq-trt' form: explicit INT8, FP16 fallback on
 * TensorRT 10), caches the serialized engine on disk keyed by model sha256 + GPU name + TensorRT
 * version + build options, and runs batches on several execution contexts (one CUDA stream,
 * optimization profile and pinned buffers each), chunks of one batch in parallel.
 *
 * Built only where TensorRT and CUDA were found at install time; {@link tensorRtUnavailableReason}
 * says why it cannot run otherwise. Not exercised on a GPU in this repository's CI.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { CascadeError, type ErrorCode, ErrorCodes } from '../cascade/errors.ts';
import { type InputSpec, type ModelCard, parseModelCard } from '../models/card.ts';
import type { InferenceEngine } from '../models/engines.ts';
import { loadTensorRtBinding, type TensorRtBinding, type TensorRtEngineHandle } from './binding.ts';

/** Options of {@link TensorRtEngine.load}. */
export interface TensorRtOptions {
  /** CUDA device index; default 0. */
  device?: number;
  /** Where serialized engines are cached; default ~/.cache/edge-cascade/tensorrt. */
  cacheDir?: string;
  /** Card file or form to build from; default the 'qdq-trt' file, else the card's first. */
  file?: string;
  /** Optimization profile: batches 1..maxBatch, tuned for optBatch; defaults 64 and min(8, maxBatch). */
  maxBatch?: number;
  optBatch?: number;
  /** Execution contexts (concurrent batches); default 2. */
  contexts?: number;
  /** Builder workspace; default 256 MiB. */
  workspaceBytes?: number;
  /** INT8 from the graph's Q/DQ nodes; default true. FP16 fallback elsewhere; default true. */
  int8?: boolean;
  fp16?: boolean;
}

/** Null when the binding is built and a CUDA device is visible, else the reason it cannot run. */
export function tensorRtUnavailableReason(): string | null {
  const r = loadTensorRtBinding();
  if (!r.binding) {
    return (
      `TensorRT binding not built (${r.failures.join('; ')}); it needs TensorRT 10+ and CUDA when ` +
      'building: TENSORRT_ROOT=/path/to/tensorrt npm run build:native'
    );
  }
  if (r.binding.deviceCount() === 0) return 'no CUDA device visible (no GPU, or no driver in this container)';
  return null;
}

function posInt(name: string, v: number | undefined, dflt: number): number {
  const x = v ?? dflt;
  if (!Number.isInteger(x) || x < 1)
    throw new RangeError(`TensorRtEngine: ${name}: expected a positive integer, received ${v}`);
  return x;
}

function nativeError(err: unknown): unknown {
  const code = (err as { code?: string } | null)?.code;
  if (code === ErrorCodes.NATIVE_ERR_TRT_BUILD || code === ErrorCodes.NATIVE_ERR_TRT_RUNTIME) {
    return new CascadeError(code as ErrorCode, (err as Error).message, { cause: err });
  }
  return err;
}

/** A TensorRT engine for one model card. Create with {@link TensorRtEngine.load}. */
export class TensorRtEngine implements InferenceEngine {
  readonly backend = 'tensorrt-native';
  #handle: TensorRtEngineHandle | null;
  #free: number[];
  #waiters: ((ctx: number) => void)[] = [];

  private constructor(
    readonly card: ModelCard,
    readonly file: string,
    /** Serialized engine file used (read or written). */
    readonly enginePath: string,
    handle: TensorRtEngineHandle,
  ) {
    this.#handle = handle;
    this.#free = Array.from({ length: handle.contexts }, (_, i) => i);
  }

  /**
   * Builds or loads the engine for a model card.
   * @throws {CascadeError} NATIVE_ERR_UNAVAILABLE without the binding or a GPU; MODEL_ERR_INVALID
   *   for a bad card or a model file whose size/sha256 differ from it, or an output that is not
   *   `classes` wide; NATIVE_ERR_TRT_BUILD when TensorRT cannot parse or build it.
   * @throws {RangeError} for non-positive-integer options.
   */
  static async load(cardPath: string, opts: TensorRtOptions = {}): Promise<TensorRtEngine> {
    const device = opts.device ?? 0;
    if (!Number.isInteger(device) || device < 0)
      throw new RangeError(`TensorRtEngine: device: expected an integer >= 0, received ${device}`);
    const maxBatch = posInt('maxBatch', opts.maxBatch, 64);
    const optBatch = posInt('optBatch', opts.optBatch, Math.min(8, maxBatch));
    const contexts = posInt('contexts', opts.contexts, 2);
    const workspaceBytes = posInt('workspaceBytes', opts.workspaceBytes, 256 << 20);
    if (optBatch > maxBatch)
      throw new RangeError(`TensorRtEngine: optBatch ${optBatch} > maxBatch ${maxBatch}`);
    const why = tensorRtUnavailableReason();
    if (why) throw new CascadeError(ErrorCodes.NATIVE_ERR_UNAVAILABLE, `TensorRT engine unavailable: ${why}`);
    const binding = loadTensorRtBinding().binding as TensorRtBinding;

    const absCard = resolve(cardPath);
    let card: ModelCard;
    try {
      card = parseModelCard(JSON.parse(await readFile(absCard, 'utf8')), absCard);
    } catch (err) {
      if (err instanceof CascadeError) throw err;
      throw new CascadeError(ErrorCodes.MODEL_ERR_INVALID, `${absCard}: cannot read model card`, {
        cause: err,
      });
    }
    const want = opts.file ?? 'qdq-trt';
    const artifact =
      card.files.find((f) => f.file === want || f.form === want) ?? (opts.file ? undefined : card.files[0]);
    if (!artifact)
      throw new CascadeError(ErrorCodes.MODEL_ERR_INVALID, `${absCard}: no file or form "${want}"`);
    const modelPath = resolve(dirname(absCard), artifact.file);
    const onnx = await readFile(modelPath).catch((err: unknown) => {
      throw new CascadeError(ErrorCodes.MODEL_ERR_INVALID, `${modelPath}: cannot read model file`, {
        cause: err,
      });
    });
    const sha = createHash('sha256').update(onnx).digest('hex');
    if (onnx.length !== artifact.bytes || sha !== artifact.sha256) {
      throw new CascadeError(
        ErrorCodes.MODEL_ERR_INVALID,
        `${modelPath}: size or sha256 differs from its card ${absCard}`,
      );
    }

    const spec: InputSpec = card.input;
    const c = spec.colour === 'gray' ? 1 : 3;
    const sampleDims = spec.layout === 'NCHW' ? [c, spec.height, spec.width] : [spec.height, spec.width, c];
    const int8 = opts.int8 ?? true;
    const fp16 = opts.fp16 ?? true;
    const gpu = binding.deviceName(device);
    // Engines are specific to the GPU model and TensorRT version, and to the build options.
    const build = `b1-${optBatch}-${maxBatch}.c${contexts}.${int8 ? 'i8' : ''}${fp16 ? 'f16' : ''}`;
    const slug = gpu.replace(/[^A-Za-z0-9]+/g, '_');
    const cacheDir = opts.cacheDir ?? join(homedir(), '.cache', 'edge-cascade', 'tensorrt');
    await mkdir(cacheDir, { recursive: true });
    const enginePath = join(cacheDir, `${sha}.${slug}.trt${binding.tensorrtVersion}.${build}.engine`);
    let handle: TensorRtEngineHandle;
    try {
      handle = await binding.loadEngine({
        onnx,
        cachePath: enginePath,
        device,
        int8,
        fp16,
        inputName: spec.name,
        outputName: card.output.name,
        sampleDims,
        minBatch: 1,
        optBatch,
        maxBatch,
        contexts,
        workspaceBytes,
      });
    } catch (err) {
      throw nativeError(err);
    }
    if (handle.outputSize !== card.output.classes) {
      handle.dispose();
      throw new CascadeError(
        ErrorCodes.MODEL_ERR_INVALID,
        `${modelPath}: engine output has ${handle.outputSize} values per sample, card says ${card.output.classes}`,
      );
    }
    return new TensorRtEngine(card, artifact.file, enginePath, handle);
  }

  get input(): InputSpec {
    return this.card.input;
  }

  get classes(): number {
    return this.card.output.classes;
  }

  /** Precision the engine was built with, or 'as cached'. */
  get precision(): string {
    return this.#handle?.precision ?? 'disposed';
  }

  async #acquire(): Promise<number> {
    const ctx = this.#free.pop();
    if (ctx !== undefined) return ctx;
    return new Promise((res) => this.#waiters.push(res));
  }

  #release(ctx: number): void {
    const next = this.#waiters.shift();
    if (next) next(ctx);
    else this.#free.push(ctx);
  }

  /**
   * Runs a batch: chunks of up to maxBatch samples, spread over the execution contexts.
   * @throws {RangeError} on a batch of the wrong length.
   * @throws {CascadeError} NATIVE_ERR_TRT_RUNTIME on CUDA or enqueue failures, or after dispose().
   */
  async logits(batch: Float32Array, n: number): Promise<Float32Array> {
    const handle = this.#handle;
    if (!handle)
      throw new CascadeError(
        ErrorCodes.NATIVE_ERR_TRT_RUNTIME,
        `${this.card.name}: engine used after dispose()`,
      );
    const per = handle.sampleSize;
    if (!Number.isInteger(n) || n < 0 || batch.length !== n * per) {
      throw new RangeError(`${this.card.name}: batch of ${batch.length} floats is not ${n} × ${per}`);
    }
    const classes = this.classes;
    const out = new Float32Array(n * classes);
    const chunks: Promise<void>[] = [];
    for (let start = 0; start < n; start += handle.maxBatch) {
      const m = Math.min(handle.maxBatch, n - start);
      chunks.push(
        (async () => {
          const ctx = await this.#acquire();
          try {
            await handle.run(
              ctx,
              batch.subarray(start * per, (start + m) * per),
              m,
              out.subarray(start * classes, (start + m) * classes),
            );
          } catch (err) {
            throw nativeError(err);
          } finally {
            this.#release(ctx);
          }
        })(),
      );
    }
    await Promise.all(chunks);
    return out;
  }

  /** Releases the engine (in-flight runs finish first, natively). Safe to call more than once. */
  async dispose(): Promise<void> {
    const handle = this.#handle;
    this.#handle = null;
    handle?.dispose();
  }
}
