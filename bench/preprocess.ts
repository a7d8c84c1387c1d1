/**
 * bench:preprocess — one 640×480 RGB camera frame → the device model's input (its card's input
 * spec: size, colour, mean/std, layout), on one core, side by side in one run:
 *
 * - ts:     the TypeScript reference (models/preprocess.ts), area resize;
 * - native: the C++ kernel (native/preprocess.ts), awaited one frame at a time through the libuv
 *           pool as the device pipeline calls it (nativeSync: the same kernel on the main thread);
 * - sharp:  libvips resize of the RGB frame (kernel 'linear', fit 'fill') to raw output, then
 *           luma/channel order and mean/std to floats in JS (sharp.concurrency(1), cache off);
 * - opencv: @u4/opencv4nodejs cvtColor + blobFromImage (INTER_LINEAR resize, scale, mean) on one
 *           thread, when installed (`npm run setup:opencv`), else null.
 *
 *   npm run bench:preprocess -- [--rounds N] [--frames N] [--json]
 *
 * Each round times `frames` consecutive frames per method, methods interleaved round by round so
 * that a change in machine load does not favour one; the report gives per-method medians over
 * rounds. Prints {"tsNsPerFrame","nativeNsPerFrame","sharpNsPerFrame","opencvNsPerFrame",...}.
 */
import { readFile } from 'node:fs/promises';
import sharp from 'sharp';
import { numberOpt, parse } from '../cascade/args.ts';
import { parseModelCard } from '../models/card.ts';
import { type Frame, inputLength, preprocess } from '../models/preprocess.ts';
import { isNativeAvailable, loadPreprocessBinding } from '../native/binding.ts';
import { loadOpenCv } from '../native/opencv.ts';
import { preprocessNative, preprocessNativeSync } from '../native/preprocess.ts';

type Method = () => void | Promise<void>;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

async function main(): Promise<void> {
  const { values: v } = parse(process.argv.slice(2), {
    rounds: { type: 'string' },
    frames: { type: 'string' },
    json: { type: 'boolean' },
  });
  const rounds = numberOpt('--rounds', v.rounds, { integer: true, min: 1 }) ?? 15;
  const frames = numberOpt('--frames', v.frames, { integer: true, min: 1 }) ?? 40;
  const cardPath = new URL('../models/device/card.json', import.meta.url);
  const card = parseModelCard(JSON.parse(await readFile(cardPath, 'utf8')), 'models/device/card.json');
  const spec = card.input;
  const W = 640;
  const H = 480;
  // A deterministic textured frame (content does not change the work done).
  const data = new Uint8Array(W * H * 3);
  for (let i = 0; i < data.length; i++) data[i] = (Math.imul(i, 2654435761) >>> 24) ^ ((i / 1920) & 0xff);
  const frame: Frame = { data, width: W, height: H, format: 'rgb' };
  const n = inputLength(spec);
  const out = new Float32Array(n);
  const gray = spec.colour === 'gray';
  const c = gray ? 1 : 3;
  const a = Array.from({ length: c }, (_, k) => 1 / (255 * (spec.std[k] ?? spec.std[0])));
  const b = Array.from(
    { length: c },
    (_, k) => -(spec.mean[k] ?? spec.mean[0]) / (spec.std[k] ?? spec.std[0]),
  );
  const hw = spec.height * spec.width;
  /**
   * RGB HWC bytes at model size → the card's floats (BT.601 luma for gray models, channel order,
   * mean/std, layout): the part sharp cannot do.
   */
  const normalise = (px: Uint8Array): void => {
    for (let p = 0; p < hw; p++) {
      const r = px[3 * p];
      const g = px[3 * p + 1];
      const bl = px[3 * p + 2];
      if (gray) {
        out[p] = (0.299 * r + 0.587 * g + 0.114 * bl) * a[0] + b[0];
        continue;
      }
      for (let k = 0; k < 3; k++) {
        const v = spec.colour === 'bgr' ? px[3 * p + 2 - k] : px[3 * p + k];
        const x = v * a[k] + b[k];
        if (spec.layout === 'NCHW') out[k * hw + p] = x;
        else out[p * 3 + k] = x;
      }
    }
  };

  sharp.concurrency(1);
  sharp.cache(false);
  const input = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const methods: Record<string, Method> = {
    ts: () => preprocess(frame, spec, out),
    // sharp's fastest path here: resize the RGB frame, convert the 28×28 result in JS (its
    // greyscale() converts the full frame first and is ~4× slower).
    sharp: async () => {
      const img = sharp(input, { raw: { width: W, height: H, channels: 3 } }).resize(
        spec.width,
        spec.height,
        {
          fit: 'fill',
          kernel: 'linear',
        },
      );
      normalise(await img.raw().toBuffer());
    },
  };
  if (isNativeAvailable()) {
    methods.native = () => preprocessNative(frame, spec, out);
    methods.nativeSync = () => preprocessNativeSync(frame, spec, out);
  }
  const { cv, failures: opencvWhy } = loadOpenCv();
  if (cv) {
    cv.setNumThreads(1); // one core, like the others
    const size = new cv.Size(spec.width, spec.height);
    const mean = new cv.Vec3(
      255 * spec.mean[0],
      255 * (spec.mean[1] ?? spec.mean[0]),
      255 * (spec.mean[2] ?? spec.mean[0]),
    );
    methods.opencv = () => {
      let mat = new cv.Mat(input, H, W, cv.CV_8UC3);
      if (gray) mat = mat.cvtColor(cv.COLOR_RGB2GRAY);
      // blobFromImage: resize (INTER_LINEAR), subtract mean, scale, NCHW float.
      const blob = cv.blobFromImage(mat, 1 / (255 * spec.std[0]), size, mean, spec.colour === 'bgr', false);
      const data = blob.flattenFloat(1, n).getData();
      out.set(new Float32Array(data.buffer, data.byteOffset, n));
    };
  }

  const times: Record<string, number[]> = Object.fromEntries(Object.keys(methods).map((k) => [k, []]));
  for (let r = -1; r < rounds; r++) {
    for (const [name, fn] of Object.entries(methods)) {
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < frames; i++) await fn();
      const ns = Number(process.hrtime.bigint() - t0) / frames;
      if (r >= 0) times[name].push(ns); // round −1 warms up (JIT, caches, plans)
    }
  }
  const ns = (k: string): number | null => (times[k] ? Math.round(median(times[k])) : null);
  const report = {
    tsNsPerFrame: ns('ts'),
    nativeNsPerFrame: ns('native'),
    sharpNsPerFrame: ns('sharp'),
    opencvNsPerFrame: ns('opencv'),
    nativeSyncNsPerFrame: ns('nativeSync'),
    framesPerSecond: Object.fromEntries(Object.keys(methods).map((k) => [k, Math.round(1e9 / (ns(k) ?? 1))])),
    input: `${W}x${H} rgb`,
    model: `${card.name} ${spec.height}x${spec.width} ${spec.colour} ${spec.layout} float32`,
    rounds,
    framesPerRound: frames,
    nativeBinary: loadPreprocessBinding().path,
    opencv: cv
      ? `OpenCV ${cv.version.major}.${cv.version.minor}.${cv.version.revision}`
      : `not installed (${opencvWhy[0]})`,
  };
  if (v.json) {
    process.stdout.write(`${JSON.stringify(report)}\n`);
    return;
  }
  for (const k of Object.keys(methods)) {
    const t = ns(k) ?? 0;
    process.stdout.write(
      `${k.padEnd(11)} ${(t / 1000).toFixed(1).padStart(9)} µs/frame ${String(Math.round(1e9 / t)).padStart(7)} frames/s\n`,
    );
  }
  if (!cv) process.stdout.write(`opencv      not installed: npm run setup:opencv\n`);
}

await main();
