/**
 * The preprocessing worker thread (device/preprocessor.ts, backend 'worker'): runs the
 * TypeScript reference preprocessor (models/preprocess.ts) on frames in shared memory, so that
 * the main thread can run inference meanwhile. Requests and completions travel through an
 * Int32Array on a SharedArrayBuffer with Atomics (no message per frame, no allocation per frame):
 * the main thread writes the parameters and bumps REQ; the worker writes the output and sets
 * DONE to the request's number. After a request the worker spins for `idleSpinUs` on REQ before
 * it sleeps in Atomics.wait: a frame loop posts the next request within an inference time, and
 * waking a sleeping thread costs tens of µs. DEAD tells a blocked main thread that the loop is
 * over, whatever ended it.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { InputSpec } from '../models/card.ts';
import { type Frame, preprocess } from '../models/preprocess.ts';
import { Ctrl, copyRoi, type WorkerInit } from './preprocess-shared.ts';

const init = workerData as WorkerInit;
const ctrl = new Int32Array(init.ctrl);
const frames = init.frames.map((b) => new Uint8Array(b));
const outs = init.outs.map((b) => new Float32Array(b));
const spec: InputSpec = init.spec;
const scratch = new Uint8Array(init.scratchBytes);
const frame: Frame = { data: scratch, width: 1, height: 1, format: 'rgb', stride: 3 };
const opts = { resize: init.resize };
const crop = { x: 0, y: 0, width: 0, height: 0 };
const errorText = new Uint8Array(init.errorText);
const times = new Float64Array(init.times);
const encoder = new TextEncoder();
const idleSpinMs = init.idleSpinUs / 1000;

// Requests are numbered from 1; the main thread sends none before this message.
let seen = 0;
parentPort?.postMessage('ready');
try {
  serve();
} finally {
  Atomics.store(ctrl, Ctrl.DEAD, 1);
  Atomics.notify(ctrl, Ctrl.DONE);
}

function serve(): void {
  for (;;) {
    if (Atomics.load(ctrl, Ctrl.REQ) === seen && idleSpinMs > 0) {
      const end = performance.now() + idleSpinMs;
      while (Atomics.load(ctrl, Ctrl.REQ) === seen && performance.now() < end);
    }
    Atomics.wait(ctrl, Ctrl.REQ, seen);
    const req = Atomics.load(ctrl, Ctrl.REQ);
    if (Atomics.load(ctrl, Ctrl.STOP) === 1) return;
    if (req === seen) continue;
    seen = req;
    serveOne();
    times[1] = performance.timeOrigin + performance.now();
    Atomics.store(ctrl, Ctrl.DONE, req);
    Atomics.notify(ctrl, Ctrl.DONE);
  }
}

function serveOne(): void {
  try {
    const src = frames[ctrl[Ctrl.SLOT]];
    const w = ctrl[Ctrl.WIDTH];
    const h = ctrl[Ctrl.HEIGHT];
    if (ctrl[Ctrl.ROI_W] > 0) {
      crop.x = ctrl[Ctrl.ROI_X];
      crop.y = ctrl[Ctrl.ROI_Y];
      crop.width = ctrl[Ctrl.ROI_W];
      crop.height = ctrl[Ctrl.ROI_H];
      copyRoi(src, w, crop, scratch);
      frame.data = scratch;
      frame.width = crop.width;
      frame.height = crop.height;
      frame.stride = crop.width * 3;
    } else {
      frame.data = src;
      frame.width = w;
      frame.height = h;
      frame.stride = w * 3;
    }
    preprocess(frame, spec, outs[ctrl[Ctrl.OUT]], opts);
    ctrl[Ctrl.ERROR] = 0;
  } catch (err) {
    const text = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
    ctrl[Ctrl.ERROR] = encoder.encodeInto(text, errorText).written ?? 0;
  }
}
