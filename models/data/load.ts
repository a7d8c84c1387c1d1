/**
 * One entry point for "the dataset the user meant": an IDX folder (Fashion-MNIST layout), an
 * ImageFolder tree, or by default Debian's Fashion-MNIST; plus the evaluation sample that ships
 * in models/sample/ so `cascade demo` and the tests work on a machine without any dataset.
 */
import { stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CascadeError, ErrorCodes, invalidArgument } from '../../cascade/errors.ts';
import { FASHION_MNIST_CLASSES, type ImageDataset } from './dataset.ts';
import { DEFAULT_FASHION_MNIST_DIR, hasIdxFiles, loadFashionMnist, loadIdxPair } from './idx.ts';
import { type ImageShape, loadImageFolder } from './image-folder.ts';

/** File name of the bundled sample's images (gzipped IDX), written by `cascade distill sample`. */
export const BUNDLED_SAMPLE_IMAGES = 'fashion-mnist-test-sample-images-idx3-ubyte.gz';
/** File name of the bundled sample's labels (gzipped IDX). */
export const BUNDLED_SAMPLE_LABELS = 'fashion-mnist-test-sample-labels-idx1-ubyte.gz';

/** Shape ImageFolder images are resized to when none is given: the architectures' input. */
export const DEFAULT_IMAGE_SHAPE: Readonly<ImageShape> = Object.freeze({
  height: 28,
  width: 28,
  channels: 1,
});

export interface LoadDatasetOptions {
  /** Dataset folder; default {@link DEFAULT_FASHION_MNIST_DIR}. */
  data?: string;
  split: 'train' | 'test';
  /** ImageFolder resize target (default 28); for IDX data it must match the files if given. */
  height?: number;
  /** ImageFolder resize target (default 28); for IDX data it must match the files if given. */
  width?: number;
  /** ImageFolder colour (default 1, grey); for IDX data it must be 1 if given. */
  channels?: 1 | 3;
}

async function isDir(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch {
    return false;
  }
}

/**
 * ImageFolder split layout: root/train and root/test when present, else root itself. Refusing
 * root when only root/test exists keeps "test" from being trained on as a class.
 */
async function splitFolder(root: string, split: 'train' | 'test'): Promise<string> {
  if (await isDir(join(root, split))) return join(root, split);
  if (split === 'train' && (await isDir(join(root, 'test')))) {
    throw new CascadeError(
      ErrorCodes.DATA_ERR_NOT_FOUND,
      `${join(root, 'train')}: folder not found, but ${join(root, 'test')} exists: put training classes under train/`,
    );
  }
  return root;
}

function checkIdxShape(ds: ImageDataset, opts: LoadDatasetOptions): void {
  const want = { height: ds.height, width: ds.width, channels: ds.channels };
  for (const key of ['height', 'width', 'channels'] as const) {
    const v = opts[key];
    if (v !== undefined && v !== want[key]) {
      throw invalidArgument(key, `${want[key]} (the ${key} of the IDX images in ${ds.name})`, v);
    }
  }
}

/**
 * Loads one split of a dataset folder. A folder holding IDX files (`*-idx3-ubyte[.gz]`) is read
 * as Fashion-MNIST (train-… / t10k-… files, Fashion-MNIST class names); any other folder as an
 * ImageFolder, from root/<split> when that exists, else from root.
 * @throws {CascadeError} DATA_ERR_NOT_FOUND if the folder or a needed file is missing (the
 *   message names it); DATA_ERR_FORMAT / DATA_ERR_EMPTY / DATA_ERR_DECODE from the loaders;
 *   CLI_ERR_ARGS if height/width/channels contradict IDX files or are invalid.
 */
export async function loadDataset(opts: LoadDatasetOptions): Promise<ImageDataset> {
  const dir = opts.data ?? DEFAULT_FASHION_MNIST_DIR;
  if (!(await isDir(dir))) {
    const hint =
      opts.data === undefined
        ? " (install Debian's dataset-fashion-mnist package, or pass a dataset folder with --data)"
        : '';
    throw new CascadeError(ErrorCodes.DATA_ERR_NOT_FOUND, `${dir}: dataset folder not found${hint}`);
  }
  if (await hasIdxFiles(dir)) {
    const ds = await loadFashionMnist(dir, opts.split);
    checkIdxShape(ds, opts);
    return ds;
  }
  const root = await splitFolder(dir, opts.split);
  const ds = await loadImageFolder(root, {
    height: opts.height ?? DEFAULT_IMAGE_SHAPE.height,
    width: opts.width ?? DEFAULT_IMAGE_SHAPE.width,
    channels: opts.channels ?? DEFAULT_IMAGE_SHAPE.channels,
  });
  ds.name = `${basename(dir)}/${opts.split}`;
  return ds;
}

/**
 * Folders where the bundled sample may be: beside this module's folder when run from source
 * (models/sample/), and the source tree's models/sample/ when run from the compiled dist/.
 */
function sampleDirCandidates(): string[] {
  return [
    fileURLToPath(new URL('../sample/', import.meta.url)),
    fileURLToPath(new URL('../../../models/sample/', import.meta.url)),
  ];
}

/** The folder holding the bundled sample, or the first candidate if none has it. */
export async function bundledSampleDir(): Promise<string> {
  const candidates = sampleDirCandidates();
  for (const dir of candidates) {
    try {
      await stat(join(dir, BUNDLED_SAMPLE_IMAGES));
      return dir;
    } catch {
      // try the next candidate
    }
  }
  return candidates[0];
}

/**
 * Loads the bundled evaluation sample: 2000 Fashion-MNIST test images, 200 per class, 28x28x1,
 * named 'fashion-mnist/test-sample'. Works from any working directory.
 * @throws {CascadeError} DATA_ERR_NOT_FOUND if the sample files are missing from the install;
 *   DATA_ERR_FORMAT if they are damaged.
 */
export async function loadBundledSample(): Promise<ImageDataset> {
  const dir = await bundledSampleDir();
  return loadIdxPair(join(dir, BUNDLED_SAMPLE_IMAGES), join(dir, BUNDLED_SAMPLE_LABELS), {
    name: 'fashion-mnist/test-sample',
    classes: FASHION_MNIST_CLASSES,
  });
}
