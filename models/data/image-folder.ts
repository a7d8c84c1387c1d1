/**
 * ImageFolder datasets (torchvision's layout): `root/<class>/<image>.png|jpg|jpeg`, one folder
 * per class, classes sorted by name so label numbers are the same on every machine. Images are
 * decoded and resized with sharp into the same uint8 HWC form as the IDX loader gives.
 */
import { readdir, stat } from 'node:fs/promises';
import { basename, extname, join } from 'node:path';
import sharp from 'sharp';
import { CascadeError, ErrorCodes, invalidArgument } from '../../cascade/errors.ts';
import type { ImageDataset } from './dataset.ts';

/** File extensions read as images (case-insensitive). */
export const IMAGE_EXTENSIONS: readonly string[] = ['.png', '.jpg', '.jpeg'];

/** Target shape of every image after decoding. */
export interface ImageShape {
  height: number;
  width: number;
  /** 1: grey (Rec. 601 luma, see {@link rgbToGrey}); 3: sRGB. */
  channels: 1 | 3;
}

/** Images decoded at once: enough to keep libvips' threads busy without holding many files open. */
const DECODE_CONCURRENCY = 4;

/** Code-unit order, not locale order: labels must not depend on the machine's locale. */
function byName(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function checkShape(shape: ImageShape): void {
  for (const key of ['height', 'width'] as const) {
    const v = shape[key];
    if (!Number.isInteger(v) || v < 1 || v > 4096) throw invalidArgument(key, 'an integer in [1, 4096]', v);
  }
  if (shape.channels !== 1 && shape.channels !== 3)
    throw invalidArgument('channels', '1 or 3', shape.channels);
}

/**
 * Grey from sRGB-encoded RGB with Rec. 601 luma weights (0.299, 0.587, 0.114), the convention
 * of PIL's 'L' mode, OpenCV and torchvision's Grayscale. libvips' own 'b-w' weighs linear light
 * instead (pure red gives 127, not 76), which would not match images prepared with those tools.
 */
export function rgbToGrey(rgb: Uint8Array, out: Uint8Array): void {
  for (let i = 0, j = 0; i < out.length; i++, j += 3) {
    out[i] = Math.round(0.299 * rgb[j] + 0.587 * rgb[j + 1] + 0.114 * rgb[j + 2]);
  }
}

/**
 * Decodes one image file into `out` (height*width*channels bytes, HWC). The image is turned
 * upright from its EXIF orientation, composited on black if it has alpha, stretched to exactly
 * height×width (fit 'fill': no crop, no padding, like the IDX images' fixed frame) and, for one
 * channel, converted with {@link rgbToGrey}.
 * @throws {CascadeError} DATA_ERR_DECODE naming the file if sharp cannot decode it.
 */
export async function decodeImageInto(path: string, shape: ImageShape, out: Uint8Array): Promise<void> {
  const { data, info } = await sharp(path, { failOn: 'error' })
    .rotate()
    .flatten()
    .resize(shape.width, shape.height, { fit: 'fill' })
    .toColourspace('srgb')
    .raw()
    .toBuffer({ resolveWithObject: true })
    .catch((err: Error) => {
      throw new CascadeError(
        ErrorCodes.DATA_ERR_DECODE,
        `${path}: cannot decode image: ${err.message.split('\n')[0]}`,
        { cause: err },
      );
    });
  if (info.channels !== 3 || data.length !== shape.height * shape.width * 3) {
    throw new CascadeError(
      ErrorCodes.DATA_ERR_DECODE,
      `${path}: decoded to ${info.width}x${info.height}x${info.channels}, expected ${shape.width}x${shape.height}x3`,
    );
  }
  if (shape.channels === 1) rgbToGrey(data, out);
  else out.set(data);
}

async function listClassFolders(root: string): Promise<string[]> {
  let isDir = false;
  try {
    isDir = (await stat(root)).isDirectory();
  } catch {
    throw new CascadeError(ErrorCodes.DATA_ERR_NOT_FOUND, `${root}: dataset folder not found`);
  }
  if (!isDir) throw new CascadeError(ErrorCodes.DATA_ERR_NOT_FOUND, `${root}: not a folder`);
  const entries = await readdir(root, { withFileTypes: true });
  const classes = entries
    .filter((e) => e.isDirectory() && !e.name.startsWith('.'))
    .map((e) => e.name)
    .sort(byName);
  if (classes.length === 0) {
    throw new CascadeError(
      ErrorCodes.DATA_ERR_EMPTY,
      `${root}: no class folders (expected ${root}/<class>/<image>.png|jpg|jpeg)`,
    );
  }
  if (classes.length > 256) {
    throw new CascadeError(
      ErrorCodes.DATA_ERR_FORMAT,
      `${root}: ${classes.length} class folders, at most 256`,
    );
  }
  return classes;
}

async function listImages(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true });
  const files = entries
    .filter(
      (e) =>
        !e.isDirectory() &&
        !e.name.startsWith('.') &&
        IMAGE_EXTENSIONS.includes(extname(e.name).toLowerCase()),
    )
    .map((e) => e.name)
    .sort(byName);
  if (files.length === 0) {
    throw new CascadeError(ErrorCodes.DATA_ERR_EMPTY, `${dir}: class folder has no .png/.jpg/.jpeg images`);
  }
  return files.map((f) => join(dir, f));
}

/**
 * Loads an ImageFolder dataset: every `root/<class>/*.png|jpg|jpeg` (hidden files and folders
 * skipped), labels numbered by class folder name in code-unit order, images in file-name order
 * within a class.
 * @param shape every image is resized to height×width and converted to `channels`.
 * @throws {CascadeError} DATA_ERR_NOT_FOUND if root is missing; DATA_ERR_EMPTY if it has no
 *   class folders or a class folder has no images; DATA_ERR_DECODE naming an undecodable image;
 *   CLI_ERR_ARGS for an invalid shape.
 */
export async function loadImageFolder(root: string, shape: ImageShape): Promise<ImageDataset> {
  checkShape(shape);
  const classes = await listClassFolders(root);
  const files: string[] = [];
  const labelOf: number[] = [];
  for (let c = 0; c < classes.length; c++) {
    for (const f of await listImages(join(root, classes[c]))) {
      files.push(f);
      labelOf.push(c);
    }
  }
  const size = shape.height * shape.width * shape.channels;
  const images = new Uint8Array(files.length * size);
  const labels = Uint8Array.from(labelOf);
  let next = 0;
  let failed = false;
  const worker = async (): Promise<void> => {
    // Stop handing out files after the first failure: the user fixes one file at a time anyway.
    while (next < files.length && !failed) {
      const i = next++;
      try {
        await decodeImageInto(files[i], shape, images.subarray(i * size, (i + 1) * size));
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(DECODE_CONCURRENCY, files.length) }, worker));
  return {
    name: basename(root),
    n: files.length,
    height: shape.height,
    width: shape.width,
    channels: shape.channels,
    images,
    labels,
    classes,
  };
}
