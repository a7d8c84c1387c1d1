import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import { CascadeError, type ErrorCode, ErrorCodes } from '../cascade/errors.ts';
import { classCounts, FASHION_MNIST_CLASSES } from '../models/data/dataset.ts';
import {
  DEFAULT_FASHION_MNIST_DIR,
  hasIdxFiles,
  IDX_IMAGES_MAGIC,
  IDX_LABELS_MAGIC,
  loadFashionMnist,
  loadIdxPair,
  readIdx,
  writeIdx,
} from '../models/data/idx.ts';

let dir: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cascade-idx-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Asserts a CascadeError with `code` whose message names `name` (and contains `also`, if given). */
async function rejectsWith(p: Promise<unknown>, code: ErrorCode, name: string, also?: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof CascadeError, `expected a CascadeError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    assert.ok(err.message.includes(name), `message does not name ${name}: ${err.message}`);
    assert.ok(!err.message.includes('\n'), 'message must be one line');
    if (also) assert.match(err.message, also);
    return true;
  });
}

/** Raw IDX bytes with an arbitrary header, for building broken files. */
function rawIdx(magic: number, dims: number[], payload: Uint8Array): Buffer {
  const head = Buffer.alloc(4 + 4 * dims.length);
  head.writeUInt32BE(magic, 0);
  dims.forEach((d, i) => {
    head.writeUInt32BE(d, 4 + 4 * i);
  });
  return Buffer.concat([head, payload]);
}

const pixels = (n: number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (i * 37) % 256);

describe('writeIdx / readIdx', () => {
  it('round-trips gzipped and raw files', async () => {
    const data = pixels(3 * 4 * 5);
    for (const gzip of [true, false]) {
      const path = join(dir, `rt-${gzip}.idx3`);
      const bytes = await writeIdx(path, [3, 4, 5], data, { gzip });
      const onDisk = await readFile(path);
      assert.equal(onDisk.length, bytes);
      assert.equal(onDisk[0] === 0x1f && onDisk[1] === 0x8b, gzip);
      const back = await readIdx(path, IDX_IMAGES_MAGIC);
      assert.deepEqual(back.dims, [3, 4, 5]);
      assert.deepEqual(back.data, data);
    }
  });

  it('rejects data that does not match the dims', async () => {
    await assert.rejects(writeIdx(join(dir, 'bad.idx'), [2, 2], new Uint8Array(3)), RangeError);
  });

  it('rejects a wrong magic, naming the file', async () => {
    const path = join(dir, 'labels-as-images.gz');
    await writeFile(path, gzipSync(rawIdx(IDX_LABELS_MAGIC, [4], pixels(4))));
    await rejectsWith(
      readIdx(path, IDX_IMAGES_MAGIC),
      ErrorCodes.DATA_ERR_FORMAT,
      path,
      /0x00000801.*0x00000803/,
    );
    const png = join(dir, 'not-idx.png');
    await writeFile(png, Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
    await rejectsWith(readIdx(png), ErrorCodes.DATA_ERR_FORMAT, png, /not a uint8 IDX file/);
  });

  it('rejects a truncated payload with the sizes in the message', async () => {
    const path = join(dir, 't10k-images-idx3-ubyte.gz');
    await writeFile(path, gzipSync(rawIdx(IDX_IMAGES_MAGIC, [10, 28, 28], pixels(1234))));
    await rejectsWith(
      readIdx(path, IDX_IMAGES_MAGIC),
      ErrorCodes.DATA_ERR_FORMAT,
      path,
      /truncated: header says 10x28x28 \(7840 bytes\) but file has 1234/,
    );
  });

  it('rejects a truncated header and a cut-off gzip stream', async () => {
    const short = join(dir, 'short-header');
    await writeFile(short, rawIdx(IDX_IMAGES_MAGIC, [10], new Uint8Array(0)));
    await rejectsWith(readIdx(short, IDX_IMAGES_MAGIC), ErrorCodes.DATA_ERR_FORMAT, short, /truncated/);
    const cut = join(dir, 'cut.gz');
    const whole = gzipSync(rawIdx(IDX_IMAGES_MAGIC, [10, 28, 28], pixels(7840)));
    await writeFile(cut, whole.subarray(0, whole.length >> 1));
    await rejectsWith(readIdx(cut), ErrorCodes.DATA_ERR_FORMAT, cut, /truncated gzip/);
  });

  it('rejects trailing bytes after the data', async () => {
    const path = join(dir, 'long.idx1');
    await writeFile(path, rawIdx(IDX_LABELS_MAGIC, [3], pixels(5)));
    await rejectsWith(readIdx(path), ErrorCodes.DATA_ERR_FORMAT, path, /2 extra/);
  });

  it('reports a missing file as not found', async () => {
    const path = join(dir, 'nope.gz');
    await rejectsWith(readIdx(path), ErrorCodes.DATA_ERR_NOT_FOUND, path);
  });
});

describe('loadIdxPair / loadFashionMnist', () => {
  it('rejects an image/label count mismatch, naming the labels file', async () => {
    const images = join(dir, 'pair-images.gz');
    const labels = join(dir, 'pair-labels.gz');
    await writeIdx(images, [3, 2, 2], pixels(12));
    await writeIdx(labels, [4], Uint8Array.of(0, 1, 2, 3));
    await rejectsWith(
      loadIdxPair(images, labels, { name: 'x', classes: FASHION_MNIST_CLASSES }),
      ErrorCodes.DATA_ERR_FORMAT,
      labels,
      /4 labels but pair-images.gz has 3 images/,
    );
  });

  it('rejects a label outside the class list', async () => {
    const images = join(dir, 'range-images.gz');
    const labels = join(dir, 'range-labels.gz');
    await writeIdx(images, [2, 2, 2], pixels(8));
    await writeIdx(labels, [2], Uint8Array.of(1, 10));
    await rejectsWith(
      loadIdxPair(images, labels, { name: 'x', classes: FASHION_MNIST_CLASSES }),
      ErrorCodes.DATA_ERR_FORMAT,
      labels,
      /label 10 at index 1/,
    );
  });

  it('loads a Fashion-MNIST-layout folder of raw (unzipped) files', async () => {
    const fm = join(dir, 'fm-raw');
    await mkdir(fm);
    await writeIdx(join(fm, 't10k-images-idx3-ubyte'), [3, 2, 2], pixels(12), { gzip: false });
    await writeIdx(join(fm, 't10k-labels-idx1-ubyte'), [3], Uint8Array.of(9, 0, 9), { gzip: false });
    assert.equal(await hasIdxFiles(fm), true);
    const ds = await loadFashionMnist(fm, 'test');
    assert.equal(ds.name, 'fashion-mnist/test');
    assert.deepEqual([ds.n, ds.height, ds.width, ds.channels], [3, 2, 2, 1]);
    assert.deepEqual([...ds.labels], [9, 0, 9]);
    assert.deepEqual(ds.classes, [...FASHION_MNIST_CLASSES]);
    // The train split's files are absent: the error names the file it looked for.
    await rejectsWith(
      loadFashionMnist(fm, 'train'),
      ErrorCodes.DATA_ERR_NOT_FOUND,
      join(fm, 'train-images-idx3-ubyte'),
    );
  });

  it('reports a missing folder, naming it', async () => {
    const missing = join(dir, 'no-such-dir');
    await rejectsWith(loadFashionMnist(missing, 'test'), ErrorCodes.DATA_ERR_NOT_FOUND, missing);
    assert.equal(await hasIdxFiles(missing), false);
  });

  const haveDebian = existsSync(join(DEFAULT_FASHION_MNIST_DIR, 'train-images-idx3-ubyte.gz'));
  it('reads the Debian train split: 60000 images, 6000 per class', {
    skip: haveDebian
      ? false
      : `${DEFAULT_FASHION_MNIST_DIR} not present (Debian package dataset-fashion-mnist)`,
  }, async () => {
    const ds = await loadFashionMnist(DEFAULT_FASHION_MNIST_DIR, 'train');
    assert.deepEqual([ds.n, ds.height, ds.width, ds.channels], [60000, 28, 28, 1]);
    assert.deepEqual(classCounts(ds), new Array(10).fill(6000));
  });
});
