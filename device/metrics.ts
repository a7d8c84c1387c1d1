/**
 * Device metrics (prom-client, Prometheus naming). The frame loop only bumps plain numbers and
 * writes latency samples into preallocated rings; prom-client objects are updated from them at
 * scrape time (`collect`), so the hot path allocates nothing for metrics.
 *
 * Series: `cascade_device_frames_captured_total`, `cascade_device_frames_processed_total`,
 * `cascade_device_frames_dropped_total{reason}`, `cascade_device_stage_seconds{stage}`,
 * `cascade_device_result_latency_seconds{tier}`, `cascade_device_results_total{tier,reason}`,
 * `cascade_device_offloads_total{reason,payload}`, `cascade_device_deadline_misses_total{why}`,
 * `cascade_device_late_answers_total`, `cascade_device_uplink_bytes_total{kind}`,
 * `cascade_device_offloads_in_flight`, `cascade_device_mqtt_connected`,
 * `cascade_device_results_queued`, `cascade_protocol_rejects_total{reason}`, plus the shared
 * `cascade_model_info` and the policy engine's `cascade_policy_*`.
 */
import { Counter, Gauge, type Histogram } from 'prom-client';
import { createMetrics, type ServiceMetrics } from '../cascade/service/metrics.ts';
import { STAGES, type StageStats } from './stage-stats.ts';

/** Plain counters the device updates per frame. */
export interface DeviceCounts {
  captured: number;
  processed: number;
  dropped: { backpressure: number; source: number; error: number };
  /** Results by `tier|reason`. */
  results: Map<string, number>;
  /** Offloads by `reason|payload`. */
  offloads: Map<string, number>;
  misses: Map<string, number>;
  late: number;
  bytes: { offload: number; result: number };
  rejects: Record<string, number>;
}

/** What the metrics read live at scrape time. */
export interface DeviceGauges {
  inFlight(): number;
  connected(): boolean;
  queuedResults(): number;
  late(): number;
  rejects(): Record<string, number>;
  offloadBytes(): number;
  resultBytes(): number;
  slotPending(): number;
}

const TIERS = ['device', 'gateway', 'cloud'] as const;

/** Result latency samples per answering tier, in preallocated rings. */
export class LatencyRings {
  readonly #rings = new Map<string, { buf: Float64Array; n: number }>();
  #sink: ((tier: string, ms: number) => void) | null = null;

  constructor(capacity = 1024) {
    for (const t of [...TIERS, 'missed']) this.#rings.set(t, { buf: new Float64Array(capacity), n: 0 });
  }

  setSink(sink: (tier: string, ms: number) => void): void {
    this.#sink = sink;
  }

  /** Records one result's capture-to-result latency under its tier ('missed' for misses). */
  record(tier: string, ms: number): void {
    const r = this.#rings.get(tier);
    if (r === undefined) return;
    if (r.n === r.buf.length) this.drain();
    r.buf[r.n++] = ms;
  }

  drain(): void {
    for (const [tier, r] of this.#rings) {
      if (this.#sink) for (let i = 0; i < r.n; i++) this.#sink(tier, r.buf[i]);
      r.n = 0;
    }
  }
}

export function newDeviceCounts(): DeviceCounts {
  return {
    captured: 0,
    processed: 0,
    dropped: { backpressure: 0, source: 0, error: 0 },
    results: new Map(),
    offloads: new Map(),
    misses: new Map(),
    late: 0,
    bytes: { offload: 0, result: 0 },
    rejects: {},
  };
}

/** Adds 1 to a `a|b` keyed count. */
export function bump(m: Map<string, number>, key: string): void {
  m.set(key, (m.get(key) ?? 0) + 1);
}

function mirror<L extends string>(c: Counter<L>, entries: Iterable<[string, number]>, names: L[]): void {
  c.reset();
  for (const [key, v] of entries) {
    const parts = key.split('|');
    const labels = Object.fromEntries(names.map((n, i) => [n, parts[i] ?? ''])) as Record<L, string>;
    c.inc(labels, v);
  }
}

/**
 * Creates the device's registry and wires every series to the counts, rings and gauges.
 * @param labels extra labels on every series (e.g. `{device: id}`).
 */
export function createDeviceMetrics(
  counts: DeviceCounts,
  stages: StageStats,
  latency: LatencyRings,
  gauges: DeviceGauges,
  labels: Record<string, string> = {},
): ServiceMetrics {
  const m = createMetrics('device', { labels });
  // Registered first: prom-client reads metrics in registration order, so the rings are drained
  // into the histograms before those are serialized.
  new Gauge({
    name: 'cascade_device_frames_in_slot',
    help: 'Frames waiting for the pipeline',
    registers: [m.registry],
    collect() {
      this.set(gauges.slotPending());
      stages.drain();
      latency.drain();
    },
  });
  const stage: Histogram<'stage'> = m.latency(
    'cascade_device_stage_seconds',
    'Time per frame-loop stage: queue (capture → preprocessing), preprocess, infer, decide, total (capture → decision)',
    ['stage'],
  );
  for (const s of STAGES) stage.zero({ stage: s });
  stages.setSink((s, ms) => stage.observe({ stage: s }, ms / 1000));
  const result: Histogram<'tier'> = m.latency(
    'cascade_device_result_latency_seconds',
    'Capture to final result, by the tier whose answer was used (missed: offloaded, no usable answer in time)',
    ['tier'],
  );
  latency.setSink((tier, ms) => result.observe({ tier }, ms / 1000));
  const counter = <L extends string>(
    name: string,
    help: string,
    labelNames: L[],
    read: (c: Counter<L>) => void,
  ) =>
    new Counter<L>({
      name,
      help,
      labelNames,
      registers: [m.registry],
      collect() {
        read(this);
      },
    });
  counter('cascade_device_frames_captured_total', 'Frames captured by the source', [], (c) => {
    c.reset();
    c.inc(counts.captured);
  });
  counter('cascade_device_frames_processed_total', 'Frames preprocessed, inferred and decided', [], (c) => {
    c.reset();
    c.inc(counts.processed);
  });
  counter(
    'cascade_device_frames_dropped_total',
    'Frames never processed: backpressure (oldest dropped), source (no free buffer), error',
    ['reason'],
    (c) => mirror(c, Object.entries(counts.dropped), ['reason']),
  );
  counter(
    'cascade_device_results_total',
    'Final results by answering tier and policy reason',
    ['tier', 'reason'],
    (c) => mirror(c, counts.results, ['tier', 'reason']),
  );
  counter(
    'cascade_device_offloads_total',
    'Offloads sent, by policy reason and payload',
    ['reason', 'payload'],
    (c) => mirror(c, counts.offloads, ['reason', 'payload']),
  );
  counter(
    'cascade_device_deadline_misses_total',
    'Offloads without a usable answer in the budget (the local answer stood), by why',
    ['why'],
    (c) => mirror(c, counts.misses, ['why']),
  );
  counter(
    'cascade_device_late_answers_total',
    'Answers that arrived after their deadline (ignored)',
    [],
    (c) => {
      c.reset();
      c.inc(gauges.late());
    },
  );
  counter(
    'cascade_device_uplink_bytes_total',
    'Bytes published: offload envelopes and results',
    ['kind'],
    (c) => {
      c.reset();
      c.inc({ kind: 'offload' }, gauges.offloadBytes());
      c.inc({ kind: 'result' }, gauges.resultBytes());
    },
  );
  counter('cascade_protocol_rejects_total', 'Malformed messages received, by reason', ['reason'], (c) =>
    mirror(c, Object.entries(gauges.rejects()), ['reason']),
  );
  const live = (name: string, help: string, read: () => number): Gauge =>
    new Gauge({
      name,
      help,
      registers: [m.registry],
      collect() {
        this.set(read());
      },
    });
  live('cascade_device_offloads_in_flight', 'Offloads awaiting an answer', gauges.inFlight);
  live('cascade_device_mqtt_connected', '1 while connected to the broker', () =>
    gauges.connected() ? 1 : 0,
  );
  live('cascade_device_results_queued', 'Results waiting for the broker', gauges.queuedResults);
  return m;
}
