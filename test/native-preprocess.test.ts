import assert from 'node:assert/strict';
import { resolve } from 'node:path';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import type { InputSpec } from '../models/card.ts';
import { type Frame, inputLength, type PixelFormat, preprocess } from '../models/preprocess.ts';
import { loadPreprocessBinding, preprocessBinding } from '../native/binding.ts';
import {
  NativePreprocessThread,
  preprocessAsync,
  preprocessNative,
  preprocessNativeSync,
} from '../native/preprocess.ts';

const loaded = loadPreprocessBinding();
// A binary named explicitly (npm run test:native-asan) must load: never skip it silently.
const explicit = process.env.CASCADE_NATIVE_PATH;
const skip =
  loaded.binding || explicit
    ? false
    : `native kernel not built (npm run build:native): ${loaded.failures.join('; ')}`;

const FORMATS: PixelFormat[] = ['rgb', 'bgr', 'nv12', 'gray'];

/** A random frame, spec and options; frame sizes up to 96×80 with optional row padding. */
const caseArb = fc
  .record({
    format: fc.constantFrom(...FORMATS),
    w: fc.integer({ min: 1, max: 48 }),
    h: fc.integer({ min: 1, max: 40 }),
    pad: fc.integer({ min: 0, max: 7 }),
    seed: fc.integer({ min: 0, max: 2 ** 31 - 1 }),
    ow: fc.integer({ min: 1, max: 32 }),
    oh: fc.integer({ min: 1, max: 32 }),
    colour: fc.constantFrom<InputSpec['colour']>('gray', 'rgb', 'bgr'),
    layout: fc.constantFrom<InputSpec['layout']>('NCHW', 'NHWC'),
    out: fc.constantFrom('float32', 'uint8', 'int8'),
    resize: fc.constantFrom<'area' | 'bilinear'>('area', 'bilinear'),
    letterbox: fc.boolean(),
    crop: fc.option(fc.tuple(fc.nat(), fc.nat(), fc.nat(), fc.nat()), { nil: undefined }),
    padValue: fc.integer({ min: 0, max: 255 }),
  })
  .map((c) => {
    // NV12 needs even sizes; double them so that every size can occur.
    const width = c.format === 'nv12' ? 2 * c.w : c.w;
    const height = c.format === 'nv12' ? 2 * c.h : c.h;
    const bpp = c.format === 'rgb' || c.format === 'bgr' ? 3 : 1;
    const stride = width * bpp + c.pad;
    const rows = c.format === 'nv12' ? height * 1.5 : height;
    const data = new Uint8Array(stride * rows);
    let s = c.seed;
    for (let i = 0; i < data.length; i++) {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      data[i] = s >>> 24;
    }
    const frame: Frame = { data, width, height, format: c.format, stride };
    const k = c.colour === 'gray' ? 1 : 3;
    const spec: InputSpec = {
      name: 'input',
      layout: c.layout,
      height: c.oh,
      width: c.ow,
      colour: c.colour,
      mean: k === 1 ? [0.286] : [0.485, 0.456, 0.406],
      std: k === 1 ? [0.353] : [0.229, 0.224, 0.225],
    };
    if (c.out !== 'float32') {
      spec.quant = {
        scale: 0.0111,
        zeroPoint: c.out === 'uint8' ? 73 : -5,
        dtype: c.out as 'uint8' | 'int8',
      };
    }
    const n = inputLength(spec);
    const mk = () =>
      c.out === 'float32' ? new Float32Array(n) : c.out === 'uint8' ? new Uint8Array(n) : new Int8Array(n);
    let crop: { x: number; y: number; width: number; height: number } | undefined;
    if (c.crop) {
      const x = c.crop[0] % width;
      const y = c.crop[1] % height;
      crop = { x, y, width: 1 + (c.crop[2] % (width - x)), height: 1 + (c.crop[3] % (height - y)) };
    }
    return {
      frame,
      spec,
      mk,
      opts: { resize: c.resize, letterbox: c.letterbox, crop, padValue: c.padValue },
    };
  });

describe('native preprocessing kernel', { skip }, () => {
  it('loads the kernel (the one CASCADE_NATIVE_PATH names, when set)', (t) => {
    assert.ok(loaded.binding, `failed to load: ${loaded.failures.join('; ')}`);
    if (explicit) assert.equal(loaded.path, resolve(explicit));
    t.diagnostic(`${loaded.path} sanitizers=[${loaded.binding.info.sanitizers}]`);
  });

  it('matches the TypeScript reference bit for bit on random frames, formats, specs and options', async () => {
    await fc.assert(
      fc.asyncProperty(caseArb, async ({ frame, spec, mk, opts }) => {
        const ref = mk();
        preprocess(frame, spec, ref, opts);
        const viaAsync = mk();
        await preprocessNative(frame, spec, viaAsync, opts);
        assert.deepEqual(viaAsync, ref);
        const viaSync = mk();
        preprocessNativeSync(frame, spec, viaSync, opts);
        assert.deepEqual(viaSync, ref);
      }),
      { numRuns: 300 },
    );
  });

  it('matches the reference on a 640×480 camera frame into the device card input', async () => {
    const { readFile } = await import('node:fs/promises');
    const spec = JSON.parse(await readFile('models/device/card.json', 'utf8')).input as InputSpec;
    const data = new Uint8Array(640 * 480 * 3).map((_, i) => (i * 2654435761) >>> 24);
    for (const format of ['rgb', 'nv12'] as const) {
      const frame: Frame = { data, width: 640, height: 480, format };
      const ref = new Float32Array(inputLength(spec));
      const nat = new Float32Array(inputLength(spec));
      preprocess(frame, spec, ref);
      await preprocessAsync(frame, spec, nat);
      assert.deepEqual(nat, ref);
      const q = new Uint8Array(inputLength(spec));
      const qRef = new Uint8Array(inputLength(spec));
      preprocess(frame, spec, qRef);
      await preprocessNative(frame, spec, q);
      assert.deepEqual(q, qRef);
    }
  });

  it('keeps many concurrent calls apart (each on the libuv pool with its own buffers)', async () => {
    const frames = Array.from(
      { length: 16 },
      (_, i): Frame => ({
        data: new Uint8Array(64 * 48 * 3).fill(10 * i),
        width: 64,
        height: 48,
        format: 'rgb',
      }),
    );
    const spec: InputSpec = {
      name: 'x',
      layout: 'NCHW',
      height: 8,
      width: 8,
      colour: 'rgb',
      mean: [0],
      std: [1],
    };
    const outs = Array.from({ length: 16 }, () => new Float32Array(inputLength(spec)));
    const pending = outs.map((o, i) => preprocessNative(frames[i], spec, o));
    await Promise.all(pending);
    outs.forEach((o, i) => {
      const want = Math.fround((10 * i) / 255);
      assert.deepEqual(o, new Float32Array(o.length).fill(want), `call ${i}`);
    });
  });

  it('raises the same typed errors as the reference through the wrapper, never crashing', async () => {
    const spec: InputSpec = {
      name: 'x',
      layout: 'NCHW',
      height: 2,
      width: 2,
      colour: 'gray',
      mean: [0],
      std: [1],
    };
    const frame: Frame = { data: new Uint8Array(16), width: 4, height: 4, format: 'gray' };
    assert.throws(() => preprocessNative(frame, spec, new Float32Array(3)), {
      name: 'RangeError',
      message: /out length/,
    });
    assert.throws(() => preprocessNative({ ...frame, format: 'nv12', width: 3 }, spec, new Float32Array(4)), {
      name: 'RangeError',
      message: /NV12 frame size: expected even width and height/,
    });
    assert.throws(
      () => preprocessNative({ ...frame, format: 'rgba' as PixelFormat }, spec, new Float32Array(4)),
      {
        name: 'TypeError',
        message: /frame\.format/,
      },
    );
    await assert.rejects(
      preprocessAsync({ ...frame, data: new Uint8Array(3) }, spec, new Float32Array(4)),
      RangeError,
    );
  });

  it('rejects bad raw calls with TypeError/RangeError code NATIVE_ERR_INVALID_ARG', () => {
    const b = preprocessBinding();
    const src = new Uint8Array(16);
    const out = new Float32Array(4);
    // A valid 4×4 gray → 2×2 area call: two taps per axis.
    const taps = () => ({ idx: Int32Array.of(0, 1, 2, 3), w: Int32Array.of(1024, 1024, 1024, 1024) });
    const ints = Int32Array.of(0, 4, 4, 4, 0, 2, 2, 1, 1, 0, 0, 2, 2, 2, 2, 1, 0, 1, 2, 0, 0, 255);
    const floats = Float64Array.of(1 / 255 / 2 ** 22, 0, 0, 0, 0, 0, 19595, 38470, 7471, 0, 1);
    const call = (over: {
      src?: Uint8Array;
      out?: Float32Array | Uint8Array;
      i?: [number, number];
      xIdx?: Int32Array;
      xW?: Int32Array;
    }) => {
      const x = taps();
      const y = taps();
      const p = ints.slice();
      if (over.i) p[over.i[0]] = over.i[1];
      b.preprocessSync(
        over.src ?? src,
        over.out ?? out,
        over.xIdx ?? x.idx,
        over.xW ?? x.w,
        y.idx,
        y.w,
        p,
        floats,
      );
    };
    src.set([0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150]);
    call({});
    assert.deepEqual(
      [...out],
      [25, 45, 105, 125].map((p) => Math.fround(p * 2 ** 22 * floats[0])),
    );
    const bad = (
      over: Parameters<typeof call>[0],
      kind: typeof TypeError | typeof RangeError,
      message: RegExp,
    ) =>
      assert.throws(
        () => call(over),
        (err: unknown) =>
          err instanceof kind &&
          (err as { code?: string }).code === 'NATIVE_ERR_INVALID_ARG' &&
          message.test((err as Error).message),
      );
    bad({ xIdx: Int32Array.of(0, 1, 2, 4) }, RangeError, /x taps outside the frame/);
    bad({ xIdx: Int32Array.of(-1, 1, 2, 3) }, RangeError, /x taps outside the frame/);
    bad({ xW: Int32Array.of(2048, 2048, 1024, 1024) }, RangeError, /bad weights/);
    bad({ src: new Uint8Array(15) }, RangeError, /frame buffer too short/);
    bad({ out: new Float32Array(5) }, RangeError, /output buffer length/);
    bad({ out: new Uint8Array(4) }, TypeError, /out's type/);
    bad({ i: [0, 7] }, TypeError, /unknown pixel format/);
    bad({ i: [0, 3] }, RangeError, /frame buffer too short|NV12/);
    bad({ i: [1, 3] }, RangeError, /stride|NV12|taps/);
    bad({ i: [3, 2] }, RangeError, /stride shorter/);
    bad({ i: [9, 1] }, RangeError, /content box/);
    assert.throws(
      () => b.preprocessSync(src, out, taps().idx, taps().w, taps().idx, taps().w, ints.subarray(1), floats),
      {
        name: 'RangeError',
      },
    );
    assert.throws(() => (b.preprocessSync as (...a: unknown[]) => void)('nope', out), { name: 'TypeError' });
  });
});

describe('native preprocessing thread (start/wait hand-off)', { skip }, () => {
  const spec: InputSpec = {
    name: 'x',
    layout: 'NCHW',
    height: 6,
    width: 5,
    colour: 'gray',
    mean: [0.2],
    std: [0.5],
  };
  const gray = (w: number, h: number, seed: number): Frame => ({
    data: new Uint8Array(w * h).map((_, i) => ((i + seed) * 2654435761) >>> 24),
    width: w,
    height: h,
    format: 'gray',
  });

  it('matches the reference bit for bit on random frames, alternating two outputs, spinning or not', async () => {
    // Spins 0: every hand-off goes through the sleep/wake-up path; 1000: through the spin path.
    for (const spins of [0, 1000]) {
      const thread = new NativePreprocessThread({ spinUs: spins, idleSpinUs: spins });
      try {
        let k = 0;
        await fc.assert(
          fc.property(caseArb, ({ frame, spec: s, mk, opts }) => {
            const ref = mk();
            preprocess(frame, s, ref, opts);
            const a = mk();
            const b = mk();
            // The same tables twice (cached check), then the next case's (re-checked).
            for (const out of [a, b]) {
              thread.start(frame, s, out, opts);
              assert.equal(thread.busy, true);
              const ms = thread.wait();
              assert.ok(ms >= 0 && ms < 10_000, `start → done ${ms} ms`);
              assert.ok(thread.lastRunMs >= 0 && thread.lastRunMs <= ms);
              k++;
            }
            assert.equal(thread.busy, false);
            assert.deepEqual(a, ref);
            assert.deepEqual(b, ref);
          }),
          { numRuns: 150 },
        );
        const { spinHits, blocks } = thread.counters;
        assert.equal(spinHits + blocks, k, 'every wait() counted once');
        if (spins === 0) assert.ok(blocks > 0, 'without a spin, waits block');
      } finally {
        thread.close();
      }
    }
  });

  it('runs 640×480 camera frames into the device card input exactly as the reference', async () => {
    const { readFile } = await import('node:fs/promises');
    const dev = JSON.parse(await readFile('models/device/card.json', 'utf8')).input as InputSpec;
    const thread = new NativePreprocessThread();
    try {
      for (let i = 0; i < 4; i++) {
        const data = new Uint8Array(640 * 480 * 3).map((_, j) => ((j + i * 7919) * 2654435761) >>> 24);
        const frame: Frame = { data, width: 640, height: 480, format: i % 2 ? 'nv12' : 'rgb' };
        const ref = new Float32Array(inputLength(dev));
        preprocess(frame, dev, ref);
        const out = new Float32Array(inputLength(dev));
        thread.start(frame, dev, out);
        thread.wait();
        assert.deepEqual(out, ref);
      }
    } finally {
      thread.close();
    }
  });

  it('survives thousands of tiny jobs, spinning, blocking and mixed, with nothing lost', () => {
    const frame = gray(7, 9, 1);
    const ref = new Float32Array(inputLength(spec));
    preprocess(frame, spec, ref);
    for (const [spinUs, idleSpinUs] of [
      [0, 0],
      [1000, 0],
      [0, 1000],
      [20, 20],
    ]) {
      const thread = new NativePreprocessThread({ spinUs, idleSpinUs });
      const out = new Float32Array(inputLength(spec));
      for (let i = 0; i < 3000; i++) {
        out.fill(Number.NaN);
        thread.start(frame, spec, out);
        // Sometimes the caller comes late: the thread has finished and gone idle (or to sleep).
        if (i % 500 === 0) {
          const end = performance.now() + 2;
          while (performance.now() < end);
        }
        thread.wait();
        if (i % 97 === 0) assert.deepEqual(out, ref, `job ${i} (${spinUs}/${idleSpinUs})`);
      }
      assert.deepEqual(out, ref);
      thread.close();
    }
  });

  it('refuses misuse with clear errors and stays usable', () => {
    const thread = new NativePreprocessThread({ spinUs: 50, idleSpinUs: 50 });
    const frame = gray(8, 8, 2);
    const out = new Float32Array(inputLength(spec));
    assert.throws(() => thread.wait(), /wait\(\) without a started job/);
    // A frame the plan refuses: nothing starts.
    assert.throws(() => thread.start({ ...frame, data: new Uint8Array(10) }, spec, out), RangeError);
    assert.equal(thread.busy, false);
    assert.throws(() => thread.start(frame, spec, new Float32Array(3)), {
      name: 'RangeError',
      message: /out length/,
    });
    thread.start(frame, spec, out);
    assert.throws(() => thread.start(frame, spec, out), /while a job runs/);
    thread.wait();
    const ref = new Float32Array(inputLength(spec));
    preprocess(frame, spec, ref);
    assert.deepEqual(out, ref);
    // close() waits for a job in flight (its output is complete), and is idempotent.
    out.fill(0);
    thread.start(frame, spec, out);
    thread.close();
    assert.deepEqual(out, ref);
    thread.close();
    assert.throws(() => thread.start(frame, spec, out), /after close\(\)/);
    assert.throws(() => thread.wait(), /without a started job/);
    assert.throws(() => new NativePreprocessThread({ spinUs: -1 }), RangeError);
    assert.throws(() => new NativePreprocessThread({ idleSpinUs: Number.NaN }), RangeError);
  });

  it('checks raw jobs like preprocessSync, copies the tables, and re-checks tables changed in place', () => {
    const Ctor = preprocessBinding().PreprocessThread;
    assert.ok(Ctor, 'the built addon has PreprocessThread');
    const stats = new Float64Array(4);
    const h = new Ctor(0, 0, stats);
    try {
      const src = new Uint8Array(16);
      src.set([0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150]);
      const out = new Float32Array(4);
      const ints = Int32Array.of(0, 4, 4, 4, 0, 2, 2, 1, 1, 0, 0, 2, 2, 2, 2, 1, 0, 1, 2, 0, 0, 255);
      const floats = Float64Array.of(1 / 255 / 2 ** 22, 0, 0, 0, 0, 0, 19595, 38470, 7471, 0, 1);
      const xIdx = Int32Array.of(0, 1, 2, 3);
      const w = Int32Array.of(1024, 1024, 1024, 1024);
      const yIdx = Int32Array.of(0, 1, 2, 3);
      const want = [25, 45, 105, 125].map((p) => Math.fround(p * 2 ** 22 * floats[0]));
      h.start(src, out, xIdx, w, yIdx, w, ints, floats);
      // The thread reads its own copy: changing the tables now cannot reach it.
      xIdx[3] = 1 << 30;
      h.wait();
      assert.deepEqual([...out], want);
      assert.ok(stats[0] >= stats[1] && stats[1] >= 0, `stats ${[...stats]}`);
      assert.equal(stats[2] + stats[3], 1);
      // The same array, changed in place, is checked again before it is used.
      const isArgError = (message: RegExp) => (err: unknown) =>
        err instanceof RangeError &&
        (err as { code?: string }).code === 'NATIVE_ERR_INVALID_ARG' &&
        message.test(err.message);
      assert.throws(() => h.start(src, out, xIdx, w, yIdx, w, ints, floats), isArgError(/x taps outside/));
      assert.equal(h.busy, false);
      xIdx[3] = 3;
      // The same tables for a narrower frame: index 3 is now outside it.
      const narrow = ints.slice();
      narrow[1] = 3;
      narrow[3] = 3;
      assert.throws(
        () => h.start(new Uint8Array(12), out, xIdx, w, yIdx, w, narrow, floats),
        isArgError(/x taps outside/),
      );
      assert.throws(
        () => h.start(new Uint8Array(15), out, xIdx, w, yIdx, w, ints, floats),
        isArgError(/too short/),
      );
      h.start(src, out, xIdx, w, yIdx, w, ints, floats);
      h.wait();
      assert.deepEqual([...out], want);
      assert.throws(() => new Ctor(0, 0, new Float64Array(3)), { name: 'TypeError' });
      assert.throws(() => new Ctor(-1, 0, new Float64Array(4)), { name: 'RangeError' });
    } finally {
      h.close();
    }
  });

  it('joins the threads of handles closed or dropped unclosed (no thread left running)', {
    skip: process.platform === 'linux' ? false : 'counts threads through /proc/self/task',
  }, async () => {
    const { spawnSync } = await import('node:child_process');
    // A child with --expose-gc: drop 8 unclosed handles (one with a job in flight), collect
    // them, and count the process's threads before and after.
    const script = `
      const { readdirSync } = require('node:fs');
      const b = require(${JSON.stringify(loaded.path)});
      const tasks = () => readdirSync('/proc/self/task').length;
      const settle = () => new Promise((r) => setTimeout(r, 50));
      (async () => {
        await settle();
        const before = tasks();
        let hs = Array.from({ length: 8 }, () => new b.PreprocessThread(0, 0, new Float64Array(4)));
        const during = tasks();
        const src = new Uint8Array(16), out = new Float32Array(4), t = Int32Array.of(0, 1, 2, 3), w = Int32Array.of(1024, 1024, 1024, 1024);
        const ints = Int32Array.of(0, 4, 4, 4, 0, 2, 2, 1, 1, 0, 0, 2, 2, 2, 2, 1, 0, 1, 2, 0, 0, 255);
        const floats = Float64Array.of(1e-9, 0, 0, 0, 0, 0, 19595, 38470, 7471, 0, 1);
        hs[0].start(src, out, t, w, t, w, ints, floats);
        const closed = Array.from({ length: 4 }, () => new b.PreprocessThread(0, 0, new Float64Array(4)));
        for (const h of closed) h.close();
        hs = null;
        for (let i = 0; i < 5; i++) { globalThis.gc(); await settle(); }
        console.log(JSON.stringify({ before, during, after: tasks() }));
      })();`;
    const r = spawnSync(process.execPath, ['--expose-gc', '-e', script], {
      encoding: 'utf8',
      env: process.env,
    });
    assert.equal(r.status, 0, r.stderr);
    const { before, during, after } = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}');
    assert.equal(during, before + 8);
    assert.equal(after, before, `threads before ${before}, after ${after}`);
  });
});
