import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { type InputSpec, parseModelCard } from '../models/card.ts';
import { loadBundledSample } from '../models/data/load.ts';
import { type Frame, inputLength, type PixelFormat, preprocess } from '../models/preprocess.ts';
import { OnnxClassifier } from '../models/runtime.ts';

function spec(over: Partial<InputSpec> = {}): InputSpec {
  return {
    name: 'input',
    layout: 'NCHW',
    height: 2,
    width: 2,
    colour: 'gray',
    mean: [0],
    std: [1],
    ...over,
  };
}

/** The normalised float of a pixel level, as the card defines it: (p / 255 − mean) / std. */
function norm(p: number, mean = 0, std = 1): number {
  return Math.fround((p / 255 - mean) / std);
}

function close(actual: ArrayLike<number>, expected: number[], tol = 2e-7): void {
  assert.equal(actual.length, expected.length);
  for (let i = 0; i < expected.length; i++) {
    assert.ok(Math.abs(actual[i] - expected[i]) <= tol, `[${i}] ${actual[i]} vs ${expected[i]}`);
  }
}

function run(frame: Frame, s: InputSpec, opts?: Parameters<typeof preprocess>[3]): Float32Array {
  const out = new Float32Array(inputLength(s));
  preprocess(frame, s, out, opts);
  return out;
}

describe('preprocess: colour and layout', () => {
  it('copies a gray frame of the model size exactly, normalised by mean/std', () => {
    const s = spec({ mean: [0.5], std: [0.25] });
    const out = run({ data: Uint8Array.of(0, 64, 128, 255), width: 2, height: 2, format: 'gray' }, s);
    assert.deepEqual(
      [...out],
      [0, 64, 128, 255].map((p) => norm(p, 0.5, 0.25)),
    );
  });

  it('turns RGB and BGR frames into BT.601 luma for gray models', () => {
    const s = spec({ width: 1, height: 1 });
    const red = run({ data: Uint8Array.of(255, 0, 0), width: 1, height: 1, format: 'rgb' }, s);
    close(red, [norm(255 * (19595 / 65536))]);
    const blueBgr = run({ data: Uint8Array.of(255, 0, 0), width: 1, height: 1, format: 'bgr' }, s);
    close(blueBgr, [norm(255 * (7471 / 65536))]);
    const white = run({ data: Uint8Array.of(255, 255, 255), width: 1, height: 1, format: 'rgb' }, s);
    assert.equal(white[0], 1);
  });

  it('writes RGB models in NCHW and NHWC with per-channel mean/std, swapping for BGR', () => {
    const data = Uint8Array.of(10, 20, 30, 40, 50, 60); // two pixels, 1×2
    const mean = [0.1, 0.2, 0.3];
    const std = [0.5, 0.25, 2];
    const frame: Frame = { data, width: 2, height: 1, format: 'rgb' };
    const chan = (p: number, k: number) => norm(p, mean[k], std[k]);
    const nchw = run(frame, spec({ width: 2, height: 1, colour: 'rgb', mean, std }));
    assert.deepEqual(
      [...nchw],
      [chan(10, 0), chan(40, 0), chan(20, 1), chan(50, 1), chan(30, 2), chan(60, 2)],
    );
    const nhwc = run(frame, spec({ width: 2, height: 1, colour: 'rgb', layout: 'NHWC', mean, std }));
    assert.deepEqual(
      [...nhwc],
      [chan(10, 0), chan(20, 1), chan(30, 2), chan(40, 0), chan(50, 1), chan(60, 2)],
    );
    // BGR model, RGB frame: channel 0 is blue.
    const bgr = run(frame, spec({ width: 2, height: 1, colour: 'bgr', layout: 'NHWC', mean, std }));
    assert.deepEqual(
      [...bgr],
      [chan(30, 0), chan(20, 1), chan(10, 2), chan(60, 0), chan(50, 1), chan(40, 2)],
    );
    // BGR frame, BGR model: no swap.
    const same = run(
      { ...frame, format: 'bgr' },
      spec({ width: 2, height: 1, colour: 'bgr', layout: 'NHWC', mean, std }),
    );
    assert.deepEqual(
      [...same],
      [chan(10, 0), chan(20, 1), chan(30, 2), chan(40, 0), chan(50, 1), chan(60, 2)],
    );
  });

  it('replicates gray frames into every channel of colour models', () => {
    const out = run(
      { data: Uint8Array.of(200), width: 1, height: 1, format: 'gray' },
      spec({ width: 1, height: 1, colour: 'rgb', mean: [0, 0.5, 1], std: [1] }),
    );
    assert.deepEqual([...out], [norm(200, 0), norm(200, 0.5), norm(200, 1)]);
  });

  it('converts NV12 with BT.601 video range: black, white, red, and luma for gray models', () => {
    // 2×2 frame: Y plane (4 bytes), then one UV pair.
    const nv12 = (y: number, u: number, v: number): Frame => ({
      data: Uint8Array.of(y, y, y, y, u, v),
      width: 2,
      height: 2,
      format: 'nv12',
    });
    const rgb = spec({ width: 1, height: 1, colour: 'rgb', layout: 'NHWC' });
    assert.deepEqual([...run(nv12(16, 128, 128), rgb)], [0, 0, 0]);
    assert.deepEqual([...run(nv12(235, 128, 128), rgb)], [1, 1, 1]);
    assert.deepEqual([...run(nv12(81, 90, 240), rgb)], [1, 0, 0]);
    const gray = spec({ width: 1, height: 1 });
    // (298 × (126 − 16) + 128) >> 8 = 128.
    assert.deepEqual([...run(nv12(126, 0, 255), gray)], [norm(128)]);
  });

  it('honours a row stride (padded rows read as the packed frame)', () => {
    const packed = Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12);
    const padded = Uint8Array.of(1, 2, 3, 4, 5, 6, 99, 99, 7, 8, 9, 10, 11, 12);
    const s = spec({ width: 2, height: 2, colour: 'rgb' });
    const a = run({ data: packed, width: 2, height: 2, format: 'rgb' }, s);
    const b = run({ data: padded, width: 2, height: 2, format: 'rgb', stride: 8 }, s);
    assert.deepEqual([...b], [...a]);
  });

  it('matches OnnxClassifier.preprocess on the device card at the model size', async () => {
    const m = await OnnxClassifier.load('models/device/card.json');
    try {
      const s = m.card.input;
      const hw = s.height * s.width;
      const gray = new Uint8Array(hw).map((_, i) => (i * 37) % 256);
      const ours = run({ data: gray, width: s.width, height: s.height, format: 'gray' }, s);
      assert.deepEqual([...ours], [...m.preprocess(gray, 1)]);
      const rgb = new Uint8Array(hw * 3).map((_, i) => (i * 91) % 256);
      const fromRgb = run({ data: rgb, width: s.width, height: s.height, format: 'rgb' }, s);
      // Luma weights in Q16 versus the runtime's decimal BT.601 weights: within 1e-4 pixel levels.
      close(fromRgb, [...m.preprocess(rgb, 1)], 1e-5);
    } finally {
      await m.dispose();
    }
  });
});

describe('preprocess: geometry', () => {
  const gray1 = (w: number, h: number) => spec({ width: w, height: h });

  it('area-averages 2×2 blocks exactly when halving', () => {
    const data = Uint8Array.of(0, 10, 100, 110, 20, 30, 120, 130, 1, 2, 3, 4, 5, 6, 7, 8);
    const out = run({ data, width: 4, height: 4, format: 'gray' }, gray1(2, 2));
    close(
      out,
      [15, 115, 3.5, 5.5].map((p) => p / 255),
    );
  });

  it('area-weights overlapping pixels (3 → 2: 2/3 and 1/3 in Q11)', () => {
    const out = run({ data: Uint8Array.of(0, 255, 90), width: 3, height: 1, format: 'gray' }, gray1(2, 1));
    close(out, [(1365 * 0 + 683 * 255) / 2048 / 255, (683 * 255 + 1365 * 90) / 2048 / 255]);
  });

  it('bilinear upscaling uses half-pixel centres and clamps at the edges', () => {
    const out = run({ data: Uint8Array.of(0, 200), width: 2, height: 1, format: 'gray' }, gray1(4, 1), {
      resize: 'bilinear',
    });
    close(
      out,
      [0, 50, 150, 200].map((p) => p / 255),
    );
  });

  it('crops before resizing', () => {
    const data = new Uint8Array(16).map((_, i) => i * 10);
    const out = run({ data, width: 4, height: 4, format: 'gray' }, gray1(2, 2), {
      crop: { x: 1, y: 2, width: 2, height: 2 },
    });
    close(
      out,
      [90, 100, 130, 140].map((p) => p / 255),
    );
  });

  it('letterboxes: keeps the aspect ratio, centres, pads with padValue', () => {
    // 4×2 frame into a 4×4 model: content 4×2 in rows 1–2, padding above and below.
    const data = Uint8Array.of(10, 20, 30, 40, 50, 60, 70, 80);
    const out = run({ data, width: 4, height: 2, format: 'gray' }, gray1(4, 4), {
      letterbox: true,
      padValue: 255,
    });
    close(
      out,
      [255, 255, 255, 255, 10, 20, 30, 40, 50, 60, 70, 80, 255, 255, 255, 255].map((p) => p / 255),
    );
    // Tall frame into a wide model: columns padded left and right (black by default).
    const tall = run({ data, width: 2, height: 4, format: 'gray' }, gray1(4, 4), { letterbox: true });
    close(
      tall,
      [0, 10, 20, 0, 0, 30, 40, 0, 0, 50, 60, 0, 0, 70, 80, 0].map((p) => p / 255),
    );
  });

  it('maps a constant frame to the constant, whatever the sizes, filter, crop or letterbox', () => {
    fc.assert(
      fc.property(
        fc.record({
          w: fc.integer({ min: 1, max: 40 }),
          h: fc.integer({ min: 1, max: 40 }),
          ow: fc.integer({ min: 1, max: 24 }),
          oh: fc.integer({ min: 1, max: 24 }),
          p: fc.integer({ min: 0, max: 255 }),
          bilinear: fc.boolean(),
          letterbox: fc.boolean(),
        }),
        ({ w, h, ow, oh, p, bilinear, letterbox }) => {
          const out = run(
            { data: new Uint8Array(w * h).fill(p), width: w, height: h, format: 'gray' },
            gray1(ow, oh),
            {
              resize: bilinear ? 'bilinear' : 'area',
              letterbox,
              padValue: p,
            },
          );
          for (const v of out) assert.equal(v, norm(p));
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe('preprocess: camera frames', () => {
  it('recovers the exact model input from a sample upscaled ×16 into a 640×480 RGB frame', async () => {
    const ds = await loadBundledSample();
    const s = parseModelCard(
      JSON.parse(await readFile('models/device/card.json', 'utf8')),
      'device card',
    ).input;
    const { width: w, height: h } = ds;
    const frame = new Uint8Array(640 * 480 * 3);
    const x0 = (640 - 16 * w) / 2;
    const y0 = (480 - 16 * h) / 2;
    for (let i = 0; i < 8; i++) {
      const img = ds.images.subarray(i * w * h, (i + 1) * w * h);
      frame.fill(37);
      for (let y = 0; y < 16 * h; y++) {
        for (let x = 0; x < 16 * w; x++)
          frame.fill(
            img[(y >> 4) * w + (x >> 4)],
            ((y0 + y) * 640 + x0 + x) * 3,
            ((y0 + y) * 640 + x0 + x + 1) * 3,
          );
      }
      const fromCamera = run({ data: frame, width: 640, height: 480, format: 'rgb' }, s, {
        crop: { x: x0, y: y0, width: 16 * w, height: 16 * h },
      });
      const direct = run({ data: img, width: w, height: h, format: 'gray' }, s);
      // Area resize of 16×16 equal blocks, and BT.601 luma of equal R, G, B, are exact.
      assert.deepEqual(fromCamera, direct);
    }
  });
});

describe('preprocess: quantization', () => {
  const q8 = (dtype: 'uint8' | 'int8', scale: number, zeroPoint: number) =>
    spec({ width: 1, height: 1, quant: { scale, zeroPoint, dtype } });
  const one = (p: number): Frame => ({ data: Uint8Array.of(p), width: 1, height: 1, format: 'gray' });

  it('writes uint8 as clamp(round(x / scale) + zeroPoint)', () => {
    const s = q8('uint8', 1 / 64, 10);
    const out = new Uint8Array(1);
    preprocess(one(255), s, out);
    assert.equal(out[0], 74);
    preprocess(
      one(0),
      spec({ width: 1, height: 1, mean: [1], quant: { scale: 0.1, zeroPoint: 3, dtype: 'uint8' } }),
      out,
    );
    assert.equal(out[0], 0); // −10 + 3 clamps at 0
  });

  it('writes int8 with its zero point and clamps at 127', () => {
    const out = new Int8Array(1);
    preprocess(one(255), q8('int8', 1 / 100, -20), out);
    assert.equal(out[0], 80);
    preprocess(one(255), q8('int8', 1 / 1000, 0), out);
    assert.equal(out[0], 127);
  });

  it('rounds halves to even, as ONNX QuantizeLinear does', () => {
    const out = new Uint8Array(1);
    preprocess(one(255), q8('uint8', 0.4, 0), out); // 1 / 0.4 = 2.5 → 2
    assert.equal(out[0], 2);
    // x = 1 + 0.75 = 1.75, / 0.5 = 3.5 → 4.
    preprocess(
      one(255),
      spec({ width: 1, height: 1, mean: [-0.75], quant: { scale: 0.5, zeroPoint: 0, dtype: 'uint8' } }),
      out,
    );
    assert.equal(out[0], 4);
    // x = 1 − 2.25 = −1.25, / 0.5 = −2.5 → −2.
    const i8 = new Int8Array(1);
    preprocess(
      one(255),
      spec({ width: 1, height: 1, mean: [2.25], quant: { scale: 0.5, zeroPoint: 0, dtype: 'int8' } }),
      i8,
    );
    assert.equal(i8[0], -2);
  });

  it('keeps float output unquantized for quantized cards (the model quantizes inside)', () => {
    const s = q8('uint8', 0.5, 0);
    assert.deepEqual([...run(one(51), s)], [norm(51)]);
  });
});

describe('preprocess: argument errors', () => {
  const s = spec();
  const frame: Frame = { data: new Uint8Array(4), width: 2, height: 2, format: 'gray' };

  it('rejects a wrong output length or type with RangeError/TypeError naming the expectation', () => {
    assert.throws(() => preprocess(frame, s, new Float32Array(5)), {
      name: 'RangeError',
      message: /out length: expected 4/,
    });
    assert.throws(() => preprocess(frame, s, new Uint8Array(4)), {
      name: 'TypeError',
      message: /out: expected a Float32Array/,
    });
    const quant = spec({ quant: { scale: 0.1, zeroPoint: 0, dtype: 'uint8' } });
    assert.throws(() => preprocess(frame, quant, new Int8Array(4)), TypeError);
    assert.throws(() => preprocess(frame, s, new Float64Array(4) as unknown as Float32Array), TypeError);
  });

  it('rejects unknown formats, odd NV12 sizes, short buffers and strides, and bad crops', () => {
    const out = new Float32Array(4);
    const bad = (f: Partial<Frame>) => ({ ...frame, ...f }) as Frame;
    assert.throws(() => preprocess(bad({ format: 'yuyv' as PixelFormat }), s, out), {
      name: 'TypeError',
      message: /frame\.format: expected one of/,
    });
    assert.throws(() => preprocess(bad({ format: 'nv12', width: 3, data: new Uint8Array(100) }), s, out), {
      name: 'RangeError',
      message: /NV12 frame size: expected even width and height, received "3x2"/,
    });
    assert.throws(() => preprocess(bad({ format: 'rgb' }), s, out), {
      name: 'RangeError',
      message: /frame\.data length/,
    });
    assert.throws(() => preprocess(bad({ format: 'nv12', data: new Uint8Array(5) }), s, out), RangeError);
    assert.throws(() => preprocess(bad({ stride: 1 }), s, out), {
      name: 'RangeError',
      message: /frame\.stride/,
    });
    assert.throws(() => preprocess(bad({ width: 0 }), s, out), TypeError);
    assert.throws(() => preprocess(frame, s, out, { crop: { x: 1, y: 0, width: 2, height: 1 } }), RangeError);
    assert.throws(
      () => preprocess(frame, s, out, { crop: { x: 0.5, y: 0, width: 1, height: 1 } }),
      TypeError,
    );
    assert.throws(() => preprocess(frame, s, out, { resize: 'cubic' as 'area' }), TypeError);
    assert.throws(() => preprocess(frame, s, out, { padValue: 256 }), RangeError);
    assert.throws(() => preprocess(frame, spec({ mean: [0, 0] }), out), /spec\.mean/);
  });
});
