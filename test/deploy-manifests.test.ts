/**
 * A lint of deploy/ without a cluster or a container runtime: every YAML document parses and has
 * the fields that matter (TypeBox schemas per kind), the kustomization lists files that exist,
 * names and labels line up across objects (Service → pods, HPA → Deployment, PDB → pods,
 * volumes → ConfigMaps and Secrets, probes → ports), the services' config files and environment
 * in the manifests load with the real config loaders, termination grace covers the drain, the
 * PrometheusRule equals alerts.yml, and the Dockerfiles copy every folder their service imports.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { type TSchema, Type } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { parseAllDocuments, parse as parseYaml } from 'yaml';
import { loadCloudConfig } from '../cloud/config.ts';
import { loadGatewayConfig } from '../gateway/config.ts';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const DEPLOY = join(ROOT, 'deploy');

type Obj = Record<string, unknown> & {
  apiVersion: string;
  kind: string;
  metadata: { name: string; labels?: Record<string, string> };
};

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? walk(p) : [p];
  });
}

const yamlFiles = walk(DEPLOY).filter((p) => /\.ya?ml$/.test(p));
const K8S_KINDS: Record<string, string> = {
  Namespace: 'v1',
  ServiceAccount: 'v1',
  ConfigMap: 'v1',
  Secret: 'v1',
  Service: 'v1',
  PersistentVolumeClaim: 'v1',
  Deployment: 'apps/v1',
  StatefulSet: 'apps/v1',
  HorizontalPodAutoscaler: 'autoscaling/v2',
  PodDisruptionBudget: 'policy/v1',
  NetworkPolicy: 'networking.k8s.io/v1',
  PodMonitor: 'monitoring.coreos.com/v1',
  PrometheusRule: 'monitoring.coreos.com/v1',
  InferenceService: 'serving.kserve.io/v1beta1',
};

/** Strategic-merge patches named by the kustomizations: partial objects, not linted as whole ones. */
const patchFiles = new Set(
  yamlFiles
    .filter((f) => f.endsWith('kustomization.yaml'))
    .flatMap((f) =>
      ((parseYaml(readFileSync(f, 'utf8')) as { patches?: { path: string }[] }).patches ?? []).map((p) =>
        resolve(dirname(f), p.path),
      ),
    ),
);

/** Every Kubernetes object in deploy/k8s, by file. */
const objects: { file: string; obj: Obj }[] = yamlFiles
  .filter(
    (f) =>
      f.includes(`${join('deploy', 'k8s')}`) &&
      !f.endsWith('kustomization.yaml') &&
      !f.includes('values') &&
      !patchFiles.has(f),
  )
  .flatMap((file) =>
    parseAllDocuments(readFileSync(file, 'utf8')).map((d) => {
      assert.deepEqual(d.errors, [], `${file}: YAML errors`);
      return { file: relative(ROOT, file), obj: d.toJS() as Obj };
    }),
  );
const applied = objects.filter((o) => !o.file.endsWith('secrets.example.yaml'));
const byKind = (kind: string): Obj[] => applied.filter((o) => o.obj.kind === kind).map((o) => o.obj);
const named = (kind: string, name: string): Obj | undefined =>
  byKind(kind).find((o) => o.metadata.name === name);

// --- Schemas of the fields that matter ------------------------------------------------------
const Labels = Type.Record(Type.String(), Type.String());
const Probe = Type.Object({
  httpGet: Type.Optional(
    Type.Object({ path: Type.String({ pattern: '^/' }), port: Type.Union([Type.String(), Type.Integer()]) }),
  ),
  tcpSocket: Type.Optional(Type.Object({ port: Type.Union([Type.String(), Type.Integer()]) })),
});
const Container = Type.Object({
  name: Type.String(),
  // Pinned: a tag that is not `latest` (or a digest).
  image: Type.String({ pattern: '^[^:@]+(:(?!latest$)[A-Za-z0-9._-]+|@sha256:[0-9a-f]{64})$' }),
  ports: Type.Array(Type.Object({ name: Type.String(), containerPort: Type.Integer() })),
  resources: Type.Object({
    requests: Type.Object({ cpu: Type.Union([Type.String(), Type.Number()]), memory: Type.String() }),
    limits: Type.Object({ memory: Type.String() }),
  }),
  readinessProbe: Probe,
  livenessProbe: Probe,
  securityContext: Type.Object({
    allowPrivilegeEscalation: Type.Literal(false),
    readOnlyRootFilesystem: Type.Literal(true),
    capabilities: Type.Object({ drop: Type.Array(Type.Literal('ALL')) }),
  }),
});
const PodSpec = Type.Object({
  automountServiceAccountToken: Type.Literal(false),
  terminationGracePeriodSeconds: Type.Integer({ minimum: 1 }),
  securityContext: Type.Object({
    runAsNonRoot: Type.Literal(true),
    runAsUser: Type.Integer({ minimum: 1 }),
    seccompProfile: Type.Object({ type: Type.Literal('RuntimeDefault') }),
  }),
  containers: Type.Array(Container, { minItems: 1 }),
});
const Workload = Type.Object({
  spec: Type.Object({
    replicas: Type.Integer({ minimum: 1 }),
    selector: Type.Object({ matchLabels: Labels }),
    template: Type.Object({ metadata: Type.Object({ labels: Labels }), spec: PodSpec }),
  }),
});
const SCHEMAS: Record<string, TSchema> = {
  Deployment: Workload,
  StatefulSet: Workload,
  Service: Type.Object({
    spec: Type.Object({
      selector: Labels,
      ports: Type.Array(
        Type.Object({
          name: Type.String(),
          port: Type.Integer(),
          targetPort: Type.Union([Type.String(), Type.Integer()]),
        }),
        { minItems: 1 },
      ),
    }),
  }),
  HorizontalPodAutoscaler: Type.Object({
    spec: Type.Object({
      scaleTargetRef: Type.Object({ apiVersion: Type.String(), kind: Type.String(), name: Type.String() }),
      minReplicas: Type.Integer({ minimum: 2 }),
      maxReplicas: Type.Integer(),
      metrics: Type.Array(
        Type.Object({
          type: Type.Literal('Pods'),
          pods: Type.Object({
            metric: Type.Object({ name: Type.String() }),
            target: Type.Object({ type: Type.Literal('AverageValue'), averageValue: Type.String() }),
          }),
        }),
        { minItems: 1 },
      ),
      behavior: Type.Object({ scaleUp: Type.Object({}), scaleDown: Type.Object({}) }),
    }),
  }),
  PodDisruptionBudget: Type.Object({
    spec: Type.Object({
      selector: Type.Object({ matchLabels: Labels }),
      maxUnavailable: Type.Integer({ minimum: 1 }),
    }),
  }),
};

function podSpecOf(
  o: Obj,
): { containers: Record<string, unknown>[]; volumes?: Record<string, unknown>[] } & Record<string, unknown> {
  return (o.spec as { template: { spec: never } }).template.spec;
}

function matches(selector: Record<string, string>, labels: Record<string, string> | undefined): boolean {
  return Object.entries(selector).every(([k, v]) => labels?.[k] === v);
}

describe('deploy/ YAML', () => {
  it('every YAML file parses; every Kubernetes object has a known kind, its apiVersion and a name', () => {
    assert.ok(yamlFiles.length >= 12, `${yamlFiles.length} YAML files`);
    for (const f of yamlFiles) {
      for (const d of parseAllDocuments(readFileSync(f, 'utf8'))) assert.deepEqual(d.errors, [], f);
    }
    for (const { file, obj } of objects) {
      assert.ok(obj.kind in K8S_KINDS, `${file}: unknown kind ${obj.kind}`);
      assert.equal(obj.apiVersion, K8S_KINDS[obj.kind], `${file}: ${obj.kind} apiVersion`);
      assert.match(obj.metadata?.name ?? '', /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, `${file}: ${obj.kind} name`);
    }
  });

  it('workloads, services, autoscaler and disruption budget carry the fields that matter', () => {
    for (const { file, obj } of applied) {
      const schema = SCHEMAS[obj.kind];
      if (!schema) continue;
      const check = TypeCompiler.Compile(schema);
      const errors = [...check.Errors(obj)].map((e) => `${e.path}: ${e.message}`);
      assert.deepEqual(errors, [], `${file}: ${obj.kind}/${obj.metadata.name}`);
    }
    assert.ok(byKind('Deployment').length >= 2 && byKind('HorizontalPodAutoscaler').length === 1);
  });

  it('kustomizations list files and folders that exist', () => {
    for (const f of yamlFiles.filter((p) => p.endsWith('kustomization.yaml'))) {
      const k = parseYaml(readFileSync(f, 'utf8')) as {
        resources?: string[];
        patches?: { path: string }[];
        configMapGenerator?: { files: string[] }[];
      };
      const here = dirname(f);
      for (const r of k.resources ?? [])
        assert.ok(existsSync(resolve(here, r)), `${relative(ROOT, f)}: ${r}`);
      for (const p of k.patches ?? [])
        assert.ok(existsSync(resolve(here, p.path)), `${relative(ROOT, f)}: ${p.path}`);
      for (const g of k.configMapGenerator ?? [])
        for (const file of g.files) {
          const path = resolve(here, file.replace(/^[^=]+=/, ''));
          assert.ok(existsSync(path), `${relative(ROOT, f)}: ${file}`);
          assert.ok(
            !relative(here, path).startsWith('..'),
            `${file}: kustomize loads files only below its root`,
          );
        }
    }
    const base = parseYaml(readFileSync(join(DEPLOY, 'kustomization.yaml'), 'utf8')) as {
      resources: string[];
    };
    const listed = new Set(base.resources.map((r) => resolve(DEPLOY, r)));
    for (const f of readdirSync(join(DEPLOY, 'k8s')).filter((n) => n.endsWith('.yaml'))) {
      if (f === 'secrets.example.yaml' || f === 'prometheus-adapter-values.yaml') continue;
      assert.ok(listed.has(join(DEPLOY, 'k8s', f)), `deploy/kustomization.yaml lists k8s/${f}`);
    }
  });

  it('names and labels line up: Services, HPA, PDB, volumes, probes and ports', () => {
    const pods = [...byKind('Deployment'), ...byKind('StatefulSet')];
    const secrets = new Set(objects.filter((o) => o.obj.kind === 'Secret').map((o) => o.obj.metadata.name));
    const configMaps = new Set([...byKind('ConfigMap').map((c) => c.metadata.name), 'mosquitto-config']);
    for (const svc of byKind('Service')) {
      const spec = svc.spec as { selector: Record<string, string>; ports: { targetPort: string | number }[] };
      const target = pods.find((p) =>
        matches(
          spec.selector,
          (p.spec as { template: { metadata: { labels: Record<string, string> } } }).template.metadata.labels,
        ),
      );
      assert.ok(target, `Service ${svc.metadata.name} selects a workload`);
      const ports = podSpecOf(target).containers.flatMap((c) =>
        (c.ports as { name: string }[]).map((p) => p.name),
      );
      for (const p of spec.ports)
        if (typeof p.targetPort === 'string')
          assert.ok(ports.includes(p.targetPort), `${svc.metadata.name} → ${p.targetPort}`);
    }
    const hpa = byKind('HorizontalPodAutoscaler')[0].spec as {
      scaleTargetRef: { kind: string; name: string };
    };
    const gateway = named(hpa.scaleTargetRef.kind, hpa.scaleTargetRef.name);
    assert.ok(gateway, 'HPA targets an existing Deployment');
    const pdb = byKind('PodDisruptionBudget')[0].spec as {
      selector: { matchLabels: Record<string, string> };
    };
    assert.ok(
      matches(
        pdb.selector.matchLabels,
        (gateway.spec as { template: { metadata: { labels: Record<string, string> } } }).template.metadata
          .labels,
      ),
    );
    for (const w of pods) {
      const spec = podSpecOf(w);
      for (const v of spec.volumes ?? []) {
        const cm = (v.configMap as { name: string } | undefined)?.name;
        const sec = (v.secret as { secretName: string } | undefined)?.secretName;
        if (cm) assert.ok(configMaps.has(cm), `${w.metadata.name}: ConfigMap ${cm}`);
        if (sec)
          assert.ok(
            secrets.has(sec),
            `${w.metadata.name}: Secret ${sec} (documented in secrets.example.yaml)`,
          );
        for (const s of (v.projected as { sources: Record<string, { name: string }>[] } | undefined)
          ?.sources ?? []) {
          if (s.configMap) assert.ok(configMaps.has(s.configMap.name));
          if (s.secret) assert.ok(secrets.has(s.secret.name));
        }
      }
      for (const c of spec.containers) {
        const ports = (c.ports as { name: string }[]).map((p) => p.name);
        for (const probe of ['readinessProbe', 'livenessProbe', 'startupProbe']) {
          const p = c[probe] as { httpGet?: { port: string }; tcpSocket?: { port: string } } | undefined;
          const port = p?.httpGet?.port ?? p?.tcpSocket?.port;
          if (typeof port === 'string')
            assert.ok(ports.includes(port), `${w.metadata.name} ${probe} port ${port}`);
        }
        for (const e of (c.env as { valueFrom?: { secretKeyRef?: { name: string } } }[] | undefined) ?? []) {
          const ref = e.valueFrom?.secretKeyRef?.name;
          if (ref) assert.ok(secrets.has(ref), `${w.metadata.name}: env from Secret ${ref}`);
        }
      }
    }
  });

  /** A service's config file from its ConfigMap plus the container's literal environment. */
  function serviceConfig(deployment: string, configMap: string, key: string) {
    const d = named('Deployment', deployment);
    assert.ok(d);
    const spec = podSpecOf(d);
    const c = spec.containers[0] as {
      args: string[];
      env?: { name: string; value?: string; valueFrom?: unknown }[];
      readinessProbe: { httpGet: { path: string; port: string } };
      livenessProbe: { httpGet: { path: string } };
      ports: { name: string; containerPort: number }[];
      lifecycle?: { preStop?: { exec?: { command: string[] } } };
      volumeMounts: { mountPath: string }[];
    };
    const data = (named('ConfigMap', configMap)?.data as Record<string, string> | undefined)?.[key] ?? '{}';
    const file = JSON.parse(data) as Record<string, unknown>;
    // Secret values come from the cluster at run time; any value lets the loader check the names.
    const env = Object.fromEntries((c.env ?? []).map((e) => [e.name, e.value ?? 'from-the-cluster']));
    return { spec, c, file, env, grace: spec.terminationGracePeriodSeconds as number };
  }

  it('gateway: its config and env load with the real loader; probes, port and grace match the service', () => {
    const { c, file, env, grace } = serviceConfig('cascade-gateway', 'cascade-gateway', 'gateway.json');
    const config = loadGatewayConfig({ flags: file, env });
    assert.equal(c.args[0], 'gateway');
    assert.ok(c.args.includes('--config'));
    assert.equal(config.shared, true, 'replicas share the subscription');
    assert.equal(c.readinessProbe.httpGet.path, '/readyz');
    assert.equal(c.livenessProbe.httpGet.path, '/healthz');
    assert.equal(
      c.ports.find((p) => p.name === c.readinessProbe.httpGet.port)?.containerPort,
      config.httpPort,
    );
    const preStop = Number(c.lifecycle?.preStop?.exec?.command.at(-1) ?? 0);
    assert.ok(
      grace >= preStop + config.drainTimeoutMs / 1000,
      `terminationGracePeriodSeconds ${grace} covers preStop ${preStop} s + drain ${config.drainTimeoutMs} ms`,
    );
    const tokenDir = dirname(config.cloud.tokenFile ?? '');
    assert.ok(
      c.volumeMounts.some((m) => m.mountPath === tokenDir),
      `token file under a mounted secret (${tokenDir})`,
    );
    assert.ok(config.bodyLimitBytes <= 1 << 20, 'gateway body limit at most the protocol cap');
  });

  it('cloud: its config loads with the real loader; grace covers the drain; auth is on', () => {
    const { c, file, env, grace } = serviceConfig('cascade-cloud', 'cascade-cloud', 'cloud.json');
    const config = loadCloudConfig({ flags: file, env });
    assert.equal(c.args[0], 'cloud');
    assert.equal(config.auth, true);
    assert.ok(config.tokenFile);
    assert.equal(c.ports[0].containerPort, config.httpPort);
    assert.ok(grace >= config.drainTimeoutMs / 1000);
    const gwData = named('ConfigMap', 'cascade-gateway')?.data as Record<string, string> | undefined;
    const gw = JSON.parse(gwData?.['gateway.json'] ?? '{}') as { cloud: { url: string } };
    assert.equal(
      new URL(gw.cloud.url).port,
      String(config.httpPort),
      'the gateway calls the cloud on its port',
    );
  });

  it('the PrometheusRule carries exactly the groups of deploy/prometheus/alerts.yml', () => {
    const rule = objects.find((o) => o.obj.kind === 'PrometheusRule');
    assert.ok(rule);
    const alerts = parseYaml(readFileSync(join(DEPLOY, 'prometheus/alerts.yml'), 'utf8')) as {
      groups: unknown;
    };
    assert.deepEqual((rule.obj.spec as { groups: unknown }).groups, alerts.groups);
  });
});

/** Relative imports reachable from `entries` (static imports only; `import()` is lazy). */
function importClosure(entries: string[]): { files: Set<string>; packages: Set<string> } {
  const files = new Set<string>();
  const packages = new Set<string>();
  const queue = entries.map((e) => join(ROOT, e));
  while (queue.length > 0) {
    const f = queue.pop() as string;
    if (files.has(f)) continue;
    files.add(f);
    const text = readFileSync(f, 'utf8');
    for (const m of text.matchAll(
      /^\s*(?:import|export)\s[^'"]*?from\s+'([^']+)'|^\s*import\s+'([^']+)'/gm,
    )) {
      const spec = m[1] ?? m[2];
      if (spec.startsWith('.')) queue.push(resolve(dirname(f), spec));
      else if (!spec.startsWith('node:'))
        packages.add(spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]);
    }
  }
  return { files, packages };
}

describe('Dockerfiles', () => {
  for (const [name, service, port] of [
    ['gateway.Dockerfile', 'gateway', 8080],
    ['cloud.Dockerfile', 'cloud', 8081],
    ['gateway-tensorrt.Dockerfile', 'gateway', 8080],
  ] as const) {
    it(`${name}: multi-stage, non-root, /healthz check, and it copies every folder \`cascade ${service}\` imports`, () => {
      const text = readFileSync(join(DEPLOY, 'docker', name), 'utf8');
      const stages = text.split(/^FROM /m).slice(1);
      assert.ok(stages.length >= 2, 'multi-stage');
      const last = stages.at(-1) ?? '';
      const user = /^USER (\S+)/m.exec(last)?.[1];
      assert.ok(user && !/^(root|0)(:|$)/.test(user), `runs as ${user}`);
      assert.match(last, /HEALTHCHECK[\s\S]*\/healthz/);
      assert.match(last, new RegExp(`CMD \\["${service}"\\]`));
      assert.match(last, new RegExp(`EXPOSE ${port}`));
      const copied = new Set(
        [...last.matchAll(/^COPY (?:--from=\S+ )?(\S+)\/? /gm)].map(
          (m) => m[1].replace(/\/$/, '').split('/')[0],
        ),
      );
      const { files, packages } = importClosure([`${service}/cli.ts`, 'cascade/cli.ts']);
      const folders = new Set([...files].map((f) => relative(ROOT, f).split('/')[0]));
      for (const folder of folders)
        assert.ok(copied.has(folder), `${name} copies ${folder}/ (imported by cascade ${service})`);
      for (const p of packages)
        assert.ok(
          !p.startsWith('@tensorflow') && p !== 'cmake-js',
          `${service} imports ${p}, which the image drops`,
        );
      assert.ok(existsSync(join(DEPLOY, 'docker', `${name}.dockerignore`)), 'has its own .dockerignore');
      if (name.includes('tensorrt')) assert.match(text, /UNVERIFIED/);
    });
  }
});
