/**
 * IDX files (the MNIST / Fashion-MNIST format), raw or gzipped, and the Fashion-MNIST loader.
 *
 * IDX: two zero bytes, a data-type byte (only 0x08, unsigned byte, is supported: it is what
 * image and label files use), a dimension count, then each dimension as a big-endian uint32,
 * then the data, row-major. Every fault is reported as one line naming the file, because a
 * half-downloaded dataset otherwise surfaces much later as a shape error deep in training.
 */
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { promisify } from 'node:util';
import { gunzip, gzip } from 'node:zlib';
import { CascadeError, ErrorCodes } from '../../cascade/errors.ts';
import { FASHION_MNIST_CLASSES, type ImageDataset } from './dataset.ts';

const gunzipAsync = promisify(gunzip);
const gzipAsync = promisify(gzip);

/** Debian's `dataset-fashion-mnist` package installs the four gzipped IDX files here. */
export const DEFAULT_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist';

/** Magic of a uint8 IDX file with 3 dimensions (images: n, rows, columns). */
export const IDX_IMAGES_MAGIC = 0x00000803;
/** Magic of a uint8 IDX file with 1 dimension (labels). */
export const IDX_LABELS_MAGIC = 0x00000801;

/** The decoded contents of an IDX file. */
export interface IdxArray {
  dims: number[];
  data: Uint8Array;
}

function formatError(path: string, what: string): CascadeError {
  return new CascadeError(ErrorCodes.DATA_ERR_FORMAT, `${path}: ${what}`);
}

function hex32(v: number): string {
  return `0x${v.toString(16).padStart(8, '0')}`;
}

async function readMaybeGzip(path: string): Promise<Buffer> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new CascadeError(ErrorCodes.DATA_ERR_NOT_FOUND, `${path}: file not found`);
    throw new CascadeError(ErrorCodes.DATA_ERR_NOT_FOUND, `${path}: cannot read: ${code ?? String(err)}`, {
      cause: err,
    });
  }
  if (bytes.length < 2 || bytes[0] !== 0x1f || bytes[1] !== 0x8b) return bytes;
  try {
    return await gunzipAsync(bytes);
  } catch (err) {
    const why =
      (err as NodeJS.ErrnoException).code === 'Z_BUF_ERROR' ? 'truncated gzip stream' : 'corrupt gzip';
    throw new CascadeError(ErrorCodes.DATA_ERR_FORMAT, `${path}: ${why} (${(err as Error).message})`, {
      cause: err,
    });
  }
}

/**
 * Parses IDX bytes already read from `path` (used only to name the file in errors).
 * @param expectedMagic e.g. {@link IDX_IMAGES_MAGIC}; default: any uint8 IDX.
 * @throws {CascadeError} DATA_ERR_FORMAT for a wrong magic, a short header, a payload shorter
 *   or longer than the header says.
 */
export function parseIdx(bytes: Uint8Array, path: string, expectedMagic?: number): IdxArray {
  if (bytes.length < 4)
    throw formatError(path, `truncated: ${bytes.length} bytes, too short for an IDX header`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const magic = view.getUint32(0);
  const ndims = bytes[3];
  if (bytes[0] !== 0 || bytes[1] !== 0 || bytes[2] !== 0x08 || ndims === 0) {
    const wanted = expectedMagic === undefined ? 'a uint8 IDX magic 0x000008NN' : hex32(expectedMagic);
    throw formatError(path, `not a uint8 IDX file: magic ${hex32(magic)}, expected ${wanted}`);
  }
  if (expectedMagic !== undefined && magic !== expectedMagic) {
    throw formatError(
      path,
      `wrong IDX magic ${hex32(magic)} (${ndims} dimensions), expected ${hex32(expectedMagic)} (${expectedMagic & 0xff} dimensions)`,
    );
  }
  const headerBytes = 4 + 4 * ndims;
  if (bytes.length < headerBytes) {
    throw formatError(
      path,
      `truncated: header needs ${headerBytes} bytes for ${ndims} dimensions but file has ${bytes.length}`,
    );
  }
  const dims: number[] = [];
  let size = 1;
  for (let d = 0; d < ndims; d++) {
    const v = view.getUint32(4 + 4 * d);
    dims.push(v);
    size *= v;
  }
  const shape = dims.join('x');
  const payload = bytes.length - headerBytes;
  if (payload < size) {
    throw formatError(path, `truncated: header says ${shape} (${size} bytes) but file has ${payload}`);
  }
  if (payload > size) {
    throw formatError(
      path,
      `header says ${shape} (${size} bytes) but file has ${payload}: ${payload - size} extra`,
    );
  }
  // A plain Uint8Array view, not a Buffer: Buffer#slice shares memory where Uint8Array#slice
  // copies, and callers of an ImageDataset expect the typed-array behaviour.
  return { dims, data: new Uint8Array(bytes.buffer, bytes.byteOffset + headerBytes, size) };
}

/**
 * Reads an IDX file, gzipped (detected by the magic bytes 1f 8b, whatever the name) or raw.
 * @param expectedMagic e.g. {@link IDX_IMAGES_MAGIC}; default: any uint8 IDX.
 * @throws {CascadeError} DATA_ERR_NOT_FOUND if the file is missing; DATA_ERR_FORMAT if it is
 *   not valid (gzip) IDX: see {@link parseIdx}.
 */
export async function readIdx(path: string, expectedMagic?: number): Promise<IdxArray> {
  return parseIdx(await readMaybeGzip(path), path, expectedMagic);
}

/**
 * Writes a uint8 IDX file.
 * @param dims e.g. [n, 28, 28] for images or [n] for labels; their product must be data.length.
 * @param opts.gzip default true (level 9: the bundled sample is kept in git).
 * @returns bytes written.
 * @throws {RangeError} if dims do not describe data.
 */
export async function writeIdx(
  path: string,
  dims: readonly number[],
  data: Uint8Array,
  opts: { gzip?: boolean } = {},
): Promise<number> {
  if (
    dims.length < 1 ||
    dims.length > 255 ||
    dims.some((d) => !Number.isInteger(d) || d < 0 || d > 0xffffffff)
  ) {
    throw new RangeError(`writeIdx: invalid dims [${dims.join(', ')}]`);
  }
  const size = dims.reduce((a, b) => a * b, 1);
  if (size !== data.length) {
    throw new RangeError(`writeIdx: dims ${dims.join('x')} need ${size} bytes but data has ${data.length}`);
  }
  const raw = Buffer.alloc(4 + 4 * dims.length + size);
  raw.writeUInt32BE(0x800 | dims.length, 0);
  dims.forEach((d, i) => {
    raw.writeUInt32BE(d, 4 + 4 * i);
  });
  raw.set(data, 4 + 4 * dims.length);
  const out = (opts.gzip ?? true) ? await gzipAsync(raw, { level: 9 }) : raw;
  await writeFile(path, out);
  return out.length;
}

/**
 * Loads an image/label IDX pair as a single-channel dataset.
 * @param meta.name dataset name; meta.classes the label names (labels must index them).
 * @throws {CascadeError} DATA_ERR_NOT_FOUND / DATA_ERR_FORMAT as {@link readIdx}; DATA_ERR_FORMAT
 *   when the counts differ or a label is out of range.
 */
export async function loadIdxPair(
  imagesPath: string,
  labelsPath: string,
  meta: { name: string; classes: readonly string[] },
): Promise<ImageDataset> {
  const [images, labels] = await Promise.all([
    readIdx(imagesPath, IDX_IMAGES_MAGIC),
    readIdx(labelsPath, IDX_LABELS_MAGIC),
  ]);
  const [n, height, width] = images.dims;
  if (height === 0 || width === 0) throw formatError(imagesPath, `images are ${height}x${width}`);
  if (labels.dims[0] !== n) {
    throw formatError(labelsPath, `has ${labels.dims[0]} labels but ${basename(imagesPath)} has ${n} images`);
  }
  for (let i = 0; i < n; i++) {
    if (labels.data[i] >= meta.classes.length) {
      throw formatError(
        labelsPath,
        `label ${labels.data[i]} at index ${i} is out of range: ${meta.classes.length} classes`,
      );
    }
  }
  return {
    name: meta.name,
    n,
    height,
    width,
    channels: 1,
    images: images.data,
    labels: labels.data,
    classes: [...meta.classes],
  };
}

/** File-name stem of each split in the Fashion-MNIST distribution. */
const STEMS = { train: 'train', test: 't10k' } as const;

/** True if `dir` holds any IDX file (`*-idx1-ubyte`, `*-idx3-ubyte`, optionally `.gz`). */
export async function hasIdxFiles(dir: string): Promise<boolean> {
  try {
    return (await readdir(dir)).some((f) => /[-.]idx[13]-ubyte(\.gz)?$/.test(f));
  } catch {
    return false;
  }
}

async function findIdx(dir: string, stem: string, kind: 'images' | 'labels'): Promise<string> {
  const rank = kind === 'images' ? 3 : 1;
  const names = await readdir(dir);
  // The gzipped download, its unpacked form, and the dotted names some mirrors use.
  for (const sep of ['-', '.']) {
    for (const ext of ['.gz', '']) {
      const name = `${stem}-${kind}${sep}idx${rank}-ubyte${ext}`;
      if (names.includes(name)) return join(dir, name);
    }
  }
  throw new CascadeError(
    ErrorCodes.DATA_ERR_NOT_FOUND,
    `${join(dir, `${stem}-${kind}-idx${rank}-ubyte[.gz]`)}: file not found`,
  );
}

/**
 * Loads one split of Fashion-MNIST from its IDX files: `train-images-idx3-ubyte[.gz]` and
 * `train-labels-idx1-ubyte[.gz]`, or `t10k-…` for the test split.
 * @param dir e.g. {@link DEFAULT_FASHION_MNIST_DIR}.
 * @throws {CascadeError} DATA_ERR_NOT_FOUND if the folder or a file is missing; DATA_ERR_FORMAT
 *   if a file is malformed or the counts differ.
 */
export async function loadFashionMnist(dir: string, split: 'train' | 'test'): Promise<ImageDataset> {
  let isDir = false;
  try {
    isDir = (await stat(dir)).isDirectory();
  } catch {
    throw new CascadeError(ErrorCodes.DATA_ERR_NOT_FOUND, `${dir}: dataset folder not found`);
  }
  if (!isDir) throw new CascadeError(ErrorCodes.DATA_ERR_NOT_FOUND, `${dir}: not a folder`);
  const stem = STEMS[split];
  const images = await findIdx(dir, stem, 'images');
  const labels = await findIdx(dir, stem, 'labels');
  return loadIdxPair(images, labels, { name: `fashion-mnist/${split}`, classes: FASHION_MNIST_CLASSES });
}
