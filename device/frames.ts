/**
 * Camera frames and their sources. Every source (ffmpeg pipe, image folder, dataset replay)
 * yields the same {@link CameraFrame}: packed RGB24 pixels in a buffer borrowed from a
 * {@link FramePool}, so a running camera allocates no frame memory after start-up. Whoever holds
 * a frame last calls `release()`; the frame's buffer then goes back to the pool.
 */
import type { Rect } from '../models/preprocess.ts';

/** One captured frame. Fields are rewritten when the pooled frame is reused. */
export interface CameraFrame {
  /** Packed RGB24, row stride width × 3; may be longer than width × height × 3. */
  readonly data: Uint8Array;
  width: number;
  height: number;
  /** Capture time, ms since the epoch with sub-millisecond resolution ({@link wallClock}). */
  captureTime: number;
  /** Per-source sequence number, from 0. */
  frameId: number;
  /** Ground-truth class when the source knows it (dataset replay), else -1. */
  truth: number;
  /** Region of interest (what a detector would report), or null for the whole frame. */
  roi: Rect | null;
  /** Index of the frame's buffer in its pool (the preprocessing worker addresses buffers by it). */
  readonly slot: number;
  /** Hands the frame back to its pool. Safe to call twice. */
  release(): void;
}

/** A camera: an async iterator of frames that ends when the source does or on `close()`. */
export interface FrameSource extends AsyncIterable<CameraFrame> {
  /** Short description for logs, e.g. `replay(fashion-mnist/test-sample, 25 fps)`. */
  readonly name: string;
  /**
   * True for sources that run on their own clock (a camera, RTSP, replay at a set fps): a slow
   * pipeline must drop frames. False for sources that can wait (files read as fast as possible).
   */
  readonly live: boolean;
  /** Frames the source itself could not deliver (no free buffer); counted as dropped. */
  readonly lost: number;
  /** Stops the source; a pending `next()` resolves as done. Safe to call twice. */
  close(): Promise<void>;
}

/** Wall-clock time in ms with sub-millisecond resolution (`performance.timeOrigin` + monotonic). */
export function wallClock(): number {
  return performance.timeOrigin + performance.now();
}

/** Options of {@link FramePool}. */
export interface FramePoolOptions {
  /** Number of frame buffers. */
  size: number;
  /** Bytes per buffer (largest frame × 3). */
  bytes: number;
  /**
   * Back the buffers with SharedArrayBuffers, so a preprocessing worker thread reads frames
   * without a copy. The native kernel and onnxruntime-node refuse shared memory, so the default
   * is false.
   */
  shared?: boolean;
}

class PooledFrame implements CameraFrame {
  width = 0;
  height = 0;
  captureTime = 0;
  frameId = 0;
  truth = -1;
  roi: Rect | null = null;
  /** Reused ROI object (sources fill it and point `roi` at it). */
  readonly roiBox: Rect = { x: 0, y: 0, width: 0, height: 0 };
  free = true;
  readonly release: () => void;
  constructor(
    readonly data: Uint8Array,
    readonly slot: number,
    pool: FramePool,
  ) {
    this.release = () => pool.put(this);
  }
}

/**
 * A fixed set of frame buffers. `acquire()` hands out a free frame or null (the caller counts a
 * lost frame); `release()` on the frame returns it.
 */
export class FramePool {
  readonly #frames: PooledFrame[];
  readonly #free: PooledFrame[];
  readonly shared: boolean;
  readonly bytes: number;
  #waiters: (() => void)[] = [];

  /** @throws {RangeError} for a size below 1 or a non-positive byte count. */
  constructor(opts: FramePoolOptions) {
    if (!Number.isInteger(opts.size) || opts.size < 1) throw new RangeError(`FramePool: size ${opts.size}`);
    if (!Number.isInteger(opts.bytes) || opts.bytes < 1)
      throw new RangeError(`FramePool: bytes ${opts.bytes}`);
    this.shared = opts.shared ?? false;
    this.bytes = opts.bytes;
    this.#frames = [];
    for (let i = 0; i < opts.size; i++) {
      const buf = this.shared ? new SharedArrayBuffer(opts.bytes) : new ArrayBuffer(opts.bytes);
      this.#frames.push(new PooledFrame(new Uint8Array(buf), i, this));
    }
    this.#free = [...this.#frames].reverse();
  }

  /** Number of buffers. */
  get size(): number {
    return this.#frames.length;
  }

  /** Free buffers now. */
  get available(): number {
    return this.#free.length;
  }

  /** The buffers, by slot index (for handing them to a worker once). */
  buffers(): Uint8Array[] {
    return this.#frames.map((f) => f.data);
  }

  /**
   * A free frame with `roi` cleared and `truth` -1, or null when every buffer is in use.
   * The returned frame's `roiBox` can be filled and assigned to `roi`.
   */
  acquire(): (CameraFrame & { readonly roiBox: Rect }) | null {
    const f = this.#free.pop();
    if (f === undefined) return null;
    f.free = false;
    f.roi = null;
    f.truth = -1;
    return f;
  }

  /** Resolves when a buffer is free (at once if one is). */
  waitAvailable(): Promise<void> {
    if (this.#free.length > 0) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** @internal Returns a frame; a second release of the same frame is ignored. */
  put(f: PooledFrame): void {
    if (f.free) return;
    f.free = true;
    this.#free.push(f);
    if (this.#waiters.length > 0) for (const w of this.#waiters.splice(0)) w();
  }
}
