import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { softmaxT } from '../cascade/calibration.ts';
import { topK } from '../device/decider.ts';
import { FrameSlot } from '../device/frame-slot.ts';
import { type CameraFrame, FramePool, wallClock } from '../device/frames.ts';
import { ModelSlot } from '../device/model-slot.ts';
import { payloadQuant, quantizeInput } from '../device/payload.ts';
import { DevicePipeline, softmaxInto } from '../device/pipeline.ts';
import { type PreprocessBackend, Preprocessor } from '../device/preprocessor.ts';
import { ReplayCamera } from '../device/replay-source.ts';
import type { ImageDataset } from '../models/data/dataset.ts';
import { loadBundledSample } from '../models/data/load.ts';
import { preprocess } from '../models/preprocess.ts';
import { OnnxClassifier } from '../models/runtime.ts';
import { isNativeAvailable } from '../native/binding.ts';

let ds: ImageDataset;
let model: OnnxClassifier;

before(async () => {
  ds = await loadBundledSample();
  model = await OnnxClassifier.load('models/device/card.json', { intraOpThreads: 1 });
});
after(async () => {
  await model.dispose();
});

function frames(pool: FramePool, n: number): CameraFrame[] {
  return Array.from({ length: n }, (_, i) => {
    const f = pool.acquire();
    assert.ok(f);
    f.frameId = i;
    return f;
  });
}

describe('FrameSlot', () => {
  it('drops the oldest waiting frame when full, releases it and counts it', () => {
    const pool = new FramePool({ size: 6, bytes: 3 });
    const dropped: number[] = [];
    const slot = new FrameSlot({ capacity: 2, onDrop: (f) => dropped.push(f.frameId) });
    for (const f of frames(pool, 5)) slot.push(f);
    assert.equal(slot.dropped, 3);
    assert.deepEqual(dropped, [0, 1, 2]);
    assert.equal(pool.available, 6 - 2, 'dropped frames went back to the pool');
    assert.equal(slot.poll()?.frameId, 3);
    assert.equal(slot.poll()?.frameId, 4);
    assert.equal(slot.poll(), null);
  });

  it('never grows: 10,000 frames through a 3-buffer pool with a slow consumer', () => {
    const pool = new FramePool({ size: 3, bytes: 3 });
    const slot = new FrameSlot({ capacity: 1 });
    let consumed = 0;
    for (let i = 0; i < 10_000; i++) {
      const f = pool.acquire();
      assert.ok(f, `a buffer is free at frame ${i}`);
      f.frameId = i;
      slot.push(f);
      if (i % 7 === 0) {
        slot.poll()?.release();
        consumed++;
      }
      assert.ok(slot.pending <= 1);
    }
    assert.equal(slot.dropped + consumed + slot.pending, 10_000);
  });

  it('hands a frame to a waiting take(), wakes it with null on close, and waits for room', async () => {
    const pool = new FramePool({ size: 3, bytes: 3 });
    const slot = new FrameSlot({ capacity: 1 });
    const [a, b] = frames(pool, 2);
    const taken = slot.take();
    slot.push(a);
    assert.equal(await taken, a);
    slot.push(b);
    let room = false;
    const waiting = slot.waitForRoom().then(() => {
      room = true;
    });
    await new Promise((r) => setImmediate(r));
    assert.equal(room, false, 'full: no room yet');
    assert.equal(slot.poll(), b);
    await waiting;
    a.release();
    b.release();
    const none = slot.take();
    slot.close();
    assert.equal(await none, null);
    const [c] = frames(pool, 1);
    slot.push(c);
    assert.equal(pool.available, 3, 'a frame pushed after close is released');
  });
});

describe('calibration and payload helpers', () => {
  it('softmaxInto matches the calibration module and returns the top-1', () => {
    const logits = new Float32Array([1.5, -2, 3.25, 0.5, 3.2]);
    const out = new Float32Array(5);
    assert.equal(softmaxInto(logits, 1.3, out), 2);
    const ref = softmaxT(logits, 5, 1.3);
    for (let i = 0; i < 5; i++) assert.ok(Math.abs(out[i] - ref[i]) < 1e-6);
    assert.deepEqual(
      topK(out, 3).map((r) => r.label),
      [2, 4, 0],
    );
  });

  it("quantizes the model input exactly as the card's QuantizeLinear (the tensor payload)", () => {
    const pool = new FramePool({ size: 1, bytes: 640 * 480 * 3 });
    const cam = new ReplayCamera({ dataset: ds, pool, fps: 0 });
    const f = pool.acquire();
    assert.ok(f);
    const spec = model.card.input;
    const floats = new Float32Array(784);
    const bytes = new Uint8Array(784);
    for (let id = 0; id < 20; id++) {
      cam.render(id, f);
      const frame = { data: f.data, width: 640, height: 480, format: 'rgb' as const };
      preprocess(frame, spec, floats, { crop: f.roi ?? undefined });
      preprocess(frame, spec, bytes, { crop: f.roi ?? undefined });
      assert.deepEqual(quantizeInput(floats, payloadQuant(spec), new Uint8Array(784)), bytes);
    }
  });
});

const backends: PreprocessBackend[] = isNativeAvailable() ? ['native', 'worker'] : ['worker'];

describe('DevicePipeline double buffering', () => {
  /** Runs the replay frames through a pipeline; returns logits and labels by frame id. */
  async function runAll(
    backend: PreprocessBackend,
    mode: 'pipelined' | 'sequential',
    n: number,
    handoff: 'sync' | 'async' = 'sync',
  ) {
    const pool = new FramePool({ size: 6, bytes: 640 * 480 * 3, shared: backend === 'worker' });
    const cam = new ReplayCamera({ dataset: ds, pool, fps: 0, seed: 3 });
    const buffers = [model.createBuffers(), model.createBuffers()] as const;
    const pre = await Preprocessor.create({ spec: model.card.input, buffers, pool, backend, handoff });
    assert.equal(pre.handoff, handoff);
    const slot = new FrameSlot({ capacity: 2 });
    const got = new Map<number, { logits: number[]; label: number; confidence: number; input: number[] }>();
    const pipeline = new DevicePipeline({
      slot,
      preprocessor: pre,
      model: new ModelSlot(model),
      buffers,
      mode,
      onInference: (inf) => {
        got.set(inf.frame.frameId, {
          logits: [...inf.logits],
          label: inf.label,
          confidence: inf.confidence,
          input: [...inf.input],
        });
      },
    });
    const done = pipeline.run();
    for await (const f of cam) {
      if (f.frameId >= n) {
        f.release();
        break;
      }
      // Every third frame without its ROI: the whole-frame path too.
      if (f.frameId % 3 === 2) f.roi = null;
      f.captureTime = wallClock();
      await slot.waitForRoom();
      slot.push(f);
    }
    slot.close();
    await done;
    await pre.close();
    assert.equal(pipeline.errors, 0);
    assert.equal(pipeline.processed, n);
    assert.equal(pool.available, 6, 'every frame went back to the pool');
    return got;
  }

  for (const [backend, handoff] of backends.flatMap((b) => [
    [b, 'sync'],
    [b, 'async'],
  ]) as [PreprocessBackend, 'sync' | 'async'][]) {
    it(`gives the same results pipelined (${backend}, ${handoff} hand-off) as sequential (inline)`, async () => {
      const n = 60;
      const seq = await runAll('inline', 'sequential', n);
      const pipe = await runAll(backend, 'pipelined', n, handoff);
      assert.equal(pipe.size, n);
      for (let id = 0; id < n; id++) {
        const a = seq.get(id);
        const b = pipe.get(id);
        assert.ok(a && b, `frame ${id}`);
        assert.deepEqual(b.input, a.input, `frame ${id}: model input`);
        assert.deepEqual(b.logits, a.logits, `frame ${id}: logits`);
        assert.equal(b.label, a.label);
        assert.equal(b.confidence, a.confidence);
      }
    });
  }

  for (const [backend, mode] of ['inline', ...backends].flatMap((b) => [
    [b, 'pipelined'],
    [b, 'sequential'],
  ]) as [PreprocessBackend, 'pipelined' | 'sequential'][]) {
    it(`reports a frame the preprocessor refuses and goes on (${backend}, ${mode})`, async () => {
      const pool = new FramePool({ size: 6, bytes: 640 * 480 * 3, shared: backend === 'worker' });
      const buffers = [model.createBuffers(), model.createBuffers()] as const;
      const pre = await Preprocessor.create({ spec: model.card.input, buffers, pool, backend });
      const slot = new FrameSlot({ capacity: 6 });
      const failed: number[] = [];
      const ok: number[] = [];
      const pipeline = new DevicePipeline({
        slot,
        preprocessor: pre,
        model: new ModelSlot(model),
        buffers,
        mode,
        onInference: (inf) => ok.push(inf.frame.frameId),
        onError: (f) => failed.push(f.frameId),
      });
      for (const f of frames(pool, 6)) {
        f.width = 640;
        f.height = 480;
        f.captureTime = wallClock();
        // Refused while another frame is being inferred (1), the last one (5), two in a row (3, 4).
        if ([1, 3, 4, 5].includes(f.frameId)) f.roi = { x: 630, y: 0, width: 28, height: 28 };
        slot.push(f);
      }
      slot.close();
      await pipeline.run();
      await pre.close();
      assert.deepEqual(failed, [1, 3, 4, 5]);
      assert.deepEqual(ok, [0, 2]);
      assert.equal(pipeline.errors, 4);
      assert.equal(pool.available, 6);
    });
  }

  for (const backend of backends) {
    it(`ends a run whose error handler throws without leaving a job or a frame behind (${backend})`, async () => {
      const pool = new FramePool({ size: 6, bytes: 640 * 480 * 3, shared: backend === 'worker' });
      const buffers = [model.createBuffers(), model.createBuffers()] as const;
      const pre = await Preprocessor.create({ spec: model.card.input, buffers, pool, backend });
      const slot = new FrameSlot({ capacity: 6 });
      const pipeline = new DevicePipeline({
        slot,
        preprocessor: pre,
        model: new ModelSlot(model),
        buffers,
        onInference: (inf) => {
          if (inf.frame.frameId === 1) throw new Error('handler failed');
        },
        onError: (_f, err) => {
          throw err;
        },
      });
      for (const f of frames(pool, 6)) {
        f.width = 640;
        f.height = 480;
        f.captureTime = wallClock();
        slot.push(f);
      }
      slot.close();
      // Frame 2 was being preprocessed while frame 1's handler threw.
      await assert.rejects(pipeline.run(), /handler failed/);
      assert.equal(pre.busy, false);
      slot.clear();
      assert.equal(pool.available, 6, 'every frame went back to the pool');
      pre.start(frames(pool, 1)[0], 0);
      pre.wait();
      await pre.close();
    });
  }
});
