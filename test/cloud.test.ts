import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CascadeError } from '../cascade/errors.ts';
import { metricValue } from '../cascade/service/metrics.ts';
import { buildCloudApp, type CloudApp } from '../cloud/app.ts';
import { loadCloudConfig } from '../cloud/config.ts';
import type { ImageDataset } from '../models/data/dataset.ts';
import { loadBundledSample } from '../models/data/load.ts';

const TOKEN = 'cloud-test-token-42';
const PX = 784;
let data: ImageDataset;

before(async () => {
  data = await loadBundledSample();
});

function body(indices: number[], params: Record<string, unknown> = {}): object {
  const px: number[] = [];
  for (const i of indices) px.push(...data.images.subarray(i * PX, (i + 1) * PX));
  return {
    parameters: { budget_ms: 5000, ...params },
    inputs: [{ name: 'input', shape: [indices.length, 28, 28], datatype: 'UINT8', data: px }],
  };
}

async function cloud(flags: Record<string, unknown> = {}): Promise<CloudApp> {
  return buildCloudApp(loadCloudConfig({ flags: { token: TOKEN, logLevel: 'silent', ...flags } }), {
    defaultMetrics: false,
  });
}

const auth = { authorization: `Bearer ${TOKEN}` };

describe('cloud teacher', () => {
  let app: CloudApp;
  let dir: string;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'cloud-'));
    app = await cloud({ hardExamples: { dir, confidenceBelow: 0.9 } });
  });
  after(async () => {
    await app?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('refuses inference and metadata without the right bearer token (401), health stays open', async () => {
    const url = `/v2/models/${app.card.name}/infer`;
    const none = await app.http.inject({ method: 'POST', url, payload: body([0]) });
    assert.equal(none.statusCode, 401);
    assert.equal(none.headers['www-authenticate'], 'Bearer');
    assert.match(none.json().error, /missing bearer token/);
    const wrong = await app.http.inject({
      method: 'POST',
      url,
      payload: body([0]),
      headers: { authorization: 'Bearer nope-nope-nope' },
    });
    assert.equal(wrong.statusCode, 401);
    assert.match(wrong.json().error, /invalid bearer token/);
    // Refused before the body is even validated.
    const junk = await app.http.inject({ method: 'POST', url, payload: { junk: 1 } });
    assert.equal(junk.statusCode, 401);
    assert.equal((await app.http.inject({ url: `/v2/models/${app.card.name}` })).statusCode, 401);
    assert.equal((await app.http.inject({ url: '/v2/health/ready' })).statusCode, 200);
    assert.equal((await app.http.inject({ url: '/healthz' })).statusCode, 200);
    assert.equal(
      await metricValue(app.metrics.registry, 'cascade_cloud_requests_total', { status: 'unauthorized' }),
      4,
    );
    const meta = await app.http.inject({ url: `/v2/models/${app.card.name}`, headers: auth });
    assert.equal(meta.statusCode, 200);
    assert.equal(meta.json().parameters.tier, 'cloud');
  });

  it('classifies real images with the teacher', async () => {
    const idx = Array.from({ length: 16 }, (_, i) => i);
    const res = await app.http.inject({
      method: 'POST',
      url: `/v2/models/${app.card.name}/infer`,
      payload: body(idx),
      headers: auth,
    });
    assert.equal(res.statusCode, 200, res.body);
    const labels = res.json().outputs[1].data as number[];
    const correct = idx.filter((i, k) => labels[k] === data.labels[i]).length;
    assert.ok(correct >= 13, `teacher: ${correct}/16`);
    assert.equal(typeof res.json().parameters.queue_ms, 'number');
  });

  it('batches concurrent requests together', async () => {
    const before = await metricValue(app.metrics.registry, 'cascade_cloud_batch_size');
    const n = 48;
    const results = await Promise.all(
      Array.from({ length: n }, (_, i) =>
        app.http.inject({
          method: 'POST',
          url: `/v2/models/${app.card.name}/infer`,
          payload: body([i]),
          headers: auth,
        }),
      ),
    );
    assert.ok(results.every((r) => r.statusCode === 200));
    const batches = (await metricValue(app.metrics.registry, 'cascade_cloud_batch_size')) - before;
    assert.ok(batches < n, `${n} requests ran in ${batches} batches`);
  });

  it('logs hard examples: low confidence and disagreement with the gateway, with the input bytes', async () => {
    await app.hardExamples?.flush();
    const before = app.hardExamples?.stats.written ?? 0;
    const res = await app.http.inject({
      method: 'POST',
      url: `/v2/models/${app.card.name}/infer`,
      payload: body([3], { gateway_top1: (data.labels[3] + 1) % 10, device_id: 'cam-9', frame_id: 77 }),
      headers: { ...auth, traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' },
    });
    assert.equal(res.statusCode, 200);
    await app.hardExamples?.flush();
    assert.equal(app.hardExamples?.stats.written, before + 1);
    const lines = readdirSync(dir)
      .sort()
      .flatMap((f) => readFileSync(join(dir, f), 'utf8').trim().split('\n'));
    const rec = JSON.parse(lines.at(-1) ?? '{}');
    assert.equal(rec.reason, 'disagreement');
    assert.equal(rec.deviceId, 'cam-9');
    assert.equal(rec.frameId, 77);
    assert.equal(rec.traceId, '0af7651916cd43dd8448eb211c80319c');
    assert.deepEqual(
      Buffer.from(rec.input.base64, 'base64'),
      Buffer.from(data.images.subarray(3 * PX, 4 * PX)),
      'the input bytes round-trip',
    );
    assert.equal(rec.probs.length, 10);
    assert.ok(
      (await metricValue(app.metrics.registry, 'cascade_cloud_hard_examples_total', {
        reason: 'disagreement',
      })) >= 1,
    );
    assert.match(
      (await app.http.inject({ url: '/metrics' })).body,
      /cascade_cloud_hard_examples_bytes\{service="cloud"\} [1-9]/,
    );
  });

  it('serves over a real socket', async () => {
    const live = await cloud();
    try {
      await live.http.listen({ host: '127.0.0.1', port: 0 });
      const a = live.http.server.address();
      const base = `http://127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
      const res = await fetch(`${base}/v2/models/${live.card.name}/infer`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...auth },
        body: JSON.stringify(body([0, 1])),
      });
      assert.equal(res.status, 200);
      const j = (await res.json()) as { outputs: { data: number[] }[] };
      assert.deepEqual(j.outputs[1].data, [data.labels[0], data.labels[1]]);
      assert.equal(
        (await fetch(`${base}/v2/models/${live.card.name}/infer`, { method: 'POST' })).status,
        401,
      );
      assert.match(
        await (await fetch(`${base}/metrics`)).text(),
        /cascade_cloud_requests_total\{status="ok"[^}]*\} 1/,
      );
    } finally {
      const report = await live.close();
      assert.equal(report.drained, true);
    }
  });
});

describe('cloud config', () => {
  it('requires a token unless auth is off, and reads it from a file', async () => {
    await assert.rejects(
      buildCloudApp(loadCloudConfig({ flags: { logLevel: 'silent' } }), { defaultMetrics: false }),
      (err: unknown) =>
        err instanceof CascadeError && err.code === 'CFG_ERR_INVALID' && /bearer token/.test(err.message),
    );
    const dir = mkdtempSync(join(tmpdir(), 'tok-'));
    try {
      const file = join(dir, 'token');
      writeFileSync(file, `${TOKEN}\n`);
      const app = await buildCloudApp(loadCloudConfig({ flags: { tokenFile: file, logLevel: 'silent' } }), {
        defaultMetrics: false,
      });
      try {
        const ok = await app.http.inject({ url: `/v2/models/${app.card.name}`, headers: auth });
        assert.equal(ok.statusCode, 200);
      } finally {
        await app.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('takes its settings from CASCADE_CLOUD_* and lists every bad one', () => {
    const c = loadCloudConfig({
      env: { CASCADE_CLOUD_MAX_BATCH: '8', CASCADE_CLOUD_HARD_EXAMPLES_DIR: '/tmp/x' },
    });
    assert.equal(c.maxBatch, 8);
    assert.equal(c.hardExamples.dir, '/tmp/x');
    assert.throws(
      () => loadCloudConfig({ env: { CASCADE_CLOUD_MAX_BATCH: '0', CASCADE_CLOUD_HTTP_PORT: 'x' } }),
      /maxBatch.*httpPort|httpPort.*maxBatch/,
    );
  });
});
