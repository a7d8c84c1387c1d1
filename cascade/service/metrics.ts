/**
 * Metrics shared by every tier: a fresh prom-client {@link Registry} per service instance (never
 * the global one, so tests can build several apps in one process), default process metrics, one
 * latency bucket set in seconds so that histograms of different tiers and stages can be compared
 * and summed, and the `cascade_model_info{tier,model,version}` gauge.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';

/**
 * Latency buckets in seconds, shared by every `*_seconds` histogram: fine below 50 ms (the
 * default frame budget) where the interesting decisions are, coarse above.
 */
export const LATENCY_BUCKETS_SECONDS: readonly number[] = [
  0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.25,
  0.5, 1, 2.5, 5,
];

/** Buckets of batch-size histograms (powers of two up to 256). */
export const BATCH_SIZE_BUCKETS: readonly number[] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

/** Buckets of message-size histograms, bytes. */
export const BYTES_BUCKETS: readonly number[] = [64, 256, 1024, 4096, 16384, 65536, 262144, 1048576];

/** Options of {@link createMetrics}. */
export interface MetricsOptions {
  /** Collect Node.js process metrics (CPU, memory, event-loop lag, GC). Default true. */
  defaultMetrics?: boolean;
  /** Extra labels on every series, besides `service`. */
  labels?: Record<string, string>;
}

/** A service's registry and helpers. */
export interface ServiceMetrics {
  readonly registry: Registry;
  readonly service: string;
  /** Sets `cascade_model_info{tier,model,version} 1`, clearing the tier's previous model. */
  setModelInfo(tier: string, model: string, version: string): void;
  /** A histogram with {@link LATENCY_BUCKETS_SECONDS}, registered on this registry. */
  latency<L extends string>(name: string, help: string, labelNames?: readonly L[]): Histogram<L>;
  counter<L extends string>(name: string, help: string, labelNames?: readonly L[]): Counter<L>;
  /** A gauge; `collect` (optional) sets its value at scrape time. */
  gauge<L extends string>(
    name: string,
    help: string,
    labelNames?: readonly L[],
    collect?: (gauge: Gauge<L>) => void,
  ): Gauge<L>;
  histogram<L extends string>(
    name: string,
    help: string,
    buckets: readonly number[],
    labelNames?: readonly L[],
  ): Histogram<L>;
  /** The exposition text (what `/metrics` serves). */
  text(): Promise<string>;
}

/**
 * Creates a service's metrics registry: default process metrics (the standard `process_` and
 * `nodejs_` names dashboards expect), a `service` label on every series and the model info gauge.
 * @param service the tier's name: 'gateway', 'cloud', 'device'.
 */
export function createMetrics(service: string, opts: MetricsOptions = {}): ServiceMetrics {
  const registry = new Registry();
  registry.setDefaultLabels({ service, ...opts.labels });
  if (opts.defaultMetrics ?? true) collectDefaultMetrics({ register: registry });
  const modelInfo = new Gauge({
    name: 'cascade_model_info',
    help: 'Model served by this process (value 1), by tier, model name and card version',
    labelNames: ['tier', 'model', 'version'] as const,
    registers: [registry],
  });
  const models = new Map<string, { model: string; version: string }>();
  return {
    registry,
    service,
    setModelInfo(tier, model, version) {
      const old = models.get(tier);
      if (old) modelInfo.remove({ tier, model: old.model, version: old.version });
      models.set(tier, { model, version });
      modelInfo.set({ tier, model, version }, 1);
    },
    latency(name, help, labelNames = []) {
      return new Histogram({
        name,
        help,
        labelNames,
        buckets: [...LATENCY_BUCKETS_SECONDS],
        registers: [registry],
      });
    },
    counter(name, help, labelNames = []) {
      return new Counter({ name, help, labelNames, registers: [registry] });
    },
    gauge(name, help, labelNames = [], collect) {
      return new Gauge({
        name,
        help,
        labelNames,
        registers: [registry],
        collect: collect
          ? function (this: Gauge) {
              collect(this);
            }
          : undefined,
      });
    },
    histogram(name, help, buckets, labelNames = []) {
      return new Histogram({ name, help, labelNames, buckets: [...buckets], registers: [registry] });
    },
    text: () => registry.metrics(),
  };
}

/** Reads one series' current value from a registry (tests, reports); 0 when absent. */
export async function metricValue(
  registry: Registry,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const metric = registry.getSingleMetric(name);
  if (!metric) return 0;
  const data = await metric.get();
  let sum = 0;
  for (const v of data.values) {
    const l = v.labels as Record<string, string | number>;
    const series = (v as { metricName?: string }).metricName;
    // Histograms: count only the `_count` series of the matching labels.
    if (series !== undefined && series !== name && !series.endsWith('_count')) continue;
    if (Object.entries(labels).every(([k, x]) => String(l[k]) === x)) sum += v.value;
  }
  return sum;
}
