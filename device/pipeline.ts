/**
 * The device's frame loop, double-buffered: while the INT8 student infers frame n from buffer A
 * (onnxruntime-node runs the session on the main thread), frame n+1 is preprocessed into buffer
 * B off the main thread (the native kernel's own thread, or a worker thread); then the buffers
 * swap. With the preprocessor's sync hand-off, one frame is start(n+1) → infer(n) → wait(), and
 * the main thread blocks only for whatever remains of the preprocessing after inference; a
 * preprocessor with only the promise form (PreprocessorOptions.handoff 'async') gets the same
 * loop over promises.
 * `sequential` mode runs the same stages one after the other on one buffer (the baseline the
 * benchmark compares with, and the reference the tests check the pipelined results against).
 *
 * Each inferred frame is handed to a synchronous handler with its calibrated top-1 (softmax at
 * the card's temperature); the handler decides and copies whatever it keeps, and the frame goes
 * back to its pool when the handler returns. Steady state allocates no buffers: frames come from
 * a pool, inputs and logits are preallocated per buffer, inference runs through
 * `OnnxClassifier.runInto`, and stage timings go to preallocated rings.
 */
import type { InferenceBuffers, OnnxClassifier } from '../models/runtime.ts';
import type { FrameSlot } from './frame-slot.ts';
import { type CameraFrame, wallClock } from './frames.ts';
import type { ModelSlot } from './model-slot.ts';
import type { Preprocessor } from './preprocessor.ts';
import { StageStats } from './stage-stats.ts';

/** One inferred frame, as the handler sees it. Reused: valid only during the handler call. */
export interface Inference {
  frame: CameraFrame;
  /** The model input (card layout, normalized floats). */
  readonly input: Float32Array;
  readonly logits: Float32Array;
  /** Temperature-scaled softmax of the logits. */
  readonly probs: Float32Array;
  label: number;
  confidence: number;
  /** The model that ran (its card gives version and temperature). */
  model: OnnxClassifier;
  /**
   * Capture → preprocessing start, preprocessing (its start → its end as the preprocessing
   * thread saw it, so pipelined frames do not count the inference they overlapped), inference (ms).
   */
  queueMs: number;
  preprocessMs: number;
  inferMs: number;
}

/** Options of {@link DevicePipeline}. */
export interface PipelineOptions {
  slot: FrameSlot;
  preprocessor: Preprocessor;
  model: ModelSlot;
  /** The two inference buffers A and B (the same the preprocessor writes). */
  buffers: readonly [InferenceBuffers, InferenceBuffers];
  /** Default 'pipelined'. */
  mode?: 'pipelined' | 'sequential';
  /** Called for every inferred frame; must not keep `inf` or its arrays after returning. */
  onInference: (inf: Inference) => void;
  /** A frame that could not be processed (it is released afterwards). */
  onError?: (frame: CameraFrame, err: unknown) => void;
  stats?: StageStats;
}

/** Calibrated softmax into `out`; returns the top-1 index. */
export function softmaxInto(logits: Float32Array, temperature: number, out: Float32Array): number {
  let max = Number.NEGATIVE_INFINITY;
  let arg = 0;
  for (let k = 0; k < logits.length; k++) {
    if (logits[k] > max) {
      max = logits[k];
      arg = k;
    }
  }
  const inv = 1 / temperature;
  let sum = 0;
  for (let k = 0; k < logits.length; k++) sum += Math.exp((logits[k] - max) * inv);
  for (let k = 0; k < logits.length; k++) out[k] = Math.exp((logits[k] - max) * inv) / sum;
  return arg;
}

class FrameState implements Inference {
  frame!: CameraFrame;
  label = 0;
  confidence = 0;
  model!: OnnxClassifier;
  queueMs = 0;
  preprocessMs = 0;
  inferMs = 0;
  readonly probs: Float32Array;
  readonly run: (m: OnnxClassifier) => Promise<Float32Array>;
  constructor(readonly buffers: InferenceBuffers) {
    this.probs = new Float32Array(buffers.logits.length);
    // Bound once, so that each inference passes the same function (no closure per frame).
    this.run = (m) => {
      this.model = m;
      return m.runInto(buffers);
    };
  }
  get input(): Float32Array {
    return this.buffers.input;
  }
  get logits(): Float32Array {
    return this.buffers.logits;
  }
}

export class DevicePipeline {
  readonly mode: 'pipelined' | 'sequential';
  readonly stats: StageStats;
  readonly #o: PipelineOptions;
  readonly #pre: Preprocessor;
  readonly #model: ModelSlot;
  readonly #states: [FrameState, FrameState];
  #processed = 0;
  #errors = 0;
  #running: Promise<void> | null = null;

  constructor(opts: PipelineOptions) {
    this.#o = opts;
    this.#pre = opts.preprocessor;
    this.#model = opts.model;
    this.mode = opts.mode ?? 'pipelined';
    this.stats = opts.stats ?? new StageStats();
    this.#states = [new FrameState(opts.buffers[0]), new FrameState(opts.buffers[1])];
  }

  /** Frames handed to the handler so far. */
  get processed(): number {
    return this.#processed;
  }

  /** Frames that failed in preprocessing or inference. */
  get errors(): number {
    return this.#errors;
  }

  /** Runs until the slot is closed and empty. Calling it again returns the same run. */
  run(): Promise<void> {
    const sync = this.#pre.handoff === 'sync';
    this.#running ??=
      this.mode === 'sequential'
        ? sync
          ? this.#sequential()
          : this.#sequentialAsync()
        : sync
          ? this.#pipelined()
          : this.#pipelinedAsync();
    return this.#running;
  }

  async #sequential(): Promise<void> {
    const slot = this.#o.slot;
    for (;;) {
      const f = slot.poll() ?? (await slot.take());
      if (f === null) return;
      if (this.#start(f, 0) && this.#finish(0)) await this.#inferAndHandle(0);
    }
  }

  /**
   * start(n+1) → infer(n) → wait(n+1): the hand-offs are synchronous, so the only event-loop
   * turns are inference's own (onnxruntime-node defers the session run by one setImmediate) and
   * waiting for a frame when none is there.
   */
  async #pipelined(): Promise<void> {
    const slot = this.#o.slot;
    let cur = slot.poll() ?? (await slot.take());
    if (cur === null) return;
    let b: 0 | 1 = 0;
    let ok = this.#start(cur, b) && this.#finish(b);
    try {
      for (;;) {
        const nb: 0 | 1 = b === 0 ? 1 : 0;
        let next = slot.poll();
        let started = next !== null && this.#start(next, nb);
        if (ok) await this.#inferAndHandle(b);
        if (next === null) {
          next = await slot.take();
          if (next === null) return;
          started = this.#start(next, nb);
        }
        ok = started && this.#finish(nb);
        cur = next;
        b = nb;
      }
    } finally {
      // Only when a handler's error escapes (onError threw): the job in flight must end before
      // its frame goes back to the pool.
      if (this.#pre.busy) this.#abandon(b === 0 ? 1 : 0);
    }
  }

  async #sequentialAsync(): Promise<void> {
    const slot = this.#o.slot;
    for (;;) {
      const f = slot.poll() ?? (await slot.take());
      if (f === null) return;
      if (await this.#prepAsync(f, 0)) await this.#inferAndHandle(0);
    }
  }

  /** The promise-based form, for a preprocessor without the sync hand-off. */
  async #pipelinedAsync(): Promise<void> {
    const slot = this.#o.slot;
    let cur = slot.poll() ?? (await slot.take());
    let b: 0 | 1 = 0;
    let ok = cur !== null && (await this.#prepAsync(cur, b));
    while (cur !== null) {
      let next = slot.poll();
      const nb: 0 | 1 = b === 0 ? 1 : 0;
      // Frame n+1 is preprocessed off the main thread while frame n is inferred.
      let pending = next !== null ? this.#prepAsync(next, nb) : null;
      if (ok) await this.#inferAndHandle(b);
      if (next === null) {
        next = await slot.take();
        if (next === null) return;
        pending = this.#prepAsync(next, nb);
      }
      ok = await (pending as Promise<boolean>);
      cur = next;
      b = nb;
    }
  }

  /**
   * Runs `frame` through preprocessing and inference `rounds` times on both buffers without
   * calling the handler or releasing the frame, so that the first real frames do not pay for
   * lazy initialisation and JIT compilation.
   */
  async warmUp(frame: CameraFrame, rounds = 5): Promise<void> {
    const pre = this.#pre;
    for (let i = 0; i < rounds; i++) {
      for (const b of [0, 1] as const) {
        if (pre.handoff === 'sync') {
          pre.start(frame, b);
          pre.wait();
        } else {
          await pre.run(frame, b);
        }
        await this.#model.run(this.#states[b].run);
      }
    }
  }

  /** Hands `frame` → buffer `b` to the preprocessor; false (frame released, error reported) on failure. */
  #start(frame: CameraFrame, b: 0 | 1): boolean {
    const s = this.#states[b];
    s.frame = frame;
    s.queueMs = wallClock() - frame.captureTime;
    try {
      this.#pre.start(frame, b);
    } catch (err) {
      this.#fail(frame, err);
      return false;
    }
    return true;
  }

  /** Waits for buffer `b`'s preprocessing; false (frame released, error reported) on failure. */
  #finish(b: 0 | 1): boolean {
    const s = this.#states[b];
    try {
      s.preprocessMs = this.#pre.wait();
    } catch (err) {
      this.#fail(s.frame, err);
      return false;
    }
    return true;
  }

  #abandon(b: 0 | 1): void {
    try {
      this.#pre.wait();
    } catch {
      // Its outcome no longer matters.
    }
    this.#states[b].frame.release();
  }

  /** Preprocesses into buffer `b`; false (frame released, error reported) on failure. */
  async #prepAsync(frame: CameraFrame, b: 0 | 1): Promise<boolean> {
    const s = this.#states[b];
    s.frame = frame;
    const t0 = performance.now();
    s.queueMs = performance.timeOrigin + t0 - frame.captureTime;
    try {
      await this.#pre.run(frame, b);
    } catch (err) {
      this.#fail(frame, err);
      return false;
    }
    s.preprocessMs = performance.now() - t0;
    return true;
  }

  async #inferAndHandle(b: 0 | 1): Promise<void> {
    const s = this.#states[b];
    const frame = s.frame;
    const t0 = performance.now();
    try {
      await this.#model.run(s.run);
    } catch (err) {
      this.#fail(frame, err);
      return;
    }
    const t1 = performance.now();
    s.inferMs = t1 - t0;
    s.label = softmaxInto(s.buffers.logits, s.model.card.temperature, s.probs);
    s.confidence = s.probs[s.label];
    try {
      this.#o.onInference(s);
    } catch (err) {
      this.#fail(frame, err);
      return;
    }
    const t2 = performance.now();
    const st = this.stats;
    st.record('queue', s.queueMs);
    st.record('preprocess', s.preprocessMs);
    st.record('infer', s.inferMs);
    st.record('decide', t2 - t1);
    st.record('total', performance.timeOrigin + t2 - frame.captureTime);
    this.#processed++;
    frame.release();
  }

  #fail(frame: CameraFrame, err: unknown): void {
    this.#errors++;
    try {
      this.#o.onError?.(frame, err);
    } finally {
      frame.release();
    }
  }
}
