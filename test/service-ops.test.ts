import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import { trace as otelTrace } from '@opentelemetry/api';
import Fastify from 'fastify';
import { createLogger } from '../cascade/service/log.ts';
import { createMetrics, LATENCY_BUCKETS_SECONDS, metricValue } from '../cascade/service/metrics.ts';
import { opsRoutes } from '../cascade/service/ops.ts';
import {
  childTrace,
  otelContext,
  parseTraceparent,
  traceFromEnvelope,
  traceFromHeaders,
  traceHeaders,
} from '../cascade/service/trace.ts';

describe('createMetrics', () => {
  it('gives each service its own registry with process metrics and the model info gauge', async () => {
    const a = createMetrics('gateway');
    const b = createMetrics('cloud', { defaultMetrics: false });
    a.setModelInfo('gateway', 'gw', 'v1');
    a.setModelInfo('gateway', 'gw', 'v2');
    const h = a.latency('cascade_test_seconds', 'test', ['stage']);
    h.observe({ stage: 'queue' }, 0.004);
    const text = await a.text();
    assert.match(text, /cascade_model_info\{tier="gateway",model="gw",version="v2",service="gateway"\} 1/);
    assert.doesNotMatch(text, /version="v1"/, 'the previous model is cleared');
    assert.match(text, /process_cpu_user_seconds_total/);
    assert.match(text, /cascade_test_seconds_bucket\{le="0.005",service="gateway",stage="queue"\} 1/);
    assert.doesNotMatch(await b.text(), /cascade_test_seconds/, 'registries are separate');
    assert.equal(await metricValue(a.registry, 'cascade_test_seconds', { stage: 'queue' }), 1);
    assert.ok(LATENCY_BUCKETS_SECONDS.every((v, i, all) => i === 0 || v > all[i - 1]));
  });
});

describe('opsRoutes', () => {
  it('serves /metrics, /healthz and /readyz from a callback', async () => {
    const m = createMetrics('gateway', { defaultMetrics: false });
    m.counter('cascade_x_total', 'x').inc(3);
    let ready = false;
    const app = Fastify();
    await app.register(opsRoutes, {
      registry: m.registry,
      ready: () => ({ ready, detail: { broker: ready } }),
    });
    try {
      const metrics = await app.inject({ url: '/metrics' });
      assert.equal(metrics.statusCode, 200);
      assert.match(metrics.headers['content-type'] as string, /text\/plain/);
      assert.match(metrics.body, /cascade_x_total\{service="gateway"\} 3/);
      assert.equal((await app.inject({ url: '/healthz' })).statusCode, 200);
      const notReady = await app.inject({ url: '/readyz' });
      assert.equal(notReady.statusCode, 503);
      assert.deepEqual(notReady.json(), { ready: false, broker: false });
      ready = true;
      assert.equal((await app.inject({ url: '/readyz' })).statusCode, 200);
    } finally {
      await app.close();
    }
  });
});

describe('createLogger', () => {
  it('redacts secrets and tags lines with the service', async () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk, _enc, cb) {
        lines.push(String(chunk));
        cb();
      },
    });
    const log = createLogger({ service: 'cloud', level: 'debug', destination: sink });
    log.info(
      { token: 's3cret', req: { headers: { authorization: 'Bearer s3cret' } }, cfg: { password: 'pw' } },
      'hi',
    );
    log.debug('dbg');
    await new Promise((r) => setImmediate(r));
    const text = lines.join('');
    assert.doesNotMatch(text, /s3cret|"pw"/);
    assert.match(text, /\[redacted\]/);
    const first = JSON.parse(lines[0]);
    assert.equal(first.service, 'cloud');
    assert.equal(first.level, 'info');
    assert.equal(lines.length, 2);
  });
});

describe('trace helpers', () => {
  const bytes = (n: number) => new Uint8Array(n).fill(0xab);
  it('continues a trace from a traceparent header or an envelope, else starts one', () => {
    const parent = { traceId: '0af7651916cd43dd8448eb211c80319c', spanId: 'b7ad6b7169203331', flags: 1 };
    const child = traceFromHeaders(traceHeaders(parent), bytes);
    assert.equal(child.traceId, parent.traceId);
    assert.equal(child.spanId, 'abababababababab');
    assert.notEqual(child.spanId, parent.spanId);
    const fresh = traceFromHeaders({ traceparent: 'garbage' }, bytes);
    assert.equal(fresh.traceId, 'ab'.repeat(16));
    assert.equal(
      traceFromEnvelope({ traceId: '0'.repeat(32), spanId: '0'.repeat(16), flags: 0 }, bytes).traceId,
      'ab'.repeat(16),
    );
    assert.equal(traceFromEnvelope(parent, bytes).traceId, parent.traceId);
    assert.deepEqual(
      parseTraceparent(traceHeaders(childTrace(parent, bytes)).traceparent)?.traceId,
      parent.traceId,
    );
  });
  it('hands the ids to OpenTelemetry as a remote parent', () => {
    const t = { traceId: '0af7651916cd43dd8448eb211c80319c', spanId: 'b7ad6b7169203331', flags: 1 };
    const sc = otelTrace.getSpanContext(otelContext(t));
    assert.deepEqual(sc, { traceId: t.traceId, spanId: t.spanId, traceFlags: 1, isRemote: true });
  });
});
