/**
 * Optional OpenCV binding (@u4/opencv4nodejs built against the system's libopencv-dev by
 * `npm run setup:opencv`). Never part of the default install: callers treat `cv: null` as
 * "not installed" and say so. Looked up in the project's node_modules, then in
 * native/build/opencv where the setup script installs it (out of reach of `npm install`'s prune).
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

/** The part of @u4/opencv4nodejs the project uses. */
export interface OpenCv {
  Mat: new (data: Buffer, rows: number, cols: number, type: number) => OpenCvMat;
  Size: new (w: number, h: number) => unknown;
  Vec3: new (a: number, b: number, c: number) => unknown;
  CV_8UC3: number;
  COLOR_RGB2GRAY: number;
  version: { major: number; minor: number; revision: number };
  setNumThreads(n: number): void;
  blobFromImage(
    img: OpenCvMat,
    scale: number,
    size: unknown,
    mean: unknown,
    swapRB: boolean,
    crop: boolean,
  ): OpenCvMat;
}

export interface OpenCvMat {
  cvtColor(code: number): OpenCvMat;
  /** 2-D matrices only. */
  getData(): Buffer;
  /** Copies an N-D float matrix into a rows × cols one (blobs are 4-D). */
  flattenFloat(rows: number, cols: number): OpenCvMat;
}

let cached: { cv: OpenCv | null; failures: string[] } | undefined;

/** Loads opencv4nodejs once. Never throws: `cv` is null and `failures` say why when absent. */
export function loadOpenCv(): { cv: OpenCv | null; failures: string[] } {
  if (cached) return cached;
  const failures: string[] = [];
  const bases = [import.meta.url, join(here, 'build', 'opencv', 'package.json')];
  for (const base of bases) {
    try {
      const req = createRequire(base);
      try {
        // Its build helper logs its environment to stdout on every load; keep stdout clean.
        (req('@u4/opencv-build') as { Log: { silence: boolean } }).Log.silence = true;
      } catch {
        // An older release without the helper: nothing to silence.
      }
      const cv = req('@u4/opencv4nodejs') as OpenCv;
      cached = { cv, failures };
      return cached;
    } catch (err) {
      failures.push((err instanceof Error ? err.message : String(err)).split('\n')[0]);
    }
  }
  cached = { cv: null, failures };
  return cached;
}
