/**
 * The cloud teacher's metrics, on its own registry. Names:
 * - `cascade_cloud_latency_seconds{stage}` histogram; stage = queue | service | total
 * - `cascade_cloud_requests_total{status}`: ok, expired, overloaded, error, unauthorized, bad-request
 * - `cascade_cloud_batch_size` histogram, `cascade_cloud_queue_depth` gauge
 * - `cascade_cloud_received_bytes_total`, `cascade_cloud_sent_bytes_total`
 * - `cascade_cloud_deadline_misses_total{kind}`: expired | late
 * - `cascade_cloud_hard_examples_total{reason}`: low-confidence | disagreement
 * - `cascade_cloud_hard_examples_dropped_total{cause}`: rotation | backlog | disk
 * - `cascade_cloud_hard_examples_errors_total{code}`: disk errors by errno code (ENOSPC, EACCES …)
 * - `cascade_cloud_hard_examples_bytes`: bytes of the log on disk
 * - `cascade_model_info{tier,model,version}`
 */
import { Counter } from 'prom-client';
import { BATCH_SIZE_BUCKETS, createMetrics } from '../cascade/service/metrics.ts';
import type { HardExampleStats } from './hard-examples.ts';

/** The cloud's instruments. */
export function cloudMetrics(opts: { defaultMetrics?: boolean } = {}) {
  const m = createMetrics('cloud', opts);
  let queue = (): number => 0;
  let hard = (): HardExampleStats | undefined => undefined;
  const requests = m.counter('cascade_cloud_requests_total', 'Inference requests by outcome', [
    'status',
  ] as const);
  for (const s of ['ok', 'expired', 'overloaded', 'error', 'unauthorized', 'bad-request'])
    requests.inc({ status: s }, 0);
  const misses = m.counter('cascade_cloud_deadline_misses_total', 'Images not answered within budget', [
    'kind',
  ] as const);
  misses.inc({ kind: 'expired' }, 0);
  misses.inc({ kind: 'late' }, 0);
  const hardExamples = m.counter('cascade_cloud_hard_examples_total', 'Hard examples logged, by reason', [
    'reason',
  ] as const);
  m.gauge('cascade_cloud_queue_depth', 'Images waiting in the batcher', [], (g) => g.set(queue()));
  // Read from the log at scrape time, so the numbers are the log's own.
  const fromLog = <L extends string>(
    name: string,
    help: string,
    label: L,
    read: (s: HardExampleStats) => Record<string, number>,
  ) =>
    new Counter({
      name,
      help,
      labelNames: [label],
      registers: [m.registry],
      collect(this: Counter<L>) {
        const s = hard();
        if (!s) return;
        this.reset();
        for (const [k, v] of Object.entries(read(s)))
          this.inc({ [label]: k } as Partial<Record<L, string>>, v);
      },
    });
  fromLog(
    'cascade_cloud_hard_examples_dropped_total',
    'Hard examples lost (rotation, backlog, disk errors)',
    'cause',
    (s) => ({
      rotation: s.rotatedOut,
      backlog: s.backlogDropped,
      disk: Object.values(s.errors).reduce((a, b) => a + b, 0),
    }),
  );
  fromLog(
    'cascade_cloud_hard_examples_errors_total',
    'Hard-example disk errors by errno code',
    'code',
    (s) => s.errors,
  );
  m.gauge('cascade_cloud_hard_examples_bytes', 'Bytes of the hard-example log on disk', [], (g) => {
    g.set(hard()?.bytesOnDisk ?? 0);
  });
  return {
    base: m,
    registry: m.registry,
    latency: m.latency('cascade_cloud_latency_seconds', 'Cloud latency per stage', ['stage'] as const),
    requests,
    misses,
    hardExamples,
    batchSize: m.histogram('cascade_cloud_batch_size', 'Images per teacher batch', BATCH_SIZE_BUCKETS),
    received: m.counter('cascade_cloud_received_bytes_total', 'Request bytes received'),
    sent: m.counter('cascade_cloud_sent_bytes_total', 'Response bytes sent'),
    bindQueue(read: () => number): void {
      queue = read;
    },
    bindHardExamples(read: () => HardExampleStats | undefined): void {
      hard = read;
    },
  };
}

export type CloudMetrics = ReturnType<typeof cloudMetrics>;
