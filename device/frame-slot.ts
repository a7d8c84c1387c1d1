/**
 * Back-pressure between a camera and the pipeline: a bounded FIFO of frames that, when full,
 * drops the OLDEST unprocessed frame (a live camera wants the newest picture, not a growing
 * backlog), counted and released to its pool at once. Memory never grows: the ring is allocated
 * once. Sources that can wait (files read as fast as possible) use {@link FrameSlot.waitForRoom}
 * instead, so nothing is dropped.
 */
import type { CameraFrame } from './frames.ts';

/** Options of {@link FrameSlot}. */
export interface FrameSlotOptions {
  /** Frames held before the oldest is dropped; default 1 (always the latest frame). */
  capacity?: number;
  /** Called with each dropped frame before it is released (metrics, logs). */
  onDrop?: (frame: CameraFrame) => void;
}

export class FrameSlot {
  readonly capacity: number;
  readonly #ring: (CameraFrame | null)[];
  #head = 0;
  #count = 0;
  #dropped = 0;
  #closed = false;
  #onDrop: ((frame: CameraFrame) => void) | undefined;
  #taker: ((f: CameraFrame | null) => void) | null = null;
  #roomWaiter: (() => void) | null = null;

  /** @throws {RangeError} for a capacity below 1. */
  constructor(opts: FrameSlotOptions = {}) {
    const capacity = opts.capacity ?? 1;
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(`FrameSlot: capacity must be an integer >= 1, received ${capacity}`);
    }
    this.capacity = capacity;
    this.#ring = new Array<CameraFrame | null>(capacity).fill(null);
    this.#onDrop = opts.onDrop;
  }

  /** Frames dropped so far (oldest-first, because a newer one arrived while full). */
  get dropped(): number {
    return this.#dropped;
  }

  /** Frames waiting. */
  get pending(): number {
    return this.#count;
  }

  /** True after {@link close}. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Offers a frame. When full, the oldest waiting frame is dropped and released. A frame offered
   * after {@link close} is released at once (and not counted: the run is over).
   */
  push(frame: CameraFrame): void {
    if (this.#closed) {
      frame.release();
      return;
    }
    const taker = this.#taker;
    if (taker !== null) {
      this.#taker = null;
      taker(frame);
      return;
    }
    if (this.#count === this.capacity) {
      const old = this.#ring[this.#head] as CameraFrame;
      this.#ring[this.#head] = null;
      this.#head = (this.#head + 1) % this.capacity;
      this.#count--;
      this.#dropped++;
      this.#onDrop?.(old);
      old.release();
    }
    this.#ring[(this.#head + this.#count) % this.capacity] = frame;
    this.#count++;
  }

  /** The oldest waiting frame, or null when none is waiting. Never waits. */
  poll(): CameraFrame | null {
    if (this.#count === 0) return null;
    const f = this.#ring[this.#head];
    this.#ring[this.#head] = null;
    this.#head = (this.#head + 1) % this.capacity;
    this.#count--;
    const room = this.#roomWaiter;
    if (room !== null) {
      this.#roomWaiter = null;
      room();
    }
    return f;
  }

  /**
   * The oldest frame, waiting for one if needed; null once closed and empty.
   * @throws {Error} when another `take()` is already waiting (one consumer only).
   */
  take(): Promise<CameraFrame | null> {
    const f = this.poll();
    if (f !== null || this.#closed) return Promise.resolve(f);
    if (this.#taker !== null) throw new Error('FrameSlot: take() while another take() is waiting');
    return new Promise((resolve) => {
      this.#taker = resolve;
    });
  }

  /** Resolves when a push would not drop (for sources that can wait). */
  waitForRoom(): Promise<void> {
    if (this.#count < this.capacity || this.#closed) return Promise.resolve();
    return new Promise((resolve) => {
      const prev = this.#roomWaiter;
      this.#roomWaiter = () => {
        prev?.();
        resolve();
      };
    });
  }

  /**
   * Ends intake: waiting frames stay takeable; a waiting `take()` gets null if none is left.
   * Safe to call twice.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const taker = this.#taker;
    this.#taker = null;
    taker?.(null);
    const room = this.#roomWaiter;
    this.#roomWaiter = null;
    room?.();
  }

  /** Releases every waiting frame without counting it (shutdown). */
  clear(): void {
    for (let f = this.poll(); f !== null; f = this.poll()) f.release();
  }
}
