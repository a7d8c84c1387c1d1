/**
 * The serving engine of the gateway and the cloud: a card-driven classifier that runs a batch of
 * images (HWC uint8 pixels at the card's size) or of preprocessed tensors and returns calibrated
 * probabilities. One small interface, so a TensorRT or CUDA backend can replace the ONNX Runtime
 * CPU session without touching the services; {@link loadServingEngine} is the one place that
 * picks the backend.
 */

import type { ModelCard } from '../../models/card.ts';
import { OnnxClassifier } from '../../models/runtime.ts';
import { softmaxT, topK } from '../calibration.ts';

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
  /** Backend name for logs and metrics, e.g. `onnxruntime-cpu`. */
  readonly backend: string;
  /** Bytes of one image at the card's size (height × width × channels). */
  readonly imageBytes: number;
  /** Floats of one preprocessed input (the card's tensor). */
  readonly tensorFloats: number;
  /** Turns n images (HWC uint8 at the card's size, gray or RGB) into the card's input tensor. */
  preprocess(pixels: Uint8Array, n: number): Float32Array;
  /** Runs n images, concatenated HWC uint8 at the card's size. */
  runPixels(pixels: Uint8Array, n: number): Promise<ScoredBatch>;
  /** Runs n preprocessed inputs in the card's layout. */
  runTensor(batch: Float32Array, n: number): Promise<ScoredBatch>;
  /** Releases the backend. Safe to call twice. */
  dispose(): Promise<void>;
}

/** Options of {@link loadServingEngine}. */
export interface EngineOptions {
  /** ONNX Runtime intra-op threads; default 1 (one session per core scales better here). */
  intraOpThreads?: number;
  /** Which of the card's files: a file name or form ('qdq-cpu', 'qdq-trt', 'fp32'). */
  file?: string;
  /** Execution providers in order; default ['cpu']. */
  executionProviders?: string[];
}

class OnnxServingEngine implements ServingEngine {
  readonly backend: string;
  readonly imageBytes: number;
  readonly tensorFloats: number;
  readonly #c: OnnxClassifier;

  constructor(c: OnnxClassifier, backend: string) {
    this.#c = c;
    this.backend = backend;
    const { height, width } = c.card.input;
    this.imageBytes = height * width * c.channels;
    this.tensorFloats = this.imageBytes;
  }

  get card(): ModelCard {
    return this.#c.card;
  }

  preprocess(pixels: Uint8Array, n: number): Float32Array {
    return this.#c.preprocess(pixels, n);
  }

  async runPixels(pixels: Uint8Array, n: number): Promise<ScoredBatch> {
    return this.runTensor(this.#c.preprocess(pixels, n), n);
  }

  async runTensor(batch: Float32Array, n: number): Promise<ScoredBatch> {
    const logits = await this.#c.logits(batch, n);
    const classes = this.#c.classes;
    return { probs: softmaxT(logits, classes, this.#c.card.temperature), n, classes };
  }

  dispose(): Promise<void> {
    return this.#c.dispose();
  }
}

/**
 * Loads the model of a card on the best available backend (ONNX Runtime with the given
 * execution providers; CPU by default).
 * @throws {CascadeError} MODEL_ERR_INVALID / MODEL_ERR_UNSUPPORTED as {@link OnnxClassifier.load}.
 */
export async function loadServingEngine(cardPath: string, opts: EngineOptions = {}): Promise<ServingEngine> {
  const providers = opts.executionProviders ?? ['cpu'];
  const c = await OnnxClassifier.load(cardPath, {
    file: opts.file,
    intraOpThreads: opts.intraOpThreads ?? 1,
    executionProviders: providers,
  });
  return new OnnxServingEngine(c, `onnxruntime-${providers[0]}`);
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
