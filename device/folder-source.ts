/**
 * A folder of images as a camera: every PNG/JPEG under the folder (sorted, recursively), decoded
 * with sharp, scaled down to fit the frame size (never up), as RGB frames at a set rate or as fast
 * as the pipeline takes them. When an image's parent folder is named like one of the model's
 * labels (an ImageFolder tree), that label is the frame's ground truth.
 */
import { readdir } from 'node:fs/promises';
import { basename, dirname, extname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import sharp, { type OutputInfo } from 'sharp';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import { IMAGE_EXTENSIONS } from '../models/data/image-folder.ts';
import type { Rect } from '../models/preprocess.ts';
import { type CameraFrame, type FramePool, type FrameSource, wallClock } from './frames.ts';

/** Options of {@link FolderSource}. */
export interface FolderOptions {
  dir: string;
  pool: FramePool;
  /** Largest frame; images are scaled down to fit, keeping their aspect ratio. */
  width: number;
  height: number;
  /** Frames per second; 0 = as fast as the pipeline takes them. Default 0. */
  fps?: number;
  /** Stop after this many frames; 0 = one pass (or forever with `loop`). */
  frames?: number;
  loop?: boolean;
  /** Class names for ground truth from parent folder names. */
  labels?: readonly string[];
  /** A fixed ROI (clipped to each image); default the whole image. */
  roi?: Rect | null;
}

async function listImages(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string): Promise<void> => {
    const entries = await readdir(d, { withFileTypes: true });
    for (const e of entries) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (IMAGE_EXTENSIONS.includes(extname(e.name).toLowerCase())) out.push(p);
    }
  };
  await walk(dir);
  return out.sort();
}

export class FolderSource implements FrameSource {
  readonly name: string;
  readonly live: boolean;
  readonly files: readonly string[];
  readonly #o: FolderOptions;
  #lost = 0;
  #closed = false;
  readonly #wake = new AbortController();

  private constructor(opts: FolderOptions, files: string[]) {
    this.#o = opts;
    this.files = files;
    this.live = (opts.fps ?? 0) > 0;
    this.name = `folder(${opts.dir}, ${files.length} images${this.live ? `, ${opts.fps} fps` : ''})`;
  }

  /**
   * Lists the folder's images.
   * @throws {CascadeError} DEV_ERR_SOURCE when the folder cannot be read or holds no image.
   */
  static async open(opts: FolderOptions): Promise<FolderSource> {
    let files: string[];
    try {
      files = await listImages(opts.dir);
    } catch (err) {
      throw new CascadeError(ErrorCodes.DEV_ERR_SOURCE, `image folder ${opts.dir}: cannot be read`, {
        cause: err,
      });
    }
    if (files.length === 0) {
      throw new CascadeError(
        ErrorCodes.DEV_ERR_SOURCE,
        `image folder ${opts.dir}: no ${IMAGE_EXTENSIONS.join('/')} images found`,
      );
    }
    return new FolderSource(opts, files);
  }

  get lost(): number {
    return this.#lost;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<CameraFrame> {
    const o = this.#o;
    const total = o.frames && o.frames > 0 ? o.frames : o.loop ? Number.POSITIVE_INFINITY : this.files.length;
    const period = (o.fps ?? 0) > 0 ? 1000 / (o.fps as number) : 0;
    let due = performance.now();
    for (let id = 0; id < total && !this.#closed; id++) {
      const file = this.files[id % this.files.length];
      let decoded: { data: Buffer; info: OutputInfo };
      try {
        decoded = await sharp(file)
          .rotate()
          .resize({ width: o.width, height: o.height, fit: 'inside', withoutEnlargement: true })
          .removeAlpha()
          .toColourspace('srgb')
          .raw()
          .toBuffer({ resolveWithObject: true });
      } catch (err) {
        throw new CascadeError(ErrorCodes.DEV_ERR_SOURCE, `${file}: cannot decode image`, { cause: err });
      }
      if (period > 0) {
        due += period;
        const wait = due - performance.now();
        if (wait > 0) {
          try {
            await sleep(wait, undefined, { signal: this.#wake.signal });
          } catch {
            break;
          }
        } else if (wait < -period) due = performance.now();
      }
      const f = o.pool.acquire();
      if (f === null) {
        this.#lost++;
        continue;
      }
      const { width, height, channels } = decoded.info;
      if (channels === 3) f.data.set(decoded.data);
      else for (let i = 0; i < width * height; i++) f.data.fill(decoded.data[i], i * 3, i * 3 + 3);
      f.width = width;
      f.height = height;
      f.frameId = id;
      f.captureTime = wallClock();
      f.truth = o.labels ? o.labels.indexOf(basename(dirname(file))) : -1;
      if (o.roi) {
        const r = f.roiBox;
        r.x = Math.min(o.roi.x, width - 1);
        r.y = Math.min(o.roi.y, height - 1);
        r.width = Math.min(o.roi.width, width - r.x);
        r.height = Math.min(o.roi.height, height - r.y);
        f.roi = r;
      }
      yield f;
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#wake.abort();
  }
}
