/**
 * Inference engines behind one interface, chosen at start-up from a registry by priority
 * (onnxruntime-common's backend registry): native TensorRT binding → ONNX Runtime TensorRT EP →
 * CUDA EP → CPU EP. Each backend is probed lazily, at most once per registry; a backend that
 * cannot run here or fails to load the model is skipped, every failure is collected and logged
 * with its reason, and the choice is logged. A test backend is just another registration.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import { type InputSpec, type ModelCard, parseModelCard } from './card.ts';
import { OnnxClassifier } from './runtime.ts';

/** What every engine offers (OnnxClassifier's shape, plus the backend's name). */
export interface InferenceEngine {
  /** Registry name of the backend that made it, e.g. 'ort-cpu'. */
  readonly backend: string;
  readonly card: ModelCard;
  /** The card's input spec (feed models/preprocess.ts output). */
  readonly input: InputSpec;
  readonly classes: number;
  /** The model file loaded (card `file`), e.g. 'gateway-int8-trt.onnx'. */
  readonly file: string;
  /**
   * Runs a preprocessed batch.
   * @param batch n × input length floats in the card's layout.
   * @returns n × classes logits.
   * @throws {RangeError} on a batch of the wrong length.
   */
  logits(batch: Float32Array, n: number): Promise<Float32Array>;
  /** Releases the engine; safe to call more than once. */
  dispose(): Promise<void>;
}

/** Options passed to every backend's load. */
export interface EngineLoadOptions {
  /** Intra-op threads for CPU engines; default ONNX Runtime's choice. */
  intraOpThreads?: number;
  /** GPU index for the native TensorRT engine; default 0 (ONNX Runtime EPs: CUDA_VISIBLE_DEVICES). */
  device?: number;
  /** Directory of serialized TensorRT engines; default per backend. */
  engineCacheDir?: string;
  /** Largest batch GPU engines are built for; default 64. */
  maxBatch?: number;
}

/** A backend: a cheap availability probe and a loader. */
export interface EngineBackend {
  readonly name: string;
  /** Resolves to null when the backend can run here, or to the reason it cannot. Called once. */
  probe(): Promise<string | null>;
  /**
   * Loads the model described by a card.
   * @throws anything; the registry records the message and tries the next backend.
   */
  load(cardPath: string, opts: EngineLoadOptions): Promise<InferenceEngine>;
}

/** Minimal pino-compatible logger. */
export interface EngineLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

/** Outcome of {@link EngineRegistry.select}. */
export interface EngineSelection {
  engine: InferenceEngine;
  /** Backends tried before the chosen one, with why each was skipped. */
  skipped: { backend: string; reason: string }[];
}

function reasonOf(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0];
}

/** Backends by priority; probes run lazily, once. */
export class EngineRegistry {
  #entries: { backend: EngineBackend; priority: number; probe?: Promise<string | null> }[] = [];

  /**
   * Registers a backend; higher priority is tried first. Re-registering a name replaces it.
   * @throws {TypeError} for a non-finite priority.
   */
  register(backend: EngineBackend, priority: number): this {
    if (!Number.isFinite(priority)) throw new TypeError(`engine ${backend.name}: priority must be finite`);
    this.#entries = this.#entries.filter((e) => e.backend.name !== backend.name);
    this.#entries.push({ backend, priority });
    this.#entries.sort((a, b) => b.priority - a.priority);
    return this;
  }

  /** Registered backend names, highest priority first. */
  get names(): string[] {
    return this.#entries.map((e) => e.backend.name);
  }

  /**
   * Whether a backend can run here (its probe, run once and remembered).
   * @returns null when available, else the reason.
   */
  async availability(name: string): Promise<string | null> {
    const entry = this.#entries.find((e) => e.backend.name === name);
    if (!entry) return `no backend named ${name}`;
    entry.probe ??= entry.backend.probe().catch((err: unknown) => `probe failed: ${reasonOf(err)}`);
    return entry.probe;
  }

  /**
   * Loads the model on the best backend that works: in priority order (or the order of
   * `opts.only`), skipping backends whose probe fails or whose load throws.
   * @param opts.only restrict to these backend names, in this order.
   * @throws {CascadeError} ENGINE_ERR_UNAVAILABLE listing every backend and why it was skipped.
   */
  async select(
    cardPath: string,
    opts: EngineLoadOptions & { only?: string[]; logger?: EngineLogger } = {},
  ): Promise<EngineSelection> {
    const { only, logger, ...loadOpts } = opts;
    const order = only ?? this.names;
    const skipped: { backend: string; reason: string }[] = [];
    for (const name of order) {
      const entry = this.#entries.find((e) => e.backend.name === name);
      let reason = await this.availability(name);
      if (entry && reason === null) {
        try {
          const engine = await entry.backend.load(cardPath, loadOpts);
          logger?.info(
            { backend: name, model: engine.card.name, file: engine.file, skipped },
            `inference engine: ${name} (${engine.file})`,
          );
          return { engine, skipped };
        } catch (err) {
          reason = `load failed: ${reasonOf(err)}`;
        }
      }
      skipped.push({ backend: name, reason: reason ?? 'unknown' });
      logger?.warn({ backend: name, reason }, `inference engine ${name} skipped: ${reason}`);
    }
    throw new CascadeError(
      ErrorCodes.ENGINE_ERR_UNAVAILABLE,
      `${cardPath}: no inference engine could load it: ${skipped.map((s) => `${s.backend}: ${s.reason}`).join('; ')}`,
    );
  }
}

/** An ONNX Runtime session as an {@link InferenceEngine}. */
class OrtEngine implements InferenceEngine {
  constructor(
    readonly backend: string,
    readonly clf: OnnxClassifier,
  ) {}
  get card(): ModelCard {
    return this.clf.card;
  }
  get input(): InputSpec {
    return this.clf.input;
  }
  get classes(): number {
    return this.clf.classes;
  }
  get file(): string {
    return this.clf.artifact.file;
  }
  logits(batch: Float32Array, n: number): Promise<Float32Array> {
    return this.clf.logits(batch, n);
  }
  dispose(): Promise<void> {
    return this.clf.dispose();
  }
}

/** onnxruntime-node's folder of native libraries (its GPU providers are separate downloads). */
function ortBinDir(): string | null {
  try {
    const main = createRequire(import.meta.url).resolve('onnxruntime-node');
    // .../onnxruntime-node/dist/index.js → .../onnxruntime-node/bin/napi-v6/<platform>/<arch>
    return join(dirname(dirname(main)), 'bin', 'napi-v6', process.platform, process.arch);
  } catch {
    return null;
  }
}

/**
 * An ONNX Runtime backend for one execution provider.
 * @param provider 'cpu', 'cuda' or 'tensorrt'.
 * @param form the card file form to prefer ('qdq-trt' for TensorRT), falling back to the first.
 */
export function ortBackend(provider: 'cpu' | 'cuda' | 'tensorrt', form?: string): EngineBackend {
  const name = `ort-${provider}`;
  return {
    name,
    async probe() {
      if (provider === 'cpu') return null;
      const dir = ortBinDir();
      const lib = `libonnxruntime_providers_${provider}.so`;
      if (process.platform !== 'linux')
        return `the ${provider} execution provider is wired up for Linux only here`;
      if (!dir || !existsSync(join(dir, lib))) {
        return (
          `onnxruntime-node has no ${provider} provider (${lib} absent); on a GPU host run ` +
          'ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules/onnxruntime-node/script/install.js'
        );
      }
      return null;
    },
    async load(cardPath, opts) {
      // The GPU is ONNX Runtime's device 0 here; choose another with CUDA_VISIBLE_DEVICES.
      const eps = provider === 'tensorrt' ? ['tensorrt', 'cuda'] : [provider];
      let file: string | undefined;
      if (form) {
        const card = parseModelCard(JSON.parse(await readFile(cardPath, 'utf8')), cardPath);
        file = card.files.find((f) => f.form === form)?.file;
      }
      const clf = await OnnxClassifier.load(cardPath, {
        file,
        intraOpThreads: opts.intraOpThreads,
        executionProviders: eps,
      });
      return new OrtEngine(name, clf);
    },
  };
}

/** The native TensorRT binding as a backend (loaded on first use, never at import). */
export function nativeTensorRtBackend(): EngineBackend {
  return {
    name: 'tensorrt-native',
    async probe() {
      const { tensorRtUnavailableReason } = await import('../native/tensorrt.ts');
      return tensorRtUnavailableReason();
    },
    async load(cardPath, opts) {
      const { TensorRtEngine } = await import('../native/tensorrt.ts');
      return TensorRtEngine.load(cardPath, {
        device: opts.device,
        cacheDir: opts.engineCacheDir,
        maxBatch: opts.maxBatch,
      });
    },
  };
}

/** Priorities of the default backends. */
export const ENGINE_PRIORITY = {
  'tensorrt-native': 40,
  'ort-tensorrt': 30,
  'ort-cuda': 20,
  'ort-cpu': 10,
} as const;

/**
 * A registry with the default backends: native TensorRT → ORT TensorRT EP → CUDA EP → CPU EP.
 * GPU backends load the card's 'qdq-trt' file when it has one (TensorRT's explicit-quantization
 * form), the CPU EP its first file.
 */
export function defaultEngineRegistry(): EngineRegistry {
  return new EngineRegistry()
    .register(nativeTensorRtBackend(), ENGINE_PRIORITY['tensorrt-native'])
    .register(ortBackend('tensorrt', 'qdq-trt'), ENGINE_PRIORITY['ort-tensorrt'])
    .register(ortBackend('cuda'), ENGINE_PRIORITY['ort-cuda'])
    .register(ortBackend('cpu'), ENGINE_PRIORITY['ort-cpu']);
}
