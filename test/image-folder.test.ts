import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import sharp from 'sharp';
import { CascadeError, type ErrorCode, ErrorCodes } from '../cascade/errors.ts';
import { loadImageFolder } from '../models/data/image-folder.ts';
import { loadDataset } from '../models/data/load.ts';

let dir: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cascade-imgfolder-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function rejectsWith(p: Promise<unknown>, code: ErrorCode, name: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof CascadeError, `expected a CascadeError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    assert.ok(err.message.includes(name), `message does not name ${name}: ${err.message}`);
    assert.ok(!err.message.includes('\n'), 'message must be one line');
    return true;
  });
}

/** Writes a solid-colour image; the format follows the extension. */
async function solid(
  path: string,
  w: number,
  h: number,
  rgb: [number, number, number],
  alpha = 1,
): Promise<void> {
  const img = sharp({
    create: {
      width: w,
      height: h,
      channels: alpha < 1 ? 4 : 3,
      background: { r: rgb[0], g: rgb[1], b: rgb[2], alpha },
    },
  });
  await (path.endsWith('.png') ? img.png() : img.jpeg({ quality: 95 })).toFile(path);
}

async function folder(root: string, classes: Record<string, number>): Promise<void> {
  for (const [name, count] of Object.entries(classes)) {
    await mkdir(join(root, name), { recursive: true });
    for (let i = 0; i < count; i++) await solid(join(root, name, `${i}.png`), 10 + i, 7, [200, 200, 200]);
  }
}

describe('loadImageFolder', () => {
  it('loads classes sorted by name, resized, with the right labels and pixels', async () => {
    const root = join(dir, 'ok');
    await mkdir(join(root, 'zebra'), { recursive: true });
    await mkdir(join(root, 'apple'), { recursive: true });
    await mkdir(join(root, '.hidden'), { recursive: true });
    await solid(join(root, 'zebra', 'a.png'), 40, 20, [255, 255, 255]);
    await solid(join(root, 'zebra', 'b.JPG'), 9, 31, [0, 0, 0]);
    await solid(join(root, 'apple', 'x.png'), 5, 5, [255, 0, 0]);
    // Transparent pixels are composited on black.
    await solid(join(root, 'apple', 'y.png'), 12, 12, [255, 255, 255], 0);
    await writeFile(join(root, 'apple', 'notes.txt'), 'not an image');

    const grey = await loadImageFolder(root, { height: 6, width: 4, channels: 1 });
    assert.deepEqual(grey.classes, ['apple', 'zebra']);
    assert.deepEqual([grey.n, grey.height, grey.width, grey.channels], [4, 6, 4, 1]);
    assert.deepEqual([...grey.labels], [0, 0, 1, 1]);
    assert.equal(grey.images.length, 4 * 24);
    const mean = (k: number): number =>
      grey.images.subarray(k * 24, (k + 1) * 24).reduce((a, b) => a + b, 0) / 24;
    assert.ok(Math.abs(mean(0) - 76) <= 1, `red as Rec. 601 grey is 76, got ${mean(0)}`);
    assert.ok(mean(1) <= 1, `transparent on black, got ${mean(1)}`);
    assert.equal(mean(2), 255);
    assert.ok(mean(3) <= 2, `black jpeg, got ${mean(3)}`);

    const rgb = await loadImageFolder(root, { height: 3, width: 3, channels: 3 });
    assert.equal(rgb.channels, 3);
    assert.deepEqual([...rgb.images.subarray(0, 3)], [255, 0, 0]);
  });

  it('rejects a missing folder, naming it', async () => {
    const missing = join(dir, 'missing');
    await rejectsWith(
      loadImageFolder(missing, { height: 8, width: 8, channels: 1 }),
      ErrorCodes.DATA_ERR_NOT_FOUND,
      missing,
    );
  });

  it('rejects a folder with no class folders', async () => {
    const root = join(dir, 'flat');
    await mkdir(root);
    await solid(join(root, 'a.png'), 4, 4, [1, 2, 3]);
    await rejectsWith(
      loadImageFolder(root, { height: 8, width: 8, channels: 1 }),
      ErrorCodes.DATA_ERR_EMPTY,
      root,
    );
  });

  it('rejects an empty class folder, naming it', async () => {
    const root = join(dir, 'empty-class');
    await folder(root, { full: 2, hollow: 0 });
    await rejectsWith(
      loadImageFolder(root, { height: 8, width: 8, channels: 1 }),
      ErrorCodes.DATA_ERR_EMPTY,
      join(root, 'hollow'),
    );
  });

  it('rejects an undecodable image, naming it', async () => {
    const root = join(dir, 'broken');
    await folder(root, { a: 2, b: 1 });
    const bad = join(root, 'b', 'broken.jpg');
    await writeFile(bad, Buffer.from('this is not a jpeg at all'));
    await rejectsWith(
      loadImageFolder(root, { height: 8, width: 8, channels: 1 }),
      ErrorCodes.DATA_ERR_DECODE,
      bad,
    );
  });

  it('rejects an invalid shape as an argument error', async () => {
    const root = join(dir, 'ok');
    await rejectsWith(
      loadImageFolder(root, { height: 0, width: 8, channels: 1 }),
      ErrorCodes.CLI_ERR_ARGS,
      'height',
    );
  });
});

describe('loadDataset on an ImageFolder tree', () => {
  it('reads root/train and root/test for the splits, at the default 28x28x1', async () => {
    const root = join(dir, 'split');
    await folder(join(root, 'train'), { cat: 2, dog: 3 });
    await folder(join(root, 'test'), { cat: 1, dog: 1 });
    const train = await loadDataset({ data: root, split: 'train' });
    const test = await loadDataset({ data: root, split: 'test' });
    assert.deepEqual([train.n, train.height, train.width, train.channels], [5, 28, 28, 1]);
    assert.deepEqual([...train.labels], [0, 0, 1, 1, 1]);
    assert.equal(train.name, 'split/train');
    assert.deepEqual([test.n, ...test.classes], [2, 'cat', 'dog']);
  });

  it('reads the root itself when there are no split folders', async () => {
    const root = join(dir, 'plain');
    await folder(root, { a: 1, b: 2 });
    const ds = await loadDataset({ data: root, split: 'test', height: 5, width: 7, channels: 3 });
    assert.deepEqual([ds.n, ds.height, ds.width, ds.channels], [3, 5, 7, 3]);
  });

  it('refuses to train on a root whose only split folder is test/', async () => {
    const root = join(dir, 'test-only');
    await folder(join(root, 'test'), { a: 1 });
    await rejectsWith(
      loadDataset({ data: root, split: 'train' }),
      ErrorCodes.DATA_ERR_NOT_FOUND,
      join(root, 'train'),
    );
  });
});
