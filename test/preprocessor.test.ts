import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { type CameraFrame, FramePool } from '../device/frames.ts';
import { type PreprocessBackend, Preprocessor, type PreprocessorOptions } from '../device/preprocessor.ts';
import type { InputSpec } from '../models/card.ts';
import { inputLength, preprocess, type Rect } from '../models/preprocess.ts';
import { InferenceBuffers } from '../models/runtime.ts';
import { isNativeAvailable } from '../native/binding.ts';

const spec = JSON.parse(readFileSync('models/device/card.json', 'utf8')).input as InputSpec;
const W = 160;
const H = 120;
const backends: PreprocessBackend[] = isNativeAvailable()
  ? ['native', 'worker', 'inline']
  : ['worker', 'inline'];

async function setUp(backend: PreprocessBackend, extra: Partial<PreprocessorOptions> = {}) {
  const pool = new FramePool({ size: 4, bytes: W * H * 3, shared: backend === 'worker' });
  const buffers = [new InferenceBuffers(spec, 10), new InferenceBuffers(spec, 10)] as const;
  const pre = await Preprocessor.create({ spec, buffers, pool, backend, ...extra });
  return { pool, buffers, pre };
}

/** A pool frame with pseudo-random pixels, and an ROI on odd seeds. */
function frameOf(pool: FramePool, seed: number): CameraFrame & { readonly roiBox: Rect } {
  const f = pool.acquire();
  assert.ok(f, 'a free frame');
  f.width = W;
  f.height = H;
  for (let i = 0; i < W * H * 3; i++) f.data[i] = ((i + seed * 7919) * 2654435761) >>> 24;
  f.roi =
    seed % 2 ? Object.assign(f.roiBox, { x: seed % 40, y: 3, width: 56 + (seed % 5), height: 60 }) : null;
  return f;
}

/** The reference model input for a frame (its ROI when set). */
function reference(f: CameraFrame): Float32Array {
  const out = new Float32Array(inputLength(spec));
  const frame = { data: f.data.subarray(0, W * H * 3), width: W, height: H, format: 'rgb' as const };
  preprocess(frame, spec, out, f.roi ? { crop: f.roi } : undefined);
  return out;
}

describe('Preprocessor sync hand-off (start/wait)', () => {
  for (const backend of backends) {
    it(`${backend}: writes the reference input into the buffer started, alternating A and B`, async () => {
      const { pool, buffers, pre } = await setUp(backend);
      try {
        assert.equal(pre.handoff, 'sync');
        for (let i = 0; i < 24; i++) {
          const f = frameOf(pool, i);
          const b = (i % 2) as 0 | 1;
          buffers[b].input.fill(Number.NaN);
          pre.start(f, b);
          assert.equal(pre.busy, true);
          const ms = pre.wait();
          assert.equal(pre.busy, false);
          assert.ok(ms >= 0 && ms < 10_000, `start → done ${ms} ms`);
          assert.deepEqual(buffers[b].input, reference(f), `frame ${i} into ${b ? 'B' : 'A'}`);
          f.release();
        }
        if (backend === 'native') {
          assert.ok(pre.lastRunMs >= 0);
          const c = pre.handoffCounters;
          assert.ok(c && c.spinHits + c.blocks >= 24);
        } else {
          assert.ok(Number.isNaN(pre.lastRunMs));
        }
      } finally {
        await pre.close();
      }
    });

    it(`${backend}: reports a refused frame for that frame only, and goes on`, async () => {
      const { pool, buffers, pre } = await setUp(backend);
      try {
        const bad = frameOf(pool, 0);
        bad.roi = Object.assign(bad.roiBox, { x: W - 10, y: 0, width: 28, height: 28 });
        // Refused at start (native, inline: the ROI is copied there) or at wait (worker).
        assert.throws(() => {
          pre.start(bad, 0);
          pre.wait();
        }, RangeError);
        assert.equal(pre.busy, false);
        bad.release();
        const good = frameOf(pool, 2);
        pre.start(good, 1);
        pre.wait();
        assert.deepEqual(buffers[1].input, reference(good));
        good.release();
      } finally {
        await pre.close();
      }
    });

    it(`${backend}: refuses misuse, and close() waits for a job in flight`, async () => {
      const { pool, buffers, pre } = await setUp(backend);
      const f = frameOf(pool, 4);
      assert.throws(() => pre.wait(), /wait\(\) without start\(\)/);
      buffers[0].input.fill(Number.NaN);
      pre.start(f, 0);
      assert.throws(() => pre.start(f, 1), /one request at a time/);
      await assert.rejects(pre.run(f, 1), /one request at a time/);
      // Nobody waits for it: close() does, and the buffer is complete afterwards.
      const inFlight = pre.busy;
      await pre.close();
      await pre.close();
      if (backend !== 'worker') {
        // The worker's output reaches the inference buffer only through wait() (a copy).
        assert.equal(inFlight, true);
        assert.deepEqual(buffers[0].input, reference(f));
      }
      assert.throws(() => pre.start(f, 0), /after close\(\)/);
      await assert.rejects(pre.run(f, 0), /after close\(\)/);
      f.release();
    });
  }

  it('spins of 0 (every hand-off sleeps and wakes) give the same results', async () => {
    for (const backend of backends.filter((b) => b !== 'inline')) {
      const { pool, buffers, pre } = await setUp(backend, { spinUs: 0, idleSpinUs: 0 });
      try {
        for (let i = 0; i < 10; i++) {
          const f = frameOf(pool, i);
          pre.start(f, 0);
          pre.wait();
          assert.deepEqual(buffers[0].input, reference(f), `${backend} frame ${i}`);
          f.release();
        }
      } finally {
        await pre.close();
      }
    }
  });

  it('rejects spins outside 0–1,000,000 µs', async () => {
    await assert.rejects(setUp('inline', { spinUs: -1 }), RangeError);
    await assert.rejects(setUp('inline', { idleSpinUs: 2e6 }), RangeError);
  });
});

describe('Preprocessor async hand-off (run)', () => {
  for (const backend of backends) {
    it(`${backend}: runs behind a promise and has no start()`, async () => {
      const { pool, buffers, pre } = await setUp(backend, { handoff: 'async' });
      try {
        assert.equal(pre.handoff, 'async');
        const f = frameOf(pool, 3);
        assert.throws(() => pre.start(f, 0), /needs the sync hand-off/);
        await pre.run(f, 1);
        assert.deepEqual(buffers[1].input, reference(f));
        f.release();
      } finally {
        await pre.close();
      }
    });
  }
});
