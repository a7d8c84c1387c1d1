/**
 * The serving engine of the gateway and the cloud: a card-driven classifier that runs batches of
 * preprocessed tensors and returns calibrated probabilities. The model runs on the best backend
 * of models/engines.ts (native TensorRT → ORT TensorRT EP → CUDA EP → CPU EP, the choice logged)
 * and, by default, in a worker thread: onnxruntime-node runs a session synchronously on the
 * calling thread, so on the main thread every batch would stall MQTT and HTTP I/O for its whole
 * run; in a worker, I/O and inference overlap on two cores.
 */

import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { type InputSpec, type ModelCard, parseModelCard } from '../../models/card.ts';
import { defaultEngineRegistry, type EngineLogger, type InferenceEngine } from '../../models/engines.ts';
import { channelsOf, inputLength, preprocess } from '../../models/preprocess.ts';
import { softmaxT, topK } from '../calibration.ts';
import { CascadeError, ErrorCodes } from '../errors.ts';

/** Calibrated probabilities of a batch. */
export interface ScoredBatch {
  /** n × classes temperature-scaled softmax probabilities, row-major. */
  probs: Float32Array;
  n: number;
  classes: number;
}

/** What the services need of an inference engine. */
export interface ServingEngine {
  readonly card: ModelCard;
  /** Backend that runs the model, e.g. `ort-cpu`, and where (`worker` or `main` thread). */
  readonly backend: string;
  readonly thread: 'worker' | 'main';
  /** Bytes of one image at the card's size (height × width × channels). */
  readonly imageBytes: number;
  /** Floats of one preprocessed input (the card's tensor). */
  readonly tensorFloats: number;
  /** Turns n images (HWC uint8 at the card's size, gray or RGB per the card) into its input tensor. */
  preprocess(pixels: Uint8Array, n: number): Float32Array;
  /** {@link ServingEngine.preprocess} into `out` (n × tensorFloats), e.g. a slice of a batch buffer. */
  preprocessInto(pixels: Uint8Array, n: number, out: Float32Array): void;
  /** Runs n images, concatenated HWC uint8 at the card's size. */
  runPixels(pixels: Uint8Array, n: number): Promise<ScoredBatch>;
  /**
   * Runs n preprocessed inputs in the card's layout. The worker engine takes ownership of
   * `batch`'s buffer (transferred): do not use it afterwards.
   */
  runTensor(batch: Float32Array, n: number): Promise<ScoredBatch>;
  /** Releases the backend. Safe to call twice. */
  dispose(): Promise<void>;
}

/** Options of {@link loadServingEngine}. */
export interface EngineOptions {
  /** Run the model in a worker thread (default) or on the main thread. */
  thread?: 'worker' | 'main';
  /** Backends to try, in order (names of models/engines.ts); default the registry's priority. */
  engines?: string[];
  /** ONNX Runtime intra-op threads; default 1. */
  intraOpThreads?: number;
  /** Worker threads, each with its own session (batches run in parallel); default 1. */
  workers?: number;
  /** Largest batch (GPU engines are built for it). */
  maxBatch?: number;
  logger?: EngineLogger;
}

/** What the worker is started with. */
export interface EngineWorkerData {
  cardPath: string;
  engines?: string[];
  intraOpThreads: number;
  maxBatch?: number;
}

/** Messages main → worker. */
export type ToWorker = { type: 'run'; id: number; batch: Float32Array; n: number } | { type: 'dispose' };

/** Messages worker → main. */
export type FromWorker =
  | { type: 'ready'; backend: string; file: string; skipped: { backend: string; reason: string }[] }
  | { type: 'result'; id: number; logits: Float32Array }
  | { type: 'error'; id: number; message: string }
  | { type: 'fatal'; message: string; code?: string };

const WORKER_BOOT = fileURLToPath(new URL('./engine-worker-boot.mjs', import.meta.url));

/**
 * A preprocessing of gray images already at the input's size, as a table of its 256 possible
 * results, when it is pointwise (each output value depends on its own pixel only: no resampling,
 * crop or padding); undefined otherwise, or for colour inputs. The table is read off `reference`
 * itself and checked against it on frames that hold every value at many positions, so a lookup
 * gives bit for bit what the reference gives. Served images arrive at the card's size, and the
 * general resampler costs ~10 µs per 28×28 image where the lookup costs ~2 µs.
 * @param reference preprocesses one image (height × width bytes) into `out` (the input's floats).
 */
export function pointwiseTable(
  input: InputSpec,
  reference: (pixels: Uint8Array, out: Float32Array) => void,
): Float32Array | undefined {
  const px = input.height * input.width;
  if (channelsOf(input) !== 1 || inputLength(input) !== px) return undefined;
  const table = new Float32Array(256).fill(Number.NaN);
  const frame = new Uint8Array(px);
  const out = new Float32Array(px);
  const check = (value: (i: number) => number): boolean => {
    for (let i = 0; i < px; i++) frame[i] = value(i);
    reference(frame, out);
    for (let i = 0; i < px; i++) {
      const v = frame[i];
      if (Number.isNaN(table[v])) table[v] = out[i];
      else if (!Object.is(table[v], out[i])) return false;
    }
    return true;
  };
  // Frames covering all 256 values, then a permuted pattern: every value at other positions.
  for (let k = 0; k * px < 256; k++) if (!check((i) => (k * px + i) % 256)) return undefined;
  if (!check((i) => (i * 37 + 11) % 256) || !check((i) => (255 - ((i * 101) % 256)) % 256)) return undefined;
  return table.some(Number.isNaN) ? undefined : table;
}

abstract class BaseEngine implements ServingEngine {
  abstract readonly backend: string;
  abstract readonly thread: 'worker' | 'main';
  readonly imageBytes: number;
  readonly tensorFloats: number;
  readonly #format: 'gray' | 'rgb';
  readonly #table: Float32Array | undefined;

  constructor(readonly card: ModelCard) {
    const c = channelsOf(card.input);
    this.imageBytes = card.input.height * card.input.width * c;
    this.tensorFloats = inputLength(card.input);
    this.#format = c === 1 ? 'gray' : 'rgb';
    this.#table = pointwiseTable(card.input, (pixels, out) => this.#reference(pixels, out));
  }

  #reference(pixels: Uint8Array, out: Float32Array): void {
    const { width, height } = this.card.input;
    preprocess({ data: pixels, width, height, format: this.#format }, this.card.input, out);
  }

  preprocess(pixels: Uint8Array, n: number): Float32Array {
    if (!Number.isInteger(n) || n < 0 || pixels.length !== n * this.imageBytes)
      throw new RangeError(
        `${this.card.name}: ${pixels.length} bytes is not ${n} image(s) of ${this.imageBytes}`,
      );
    const out = new Float32Array(n * this.tensorFloats);
    this.preprocessInto(pixels, n, out);
    return out;
  }

  /**
   * {@link preprocess} into `out` (n × tensorFloats values, e.g. a batch buffer's slice).
   * @throws {RangeError} when `pixels` is not n images or `out` is not n tensors.
   */
  preprocessInto(pixels: Uint8Array, n: number, out: Float32Array): void {
    if (!Number.isInteger(n) || n < 0 || pixels.length !== n * this.imageBytes)
      throw new RangeError(
        `${this.card.name}: ${pixels.length} bytes is not ${n} image(s) of ${this.imageBytes}`,
      );
    if (out.length !== n * this.tensorFloats)
      throw new RangeError(`${this.card.name}: output of ${out.length} floats is not ${n} tensor(s)`);
    const table = this.#table;
    if (table !== undefined) {
      for (let i = 0; i < pixels.length; i++) out[i] = table[pixels[i]];
      return;
    }
    for (let i = 0; i < n; i++)
      this.#reference(
        pixels.subarray(i * this.imageBytes, (i + 1) * this.imageBytes),
        out.subarray(i * this.tensorFloats, (i + 1) * this.tensorFloats),
      );
  }

  runPixels(pixels: Uint8Array, n: number): Promise<ScoredBatch> {
    return this.runTensor(this.preprocess(pixels, n), n);
  }

  async runTensor(batch: Float32Array, n: number): Promise<ScoredBatch> {
    if (!Number.isInteger(n) || n < 0 || batch.length !== n * this.tensorFloats)
      throw new RangeError(
        `${this.card.name}: batch of ${batch.length} floats is not ${n} × ${this.tensorFloats}`,
      );
    const logits = await this.logits(batch, n);
    const classes = this.card.output.classes;
    return { probs: softmaxT(logits, classes, this.card.temperature), n, classes };
  }

  protected abstract logits(batch: Float32Array, n: number): Promise<Float32Array>;
  abstract dispose(): Promise<void>;
}

class MainThreadEngine extends BaseEngine {
  readonly thread = 'main' as const;
  readonly backend: string;
  readonly #engine: InferenceEngine;

  constructor(engine: InferenceEngine) {
    super(engine.card);
    this.#engine = engine;
    this.backend = engine.backend;
  }

  protected logits(batch: Float32Array, n: number): Promise<Float32Array> {
    return this.#engine.logits(batch, n);
  }

  dispose(): Promise<void> {
    return this.#engine.dispose();
  }
}

interface Slot {
  worker: Worker;
  pending: Map<number, { resolve: (l: Float32Array) => void; reject: (e: Error) => void }>;
  dead: Error | undefined;
}

class WorkerEngine extends BaseEngine {
  readonly thread = 'worker' as const;
  readonly backend: string;
  readonly #slots: Slot[];
  #next = 0;
  #disposed: Promise<void> | undefined;

  constructor(card: ModelCard, workers: Worker[], backend: string) {
    super(card);
    this.backend = backend;
    this.#slots = workers.map((worker) => {
      const slot: Slot = { worker, pending: new Map(), dead: undefined };
      worker.on('message', (m: FromWorker) => {
        if (m.type !== 'result' && m.type !== 'error') return;
        const p = slot.pending.get(m.id);
        slot.pending.delete(m.id);
        if (m.type === 'result') p?.resolve(m.logits);
        else p?.reject(new Error(m.message));
      });
      const die = (err: Error): void => {
        slot.dead ??= err;
        for (const p of slot.pending.values()) p.reject(err);
        slot.pending.clear();
      };
      worker.on('error', die);
      worker.on('exit', (code) => die(new Error(`engine worker exited (code ${code})`)));
      return slot;
    });
  }

  protected logits(batch: Float32Array, n: number): Promise<Float32Array> {
    // The live worker with the least work queued.
    let slot: Slot | undefined;
    for (const s of this.#slots) if (!s.dead && (!slot || s.pending.size < slot.pending.size)) slot = s;
    if (!slot) return Promise.reject(this.#slots[0]?.dead ?? new Error('no engine worker'));
    const id = this.#next++;
    // A view into a larger buffer cannot be transferred alone: copy it out first.
    const own =
      batch.byteOffset === 0 && batch.byteLength === batch.buffer.byteLength ? batch : batch.slice();
    const target = slot;
    return new Promise((resolve, reject) => {
      target.pending.set(id, { resolve, reject });
      const msg: ToWorker = { type: 'run', id, batch: own, n };
      target.worker.postMessage(msg, [own.buffer as ArrayBuffer]);
    });
  }

  dispose(): Promise<void> {
    this.#disposed ??= Promise.all(
      this.#slots.map(async (s) => {
        s.dead ??= new Error('engine disposed');
        const exited = new Promise<void>((resolve) => s.worker.once('exit', () => resolve()));
        s.worker.postMessage({ type: 'dispose' } satisfies ToWorker);
        const timer = setTimeout(() => void s.worker.terminate(), 2000);
        await exited;
        clearTimeout(timer);
      }),
    ).then(() => undefined);
    return this.#disposed;
  }
}

/** Starts one engine worker and waits for its model to load. */
async function startWorker(
  data: EngineWorkerData,
): Promise<{ worker: Worker; ready: Extract<FromWorker, { type: 'ready' }> }> {
  const worker = new Worker(WORKER_BOOT, { workerData: data });
  try {
    let onMessage: (m: FromWorker) => void = () => {};
    let onError: (err: Error) => void = () => {};
    let onExit: (code: number) => void = () => {};
    const ready = await new Promise<Extract<FromWorker, { type: 'ready' }>>((resolve, reject) => {
      onMessage = (m) => {
        if (m.type === 'ready') resolve(m);
        else if (m.type === 'fatal') {
          const code =
            m.code && m.code in ErrorCodes ? (m.code as keyof typeof ErrorCodes) : 'ENGINE_ERR_UNAVAILABLE';
          reject(new CascadeError(ErrorCodes[code], m.message));
        }
      };
      onError = reject;
      onExit = (code) => reject(new Error(`engine worker exited during start-up (code ${code})`));
      worker.on('message', onMessage);
      worker.on('error', onError);
      worker.on('exit', onExit);
    }).finally(() => {
      // Only ours: Worker keeps internal listeners that start and stop its message port.
      worker.off('message', onMessage);
      worker.off('error', onError);
      worker.off('exit', onExit);
    });
    return { worker, ready };
  } catch (err) {
    await worker.terminate();
    throw err;
  }
}

async function readCard(cardPath: string): Promise<ModelCard> {
  try {
    return parseModelCard(JSON.parse(await readFile(cardPath, 'utf8')), cardPath);
  } catch (err) {
    if (err instanceof CascadeError) throw err;
    throw new CascadeError(ErrorCodes.MODEL_ERR_INVALID, `${cardPath}: cannot read model card`, {
      cause: err,
    });
  }
}

/**
 * Loads the model of a card on the best backend that works here, in a worker thread by default.
 * @throws {CascadeError} MODEL_ERR_INVALID for an unreadable card; ENGINE_ERR_UNAVAILABLE listing
 *   every backend and why it could not load the model.
 */
export async function loadServingEngine(cardPath: string, opts: EngineOptions = {}): Promise<ServingEngine> {
  const intraOpThreads = opts.intraOpThreads ?? 1;
  if ((opts.thread ?? 'worker') === 'main') {
    const { engine } = await defaultEngineRegistry().select(cardPath, {
      only: opts.engines,
      intraOpThreads,
      maxBatch: opts.maxBatch,
      logger: opts.logger,
    });
    return new MainThreadEngine(engine);
  }
  const card = await readCard(cardPath);
  const data: EngineWorkerData = { cardPath, engines: opts.engines, intraOpThreads, maxBatch: opts.maxBatch };
  const started = await Promise.all(Array.from({ length: opts.workers ?? 1 }, () => startWorker(data)));
  const { ready } = started[0];
  for (const s of ready.skipped) opts.logger?.warn(s, `inference engine ${s.backend} skipped: ${s.reason}`);
  opts.logger?.info(
    { backend: ready.backend, file: ready.file, thread: 'worker', workers: started.length },
    `inference engine: ${ready.backend} (${ready.file}) in ${started.length} worker thread(s)`,
  );
  return new WorkerEngine(
    card,
    started.map((s) => s.worker),
    ready.backend,
  );
}

/** One ranked class. */
export interface RankedClass {
  label: number;
  prob: number;
}

/** The top-k classes of row `i` of a scored batch, most probable first. */
export function topClasses(s: ScoredBatch, i: number, k: number): RankedClass[] {
  return topK(s.probs, k, i * s.classes, s.classes).map((r) => ({ label: r.index, prob: r.value }));
}

/** Row `i` of a scored batch (a copy). */
export function rowOf(s: ScoredBatch, i: number): Float32Array {
  return s.probs.slice(i * s.classes, (i + 1) * s.classes);
}
