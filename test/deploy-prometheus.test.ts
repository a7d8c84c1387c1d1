/**
 * The monitoring files against real tools and real metrics: `promtool check rules` and
 * `promtool test rules` on the alert rules, every Grafana and Prometheus-adapter query parsed by
 * promtool, `promtool check metrics` on each tier's real /metrics output (gateway, cloud, device
 * with its OTA agent's metrics), and every metric name the dashboard, the alerts and the
 * autoscaler use exported by some tier — so a renamed metric fails here, not on a dark dashboard.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Registry } from 'prom-client';
import { parse as parseYaml } from 'yaml';
import { toolPath } from '../bench/load/mosquitto.ts';
import { buildCloudApp } from '../cloud/app.ts';
import { loadCloudConfig } from '../cloud/config.ts';
import { DeviceApp } from '../device/app.ts';
import { loadDeviceConfig } from '../device/config.ts';
import { OtaMetrics } from '../device/ota-metrics.ts';
import { buildApp } from '../gateway/app.ts';
import { loadGatewayConfig } from '../gateway/config.ts';

const deploy = (p: string): string => fileURLToPath(new URL(`../deploy/${p}`, import.meta.url));
const PROMTOOL = toolPath('promtool');
const SKIP = PROMTOOL
  ? undefined
  : 'promtool is not installed (apt-get install --no-install-recommends prometheus)';

function promtool(args: string[], input?: string): { status: number | null; out: string } {
  const r = spawnSync(PROMTOOL ?? 'promtool', args, { input, encoding: 'utf8', cwd: deploy('prometheus') });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

/** Every metric name a text mentions (cascade_*, and the Node.js process metrics). */
function metricNames(text: string): Set<string> {
  return new Set(text.match(/\b(?:cascade|nodejs|process)_[a-z0-9_]+\b/g) ?? []);
}

/** Sample names an exposition can produce: each TYPE line, histograms with their three series. */
function exposedNames(text: string): Set<string> {
  const names = new Set<string>();
  for (const m of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    names.add(m[1]);
    if (m[2] === 'histogram' || m[2] === 'summary')
      for (const s of ['_bucket', '_sum', '_count']) names.add(m[1] + s);
  }
  return names;
}

interface Panel {
  type: string;
  title: string;
  targets?: { expr: string; refId: string }[];
  datasource?: unknown;
}

const dashboard = JSON.parse(readFileSync(deploy('grafana/cascade-dashboard.json'), 'utf8')) as {
  uid: string;
  panels: Panel[];
  templating: { list: { name: string }[] };
};
const dashboardExprs = dashboard.panels.flatMap((p) =>
  (p.targets ?? []).map((t) => ({ panel: p.title, expr: t.expr })),
);

const adapter = parseYaml(readFileSync(deploy('k8s/prometheus-adapter-values.yaml'), 'utf8')) as {
  rules: { custom: { seriesQuery: string; metricsQuery: string; name: { matches: string; as: string } }[] };
};

/** Grafana and adapter template variables replaced by values promtool can parse. */
function concrete(expr: string): string {
  return expr
    .replaceAll('$__rate_interval', '1m')
    .replaceAll('$namespace', '.*')
    .replaceAll('<<.Series>>', 'cascade_gateway_requests_total')
    .replaceAll('<<.LabelMatchers>>', 'namespace="edge-cascade",pod=~"a|b"')
    .replaceAll('<<.GroupBy>>', 'pod');
}

describe('alert rules', { skip: SKIP }, () => {
  it('promtool check rules accepts alerts.yml', () => {
    const r = promtool(['check', 'rules', 'alerts.yml']);
    assert.equal(r.status, 0, r.out);
    assert.match(r.out, /SUCCESS: \d+ rules found/);
  });

  it('promtool test rules: the alerts fire (and stay quiet) on the unit-test series', () => {
    const r = promtool(['test', 'rules', 'alerts.test.yml']);
    assert.equal(r.status, 0, r.out);
  });

  it('alerts cover deadline misses, offload surges, gateway saturation and OTA failures', () => {
    const alerts = (
      parseYaml(readFileSync(deploy('prometheus/alerts.yml'), 'utf8')) as {
        groups: { rules: { alert: string; labels: { severity: string } }[] }[];
      }
    ).groups.flatMap((g) => g.rules);
    const names = alerts.map((a) => a.alert);
    for (const must of [
      'CascadeDeadlineMissRateHigh',
      'CascadeDeviceDeadlineMisses',
      'CascadeOffloadSurge',
      'CascadeGatewaySaturated',
      'CascadeOtaUpdateFailures',
    ])
      assert.ok(names.includes(must), must);
    for (const a of alerts) assert.match(a.labels.severity, /^(info|warning|critical)$/, a.alert);
  });
});

describe('dashboard and autoscaler queries', { skip: SKIP }, () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'cascade-promql-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('the dashboard is importable: unique panel ids, a data source variable, a query per panel', () => {
    assert.equal(dashboard.uid, 'edge-cascade');
    assert.ok(dashboard.templating.list.some((v) => v.name === 'datasource'));
    const withQueries = dashboard.panels.filter((p) => p.type !== 'row');
    assert.ok(withQueries.length >= 20);
    for (const p of withQueries) assert.ok((p.targets ?? []).length > 0, p.title);
  });

  it('every dashboard and Prometheus-adapter query is valid PromQL (parsed by promtool)', () => {
    const exprs = [
      ...dashboardExprs.map((e) => e.expr),
      ...adapter.rules.custom.flatMap((r) => [r.seriesQuery, r.metricsQuery]),
    ];
    // promtool parses expressions only inside rule files: one recording rule per query.
    const rules = {
      groups: [
        {
          name: 'queries',
          rules: exprs.map((e, i) => ({ record: `cascade:query_${i}`, expr: concrete(e) })),
        },
      ],
    };
    const file = join(dir, 'queries.yml');
    writeFileSync(file, JSON.stringify(rules));
    const r = promtool(['check', 'rules', file]);
    assert.equal(r.status, 0, r.out);
    assert.match(r.out, new RegExp(`SUCCESS: ${exprs.length} rules found`));
  });
});

describe('every tier’s real /metrics', { skip: SKIP }, () => {
  const texts: Record<string, string> = {};
  // The services' timers are unref'd; inject() holds no socket: keep the loop alive meanwhile.
  let keepAlive: NodeJS.Timeout;

  before(async () => {
    keepAlive = setInterval(() => {}, 1000);
    const gw = await buildApp(loadGatewayConfig({ flags: { httpPort: 0, logLevel: 'silent' } }));
    try {
      const inferUrl = `/v2/models/${gw.card.name}/infer`;
      // Serve one request so histograms and labelled counters have samples.
      await gw.http.inject({
        method: 'POST',
        url: inferUrl,
        payload: {
          inputs: [{ name: 'input', shape: [1, 28, 28], datatype: 'UINT8', data: Array(784).fill(7) }],
        },
      });
      texts.gateway = (await gw.http.inject({ method: 'GET', url: '/metrics' })).body;
    } finally {
      await gw.close();
    }
    const cloud = await buildCloudApp(
      loadCloudConfig({ flags: { httpPort: 0, logLevel: 'silent', auth: false } }),
    );
    try {
      texts.cloud = (await cloud.http.inject({ method: 'GET', url: '/metrics' })).body;
    } finally {
      await cloud.close();
    }
    const device = await DeviceApp.build(
      loadDeviceConfig({
        flags: { source: { kind: 'replay', frames: 8, fps: 0 }, log: { level: 'silent' } },
      }),
    );
    await device.start();
    await device.finished;
    texts.device = await device.metrics.text();
    // The OTA agent registers its metrics on the device's registry when OTA is configured; its
    // names are checked here on their own registry.
    const ota = new OtaMetrics(new Registry());
    ota.setState('current');
    ota.updates.inc({ result: 'installed' });
    texts.ota = await ota.registry.metrics();
  });
  after(() => clearInterval(keepAlive));

  /**
   * prom-client's own default collectors name three gauges `nodejs_active_*_total`, which
   * promtool flags; they are prom-client's names (dashboards expect them), not the project's.
   */
  const PROM_CLIENT_DEFAULTS =
    /^nodejs_active_(handles|requests|resources)_total non-counter metrics should not have "_total" suffix$/;

  for (const tier of ['gateway', 'cloud', 'device', 'ota']) {
    it(`promtool check metrics: ${tier}`, () => {
      assert.ok(texts[tier].length > 0);
      const r = promtool(['check', 'metrics'], texts[tier]);
      const problems = r.out
        .split('\n')
        .map((l) => l.trim())
        .filter((l) => l !== '' && !PROM_CLIENT_DEFAULTS.test(l));
      assert.deepEqual(problems, [], `promtool exit ${r.status}`);
      assert.ok(r.status === 0 || r.out.includes('nodejs_active_handles_total'), r.out);
    });
  }

  it('every metric the dashboard, alerts and autoscaler use is exported by a tier', () => {
    const exported = new Set(Object.values(texts).flatMap((t) => [...exposedNames(t)]));
    const used = new Map<string, string>();
    for (const e of dashboardExprs)
      for (const n of metricNames(e.expr)) used.set(n, `dashboard "${e.panel}"`);
    for (const n of metricNames(readFileSync(deploy('prometheus/alerts.yml'), 'utf8')))
      used.set(n, 'alerts.yml');
    for (const r of adapter.rules.custom)
      for (const n of metricNames(r.seriesQuery)) used.set(n, 'adapter rule');
    const hpa = readFileSync(deploy('k8s/gateway-autoscaling.yaml'), 'utf8');
    const adapted = new Set(adapter.rules.custom.map((r) => r.name.as));
    for (const m of hpa.matchAll(/name: (cascade_[a-z0-9_]+)/g))
      assert.ok(adapted.has(m[1]), `HPA metric ${m[1]} has a Prometheus-adapter rule`);
    const missing = [...used].filter(([n]) => !exported.has(n)).map(([n, where]) => `${n} (${where})`);
    assert.deepEqual(missing, []);
    assert.ok(used.size >= 25, `${used.size} metric names used`);
  });
});
