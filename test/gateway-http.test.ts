import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { freePort } from '../bench/load/mosquitto.ts';
import { loadServingEngine, type ServingEngine } from '../cascade/service/engine.ts';
import { metricValue } from '../cascade/service/metrics.ts';
import { buildCloudApp, type CloudApp } from '../cloud/app.ts';
import { loadCloudConfig } from '../cloud/config.ts';
import { buildApp, type GatewayApp } from '../gateway/app.ts';
import { loadGatewayConfig } from '../gateway/config.ts';
import type { ImageDataset } from '../models/data/dataset.ts';
import { loadBundledSample } from '../models/data/load.ts';
import { loadRegistry, modelForTier } from '../models/registry.ts';

const PX = 784;
let data: ImageDataset;
let engine: ServingEngine;
/** Sample indices the gateway model is least sure of (worth forwarding). */
let unsure: number[];

before(async () => {
  data = await loadBundledSample();
  engine = await loadServingEngine(modelForTier(await loadRegistry(), 'gateway').card);
  const n = 400;
  const s = await engine.runPixels(data.images.subarray(0, n * PX), n);
  const conf = Array.from({ length: n }, (_, i) => Math.max(...s.probs.subarray(i * 10, i * 10 + 10)));
  unsure = conf
    .map((c, i) => [c, i])
    .sort((a, b) => a[0] - b[0])
    .slice(0, 8)
    .map(([, i]) => i);
});

after(async () => {
  await engine?.dispose();
});

function body(indices: number[], params: Record<string, unknown> = {}): object {
  const px: number[] = [];
  for (const i of indices) px.push(...data.images.subarray(i * PX, (i + 1) * PX));
  return {
    id: 'req-1',
    parameters: params,
    inputs: [{ name: 'input', shape: [indices.length, 28, 28], datatype: 'UINT8', data: px }],
  };
}

async function gateway(flags: Record<string, unknown> = {}, deps = {}): Promise<GatewayApp> {
  const config = loadGatewayConfig({ flags: { httpPort: 0, logLevel: 'silent', ...flags } });
  return buildApp(config, { defaultMetrics: false, engine, ...deps });
}

interface InferJson {
  model_name: string;
  id: string;
  parameters: Record<string, string | number>;
  outputs: { name: string; shape: number[]; data: number[] }[];
}

describe('gateway HTTP (KServe v2) with inject', () => {
  let app: GatewayApp;
  before(async () => {
    app = await gateway({ bodyLimitBytes: 256 * 1024 });
  });
  after(async () => {
    await app.close();
  });

  it('serves health, server and model metadata from the card', async () => {
    assert.equal((await app.http.inject({ url: '/v2/health/live' })).statusCode, 200);
    assert.equal((await app.http.inject({ url: '/v2/health/ready' })).statusCode, 200);
    assert.equal((await app.http.inject({ url: '/healthz' })).statusCode, 200);
    assert.equal((await app.http.inject({ url: '/readyz' })).statusCode, 200);
    assert.equal((await app.http.inject({ url: '/v2' })).json().name, 'cascade-gateway');
    const meta = (await app.http.inject({ url: `/v2/models/${app.card.name}` })).json();
    assert.equal(meta.name, app.card.name);
    assert.deepEqual(meta.versions, [app.card.version]);
    assert.deepEqual(meta.inputs[0].shape, [-1, app.card.input.height, app.card.input.width]);
    assert.deepEqual(meta.outputs[0].shape, [-1, app.card.output.classes]);
    const missing = await app.http.inject({ url: '/v2/models/nope' });
    assert.equal(missing.statusCode, 404);
    assert.match(missing.json().error, /"nope" is not served/);
    assert.equal((await app.http.inject({ url: '/nowhere' })).statusCode, 404);
  });

  it('classifies a batch of real images (UINT8) and the same preprocessed (FP32) alike', async () => {
    const idx = [0, 1, 2, 3, 4, 5, 6, 7];
    const res = await app.http.inject({
      method: 'POST',
      url: `/v2/models/${app.card.name}/infer`,
      payload: body(idx, { budget_ms: 5000 }),
    });
    assert.equal(res.statusCode, 200, res.body);
    const j = res.json() as InferJson;
    assert.equal(j.id, 'req-1');
    const probs = j.outputs.find((o) => o.name === 'probabilities');
    const labels = j.outputs.find((o) => o.name === 'labels');
    assert.deepEqual(probs?.shape, [8, 10]);
    for (let i = 0; i < 8; i++) {
      const row = probs?.data.slice(i * 10, i * 10 + 10) ?? [];
      assert.ok(Math.abs(row.reduce((a, b) => a + b, 0) - 1) < 1e-4);
    }
    const correct = idx.filter((i, k) => labels?.data[k] === data.labels[i]).length;
    assert.ok(correct >= 6, `${correct}/8 correct`);
    assert.equal(typeof j.parameters.queue_ms, 'number');
    assert.ok(Number(j.parameters.service_ms) > 0);
    assert.equal(j.parameters.tier, 'gateway');
    const tensor = engine.preprocess(data.images.subarray(0, 8 * PX), 8);
    const fp = await app.http.inject({
      method: 'POST',
      url: `/v2/models/${app.card.name}/infer`,
      payload: {
        inputs: [{ name: 'input', shape: [8, 1, 28, 28], datatype: 'FP32', data: Array.from(tensor) }],
      },
    });
    assert.equal(fp.statusCode, 200, fp.body);
    assert.deepEqual((fp.json() as InferJson).outputs[1].data, labels?.data);
  });

  it('answers malformed requests with 400/413 and an error message', async () => {
    const url = `/v2/models/${app.card.name}/infer`;
    const cases: [object | string, number, RegExp][] = [
      [
        { inputs: [{ name: 'x', shape: [1, 27, 28], datatype: 'UINT8', data: new Array(27 * 28).fill(0) }] },
        400,
        /not \[n, 28, 28\]/,
      ],
      [
        { inputs: [{ name: 'x', shape: [1, 28, 28], datatype: 'UINT8', data: [300] }] },
        400,
        /integers 0-255/,
      ],
      [
        { inputs: [{ name: 'x', shape: [2, 28, 28], datatype: 'UINT8', data: new Array(784).fill(1) }] },
        400,
        /784 values/,
      ],
      [{ inputs: [{ name: 'x', shape: [1, 28, 28], datatype: 'INT64', data: [] }] }, 400, /invalid request/],
      [{ nothing: true }, 400, /invalid request/],
      [body([0], { budget_ms: 'soon' }), 400, /budget_ms/],
      ['{not json', 400, /./],
      [body(Array.from({ length: 120 }, (_, i) => i)), 413, /./],
    ];
    for (const [payload, status, message] of cases) {
      const res = await app.http.inject({
        method: 'POST',
        url,
        payload: payload as string,
        headers: { 'content-type': 'application/json' },
      });
      assert.equal(res.statusCode, status, `${JSON.stringify(payload).slice(0, 80)} → ${res.body}`);
      assert.match(res.json().error, message);
    }
  });

  it('refuses at admission with 429 and Retry-After when the budget cannot be met', async () => {
    const res = await app.http.inject({
      method: 'POST',
      url: `/v2/models/${app.card.name}/infer`,
      payload: body([0], { budget_ms: 0.0001 }),
    });
    assert.equal(res.statusCode, 429, res.body);
    assert.ok(Number(res.headers['retry-after']) >= 1);
    assert.match(res.json().error, /overloaded/);
    assert.equal(
      await metricValue(app.metrics.registry, 'cascade_gateway_requests_total', {
        transport: 'http',
        status: 'overloaded',
      }),
      1,
    );
  });

  it('exposes its metrics', async () => {
    const text = (await app.http.inject({ url: '/metrics' })).body;
    for (const name of [
      'cascade_gateway_latency_seconds_bucket',
      'cascade_gateway_requests_total',
      'cascade_gateway_batch_size_bucket',
      'cascade_gateway_queue_depth',
      'cascade_gateway_received_bytes_total',
      'cascade_gateway_deadline_misses_total',
      'cascade_model_info{tier="gateway"',
      'cascade_policy_decisions_total',
    ])
      assert.ok(text.includes(name), name);
  });
});

describe('gateway HTTP over a real socket', () => {
  it('serves infer, metrics and readiness, and drains queued requests on close', async () => {
    // A long batching delay keeps requests queued, so the close finds them in flight.
    const app = await gateway({ maxDelayMs: 300, maxBatch: 64 });
    await app.http.listen({ host: '127.0.0.1', port: 0 });
    const address = app.http.server.address();
    const base = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
    const post = () =>
      fetch(`${base}/v2/models/${app.card.name}/infer`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body([0, 1], { budget_ms: 5000 })),
      });
    const res = await post();
    assert.equal(res.status, 200);
    assert.equal(((await res.json()) as InferJson).outputs[1].data[0], data.labels[0]);
    assert.match(
      await (await fetch(`${base}/metrics`)).text(),
      /cascade_gateway_requests_total\{transport="http",status="ok"[^}]*\} 2/,
    );
    assert.equal((await fetch(`${base}/readyz`)).status, 200);
    const inflight = Array.from({ length: 4 }, post);
    const end = Date.now() + 10_000;
    while (app.server.batcher.depth < 8 && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
    assert.equal(app.server.batcher.depth, 8, 'four requests of two images queued');
    const closing = app.close('test');
    const statuses = await Promise.all(inflight.map(async (p) => (await p).status));
    assert.deepEqual(statuses, [200, 200, 200, 200], 'queued requests are served before the close');
    const report = await closing;
    assert.equal(report.drained, true);
    assert.deepEqual(report.failed, []);
  });
});

describe('gateway → cloud forwarding', () => {
  const TOKEN = 'test-token-0123456789';
  let cloud: CloudApp;
  let cloudUrl: string;
  let dir: string;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'hard-'));
    cloud = await buildCloudApp(
      loadCloudConfig({
        flags: { token: TOKEN, logLevel: 'silent', hardExamples: { dir, confidenceBelow: 1 } },
      }),
      { defaultMetrics: false },
    );
    await cloud.http.listen({ host: '127.0.0.1', port: 0 });
    const a = cloud.http.server.address();
    cloudUrl = `http://127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
  });
  after(async () => {
    await cloud?.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const forwardPolicy = { acceptThreshold: 1, minGain: 0, costPerMB: 0 };

  it('forwards an unsure frame to the teacher with its trace id and bearer token', async () => {
    const app = await gateway({ cloud: { url: cloudUrl, token: TOKEN }, policy: forwardPolicy });
    try {
      const traceId = '0af7651916cd43dd8448eb211c80319c';
      const res = await app.http.inject({
        method: 'POST',
        url: `/v2/models/${app.card.name}/infer`,
        payload: body([unsure[0]], { budget_ms: 2000 }),
        headers: { traceparent: `00-${traceId}-b7ad6b7169203331-01` },
      });
      assert.equal(res.statusCode, 200, res.body);
      const j = res.json() as InferJson;
      assert.equal(j.parameters.tier, 'cloud');
      assert.match(String(j.parameters.reason), /^forward:/);
      assert.ok(Number(j.parameters.cloud_ms) > 0);
      assert.equal(
        await metricValue(cloud.metrics.registry, 'cascade_cloud_requests_total', { status: 'ok' }),
        1,
      );
      await cloud.hardExamples?.flush();
      const lines = readdirSync(dir).flatMap((f) => readFileSync(join(dir, f), 'utf8').trim().split('\n'));
      const rec = JSON.parse(lines.at(-1) ?? '{}');
      assert.equal(rec.traceId, traceId, 'the trace id flows gateway → cloud (traceparent)');
      assert.equal(typeof rec.gatewayTop1, 'number', 'the gateway sends its own top-1');
      assert.equal(Buffer.from(rec.input.base64, 'base64').length, PX, 'the input bytes are logged');
    } finally {
      await app.close();
    }
  });

  it('falls back to its own answer when the cloud refuses the token', async () => {
    const app = await gateway({
      cloud: { url: cloudUrl, token: 'wrong-token-xxxxx' },
      policy: forwardPolicy,
    });
    try {
      const res = await app.http.inject({
        method: 'POST',
        url: `/v2/models/${app.card.name}/infer`,
        payload: body([unsure[1]], { budget_ms: 2000 }),
      });
      assert.equal(res.statusCode, 200);
      assert.equal(res.json().parameters.tier, 'gateway');
      assert.equal(res.json().parameters.reason, 'fallback:cloud-unauthorized');
    } finally {
      await app.close();
    }
  });
});

describe('gateway with the cloud down or hanging', () => {
  it('answers itself when the cloud is unreachable', async () => {
    const port = await freePort();
    const app = await gateway({
      cloud: { url: `http://127.0.0.1:${port}` },
      policy: { acceptThreshold: 1, minGain: 0, costPerMB: 0 },
    });
    try {
      const res = await app.http.inject({
        method: 'POST',
        url: `/v2/models/${app.card.name}/infer`,
        payload: body([unsure[2]], { budget_ms: 1000 }),
      });
      assert.equal(res.statusCode, 200);
      assert.equal(res.json().parameters.reason, 'fallback:cloud-network');
      assert.equal(
        await metricValue(app.metrics.registry, 'cascade_gateway_cloud_fallbacks_total', {
          reason: 'network',
        }),
        1,
      );
    } finally {
      await app.close();
    }
  });

  it('answers itself inside the budget when the cloud never answers', async () => {
    const sockets = new Set<Socket>();
    const hang: Server = createServer((s) => {
      sockets.add(s);
      s.on('error', () => {});
    });
    await new Promise<void>((r) => hang.listen(0, '127.0.0.1', r));
    const a = hang.address();
    const port = typeof a === 'object' && a ? a.port : 0;
    const app = await gateway({
      cloud: { url: `http://127.0.0.1:${port}` },
      policy: { acceptThreshold: 1, minGain: 0, costPerMB: 0 },
    });
    try {
      const res = await app.http.inject({
        method: 'POST',
        url: `/v2/models/${app.card.name}/infer`,
        payload: body([unsure[3]], { budget_ms: 150 }),
      });
      assert.equal(res.statusCode, 200);
      assert.equal(res.json().parameters.tier, 'gateway');
      assert.equal(res.json().parameters.reason, 'fallback:cloud-timeout');
      assert.equal(
        await metricValue(app.metrics.registry, 'cascade_gateway_cloud_fallbacks_total', {
          reason: 'timeout',
        }),
        1,
      );
    } finally {
      await app.close();
      for (const s of sockets) s.destroy();
      await new Promise((r) => hang.close(r));
    }
  });

  it('answers a frame whose budget is already spent as expired (504) without admission control', async () => {
    const app = await gateway({}, { admission: false });
    try {
      const res = await app.http.inject({
        method: 'POST',
        url: `/v2/models/${app.card.name}/infer`,
        payload: body([0], { budget_ms: 1e-6 }),
      });
      assert.equal(res.statusCode, 504, res.body);
      assert.match(res.json().error, /budget ran out/);
      assert.equal(
        await metricValue(app.metrics.registry, 'cascade_gateway_deadline_misses_total', { kind: 'expired' }),
        1,
      );
    } finally {
      await app.close();
    }
  });
});
