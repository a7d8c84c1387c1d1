/**
 * The in-memory image dataset every loader returns, and the pure helpers over it: a content
 * hash for model cards, subsets, a stratified train/validation split and a stratified sample.
 *
 * Pixels stay uint8 (HWC per image) until the trainer or the runtime normalises them with the
 * model card's mean/std: 60000 Fashion-MNIST images are 47 MB this way, four times that as
 * float32.
 */
import { createHash } from 'node:crypto';
import { invalidArgument } from '../../cascade/errors.ts';
import { mulberry32, shuffleInPlace } from './rng.ts';

/** Images and labels of one split, with the class names the labels index. */
export interface ImageDataset {
  /** Human-readable origin, e.g. 'fashion-mnist/test'; shown in logs and model cards. */
  name: string;
  n: number;
  height: number;
  width: number;
  channels: number;
  /** n*height*width*channels uint8 pixels, HWC per image, images back to back. */
  images: Uint8Array;
  /** n labels, each an index into `classes`. */
  labels: Uint8Array;
  classes: string[];
}

/** Fashion-MNIST's ten classes, in label order (Zalando Research, MIT licence). */
export const FASHION_MNIST_CLASSES: readonly string[] = Object.freeze([
  'T-shirt/top',
  'Trouser',
  'Pullover',
  'Dress',
  'Coat',
  'Sandal',
  'Shirt',
  'Sneaker',
  'Bag',
  'Ankle boot',
]);

/**
 * SHA-256 (hex) over a 16-byte header (n, height, width, channels as big-endian uint32), then
 * the pixels, then the labels. Names and class names are left out on purpose: the same pixels
 * and labels read from IDX or from PNGs hash the same, which is what a model card's data hash
 * should mean.
 */
export function datasetHash(ds: ImageDataset): string {
  const header = Buffer.alloc(16);
  header.writeUInt32BE(ds.n, 0);
  header.writeUInt32BE(ds.height, 4);
  header.writeUInt32BE(ds.width, 8);
  header.writeUInt32BE(ds.channels, 12);
  return createHash('sha256').update(header).update(ds.images).update(ds.labels).digest('hex');
}

/** Bytes of one image. */
export function imageSize(ds: ImageDataset): number {
  return ds.height * ds.width * ds.channels;
}

/**
 * A new dataset holding copies of the given images, in the given order.
 * @param name the subset's name; default: the parent's.
 * @throws {RangeError} if an index is not an integer in [0, n).
 */
export function subset(ds: ImageDataset, indices: ArrayLike<number>, name: string = ds.name): ImageDataset {
  const size = imageSize(ds);
  const images = new Uint8Array(indices.length * size);
  const labels = new Uint8Array(indices.length);
  for (let k = 0; k < indices.length; k++) {
    const i = indices[k];
    if (!Number.isInteger(i) || i < 0 || i >= ds.n) {
      throw new RangeError(`subset: index ${i} is outside ${ds.name} (n = ${ds.n})`);
    }
    images.set(ds.images.subarray(i * size, (i + 1) * size), k * size);
    labels[k] = ds.labels[i];
  }
  return {
    name,
    n: indices.length,
    height: ds.height,
    width: ds.width,
    channels: ds.channels,
    images,
    labels,
    classes: [...ds.classes],
  };
}

/** Indices of each class, in dataset order; one (possibly empty) array per class. */
export function indicesByClass(ds: ImageDataset): number[][] {
  const byClass: number[][] = ds.classes.map(() => []);
  for (let i = 0; i < ds.n; i++) {
    const label = ds.labels[i];
    if (label >= byClass.length) {
      throw new RangeError(`${ds.name}: label ${label} at index ${i} but only ${byClass.length} classes`);
    }
    byClass[label].push(i);
  }
  return byClass;
}

/**
 * Stratified split: each class gives round(count * valFraction) of its images, chosen by a
 * seeded shuffle, to validation and the rest to training. Both parts keep dataset order, so
 * the same seed always gives byte-identical parts.
 * @param valFraction in [0, 1); 0 gives an empty validation set.
 * @param seed PRNG seed (see {@link mulberry32}).
 * @throws {CascadeError} CLI_ERR_ARGS if valFraction is outside [0, 1).
 */
export function splitTrainVal(
  ds: ImageDataset,
  valFraction: number,
  seed: number,
): { train: ImageDataset; val: ImageDataset } {
  if (!(valFraction >= 0 && valFraction < 1)) {
    throw invalidArgument('valFraction', 'a number in [0, 1)', valFraction);
  }
  const rng = mulberry32(seed);
  const train: number[] = [];
  const val: number[] = [];
  for (const idx of indicesByClass(ds)) {
    shuffleInPlace(idx, rng);
    const nVal = Math.round(idx.length * valFraction);
    for (let k = 0; k < idx.length; k++) (k < nVal ? val : train).push(idx[k]);
  }
  train.sort((a, b) => a - b);
  val.sort((a, b) => a - b);
  return { train: subset(ds, train, `${ds.name}:train`), val: subset(ds, val, `${ds.name}:val`) };
}

/**
 * Exactly `perClass` images of every class, chosen by a seeded shuffle, in dataset order.
 * @param seed PRNG seed (see {@link mulberry32}).
 * @throws {CascadeError} CLI_ERR_ARGS if perClass is not a positive integer or a class has
 *   fewer images than that.
 */
export function stratifiedSample(ds: ImageDataset, perClass: number, seed: number): ImageDataset {
  if (!Number.isInteger(perClass) || perClass < 1) {
    throw invalidArgument('perClass', 'a positive integer', perClass);
  }
  const rng = mulberry32(seed);
  const chosen: number[] = [];
  const byClass = indicesByClass(ds);
  for (let c = 0; c < byClass.length; c++) {
    const idx = byClass[c];
    if (idx.length < perClass) {
      throw invalidArgument(
        'perClass',
        `at most ${idx.length} (images of class ${JSON.stringify(ds.classes[c])} in ${ds.name})`,
        perClass,
      );
    }
    shuffleInPlace(idx, rng);
    for (let k = 0; k < perClass; k++) chosen.push(idx[k]);
  }
  chosen.sort((a, b) => a - b);
  return subset(ds, chosen, `${ds.name}:sample${perClass}`);
}

/** Number of images of each class, one count per entry of `classes`. */
export function classCounts(ds: ImageDataset): number[] {
  const counts = ds.classes.map(() => 0);
  for (let i = 0; i < ds.n; i++) counts[ds.labels[i]]++;
  return counts;
}
