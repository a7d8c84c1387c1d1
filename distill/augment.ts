/**
 * Input pipeline of the trainer: normalisation of uint8 images and the per-sample augmentation
 * (random shift with constant fill, horizontal flip), written straight into the batch buffer so
 * a step allocates nothing.
 */
import type { ImageDataset } from '../models/data/dataset.ts';
import type { Rng } from '../models/data/rng.ts';

export interface Augment {
  /** Maximum random translation in pixels (zero padding). Default 2. */
  shift: number;
  /** Random horizontal flip (Fashion-MNIST items are left-right symmetric in class). Default true. */
  flip: boolean;
}

/** Normalises uint8 HWC images into float32 NHWC. */
export function normalise(ds: ImageDataset, mean: number[], std: number[]): Float32Array {
  const c = ds.channels;
  const out = new Float32Array(ds.images.length);
  for (let i = 0; i < out.length; i++) {
    const ch = i % c;
    out[i] = (ds.images[i] / 255 - mean[ch % mean.length]) / std[ch % std.length];
  }
  return out;
}

/** Writes one augmented copy of image `src` into `dst` at `dstOff` (HWC, zero-padded shifts). */
export function augmentInto(
  src: Float32Array,
  srcOff: number,
  dst: Float32Array,
  dstOff: number,
  h: number,
  w: number,
  c: number,
  fill: Float32Array,
  aug: Augment,
  rng: Rng,
): void {
  const dy = aug.shift > 0 ? Math.floor(rng() * (2 * aug.shift + 1)) - aug.shift : 0;
  const dx = aug.shift > 0 ? Math.floor(rng() * (2 * aug.shift + 1)) - aug.shift : 0;
  const flip = aug.flip && rng() < 0.5;
  for (let y = 0; y < h; y++) {
    const sy = y + dy;
    for (let x = 0; x < w; x++) {
      const sx0 = x + dx;
      const sx = flip ? w - 1 - sx0 : sx0;
      const o = dstOff + (y * w + x) * c;
      if (sy < 0 || sy >= h || sx0 < 0 || sx0 >= w) {
        for (let k = 0; k < c; k++) dst[o + k] = fill[k];
      } else {
        const s = srcOff + (sy * w + sx) * c;
        for (let k = 0; k < c; k++) dst[o + k] = src[s + k];
      }
    }
  }
}
