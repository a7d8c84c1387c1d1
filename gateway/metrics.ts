/**
 * The gateway's metrics, on its own registry. Names:
 * - `cascade_gateway_latency_seconds{stage,transport}` histogram; stage = queue | service | cloud | total
 * - `cascade_gateway_requests_total{transport,status}`: answers by status (ok, expired, overloaded, error)
 * - `cascade_gateway_answers_total{tier,reason}`: ok answers by who answered and why
 *   (`local:confident`, `forward:gain`, `fallback:cloud-timeout`, …)
 * - `cascade_gateway_forwards_total{reason}`: forwards to the cloud by policy reason
 * - `cascade_gateway_cloud_fallbacks_total{reason}`: cloud failures answered by the gateway
 * - `cascade_gateway_rejects_total{reason}`: malformed messages (the protocol's reasons, `topic`, `payload`)
 * - `cascade_gateway_queue_depth`, `cascade_gateway_inflight_batches` gauges
 * - `cascade_gateway_batch_size` histogram
 * - `cascade_gateway_received_bytes_total{transport}`, `cascade_gateway_sent_bytes_total{transport,peer}`
 * - `cascade_gateway_deadline_misses_total{kind}`: expired (budget ran out queued) | late (served after it)
 * - `cascade_gateway_published_total`, `cascade_gateway_publish_failures_total`: answers the
 *   broker took / did not take (every MQTT frame served is one or the other)
 * - `cascade_model_info{tier,model,version}` and the policy engine's `cascade_policy_*`
 */
import { BATCH_SIZE_BUCKETS, createMetrics, type ServiceMetrics } from '../cascade/service/metrics.ts';

export type Transport = 'mqtt' | 'http';

/** The gateway's instruments. */
export function gatewayMetrics(opts: { defaultMetrics?: boolean } = {}) {
  const m: ServiceMetrics = createMetrics('gateway', opts);
  const latency = m.latency('cascade_gateway_latency_seconds', 'Gateway latency per stage', [
    'stage',
    'transport',
  ] as const);
  const requests = m.counter('cascade_gateway_requests_total', 'Requests answered, by status', [
    'transport',
    'status',
  ] as const);
  const answers = m.counter('cascade_gateway_answers_total', 'OK answers by answering tier and reason', [
    'tier',
    'reason',
  ] as const);
  const forwards = m.counter(
    'cascade_gateway_forwards_total',
    'Frames forwarded to the cloud, by policy reason',
    ['reason'] as const,
  );
  const fallbacks = m.counter(
    'cascade_gateway_cloud_fallbacks_total',
    'Cloud calls that failed or timed out, answered by the gateway itself',
    ['reason'] as const,
  );
  const rejects = m.counter('cascade_gateway_rejects_total', 'Malformed or invalid messages, by reason', [
    'reason',
  ] as const);
  let queue = (): { depth: number; running: number } => ({ depth: 0, running: 0 });
  m.gauge('cascade_gateway_queue_depth', 'Requests waiting in the batcher', [], (g) => g.set(queue().depth));
  m.gauge('cascade_gateway_inflight_batches', 'Batches running in the engine', [], (g) =>
    g.set(queue().running),
  );
  const batchSize = m.histogram(
    'cascade_gateway_batch_size',
    'Requests per engine batch',
    BATCH_SIZE_BUCKETS,
  );
  const received = m.counter('cascade_gateway_received_bytes_total', 'Bytes received', [
    'transport',
  ] as const);
  const sent = m.counter('cascade_gateway_sent_bytes_total', 'Bytes sent, by transport and peer', [
    'transport',
    'peer',
  ] as const);
  const misses = m.counter('cascade_gateway_deadline_misses_total', 'Requests not answered within budget', [
    'kind',
  ] as const);
  const published = m.counter(
    'cascade_gateway_published_total',
    'Answers published to devices (broker accepted)',
  );
  const publishFailures = m.counter(
    'cascade_gateway_publish_failures_total',
    'Answers the broker did not accept (disconnected, refused)',
  );
  for (const t of ['mqtt', 'http'] as const)
    for (const s of ['ok', 'expired', 'overloaded', 'error'] as const)
      requests.inc({ transport: t, status: s }, 0);
  for (const k of ['expired', 'late'] as const) misses.inc({ kind: k }, 0);
  return {
    base: m,
    registry: m.registry,
    latency,
    requests,
    answers,
    forwards,
    fallbacks,
    rejects,
    /** Points the queue gauges at the batcher. */
    bindQueue(read: () => { depth: number; running: number }): void {
      queue = read;
    },
    batchSize,
    received,
    sent,
    misses,
    published,
    publishFailures,
  };
}

export type GatewayMetrics = ReturnType<typeof gatewayMetrics>;
