/**
 * Hot swap of the model a pipeline runs, between two frames. The pipeline runs every inference
 * through {@link ModelSlot.run}; {@link ModelSlot.swap} replaces the model at once for every
 * frame that starts afterwards, while inferences already running finish on the old session, and
 * resolves with the old model only when the last of them has finished, so the caller can dispose
 * of it (or swap it back in, for a rollback) without pulling a session from under a frame. No
 * frame waits, none is dropped, and none is answered by a model that is still loading: a model
 * is handed to `swap` only after `OnnxClassifier.load` has resolved.
 */
import type { OnnxClassifier } from '../models/runtime.ts';

/**
 * What a frame pipeline implements so the OTA agent can replace its model. The agent loads and
 * checks the new model first, then calls `swap`, then runs its health check through `current`.
 */
export interface SwappableModel {
  /** The model new frames use. */
  readonly current: OnnxClassifier;
  /**
   * Makes `next` the model for every frame that starts from now on.
   * @returns the previous model, once no frame is still running on it (not disposed).
   */
  swap(next: OnnxClassifier): Promise<OnnxClassifier>;
}

/** The reference {@link SwappableModel}: holds the current classifier and counts frames in flight. */
export class ModelSlot implements SwappableModel {
  #current: OnnxClassifier;
  readonly #inFlight = new Map<OnnxClassifier, number>();
  readonly #drained = new Map<OnnxClassifier, () => void>();
  #swaps = 0;

  constructor(initial: OnnxClassifier) {
    this.#current = initial;
  }

  get current(): OnnxClassifier {
    return this.#current;
  }

  /** Number of completed swaps. */
  get swaps(): number {
    return this.#swaps;
  }

  /**
   * Runs one frame's inference on the current model. The model is chosen when the call starts
   * and kept until `fn` settles, whatever swaps happen meanwhile.
   */
  async run<T>(fn: (model: OnnxClassifier) => Promise<T>): Promise<T> {
    const model = this.#current;
    this.#inFlight.set(model, (this.#inFlight.get(model) ?? 0) + 1);
    try {
      return await fn(model);
    } finally {
      const left = (this.#inFlight.get(model) ?? 1) - 1;
      if (left === 0) {
        this.#inFlight.delete(model);
        this.#drained.get(model)?.();
        this.#drained.delete(model);
      } else {
        this.#inFlight.set(model, left);
      }
    }
  }

  async swap(next: OnnxClassifier): Promise<OnnxClassifier> {
    const old = this.#current;
    if (next === old) return old;
    this.#current = next;
    this.#swaps += 1;
    if ((this.#inFlight.get(old) ?? 0) > 0) {
      await new Promise<void>((resolve) => {
        const prev = this.#drained.get(old);
        this.#drained.set(old, () => {
          prev?.();
          resolve();
        });
      });
    }
    return old;
  }
}
