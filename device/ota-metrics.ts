/**
 * Prometheus metrics of the OTA agent (prom-client, on a registry the caller owns so several
 * agents can live in one process).
 */
import { Counter, Gauge, Registry } from 'prom-client';

/** The OTA states reported on MQTT and in `cascade_ota_state`. */
export const OTA_STATES = ['current', 'pending', 'failed', 'rolled-back'] as const;
export type OtaState = (typeof OTA_STATES)[number];

/** The agent's metric handles. */
export class OtaMetrics {
  readonly registry: Registry;
  readonly checks: Counter<'result'>;
  readonly updates: Counter<'result'>;
  readonly downloadBytes: Counter;
  readonly release: Gauge;
  readonly state: Gauge<'state'>;
  readonly timestampExpiry: Gauge;
  readonly lastCheck: Gauge;

  /** @param registry default: a new Registry. */
  constructor(registry: Registry = new Registry()) {
    this.registry = registry;
    const registers = [registry];
    this.checks = new Counter({
      name: 'cascade_ota_checks_total',
      help: 'Repository refreshes by result (ok, or the OTA_ERR_* code)',
      labelNames: ['result'],
      registers,
    });
    this.updates = new Counter({
      name: 'cascade_ota_updates_total',
      help: 'Model updates by outcome: installed, rolled_back, failed',
      labelNames: ['result'],
      registers,
    });
    this.downloadBytes = new Counter({
      name: 'cascade_ota_download_bytes_total',
      help: 'Bytes received from the OTA repository (metadata and targets)',
      registers,
    });
    this.release = new Gauge({
      name: 'cascade_ota_model_release',
      help: 'Release number of the running model (0: factory model)',
      registers,
    });
    this.state = new Gauge({
      name: 'cascade_ota_state',
      help: 'OTA state: 1 for the current one of current, pending, failed, rolled-back',
      labelNames: ['state'],
      registers,
    });
    this.timestampExpiry = new Gauge({
      name: 'cascade_ota_timestamp_expiry_seconds',
      help: 'Unix time at which the trusted timestamp metadata expires',
      registers,
    });
    this.lastCheck = new Gauge({
      name: 'cascade_ota_last_check_seconds',
      help: 'Unix time of the last successful repository refresh',
      registers,
    });
  }

  /** Sets `cascade_ota_state` to one-hot `state`. */
  setState(state: OtaState): void {
    for (const s of OTA_STATES) this.state.set({ state: s }, s === state ? 1 : 0);
  }
}
