import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import sharp from 'sharp';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import { FfmpegSource, ffmpegArgs } from '../device/ffmpeg-source.ts';
import { FolderSource } from '../device/folder-source.ts';
import { type CameraFrame, FramePool } from '../device/frames.ts';
import { ReplayCamera } from '../device/replay-source.ts';
import { parseModelCard } from '../models/card.ts';
import type { ImageDataset } from '../models/data/dataset.ts';
import { loadBundledSample } from '../models/data/load.ts';
import { preprocess } from '../models/preprocess.ts';
import { OnnxClassifier } from '../models/runtime.ts';

let ds: ImageDataset;
let dir: string;
const hasFfmpeg = spawnSync('ffmpeg', ['-version']).status === 0;

before(async () => {
  ds = await loadBundledSample();
  dir = await mkdtemp(join(tmpdir(), 'cascade-sources-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

type Pooled = CameraFrame & { roiBox: { x: number; y: number; width: number; height: number } };

function acquire(pool: FramePool): Pooled {
  const f = pool.acquire();
  assert.ok(f, 'pool has a free frame');
  return f as Pooled;
}

async function collect(source: AsyncIterable<CameraFrame>, keep: (f: CameraFrame) => void): Promise<number> {
  let n = 0;
  for await (const f of source) {
    keep(f);
    f.release();
    n++;
  }
  return n;
}

describe('ReplayCamera', () => {
  it('renders the same pixels for the same frame id, whatever came before', () => {
    const pool = new FramePool({ size: 3, bytes: 640 * 480 * 3 });
    const cam = new ReplayCamera({ dataset: ds, pool, fps: 0, seed: 7 });
    const a = acquire(pool);
    const b = acquire(pool);
    cam.render(5, a);
    cam.render(9, b);
    cam.render(5, b);
    assert.deepEqual(Buffer.from(a.data), Buffer.from(b.data));
    assert.deepEqual(a.roi, b.roi);
    const other = new ReplayCamera({ dataset: ds, pool, fps: 0, seed: 8 });
    other.render(5, b);
    assert.notDeepEqual(Buffer.from(a.data), Buffer.from(b.data), 'another seed varies the frame');
  });

  it('draws the dataset image at an integer scale inside its ROI, with the ground truth', async () => {
    const pool = new FramePool({ size: 2, bytes: 640 * 480 * 3 });
    const cam = new ReplayCamera({
      dataset: ds,
      pool,
      fps: 0,
      lighting: 0,
      offset: 0,
      noise: 0,
      scaleEvery: 1,
    });
    const card = parseModelCard(
      JSON.parse(
        await import('node:fs/promises').then((fs) => fs.readFile('models/device/card.json', 'utf8')),
      ),
      'card',
    );
    const model = await OnnxClassifier.load('models/device/card.json');
    const out = new Float32Array(784);
    const scales = new Set<number>();
    const positions = new Set<string>();
    try {
      for (let id = 0; id < 12; id++) {
        const f = acquire(pool);
        cam.render(id, f);
        const p = cam.params(id);
        const roi = f.roi;
        assert.ok(roi);
        scales.add(p.scale);
        positions.add(`${roi.x},${roi.y}`);
        assert.equal(roi.width, 28 * p.scale);
        assert.equal(roi.height, 28 * p.scale);
        assert.ok(roi.x + roi.width <= 640 && roi.y + roi.height <= 480);
        assert.equal(f.truth, ds.labels[p.index]);
        assert.equal(p.index, id);
        // Every pixel of an s×s block is the image's pixel, in R, G and B.
        const img = ds.images.subarray(id * 784, (id + 1) * 784);
        for (const [ix, iy] of [
          [0, 0],
          [13, 14],
          [27, 27],
          [5, 20],
        ]) {
          for (const [dx, dy] of [
            [0, 0],
            [p.scale - 1, p.scale - 1],
          ]) {
            const at: number = ((roi.y + iy * p.scale + dy) * 640 + roi.x + ix * p.scale + dx) * 3;
            assert.deepEqual(
              [...f.data.subarray(at, at + 3)],
              [img[iy * 28 + ix], img[iy * 28 + ix], img[iy * 28 + ix]],
            );
          }
        }
        // Area-resizing the ROI gives the model the dataset image (up to float rounding).
        preprocess({ data: f.data, width: 640, height: 480, format: 'rgb' }, card.input, out, { crop: roi });
        const ref = model.preprocess(img, 1);
        for (let i = 0; i < 784; i++) assert.ok(Math.abs(out[i] - ref[i]) < 1e-5, `value ${i}`);
        f.release();
      }
    } finally {
      await model.dispose();
    }
    assert.ok(scales.size > 1, 'the scale varies');
    assert.ok(positions.size > 10, 'the position varies');
  });

  it('replays its shard once by default, with ids, capture times and the pool reused', async () => {
    const pool = new FramePool({ size: 2, bytes: 640 * 480 * 3 });
    const cam = new ReplayCamera({ dataset: ds, pool, fps: 0, shard: { index: 2, count: 500 } });
    assert.equal(cam.frames, 4);
    assert.equal(cam.live, false);
    const seen: [number, number][] = [];
    let last = 0;
    const n = await collect(cam, (f) => {
      seen.push([f.frameId, f.truth]);
      assert.ok(f.captureTime >= last);
      last = f.captureTime;
    });
    assert.equal(n, 4);
    assert.deepEqual(
      seen,
      [2, 502, 1002, 1502].map((k, i) => [i, ds.labels[k]]),
    );
    assert.equal(pool.available, 2);
    assert.equal(cam.lost, 0);
  });

  it('stops at close(), even while waiting for the next frame time', async () => {
    const pool = new FramePool({ size: 2, bytes: 640 * 480 * 3 });
    const cam = new ReplayCamera({ dataset: ds, pool, fps: 2, loop: true });
    assert.equal(cam.live, true);
    let n = 0;
    for await (const f of cam) {
      f.release();
      n++;
      if (n === 1) setTimeout(() => void cam.close(), 10);
    }
    assert.equal(n, 1);
  });

  it('refuses items that cannot fit the frame', () => {
    const pool = new FramePool({ size: 1, bytes: 64 * 48 * 3 });
    assert.throws(() => new ReplayCamera({ dataset: ds, pool, width: 64, height: 48 }), RangeError);
  });
});

describe('FfmpegSource', { skip: hasFfmpeg ? false : 'ffmpeg is not installed' }, () => {
  it('cuts the rawvideo pipe into frames identical to what ffmpeg decodes, without dropping a file frame', async () => {
    const clip = join(dir, 'clip.mkv');
    const made = spawnSync('ffmpeg', [
      '-hide_banner',
      '-loglevel',
      'error',
      '-f',
      'lavfi',
      '-i',
      'testsrc=size=64x48:rate=10',
      '-t',
      '1',
      '-c:v',
      'ffv1',
      '-y',
      clip,
    ]);
    assert.equal(made.status, 0, made.stderr.toString());
    const expected = spawnSync(
      'ffmpeg',
      ffmpegArgs({ input: clip, pool: null as never, width: 64, height: 48 }),
      {
        maxBuffer: 1 << 24,
      },
    ).stdout;
    assert.equal(expected.length, 10 * 64 * 48 * 3);
    // Two buffers only, and a consumer slower than ffmpeg: the pipe must wait, not drop.
    const pool = new FramePool({ size: 2, bytes: 64 * 48 * 3 });
    const src = new FfmpegSource({
      input: clip,
      pool,
      width: 64,
      height: 48,
      roi: { x: 8, y: 4, width: 16, height: 16 },
    });
    assert.equal(src.live, false);
    const frames: Buffer[] = [];
    for await (const f of src) {
      assert.equal(f.width, 64);
      assert.equal(f.height, 48);
      assert.deepEqual(f.roi, { x: 8, y: 4, width: 16, height: 16 });
      assert.equal(f.frameId, frames.length);
      frames.push(Buffer.from(f.data.subarray(0, 64 * 48 * 3)));
      await new Promise((r) => setTimeout(r, 5));
      f.release();
    }
    assert.equal(frames.length, 10);
    assert.equal(src.lost, 0);
    assert.deepEqual(Buffer.concat(frames), expected);
    await src.close();
  });

  it('fails with DEV_ERR_SOURCE naming the input when ffmpeg cannot open it', async () => {
    const pool = new FramePool({ size: 2, bytes: 64 * 48 * 3 });
    const missing = join(dir, 'no-such-clip.mp4');
    const src = new FfmpegSource({ input: missing, pool, width: 64, height: 48 });
    await assert.rejects(
      collect(src, () => {}),
      (err: unknown) =>
        err instanceof CascadeError &&
        err.code === ErrorCodes.DEV_ERR_SOURCE &&
        err.message.includes(missing),
    );
  });

  it('treats cameras and streams as live', () => {
    const pool = new FramePool({ size: 1, bytes: 3 });
    assert.equal(new FfmpegSource({ input: '/dev/video0', pool, width: 1, height: 1 }).live, true);
    assert.equal(new FfmpegSource({ input: 'rtsp://cam/stream', pool, width: 1, height: 1 }).live, true);
    assert.ok(ffmpegArgs({ input: '/dev/video0', pool, width: 1, height: 1 }).includes('v4l2'));
  });
});

describe('FolderSource', () => {
  it('yields every image as an RGB frame, with the label of its class folder as ground truth', async () => {
    const root = join(dir, 'folder');
    const picks = [1, 3, 8];
    for (const k of picks) {
      const cls = join(root, ds.classes[ds.labels[k]]);
      await mkdir(cls, { recursive: true });
      await sharp(Buffer.from(ds.images.subarray(k * 784, (k + 1) * 784)), {
        raw: { width: 28, height: 28, channels: 1 },
      })
        .png()
        .toFile(join(cls, `img-${k}.png`));
    }
    const pool = new FramePool({ size: 2, bytes: 640 * 480 * 3 });
    const src = await FolderSource.open({ dir: root, pool, width: 640, height: 480, labels: ds.classes });
    assert.equal(src.files.length, 3);
    const got = new Map<number, CameraFrame & { pixels: Buffer }>();
    await collect(src, (f) => {
      const k = Number(/img-(\d+)/.exec(src.files[f.frameId])?.[1]);
      got.set(k, { ...f, pixels: Buffer.from(f.data.subarray(0, 28 * 28 * 3)) });
    });
    for (const k of picks) {
      const f = got.get(k);
      assert.ok(f);
      assert.equal(f.width, 28);
      assert.equal(f.height, 28);
      assert.equal(f.truth, ds.labels[k]);
      for (const i of [0, 100, 405, 783]) {
        const v = ds.images[k * 784 + i];
        assert.deepEqual([...f.pixels.subarray(i * 3, i * 3 + 3)], [v, v, v]);
      }
    }
  });

  it('refuses a folder without images with DEV_ERR_SOURCE', async () => {
    const empty = join(dir, 'empty');
    await mkdir(empty, { recursive: true });
    const pool = new FramePool({ size: 1, bytes: 3 });
    await assert.rejects(
      FolderSource.open({ dir: empty, pool, width: 1, height: 1 }),
      (err: unknown) => err instanceof CascadeError && err.code === ErrorCodes.DEV_ERR_SOURCE,
    );
  });
});
