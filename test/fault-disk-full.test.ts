/**
 * Fault: the disk fills up while the cloud writes its hard-example log, under concurrent load.
 * The full disk is real, without mounting anything: the log's current segment file is a symlink
 * to /dev/full, on which every write fails with ENOSPC from the kernel. Then the space comes back
 * (the link is removed) and writing resumes. Every request is answered either way, and every hard
 * example is accounted for: logged = written + lost to disk errors.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { metricValue } from '../cascade/service/metrics.ts';
import { buildCloudApp, type CloudApp } from '../cloud/app.ts';
import { loadCloudConfig } from '../cloud/config.ts';
import type { ImageDataset } from '../models/data/dataset.ts';
import { loadBundledSample } from '../models/data/load.ts';

const SKIP = existsSync('/dev/full') ? undefined : 'no /dev/full on this system';
const PX = 28 * 28;
const SEGMENT = 'hard-examples-0000000001.jsonl';

describe('fault: disk full while writing the hard-example log', { skip: SKIP }, () => {
  let dir: string;
  let cloud: CloudApp;
  let url: string;
  let data: ImageDataset;

  before(async () => {
    data = await loadBundledSample();
    dir = mkdtempSync(join(tmpdir(), 'cascade-diskfull-'));
    symlinkSync('/dev/full', join(dir, SEGMENT));
    cloud = await buildCloudApp(
      loadCloudConfig({
        flags: {
          httpPort: 0,
          auth: false,
          logLevel: 'silent',
          // Log (nearly) every frame: the teacher is rarely below the default 0.6 on this sample.
          hardExamples: { dir, confidenceBelow: 1, maxBytes: 1 << 20 },
        },
      }),
      { defaultMetrics: false },
    );
    url = `${await cloud.http.listen({ port: 0, host: '127.0.0.1' })}/v2/models/${cloud.card.name}/infer`;
  });
  after(async () => {
    await cloud?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** `n` requests, 16 at a time, over a real socket; resolves their status codes. */
  async function load(n: number, offset: number): Promise<number[]> {
    const codes: number[] = [];
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < n) {
        const i = offset + next++;
        const res = await fetch(url, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({
            inputs: [
              {
                name: 'input',
                shape: [1, 28, 28],
                datatype: 'UINT8',
                data: Array.from(data.images.subarray(i * PX, (i + 1) * PX)),
              },
            ],
            parameters: { budget_ms: 5000 },
          }),
        });
        await res.arrayBuffer();
        codes.push(res.status);
      }
    };
    await Promise.all(Array.from({ length: 16 }, worker));
    return codes;
  }

  const logged = () => metricValue(cloud.metrics.registry, 'cascade_cloud_hard_examples_total');

  it('answers every request while the disk is full, counts ENOSPC, and writes again once space is back', async () => {
    const full = await load(200, 0);
    await cloud.hardExamples?.flush();
    assert.deepEqual([...new Set(full)], [200], 'every request answered while the disk is full');
    const during = cloud.hardExamples?.stats;
    assert.ok(during);
    assert.equal(during.written, 0);
    assert.ok((during.errors.ENOSPC ?? 0) > 0, JSON.stringify(during.errors));
    assert.equal(await logged(), during.written + (during.errors.ENOSPC ?? 0));
    assert.equal(
      await metricValue(cloud.metrics.registry, 'cascade_cloud_hard_examples_errors_total', {
        code: 'ENOSPC',
      }),
      during.errors.ENOSPC,
    );

    // Space comes back: the next appends create a regular segment file.
    unlinkSync(join(dir, SEGMENT));
    const freed = await load(100, 200);
    await cloud.hardExamples?.flush();
    assert.deepEqual([...new Set(freed)], [200]);
    const afterwards = cloud.hardExamples?.stats;
    assert.ok(afterwards && afterwards.written > 0);
    const lines = readdirSync(dir)
      .map((f) => readFileSync(join(dir, f), 'utf8').split('\n').filter(Boolean).length)
      .reduce((a, b) => a + b, 0);
    assert.equal(lines, afterwards.written, 'every record counted as written is on disk');
    const errors = Object.values(afterwards.errors).reduce((a, b) => a + b, 0);
    assert.equal(await logged(), afterwards.written + errors, 'logged = written + lost to the disk');
    assert.equal(errors, during.errors.ENOSPC, 'no disk error once space is back');
  });
});
