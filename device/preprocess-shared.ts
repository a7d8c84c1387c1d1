/**
 * What the main thread and the preprocessing worker share: the layout of the control array, the
 * worker's start-up data, and the ROI copy both sides use.
 */
import type { InputSpec } from '../models/card.ts';
import type { Rect } from '../models/preprocess.ts';

/** Indices into the control Int32Array. */
export const Ctrl = {
  /** Request counter, bumped by the main thread for each request. */
  REQ: 0,
  /** Number of the last finished request, set by the worker. */
  DONE: 1,
  /** 1: the worker should exit. */
  STOP: 2,
  /** Frame buffer (pool slot) and output buffer (0 = A, 1 = B) of the request. */
  SLOT: 3,
  OUT: 4,
  WIDTH: 5,
  HEIGHT: 6,
  /** ROI of the request; ROI_W = 0 means the whole frame. */
  ROI_X: 7,
  ROI_Y: 8,
  ROI_W: 9,
  ROI_H: 10,
  /** 0 after success, else the byte length of the error text. */
  ERROR: 11,
  /** 1 once the worker's loop has ended (for whatever reason): nobody will answer. */
  DEAD: 12,
  LENGTH: 13,
} as const;

/** `workerData` of the preprocessing worker. */
export interface WorkerInit {
  ctrl: SharedArrayBuffer;
  /**
   * Two Float64 times (ms, performance.timeOrigin + now): [0] when the main thread posted the
   * request, [1] when the worker finished it.
   */
  times: SharedArrayBuffer;
  /** Pool frame buffers, by slot. */
  frames: SharedArrayBuffer[];
  /** Output float buffers A and B (the model input). */
  outs: SharedArrayBuffer[];
  /** Error text of a failed request (UTF-8). */
  errorText: SharedArrayBuffer;
  spec: InputSpec;
  resize: 'area' | 'bilinear';
  /** Bytes of the ROI scratch buffer (the largest ROI × 3). */
  scratchBytes: number;
  /** How long the worker spins for the next request before it sleeps (µs). */
  idleSpinUs: number;
}

/**
 * Copies an ROI of a packed RGB frame (row stride `frameWidth` × 3) into `out`, rows back to
 * back (stride roi.width × 3). A plain loop: no views are created, so nothing is allocated.
 * @throws {RangeError} when the ROI leaves the frame's buffer or does not fit `out`.
 */
export function copyRoi(src: Uint8Array, frameWidth: number, roi: Rect, out: Uint8Array): void {
  const row = roi.width * 3;
  if (row * roi.height > out.length) {
    throw new RangeError(`ROI ${roi.width}x${roi.height} exceeds the ${out.length}-byte scratch buffer`);
  }
  const stride = frameWidth * 3;
  if (
    roi.x < 0 ||
    roi.y < 0 ||
    roi.x + roi.width > frameWidth ||
    (roi.y + roi.height) * stride > src.length
  ) {
    throw new RangeError(`ROI ${JSON.stringify(roi)} is outside the ${frameWidth}-pixel-wide frame`);
  }
  let o = 0;
  for (let y = 0; y < roi.height; y++) {
    let i = (roi.y + y) * stride + roi.x * 3;
    const end = i + row;
    while (i < end) out[o++] = src[i++];
  }
}
