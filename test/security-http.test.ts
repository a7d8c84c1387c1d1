/**
 * HTTP security of the gateway and the cloud teacher: per-client rate limits (429 with
 * Retry-After), body size limits (413 before any work), the gateway→cloud bearer token read from a
 * file (a wrong one is refused by the cloud and the gateway answers itself), and secrets never in
 * the logs.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { createLogger } from '../cascade/service/log.ts';
import { metricValue } from '../cascade/service/metrics.ts';
import { buildCloudApp, type CloudApp } from '../cloud/app.ts';
import { loadCloudConfig } from '../cloud/config.ts';
import { buildApp, type GatewayApp } from '../gateway/app.ts';
import { loadGatewayConfig } from '../gateway/config.ts';
import type { ImageDataset } from '../models/data/dataset.ts';
import { loadBundledSample } from '../models/data/load.ts';

const TOKEN = 'cloud-token-7f3a9c0d2e4b6a8c';
const PX = 28 * 28;
let data: ImageDataset;
let dir: string;

// The services' batcher timers are unref'd (they must not keep a process alive); requests made
// with inject() hold no socket, so this keeps the test's event loop alive while they wait.
let keepAlive: NodeJS.Timeout;

before(async () => {
  keepAlive = setInterval(() => {}, 1000);
  data = await loadBundledSample();
  dir = mkdtempSync(join(tmpdir(), 'cascade-sec-http-'));
});
after(() => {
  clearInterval(keepAlive);
  rmSync(dir, { recursive: true, force: true });
});

function inferBody(i: number, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    inputs: [
      {
        name: 'input',
        shape: [1, 28, 28],
        datatype: 'UINT8',
        data: Array.from(data.images.subarray(i * PX, (i + 1) * PX)),
      },
    ],
    parameters: { budget_ms: 2000, ...extra },
  };
}

/** A log sink the test can read back. */
function sink(): { stream: Writable; text: () => string } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      chunks.push(String(chunk));
      cb();
    },
  });
  return { stream, text: () => chunks.join('') };
}

describe('gateway HTTP limits', () => {
  let gw: GatewayApp;
  before(async () => {
    const config = loadGatewayConfig({
      flags: { httpPort: 0, logLevel: 'silent', rateLimitPerMinute: 5, bodyLimitBytes: 8192 },
    });
    gw = await buildApp(config, { defaultMetrics: false });
  });
  after(async () => {
    await gw.close();
  });

  it('rate-limits each client: the 6th request in a minute gets 429 with Retry-After', async () => {
    const url = `/v2/models/${gw.card.name}/infer`;
    // A 28×28 request as JSON is ~3 KB: under the 8 KB body limit.
    const codes: number[] = [];
    let retryAfter: string | undefined;
    for (let i = 0; i < 6; i++) {
      const r = await gw.http.inject({
        method: 'POST',
        url,
        payload: inferBody(i),
        remoteAddress: '10.0.0.1',
      });
      codes.push(r.statusCode);
      if (r.statusCode === 429) retryAfter = String(r.headers['retry-after']);
    }
    assert.deepEqual(codes, [200, 200, 200, 200, 200, 429]);
    assert.ok(Number(retryAfter) > 0, `Retry-After ${retryAfter}`);
    // Another client is not affected.
    const other = await gw.http.inject({
      method: 'POST',
      url,
      payload: inferBody(7),
      remoteAddress: '10.0.0.2',
    });
    assert.equal(other.statusCode, 200);
  });

  it('refuses a body over the limit with 413 before parsing it', async () => {
    const big = JSON.stringify(inferBody(0, { padding: 'x'.repeat(10_000) }));
    const r = await gw.http.inject({
      method: 'POST',
      url: `/v2/models/${gw.card.name}/infer`,
      payload: big,
      headers: { 'content-type': 'application/json' },
      remoteAddress: '10.0.0.3',
    });
    assert.equal(r.statusCode, 413);
    assert.equal(
      await metricValue(gw.metrics.registry, 'cascade_gateway_requests_total', { status: 'ok' }),
      6,
    );
  });
});

describe('gateway → cloud bearer token', () => {
  let cloud: CloudApp;
  let cloudUrl: string;
  const cloudLog = sink();

  before(async () => {
    const tokenFile = join(dir, 'cloud-token');
    writeFileSync(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
    const config = loadCloudConfig({
      flags: { httpPort: 0, httpHost: '127.0.0.1', tokenFile, logLevel: 'info' },
    });
    cloud = await buildCloudApp(config, {
      defaultMetrics: false,
      logger: createLogger({ service: 'cloud', level: 'debug', destination: cloudLog.stream }),
    });
    cloudUrl = await cloud.http.listen({ port: 0, host: '127.0.0.1' });
  });
  after(async () => {
    await cloud.close();
  });

  it('the cloud refuses requests without the token or with a wrong one (401), accepts the right one', async () => {
    const url = `/v2/models/${cloud.card.name}/infer`;
    const none = await cloud.http.inject({ method: 'POST', url, payload: inferBody(0) });
    const wrong = await cloud.http.inject({
      method: 'POST',
      url,
      payload: inferBody(0),
      headers: { authorization: 'Bearer not-the-token' },
    });
    const right = await cloud.http.inject({
      method: 'POST',
      url,
      payload: inferBody(0),
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    assert.deepEqual([none.statusCode, wrong.statusCode, right.statusCode], [401, 401, 200]);
    const meta = await cloud.http.inject({ method: 'GET', url: `/v2/models/${cloud.card.name}` });
    assert.equal(meta.statusCode, 401, 'metadata needs the token too');
  });

  async function gatewayWith(
    token: { tokenFile?: string; token?: string },
    log: Writable,
  ): Promise<GatewayApp> {
    const config = loadGatewayConfig({
      flags: {
        httpPort: 0,
        logLevel: 'debug',
        defaultBudgetMs: 2000,
        // Forward every frame the gateway is not sure of, so the cloud path is exercised.
        policy: { acceptThreshold: 0.999, minGain: 0, deadlineHitGoal: 0 },
        cloud: { url: cloudUrl, ...token },
      },
    });
    return buildApp(config, {
      defaultMetrics: false,
      logger: createLogger({ service: 'gateway', level: 'debug', destination: log }),
    });
  }

  it('a gateway with the token file is served by the cloud; with a wrong token it answers itself', async () => {
    const goodLog = sink();
    const good = await gatewayWith({ tokenFile: join(dir, 'cloud-token') }, goodLog.stream);
    const badLog = sink();
    const bad = await gatewayWith({ token: 'wrong-token-123456' }, badLog.stream);
    try {
      const url = `/v2/models/${good.card.name}/infer`;
      for (let i = 0; i < 40; i++) {
        for (const g of [good, bad]) {
          const r = await g.http.inject({ method: 'POST', url, payload: inferBody(i) });
          assert.equal(r.statusCode, 200, r.body);
        }
      }
      const forwardedGood = await metricValue(good.metrics.registry, 'cascade_gateway_forwards_total');
      const forwardedBad = await metricValue(bad.metrics.registry, 'cascade_gateway_forwards_total');
      assert.ok(forwardedGood > 0 && forwardedBad > 0, `forwards ${forwardedGood}, ${forwardedBad}`);
      assert.equal(
        await metricValue(good.metrics.registry, 'cascade_gateway_answers_total', { tier: 'cloud' }),
        forwardedGood,
        'every forward of the good gateway answered by the cloud',
      );
      assert.equal(
        await metricValue(bad.metrics.registry, 'cascade_gateway_answers_total', { tier: 'cloud' }),
        0,
      );
      assert.equal(
        await metricValue(bad.metrics.registry, 'cascade_gateway_cloud_fallbacks_total'),
        forwardedBad,
        'every refused forward fell back to the gateway’s own answer',
      );
      assert.ok(
        (await metricValue(cloud.metrics.registry, 'cascade_cloud_requests_total', {
          status: 'unauthorized',
        })) >= forwardedBad,
      );
      for (const text of [goodLog.text(), badLog.text(), cloudLog.text()]) {
        assert.ok(!text.includes(TOKEN), 'the cloud token never appears in a log line');
        assert.ok(!text.includes('wrong-token-123456'), 'nor a wrong one');
      }
      assert.ok(goodLog.text().length > 0 && cloudLog.text().length > 0, 'the services did log');
    } finally {
      await good.close();
      await bad.close();
    }
  });
});
