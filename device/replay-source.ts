/**
 * The dataset-replay camera: renders real dataset images into camera-size RGB frames (640×480
 * by default) at a set frame rate, each with its ground truth and the item's region of interest
 * (what an object detector in front of the classifier would report). Variation per frame:
 * position, integer scale (held for a run of frames, like a zoom level), lighting (gain and
 * offset) and sensor noise. All of it is a pure function of (seed, frame id), so a replay is
 * repeatable regardless of timing or drops.
 *
 * The variation is mild on purpose and the scale factors are integers: area-resizing an item
 * drawn at scale s back to the model size averages exact s×s blocks, so the classifier sees the
 * dataset image up to lighting and averaged noise, and `cascade demo` can be compared with
 * `cascade eval` on the same images.
 *
 * Rendering allocates nothing per frame: the background (a few lighting levels, precomputed with
 * their noise) is copied in, then the item is drawn with noise from a precomputed table.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { ImageDataset } from '../models/data/dataset.ts';
import { type CameraFrame, type FramePool, type FrameSource, wallClock } from './frames.ts';

/** Options of {@link ReplayCamera}. */
export interface ReplayOptions {
  dataset: ImageDataset;
  pool: FramePool;
  /** Frame size; default 640×480. */
  width?: number;
  height?: number;
  /** Frames per second; 0 renders as fast as the consumer takes them (not live). Default 25. */
  fps?: number;
  /** This camera's share of the dataset: images index, index + count, …; default 0 of 1. */
  shard?: { index: number; count: number };
  /** Frames to emit; default one pass over the shard. With `loop`, the shard repeats. */
  frames?: number;
  /** Repeat the shard until `frames` (0 = forever). Default false. */
  loop?: boolean;
  /** Seed of every per-frame variation; default 1. */
  seed?: number;
  /** Integer scale range of the item (default 2–4) and frames per zoom level (default 30). */
  minScale?: number;
  maxScale?: number;
  scaleEvery?: number;
  /** Lighting gain of the item varies in 1 ± this (default 0.03). */
  lighting?: number;
  /** Black level offset of the item varies in ± this many pixel levels (default 1). */
  offset?: number;
  /** Standard deviation of sensor noise, in pixel levels (default 1). */
  noise?: number;
}

/** The variation of one frame: a pure function of seed and frame id. */
export interface ReplayFrameParams {
  /** Dataset index of the item shown. */
  index: number;
  scale: number;
  x: number;
  y: number;
  gain: number;
  offset: number;
  /** Start of this frame's run in the noise table. */
  noiseAt: number;
  /** Background lighting level (index of the precomputed background). */
  level: number;
}

const LEVELS = 4;
const NOISE_TABLE = 1 << 16;

/** A 32-bit integer hash of (a, b, c) → [0, 1) (murmur3 finaliser over a mix): no allocation. */
export function hash01(a: number, b: number, c: number): number {
  let h = Math.imul(a ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(b + 0x632be5ab, 0xc2b2ae35) ^ (c * 0x27d4eb2f);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return (h >>> 0) / 4294967296;
}

/**
 * The dataset-replay camera. Iterate it for frames (each borrowed from `pool`: release it).
 * @throws {RangeError} when the scaled item does not fit the frame or a setting is out of range.
 */
export class ReplayCamera implements FrameSource {
  readonly name: string;
  readonly live: boolean;
  readonly width: number;
  readonly height: number;
  readonly frames: number;
  readonly #o: Required<Omit<ReplayOptions, 'dataset' | 'pool' | 'shard' | 'frames'>>;
  readonly #ds: ImageDataset;
  readonly #pool: FramePool;
  readonly #shard: { index: number; count: number; length: number };
  readonly #backgrounds: Uint8Array[] = [];
  readonly #noise = new Int8Array(NOISE_TABLE);
  readonly #params: ReplayFrameParams = {
    index: 0,
    scale: 1,
    x: 0,
    y: 0,
    gain: 1,
    offset: 0,
    noiseAt: 0,
    level: 0,
  };
  #lost = 0;
  #closed = false;
  #wake: AbortController = new AbortController();

  constructor(opts: ReplayOptions) {
    const o = {
      width: opts.width ?? 640,
      height: opts.height ?? 480,
      fps: opts.fps ?? 25,
      loop: opts.loop ?? false,
      seed: opts.seed ?? 1,
      minScale: opts.minScale ?? 2,
      maxScale: opts.maxScale ?? 4,
      scaleEvery: opts.scaleEvery ?? 30,
      lighting: opts.lighting ?? 0.03,
      offset: opts.offset ?? 1,
      noise: opts.noise ?? 1,
    };
    const ds = opts.dataset;
    if (ds.channels !== 1 && ds.channels !== 3) throw new RangeError(`replay: ${ds.channels}-channel images`);
    if (
      !Number.isInteger(o.minScale) ||
      o.minScale < 1 ||
      !Number.isInteger(o.maxScale) ||
      o.maxScale < o.minScale
    ) {
      throw new RangeError(
        `replay: scales must be integers with 1 <= min <= max, received ${o.minScale}-${o.maxScale}`,
      );
    }
    if (ds.width * o.maxScale > o.width || ds.height * o.maxScale > o.height) {
      throw new RangeError(
        `replay: a ${ds.width}x${ds.height} image at scale ${o.maxScale} does not fit a ${o.width}x${o.height} frame`,
      );
    }
    if (opts.pool.bytes < o.width * o.height * 3) {
      throw new RangeError(
        `replay: pool buffers of ${opts.pool.bytes} bytes hold no ${o.width}x${o.height} RGB frame`,
      );
    }
    if (!(o.fps >= 0) || !(o.lighting >= 0 && o.lighting < 0.5) || !(o.noise >= 0) || !(o.offset >= 0)) {
      throw new RangeError('replay: fps, lighting (< 0.5), offset and noise must be non-negative');
    }
    const shard = opts.shard ?? { index: 0, count: 1 };
    if (
      !Number.isInteger(shard.count) ||
      shard.count < 1 ||
      !Number.isInteger(shard.index) ||
      shard.index < 0 ||
      shard.index >= shard.count
    ) {
      throw new RangeError(`replay: shard ${shard.index}/${shard.count}`);
    }
    const length = Math.max(0, Math.ceil((ds.n - shard.index) / shard.count));
    if (length === 0)
      throw new RangeError(`replay: shard ${shard.index}/${shard.count} of ${ds.n} images is empty`);
    this.#o = o;
    this.#ds = ds;
    this.#pool = opts.pool;
    this.#shard = { ...shard, length };
    this.width = o.width;
    this.height = o.height;
    this.live = o.fps > 0;
    this.frames = opts.frames ?? (o.loop ? 0 : length);
    this.name = `replay(${ds.name}${shard.count > 1 ? ` ${shard.index}/${shard.count}` : ''}, ${o.fps > 0 ? `${o.fps} fps` : 'max speed'})`;
    this.#prepare();
  }

  get lost(): number {
    return this.#lost;
  }

  #prepare(): void {
    const { seed, noise, width, height, lighting } = this.#o;
    // Gaussian noise table (Box–Muller from the hash), clamped to int8.
    for (let i = 0; i < NOISE_TABLE; i += 2) {
      const u1 = Math.max(1e-12, hash01(seed, i, 11));
      const u2 = hash01(seed, i, 12);
      const r = Math.sqrt(-2 * Math.log(u1)) * noise;
      this.#noise[i] = Math.max(-127, Math.min(127, Math.round(r * Math.cos(2 * Math.PI * u2))));
      this.#noise[i + 1] = Math.max(-127, Math.min(127, Math.round(r * Math.sin(2 * Math.PI * u2))));
    }
    // A dim scene: a diagonal gradient with a low-contrast texture, at a few lighting levels.
    for (let level = 0; level < LEVELS; level++) {
      const gain = 1 - lighting + (2 * lighting * level) / Math.max(1, LEVELS - 1);
      const bg = new Uint8Array(width * height * 3);
      for (let y = 0; y < height; y++) {
        for (let x = 0; x < width; x++) {
          const base = 40 + (60 * (x + y)) / (width + height) + 8 * Math.sin(x / 23) * Math.cos(y / 17);
          const i = (y * width + x) * 3;
          const n = this.#noise[(i + level * 7919) & (NOISE_TABLE - 1)];
          bg[i] = clamp(Math.round((base + 6) * gain + n));
          bg[i + 1] = clamp(Math.round(base * gain + n));
          bg[i + 2] = clamp(Math.round((base - 6) * gain + n));
        }
      }
      this.#backgrounds.push(bg);
    }
  }

  /**
   * The variation of frame `frameId` (pure; the returned object is reused by the next call).
   */
  params(frameId: number): ReplayFrameParams {
    const { seed, minScale, maxScale, scaleEvery, lighting, offset, width, height } = this.#o;
    const p = this.#params;
    const k = frameId % this.#shard.length;
    p.index = this.#shard.index + k * this.#shard.count;
    const zoom = Math.floor(frameId / Math.max(1, scaleEvery));
    p.scale = minScale + Math.floor(hash01(seed, zoom, 1) * (maxScale - minScale + 1));
    const w = this.#ds.width * p.scale;
    const h = this.#ds.height * p.scale;
    p.x = Math.floor(hash01(seed, frameId, 2) * (width - w + 1));
    p.y = Math.floor(hash01(seed, frameId, 3) * (height - h + 1));
    p.level = Math.floor(hash01(seed, frameId, 4) * LEVELS);
    p.gain = 1 - lighting + (2 * lighting * p.level) / Math.max(1, LEVELS - 1);
    p.offset = Math.round((hash01(seed, frameId, 5) * 2 - 1) * offset);
    p.noiseAt = Math.floor(hash01(seed, frameId, 6) * NOISE_TABLE);
    return p;
  }

  /**
   * Renders frame `frameId` into `frame` (data, size, ROI, truth); capture time and id are left
   * to the caller. Pure in (seed, frameId): the same id renders the same pixels.
   */
  render(
    frameId: number,
    frame: CameraFrame & { readonly roiBox: { x: number; y: number; width: number; height: number } },
  ): void {
    const p = this.params(frameId);
    const { width, height } = this.#o;
    const ds = this.#ds;
    const out = frame.data;
    out.set(this.#backgrounds[p.level]);
    const s = p.scale;
    const iw = ds.width;
    const ih = ds.height;
    const ch = ds.channels;
    const img = p.index * iw * ih * ch;
    const noise = this.#noise;
    const mask = NOISE_TABLE - 1;
    let n = p.noiseAt;
    for (let y = 0; y < ih * s; y++) {
      const srcRow = img + Math.floor(y / s) * iw * ch;
      let o = ((p.y + y) * width + p.x) * 3;
      for (let x = 0; x < iw * s; x++) {
        const si = srcRow + Math.floor(x / s) * ch;
        const e = noise[n & mask];
        n++;
        if (ch === 1) {
          const v = clamp(Math.round(p.gain * ds.images[si] + p.offset + e));
          out[o] = v;
          out[o + 1] = v;
          out[o + 2] = v;
        } else {
          out[o] = clamp(Math.round(p.gain * ds.images[si] + p.offset + e));
          out[o + 1] = clamp(Math.round(p.gain * ds.images[si + 1] + p.offset + e));
          out[o + 2] = clamp(Math.round(p.gain * ds.images[si + 2] + p.offset + e));
        }
        o += 3;
      }
    }
    frame.width = width;
    frame.height = height;
    frame.truth = ds.labels[p.index];
    const r = frame.roiBox;
    r.x = p.x;
    r.y = p.y;
    r.width = iw * s;
    r.height = ih * s;
    frame.roi = r;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<CameraFrame> {
    const period = this.#o.fps > 0 ? 1000 / this.#o.fps : 0;
    let due = performance.now();
    for (let id = 0; !this.#closed && (this.frames === 0 || id < this.frames); id++) {
      if (period > 0) {
        const wait = due - performance.now();
        if (wait > 0) {
          try {
            await sleep(wait, undefined, { signal: this.#wake.signal });
          } catch {
            break; // closed while waiting
          }
        } else if (wait < -period) {
          due = performance.now(); // fell behind (event loop blocked): resume the clock, no burst
        }
        due += period;
      }
      if (this.#closed) break;
      const frame = this.#pool.acquire();
      if (frame === null) {
        this.#lost++;
        continue;
      }
      this.render(id, frame);
      frame.frameId = id;
      frame.captureTime = wallClock();
      yield frame;
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#wake.abort();
  }
}

function clamp(v: number): number {
  return v < 0 ? 0 : Math.min(v, 255);
}
