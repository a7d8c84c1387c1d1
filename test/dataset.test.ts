import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import { makeSample } from '../distill/sample.ts';
import {
  classCounts,
  datasetHash,
  FASHION_MNIST_CLASSES,
  type ImageDataset,
  splitTrainVal,
  stratifiedSample,
  subset,
} from '../models/data/dataset.ts';
import { DEFAULT_FASHION_MNIST_DIR, loadIdxPair } from '../models/data/idx.ts';
import { bundledSampleDir, loadBundledSample, loadDataset } from '../models/data/load.ts';

/** datasetHash of models/sample/: changes only when the sample is rebuilt on purpose. */
const SAMPLE_HASH = 'd2a8d070716ed10a6e5ff05f73d82f5b2e55cc7cb0e712f6010e4fb6654b6389';

let sample: ImageDataset;
let dir: string;

before(async () => {
  const cwd = process.cwd();
  // Loading from another working directory proves the path is resolved from the module.
  process.chdir(tmpdir());
  try {
    sample = await loadBundledSample();
  } finally {
    process.chdir(cwd);
  }
  dir = await mkdtemp(join(tmpdir(), 'cascade-dataset-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('bundled sample', () => {
  it('has 2000 grey 28x28 images, 200 per class, and a stable hash', () => {
    assert.equal(sample.name, 'fashion-mnist/test-sample');
    assert.deepEqual([sample.n, sample.height, sample.width, sample.channels], [2000, 28, 28, 1]);
    assert.equal(sample.images.length, 2000 * 28 * 28);
    assert.deepEqual(classCounts(sample), new Array(10).fill(200));
    assert.deepEqual(sample.classes, [...FASHION_MNIST_CLASSES]);
    assert.equal(datasetHash(sample), SAMPLE_HASH);
  });

  const haveDebian = existsSync(join(DEFAULT_FASHION_MNIST_DIR, 't10k-images-idx3-ubyte.gz'));
  it('is rebuilt identically by makeSample from the Debian test split', {
    skip: haveDebian
      ? false
      : `${DEFAULT_FASHION_MNIST_DIR} not present (Debian package dataset-fashion-mnist)`,
  }, async () => {
    const out = join(dir, 'sample');
    const made = await makeSample({ out });
    assert.equal(made.n, 2000);
    assert.equal(made.files.length, 2);
    assert.ok(made.bytes > 0 && made.bytes <= 2 * 1024 * 1024, `${made.bytes} bytes`);
    assert.equal(made.hash, SAMPLE_HASH);
    const back = await loadIdxPair(made.files[0], made.files[1], {
      name: 'x',
      classes: FASHION_MNIST_CLASSES,
    });
    assert.equal(datasetHash(back), SAMPLE_HASH);
  });

  it('lives in models/sample/', async () => {
    assert.match(await bundledSampleDir(), /models[\\/]sample[\\/]?$/);
  });
});

describe('datasetHash / subset', () => {
  it('changes with one pixel, one label or the shape', () => {
    const base = datasetHash(sample);
    const px = subset(sample, [...Array(sample.n).keys()]);
    assert.equal(datasetHash(px), base);
    px.images[12345] ^= 1;
    assert.notEqual(datasetHash(px), base);
    const lab = subset(sample, [...Array(sample.n).keys()]);
    lab.labels[7] = (lab.labels[7] + 1) % 10;
    assert.notEqual(datasetHash(lab), base);
    assert.notEqual(datasetHash({ ...sample, height: 14, width: 56 }), base);
  });

  it('copies the chosen images in order and checks indices', () => {
    const s = subset(sample, [5, 0]);
    assert.equal(s.n, 2);
    assert.deepEqual(s.images.subarray(0, 784), sample.images.subarray(5 * 784, 6 * 784));
    assert.deepEqual([...s.labels], [sample.labels[5], sample.labels[0]]);
    assert.throws(() => subset(sample, [sample.n]), RangeError);
    assert.throws(() => subset(sample, [1.5]), RangeError);
  });
});

describe('splitTrainVal', () => {
  it('is stratified, disjoint, complete and deterministic by seed', () => {
    const a = splitTrainVal(sample, 0.1, 7);
    assert.deepEqual(classCounts(a.val), new Array(10).fill(20));
    assert.deepEqual(classCounts(a.train), new Array(10).fill(180));
    // Every image lands in exactly one part: compare image hashes as multisets.
    const key = (ds: ImageDataset, i: number): string =>
      Buffer.from(ds.images.subarray(i * 784, (i + 1) * 784)).toString('base64') + ds.labels[i];
    const all = [...Array(sample.n).keys()].map((i) => key(sample, i)).sort();
    const parts = [
      ...[...Array(a.train.n).keys()].map((i) => key(a.train, i)),
      ...[...Array(a.val.n).keys()].map((i) => key(a.val, i)),
    ].sort();
    assert.deepEqual(parts, all);

    const again = splitTrainVal(sample, 0.1, 7);
    assert.equal(datasetHash(again.train), datasetHash(a.train));
    assert.equal(datasetHash(again.val), datasetHash(a.val));
    assert.notEqual(datasetHash(splitTrainVal(sample, 0.1, 8).val), datasetHash(a.val));
    assert.equal(a.train.name, 'fashion-mnist/test-sample:train');
  });

  it('accepts 0 and rejects fractions outside [0, 1)', () => {
    assert.equal(splitTrainVal(sample, 0, 1).val.n, 0);
    for (const bad of [1, -0.1, Number.NaN]) {
      assert.throws(
        () => splitTrainVal(sample, bad, 1),
        (err: unknown) => err instanceof CascadeError && err.code === ErrorCodes.CLI_ERR_ARGS,
      );
    }
  });
});

describe('stratifiedSample', () => {
  it('takes exactly perClass of each class, deterministically', () => {
    const s = stratifiedSample(sample, 3, 11);
    assert.deepEqual(classCounts(s), new Array(10).fill(3));
    assert.equal(datasetHash(stratifiedSample(sample, 3, 11)), datasetHash(s));
    assert.notEqual(datasetHash(stratifiedSample(sample, 3, 12)), datasetHash(s));
  });

  it('names the short class when perClass is too large', () => {
    assert.throws(
      () => stratifiedSample(sample, 201, 0),
      (err: unknown) =>
        err instanceof CascadeError &&
        err.code === ErrorCodes.CLI_ERR_ARGS &&
        /T-shirt\/top/.test(err.message),
    );
  });
});

describe('loadDataset', () => {
  it('reports a missing data folder, naming it', async () => {
    const missing = join(dir, 'absent');
    await assert.rejects(
      loadDataset({ data: missing, split: 'test' }),
      (err: unknown) =>
        err instanceof CascadeError &&
        err.code === ErrorCodes.DATA_ERR_NOT_FOUND &&
        err.message.includes(missing),
    );
  });

  it('treats a folder of IDX files as Fashion-MNIST and names the file it lacks', async () => {
    // models/sample/ holds IDX files but not under Fashion-MNIST's names: the error names the file.
    const sampleDir = await bundledSampleDir();
    await assert.rejects(
      loadDataset({ data: sampleDir, split: 'test' }),
      (err: unknown) =>
        err instanceof CascadeError &&
        err.code === ErrorCodes.DATA_ERR_NOT_FOUND &&
        err.message.includes('t10k-images-idx3-ubyte'),
    );
  });

  const haveDebian = existsSync(join(DEFAULT_FASHION_MNIST_DIR, 't10k-images-idx3-ubyte.gz'));
  it('defaults to the Debian Fashion-MNIST folder', {
    skip: haveDebian
      ? false
      : `${DEFAULT_FASHION_MNIST_DIR} not present (Debian package dataset-fashion-mnist)`,
  }, async () => {
    const test = await loadDataset({ split: 'test' });
    assert.deepEqual(
      [test.name, test.n, test.height, test.width, test.channels],
      ['fashion-mnist/test', 10000, 28, 28, 1],
    );
    await assert.rejects(
      loadDataset({ split: 'test', height: 32 }),
      (err: unknown) =>
        err instanceof CascadeError && err.code === ErrorCodes.CLI_ERR_ARGS && /height/.test(err.message),
    );
  });
});
