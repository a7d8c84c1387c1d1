/**
 * ONNX model runtime: loads a model through its card, checks that the file on disk is the one the
 * card describes, turns HWC uint8 pixels into the card's input tensor and returns logits and
 * calibrated confidences. onnxruntime-node's CPU provider by default.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import * as ort from 'onnxruntime-node';
import { predictions, softmaxT } from '../cascade/calibration.ts';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import { type ArtifactFile, type InputSpec, type ModelCard, parseModelCard } from './card.ts';

/** Batches larger than this are run in chunks, so memory stays bounded on large inputs. */
export const MAX_CHUNK = 256;

/** Options of {@link OnnxClassifier.load}. */
export interface LoadOptions {
  /**
   * Which of the card's files to load: its `file` path or its `form` ('fp32', 'qdq-cpu',
   * 'qdq-trt'). Default: the card's first file.
   */
  file?: string;
  /** ONNX Runtime intra-op threads; default: ONNX Runtime's own choice (all cores). */
  intraOpThreads?: number;
  /** ONNX Runtime execution providers in order of preference; default ['cpu']. */
  executionProviders?: string[];
}

/** Per-sample result of {@link OnnxClassifier.classify}. */
export interface Classification {
  /** Top-1 class per sample. */
  pred: Uint8Array;
  /** Temperature-scaled softmax probability of `pred`. */
  conf: Float32Array;
  /** Raw logits, n × classes. */
  logits: Float32Array;
}

function channelsOf(spec: InputSpec): number {
  return spec.colour === 'gray' ? 1 : 3;
}

async function readCard(cardPath: string): Promise<ModelCard> {
  let text: string;
  try {
    text = await readFile(cardPath, 'utf8');
  } catch (err) {
    throw new CascadeError(ErrorCodes.MODEL_ERR_INVALID, `${cardPath}: cannot read model card`, {
      cause: err,
    });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new CascadeError(ErrorCodes.MODEL_ERR_INVALID, `${cardPath}: model card is not valid JSON`, {
      cause: err,
    });
  }
  const card = parseModelCard(json, cardPath);
  const c = channelsOf(card.input);
  for (const key of ['mean', 'std'] as const) {
    const v = card.input[key];
    if (v.length !== 1 && v.length !== c) {
      throw new CascadeError(
        ErrorCodes.MODEL_ERR_INVALID,
        `${cardPath}: input.${key} has ${v.length} values for ${c} channel(s) (${card.input.colour})`,
      );
    }
  }
  if (card.input.std.some((s) => !(s > 0))) {
    throw new CascadeError(ErrorCodes.MODEL_ERR_INVALID, `${cardPath}: input.std must be positive`);
  }
  if (card.output.classes > 256) {
    throw new CascadeError(ErrorCodes.MODEL_ERR_UNSUPPORTED, `${cardPath}: more than 256 classes`);
  }
  return card;
}

function pickFile(card: ModelCard, cardPath: string, want: string | undefined): ArtifactFile {
  if (want === undefined) return card.files[0];
  const hit = card.files.find((f) => f.file === want) ?? card.files.find((f) => f.form === want);
  if (!hit) {
    const have = card.files.map((f) => `${f.file} (${f.form})`).join(', ');
    throw new CascadeError(
      ErrorCodes.MODEL_ERR_INVALID,
      `${cardPath}: no file or form "${want}"; it has ${have}`,
    );
  }
  return hit;
}

/**
 * Preallocated input and output tensors of one inference of `n` samples, for hot paths that must
 * not allocate per call (the device pipeline): write {@link input}, call
 * {@link OnnxClassifier.runInto}, read {@link logits}. ONNX Runtime writes the logits into the
 * preallocated output. The buffers fit any classifier with the same input size and classes, so
 * they survive a model hot swap. Both arrays are plain ArrayBuffer-backed: onnxruntime-node
 * refuses tensors on a SharedArrayBuffer ("Invalid argument").
 */
export class InferenceBuffers {
  /** Samples per run. */
  readonly n: number;
  /** Model input: n × (card input size) floats in the card's layout. */
  readonly input: Float32Array;
  /** Logits of the last run: n × classes. */
  readonly logits: Float32Array;
  readonly #inputTensor: ort.Tensor;
  readonly #outputTensor: ort.Tensor;
  #inputName = '';
  #outputName = '';
  #feeds: Record<string, ort.Tensor> = {};
  #fetches: Record<string, ort.Tensor> = {};

  /** @throws {RangeError} for a non-positive `n`. */
  constructor(spec: InputSpec, classes: number, n = 1) {
    if (!Number.isInteger(n) || n < 1)
      throw new RangeError(`InferenceBuffers: n must be >= 1, received ${n}`);
    const c = channelsOf(spec);
    const dims = spec.layout === 'NCHW' ? [n, c, spec.height, spec.width] : [n, spec.height, spec.width, c];
    this.n = n;
    this.input = new Float32Array(n * c * spec.height * spec.width);
    this.logits = new Float32Array(n * classes);
    this.#inputTensor = new ort.Tensor('float32', this.input, dims);
    this.#outputTensor = new ort.Tensor('float32', this.logits, [n, classes]);
  }

  /** The feeds and fetches for a model's input and output names (rebuilt only when they change). */
  bind(inputName: string, outputName: string): [Record<string, ort.Tensor>, Record<string, ort.Tensor>] {
    if (inputName !== this.#inputName || outputName !== this.#outputName) {
      this.#inputName = inputName;
      this.#outputName = outputName;
      this.#feeds = { [inputName]: this.#inputTensor };
      this.#fetches = { [outputName]: this.#outputTensor };
    }
    return [this.#feeds, this.#fetches];
  }
}

/**
 * A classifier backed by an ONNX Runtime session and described by a model card.
 * Create with {@link OnnxClassifier.load}; release with {@link OnnxClassifier.dispose}.
 */
export class OnnxClassifier {
  private session: ort.InferenceSession | null;

  private constructor(
    /** The validated model card. */
    readonly card: ModelCard,
    /** Absolute path of the card. */
    readonly cardPath: string,
    /** The card entry of the loaded file. */
    readonly artifact: ArtifactFile,
    /** Absolute path of the loaded ONNX file. */
    readonly modelPath: string,
    session: ort.InferenceSession,
  ) {
    this.session = session;
  }

  /**
   * Loads a model through its card: validates the card, checks the model file's size and sha256
   * against it, creates the session and checks the card's input and output names exist.
   * @param cardPath path of the model card JSON; model files are resolved relative to its folder.
   * @throws {CascadeError} MODEL_ERR_INVALID for a missing, unreadable or invalid card, a missing
   *   model file, a size or sha256 mismatch (naming the file), an unknown `opts.file`, or
   *   input/output names the model does not have; MODEL_ERR_UNSUPPORTED if ONNX Runtime rejects
   *   the model.
   */
  static async load(cardPath: string, opts: LoadOptions = {}): Promise<OnnxClassifier> {
    const absCard = resolve(cardPath);
    const card = await readCard(absCard);
    const artifact = pickFile(card, absCard, opts.file);
    const modelPath = resolve(dirname(absCard), artifact.file);
    let bytes: Buffer;
    try {
      bytes = await readFile(modelPath);
    } catch (err) {
      throw new CascadeError(ErrorCodes.MODEL_ERR_INVALID, `${modelPath}: cannot read model file`, {
        cause: err,
      });
    }
    if (bytes.length !== artifact.bytes) {
      throw new CascadeError(
        ErrorCodes.MODEL_ERR_INVALID,
        `${modelPath}: ${bytes.length} bytes, but its card ${absCard} says ${artifact.bytes}`,
      );
    }
    const sha = createHash('sha256').update(bytes).digest('hex');
    if (sha !== artifact.sha256) {
      throw new CascadeError(
        ErrorCodes.MODEL_ERR_INVALID,
        `${modelPath}: sha256 ${sha} does not match its card ${absCard} (${artifact.sha256})`,
      );
    }
    const options: ort.InferenceSession.SessionOptions = {
      executionProviders: opts.executionProviders ?? ['cpu'],
      graphOptimizationLevel: 'all',
      executionMode: 'sequential',
      // Inter-op parallelism only helps graphs with parallel branches; these are chains.
      interOpNumThreads: 1,
      logSeverityLevel: 3,
    };
    if (opts.intraOpThreads !== undefined) options.intraOpNumThreads = opts.intraOpThreads;
    let session: ort.InferenceSession;
    try {
      session = await ort.InferenceSession.create(bytes, options);
    } catch (err) {
      const why = err instanceof Error ? err.message.split('\n')[0] : String(err);
      throw new CascadeError(
        ErrorCodes.MODEL_ERR_UNSUPPORTED,
        `${modelPath}: ONNX Runtime cannot load it: ${why}`,
        {
          cause: err,
        },
      );
    }
    const problems: string[] = [];
    if (!session.inputNames.includes(card.input.name)) {
      problems.push(`input "${card.input.name}" not in [${session.inputNames.join(', ')}]`);
    }
    if (!session.outputNames.includes(card.output.name)) {
      problems.push(`output "${card.output.name}" not in [${session.outputNames.join(', ')}]`);
    }
    if (problems.length > 0) {
      await session.release();
      throw new CascadeError(
        ErrorCodes.MODEL_ERR_INVALID,
        `${modelPath}: ${problems.join('; ')} (card ${absCard})`,
      );
    }
    return new OnnxClassifier(card, absCard, artifact, modelPath, session);
  }

  /** The card's input spec. */
  get input(): InputSpec {
    return this.card.input;
  }

  /** Number of output classes. */
  get classes(): number {
    return this.card.output.classes;
  }

  /** Channels of the model input: 1 for gray, 3 for rgb/bgr. */
  get channels(): number {
    return channelsOf(this.card.input);
  }

  /**
   * Turns HWC uint8 pixels into the model's float input: x = (p / 255 − mean[c]) / std[c], in the
   * card's layout (NCHW or NHWC) and colour order. Source pixels are gray (1 channel) or RGB (3
   * channels), inferred from the length; RGB is converted to gray with BT.601 luma for gray models,
   * gray is replicated for colour models, and channels are swapped for BGR models. No resizing:
   * images must already have the card's height and width.
   * @param pixels n × height × width × (1 or 3) bytes.
   * @param n number of images.
   * @throws {RangeError} if the length matches neither 1 nor 3 channels at the card's size.
   */
  preprocess(pixels: Uint8Array, n: number): Float32Array {
    const { height, width, layout, colour, mean, std } = this.card.input;
    const hw = height * width;
    const src = pixels.length === n * hw ? 1 : pixels.length === n * hw * 3 ? 3 : 0;
    if (!Number.isInteger(n) || n < 0 || src === 0) {
      throw new RangeError(
        `${this.card.name}: ${pixels.length} bytes is not ${n} image(s) of ${height}×${width}×(1 or 3)`,
      );
    }
    const c = this.channels;
    // Per output channel: scale and offset so that x = p * a + b (one multiply-add per value).
    const a = new Float64Array(c);
    const b = new Float64Array(c);
    for (let k = 0; k < c; k++) {
      const m = mean[k] ?? mean[0];
      const s = std[k] ?? std[0];
      a[k] = 1 / (255 * s);
      b[k] = -m / s;
    }
    const out = new Float32Array(n * hw * c);
    // Output channel k reads source channel order[k] (RGB source), or luma / the gray channel.
    const order = colour === 'bgr' ? [2, 1, 0] : [0, 1, 2];
    for (let i = 0; i < n; i++) {
      const so = i * hw * src;
      const oo = i * hw * c;
      for (let p = 0; p < hw; p++) {
        for (let k = 0; k < c; k++) {
          let v: number;
          if (src === c) v = pixels[so + p * src + (c === 3 ? order[k] : 0)];
          else if (src === 1) v = pixels[so + p];
          else
            v = 0.299 * pixels[so + p * 3] + 0.587 * pixels[so + p * 3 + 1] + 0.114 * pixels[so + p * 3 + 2];
          const x = v * a[k] + b[k];
          if (layout === 'NCHW') out[oo + k * hw + p] = x;
          else out[oo + p * c + k] = x;
        }
      }
    }
    return out;
  }

  /**
   * Runs the model on a preprocessed batch, in chunks of {@link MAX_CHUNK}.
   * @param batch n × (card input size) floats in the card's layout (see {@link preprocess}).
   * @returns n × classes logits.
   * @throws {RangeError} on a batch of the wrong length.
   * @throws {CascadeError} MODEL_ERR_UNSUPPORTED if the model's output is not n × classes float32.
   * @throws {Error} after {@link dispose}.
   */
  async logits(batch: Float32Array, n: number): Promise<Float32Array> {
    const session = this.session;
    if (!session) throw new Error(`${this.card.name}: classifier used after dispose()`);
    const { height, width, layout, name } = this.card.input;
    const c = this.channels;
    const per = height * width * c;
    if (!Number.isInteger(n) || n < 0 || batch.length !== n * per) {
      throw new RangeError(`${this.card.name}: batch of ${batch.length} floats is not ${n} × ${per}`);
    }
    const classes = this.classes;
    const out = new Float32Array(n * classes);
    for (let start = 0; start < n; start += MAX_CHUNK) {
      const m = Math.min(MAX_CHUNK, n - start);
      const dims = layout === 'NCHW' ? [m, c, height, width] : [m, height, width, c];
      const input = new ort.Tensor('float32', batch.subarray(start * per, (start + m) * per), dims);
      const result = await session.run({ [name]: input });
      const y = result[this.card.output.name];
      try {
        if (y.type !== 'float32' || y.data.length !== m * classes) {
          throw new CascadeError(
            ErrorCodes.MODEL_ERR_UNSUPPORTED,
            `${this.modelPath}: output "${this.card.output.name}" is ${y.type} [${y.dims.join(', ')}], expected float32 [${m}, ${classes}]`,
          );
        }
        out.set(y.data as Float32Array, start * classes);
      } finally {
        for (const t of Object.values(result)) t.dispose();
      }
    }
    return out;
  }

  /** Preallocated buffers for {@link runInto}, sized from this model's card. */
  createBuffers(n = 1): InferenceBuffers {
    return new InferenceBuffers(this.card.input, this.classes, n);
  }

  /**
   * Runs the model on `buffers.input` and leaves the logits in `buffers.logits`, without
   * allocating input or output buffers (ONNX Runtime still creates small result wrappers).
   * @returns `buffers.logits`.
   * @throws {RangeError} when the buffers do not fit this model's input size or classes.
   * @throws {Error} after {@link dispose}.
   */
  async runInto(buffers: InferenceBuffers): Promise<Float32Array> {
    const session = this.session;
    if (!session) throw new Error(`${this.card.name}: classifier used after dispose()`);
    const { height, width, name } = this.card.input;
    const per = height * width * this.channels;
    if (buffers.input.length !== buffers.n * per || buffers.logits.length !== buffers.n * this.classes) {
      throw new RangeError(
        `${this.card.name}: buffers of ${buffers.input.length} inputs / ${buffers.logits.length} logits do not fit ${buffers.n} × ${per} → ${this.classes}`,
      );
    }
    const [feeds, fetches] = buffers.bind(name, this.card.output.name);
    await session.run(feeds, fetches);
    return buffers.logits;
  }

  /**
   * Preprocesses, runs and calibrates: top-1 class and its temperature-scaled softmax probability
   * (the card's temperature) per image.
   * @param pixels n × height × width × (1 or 3) HWC bytes (see {@link preprocess}).
   * @throws as {@link preprocess} and {@link logits}.
   */
  async classify(pixels: Uint8Array, n: number): Promise<Classification> {
    const logits = await this.logits(this.preprocess(pixels, n), n);
    const { pred, conf } = predictions(softmaxT(logits, this.classes, this.card.temperature), this.classes);
    return { pred, conf, logits };
  }

  /** Releases the ONNX Runtime session. Safe to call more than once. */
  async dispose(): Promise<void> {
    const session = this.session;
    this.session = null;
    if (session) await session.release();
  }
}
