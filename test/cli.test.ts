/**
 * The `cascade` executable (cascade/cli.ts) with `distill` (distill/cli.ts) and `eval`
 * (distill/eval-cli.ts), run as a user runs it: help, argument errors (exit 2) and data errors
 * (exit 1), each reported as one `cascade:` line on stderr naming the culprit, never a stack trace.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import sharp from 'sharp';
import { subset } from '../models/data/dataset.ts';
import { writeIdx } from '../models/data/idx.ts';
import { loadBundledSample } from '../models/data/load.ts';

const ROOT = new URL('..', import.meta.url).pathname;

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function cascade(...args: string[]): Run {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'cascade/cli.ts', ...args], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Exit code `code`, nothing on stdout, one `cascade: …` line on stderr; returns that line. */
function oneLineError(r: Run, code: number): string {
  assert.equal(r.status, code, `exit ${code} expected; stderr: ${r.stderr}`);
  assert.doesNotMatch(r.stderr, / {4}at /, 'no stack trace');
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  assert.equal(lines.length, 1, `one stderr line, got: ${r.stderr}`);
  assert.match(lines[0], /^cascade: \S/);
  assert.doesNotMatch(lines[0], /internal error/);
  assert.equal(r.stdout, '');
  return lines[0];
}

let dir: string;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'cli-test-'));
  const sample = subset(
    await loadBundledSample(),
    Array.from({ length: 20 }, (_, i) => i * 100),
  );
  const writePair = async (d: string, opts: { gzip?: boolean } = {}): Promise<void> => {
    mkdirSync(d, { recursive: true });
    const ext = (opts.gzip ?? true) ? '.gz' : '';
    await writeIdx(join(d, `train-images-idx3-ubyte${ext}`), [sample.n, 28, 28], sample.images, opts);
    await writeIdx(join(d, `train-labels-idx1-ubyte${ext}`), [sample.n], sample.labels, opts);
  };

  // A download cut short: the gzip stream of the images ends early.
  await writePair(join(dir, 'truncated'));
  const gz = join(dir, 'truncated', 'train-images-idx3-ubyte.gz');
  const bytes = readFileSync(gz);
  writeFileSync(gz, bytes.subarray(0, Math.floor(bytes.length / 2)));

  // The images file claims 1 dimension (a labels magic).
  await writePair(join(dir, 'magic'), { gzip: false });
  const raw = join(dir, 'magic', 'train-images-idx3-ubyte');
  const img = readFileSync(raw);
  img[3] = 0x01;
  writeFileSync(raw, img);

  // One label fewer than images.
  mkdirSync(join(dir, 'count'));
  await writeIdx(join(dir, 'count', 'train-images-idx3-ubyte.gz'), [sample.n, 28, 28], sample.images);
  await writeIdx(
    join(dir, 'count', 'train-labels-idx1-ubyte.gz'),
    [sample.n - 1],
    sample.labels.subarray(0, sample.n - 1),
  );

  // ImageFolder with a real PNG in one class and nothing in the other.
  mkdirSync(join(dir, 'folder', 'boot'), { recursive: true });
  mkdirSync(join(dir, 'folder', 'coat'));
  await sharp(Buffer.from(sample.images.subarray(0, 784)), { raw: { width: 28, height: 28, channels: 1 } })
    .png()
    .toFile(join(dir, 'folder', 'boot', '0.png'));
});
after(() => rmSync(dir, { recursive: true, force: true }));

describe('cascade: commands and arguments', () => {
  it('--help lists distill and eval', () => {
    const r = cascade('--help');
    assert.equal(r.status, 0);
    assert.match(r.stdout, /^Usage: cascade <command>/);
    assert.match(r.stdout, /^ {2}distill\s+\S/m);
    assert.match(r.stdout, /^ {2}eval\s+\S/m);
    assert.equal(r.stderr, '');
  });

  it('an unknown command exits 2 with one line', () => {
    const line = oneLineError(cascade('frobnicate'), 2);
    assert.match(line, /unknown command "frobnicate"/);
  });

  it('an unknown option exits 2 with one line', () => {
    assert.match(oneLineError(cascade('distill', 'teacher', '--frobnicate'), 2), /--frobnicate/);
    assert.match(oneLineError(cascade('eval', '--frobnicate'), 2), /--frobnicate/);
  });

  it('distill student without --arch exits 2, before touching the data', () => {
    // A missing dataset must not hide the argument error (nor the data be loaded first).
    const line = oneLineError(cascade('distill', 'student', '--data', join(dir, 'nope')), 2);
    assert.match(line, /--arch/);
  });

  it('distill qat without --arch, quantize without --model, requantize without --card or with bad bits exit 2', () => {
    assert.match(oneLineError(cascade('distill', 'qat', '--data', join(dir, 'nope')), 2), /--arch/);
    assert.match(oneLineError(cascade('distill', 'quantize', '--data', join(dir, 'nope')), 2), /--model/);
    assert.match(oneLineError(cascade('distill', 'requantize', '--data', join(dir, 'nope')), 2), /--card/);
    const bits = cascade(
      'distill',
      'requantize',
      '--card',
      'c.json',
      '--weight-bits',
      '6',
      '--data',
      join(dir, 'nope'),
    );
    assert.match(oneLineError(bits, 2), /--weight-bits/);
  });

  it('an unknown distill step exits 2, before touching the data', () => {
    const line = oneLineError(cascade('distill', 'techer', '--data', join(dir, 'nope')), 2);
    assert.match(line, /unknown step "techer"/);
  });

  it('a non-numeric --epochs exits 2 saying what was expected and received', () => {
    const line = oneLineError(cascade('distill', 'teacher', '--epochs', 'abc'), 2);
    assert.match(line, /--epochs: expected .*integer.*, received "abc"/);
  });

  it('a bad --arch exits 2 listing the choices', () => {
    const line = oneLineError(cascade('distill', 'student', '--arch', 'phone'), 2);
    assert.match(line, /--arch: expected one of device, gateway, received "phone"/);
  });
});

describe('cascade distill: data errors are one line naming the file', () => {
  it('a missing --data folder', () => {
    const path = join(dir, 'nope');
    const line = oneLineError(cascade('distill', 'teacher', '--data', path), 1);
    assert.ok(line.includes(path), line);
    assert.match(line, /not found/);
  });

  it('a truncated gzip IDX file', () => {
    const path = join(dir, 'truncated', 'train-images-idx3-ubyte.gz');
    const line = oneLineError(cascade('distill', 'teacher', '--data', join(dir, 'truncated')), 1);
    assert.ok(line.includes(path), line);
    assert.match(line, /truncated/);
  });

  it('an IDX file with the wrong magic', () => {
    const path = join(dir, 'magic', 'train-images-idx3-ubyte');
    const line = oneLineError(cascade('distill', 'teacher', '--data', join(dir, 'magic')), 1);
    assert.ok(line.includes(path), line);
    assert.match(line, /magic 0x00000801.*expected 0x00000803/);
  });

  it('labels and images that disagree in count', () => {
    const path = join(dir, 'count', 'train-labels-idx1-ubyte.gz');
    const line = oneLineError(cascade('distill', 'teacher', '--data', join(dir, 'count')), 1);
    assert.ok(line.includes(path), line);
    assert.match(line, /19 labels .* 20 images/);
  });

  it('an ImageFolder with an empty class folder', () => {
    const path = join(dir, 'folder', 'coat');
    const line = oneLineError(cascade('distill', 'teacher', '--data', join(dir, 'folder')), 1);
    assert.ok(line.includes(path), line);
    assert.match(line, /no \.png/);
  });
});

describe('cascade eval', () => {
  it('a missing --registry file exits 1 with one line naming it', () => {
    const path = join(dir, 'no-registry.json');
    const line = oneLineError(cascade('eval', '--registry', path), 1);
    assert.ok(line.includes(path), line);
  });
});
