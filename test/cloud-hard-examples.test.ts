import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { type HardExample, HardExampleLog } from '../cloud/hard-examples.ts';

function example(i: number): HardExample {
  return {
    time: new Date(0).toISOString(),
    reason: i % 2 ? 'disagreement' : 'low-confidence',
    traceId: 'a'.repeat(32),
    frameId: i,
    modelVersion: 'v1',
    teacherTop1: i % 10,
    teacherConfidence: 0.4,
    probs: new Array(10).fill(0.1),
    input: { datatype: 'UINT8', shape: [28, 28], base64: Buffer.alloc(784, i % 256).toString('base64') },
  };
}

function onDisk(dir: string): { bytes: number; frames: number[] } {
  let bytes = 0;
  const frames: number[] = [];
  for (const f of readdirSync(dir).sort()) {
    bytes += statSync(join(dir, f)).size;
    for (const line of readFileSync(join(dir, f), 'utf8').trim().split('\n'))
      frames.push(JSON.parse(line).frameId);
  }
  return { bytes, frames };
}

describe('HardExampleLog', () => {
  it('stays under its byte cap by dropping the oldest segments, counting what it dropped', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hx-'));
    try {
      const maxBytes = 32 * 1024;
      const log = new HardExampleLog({ dir, maxBytes, segments: 4 });
      const n = 200; // ~1.3 kB each: ~8x the cap
      for (let i = 0; i < n; i++) assert.equal(log.append(example(i)), true);
      await log.flush();
      const { bytes, frames } = onDisk(dir);
      const s = log.stats;
      assert.ok(bytes <= maxBytes, `${bytes} bytes on disk, cap ${maxBytes}`);
      assert.equal(s.bytesOnDisk, bytes);
      assert.equal(s.written, n);
      assert.equal(s.rotatedOut + frames.length, n, 'every record is on disk or counted as rotated out');
      assert.ok(s.rotatedOut > 0);
      assert.deepEqual(
        frames,
        Array.from({ length: frames.length }, (_, k) => n - frames.length + k),
        'the newest kept, in order',
      );
      await log.close();
      // A restart picks the segments up again and keeps the cap.
      const again = new HardExampleLog({ dir, maxBytes, segments: 4 });
      await again.open();
      assert.equal(again.stats.bytesOnDisk, bytes);
      for (let i = n; i < n + 50; i++) again.append(example(i));
      await again.close();
      assert.ok(onDisk(dir).bytes <= maxBytes);
      assert.equal(onDisk(dir).frames.at(-1), n + 49);
      assert.equal(again.append(example(0)), false, 'closed: refused');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('drops records beyond its backlog, counted', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hx-'));
    try {
      const log = new HardExampleLog({ dir, maxBytes: 1 << 20, maxPending: 5 });
      const accepted = Array.from({ length: 20 }, (_, i) => log.append(example(i))).filter(Boolean).length;
      await log.flush();
      assert.equal(accepted, 5);
      assert.equal(log.stats.backlogDropped, 15);
      assert.equal(log.stats.written, 5);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('counts a full disk (ENOSPC) and keeps going', {
    skip: existsSync('/dev/full') ? undefined : '/dev/full not available',
  }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hx-'));
    try {
      // The current segment is /dev/full: every write fails with ENOSPC, as on a full disk.
      symlinkSync('/dev/full', join(dir, 'hard-examples-0000000001.jsonl'));
      const errors: string[] = [];
      const log = new HardExampleLog({ dir, maxBytes: 1 << 20, onError: (e) => errors.push(e.code ?? '') });
      for (let i = 0; i < 3; i++) log.append(example(i));
      await log.flush();
      assert.deepEqual(log.stats.errors, { ENOSPC: 3 });
      assert.equal(log.stats.written, 0);
      assert.deepEqual(errors, ['ENOSPC', 'ENOSPC', 'ENOSPC']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('counts an unwritable folder instead of throwing', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hx-'));
    try {
      const file = join(dir, 'not-a-dir');
      rmSync(file, { force: true });
      // A file where the folder should be: mkdir and every append fail.
      await import('node:fs/promises').then((fs) => fs.writeFile(file, 'x'));
      const log = new HardExampleLog({ dir: file, maxBytes: 1 << 20 });
      log.append(example(1));
      await log.flush();
      const codes = Object.keys(log.stats.errors);
      assert.ok(codes.length > 0 && codes.every((c) => c === 'EEXIST' || c === 'ENOTDIR'), codes.join());
      assert.equal(log.stats.written, 0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
