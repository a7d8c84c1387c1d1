/**
 * Prometheus metrics of a {@link PolicyEngine}: decisions by reason and payload, and the link and
 * load estimates with their uncertainty, read at scrape time. Registered on the caller's own
 * prom-client Registry (never the global one) so several apps can live in one process.
 */
import { Counter, Gauge, type Registry } from 'prom-client';
import type { PolicyEngine } from './engine.ts';
import { ENGINE_REASONS } from './reasons.ts';

/** Handle returned by {@link registerPolicyMetrics}. */
export interface PolicyMetrics {
  /** Stops counting decisions (the gauges stay registered with the registry). */
  close(): void;
}

/**
 * Registers the policy metrics of one engine.
 * Metrics: `cascade_policy_decisions_total{tier,reason,payload}`,
 * `cascade_policy_link_bandwidth_bytes_per_second`, `cascade_policy_link_bandwidth_cv`,
 * `cascade_policy_link_rtt_seconds`, `cascade_policy_link_known`,
 * `cascade_policy_link_step_changes`, `cascade_policy_remote_queue_seconds`,
 * `cascade_policy_remote_service_seconds`, `cascade_policy_uplink_budget_bytes` (all `{tier}`).
 * @param prefix metric name prefix; default 'cascade_policy_'.
 * @throws {Error} from prom-client if the names are already registered on `registry`.
 */
export function registerPolicyMetrics(
  registry: Registry,
  engine: PolicyEngine,
  prefix = 'cascade_policy_',
): PolicyMetrics {
  const tier = engine.tier;
  const decisions = new Counter({
    name: `${prefix}decisions_total`,
    help: 'Offload decisions by reason code and payload (payload "none" for local answers).',
    labelNames: ['tier', 'reason', 'payload'],
    registers: [registry],
  });
  for (const reason of ENGINE_REASONS) {
    decisions.inc({ tier, reason, payload: reason.startsWith('offload:') ? 'tensor' : 'none' }, 0);
  }
  const off = engine.onDecision((d) =>
    decisions.inc({ tier, reason: d.reason, payload: d.payload ?? 'none' }),
  );
  const gauge = (name: string, help: string, read: () => number) =>
    new Gauge({
      name: `${prefix}${name}`,
      help,
      labelNames: ['tier'],
      registers: [registry],
      collect() {
        const v = read();
        this.set({ tier }, Number.isFinite(v) ? v : -1);
      },
    });
  gauge('link_bandwidth_bytes_per_second', 'Estimated uplink bandwidth seen by this tier.', () => {
    return engine.snapshot().bandwidthBps / 8;
  });
  gauge('link_bandwidth_cv', 'Uncertainty of the bandwidth estimate (coefficient of variation).', () => {
    return engine.snapshot().uncertainty.bandwidthCv;
  });
  gauge('link_rtt_seconds', 'Estimated propagation round-trip time to the next tier.', () => {
    return engine.snapshot().rttMs / 1000;
  });
  gauge('link_known', '1 when the link estimate rests on recent observations.', () => {
    return engine.snapshot().linkKnown ? 1 : 0;
  });
  gauge(
    'link_step_changes',
    'Step changes of the link detected since start.',
    () => engine.snapshot().changes,
  );
  gauge('remote_queue_seconds', 'Estimated queue delay at the next tier.', () => {
    return engine.snapshot().queueMs / 1000;
  });
  gauge('remote_service_seconds', 'Estimated service time at the next tier.', () => {
    return engine.snapshot().serviceMs / 1000;
  });
  gauge('uplink_budget_bytes', 'Bytes left in the uplink byte budget (-1: unlimited).', () => {
    return engine.snapshot().bucketBytes ?? -1;
  });
  return { close: off };
}
