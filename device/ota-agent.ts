/**
 * The device's OTA agent: polls the TUF repository (interval with jitter) and refreshes at once,
 * after a short random delay, when a publisher announces a new state on MQTT; verifies
 * everything through tuf-js (ota/client.ts); picks the release for its tier, hardware class and
 * rollout bucket; installs it atomically (model-installer.ts); hot-swaps it into the pipeline
 * between two frames (a {@link SwappableModel}); health-checks it on probe images; and confirms
 * it, or swaps the old model back, rolls the store back and reports. Status (current, pending,
 * failed, rolled back) goes to a retained MQTT topic, a typed event and Prometheus metrics.
 */
import { EventEmitter } from 'node:events';
import { copyFile, mkdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { Fetcher } from 'tuf-js';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import { type ModelCard, parseModelCard, type Tier } from '../models/card.ts';
import { type LoadOptions, OnnxClassifier } from '../models/runtime.ts';
import { type MetadataLimits, OtaClient } from '../ota/client.ts';
import { HttpFetcher } from '../ota/fetcher.ts';
import {
  ANNOUNCE_TOPIC,
  checkCardMatchesManifest,
  type ModelTarget,
  selectUpdate,
  statusTopic,
} from '../ota/manifest.ts';
import { ModelInstaller, type ReleaseRef } from './model-installer.ts';
import type { SwappableModel } from './model-slot.ts';
import { type HealthResult, healthCheck, loadProbeSet, type ProbeSet } from './ota-health.ts';
import { OtaMetrics, type OtaState } from './ota-metrics.ts';

export type { OtaState } from './ota-metrics.ts';

/** A release as status reports it. */
export interface ReleaseInfo {
  release: number;
  model: string;
  version: string;
  sha256: string;
}

/** What the agent reports on MQTT and in the 'status' event. */
export interface OtaStatus {
  deviceId: string;
  hardwareClass: string;
  state: OtaState;
  /** The installed release; null while the factory model runs. */
  current: ReleaseInfo | null;
  /** The release being downloaded, installed or health-checked. */
  pending: ReleaseInfo | null;
  /** Releases given up on here (never installed again). */
  failed: { release: number; sha256: string; reason: string; at: string }[];
  /** Why nothing was installed at the last check (up-to-date, not-in-rollout, …). */
  reason?: string;
  lastError: { code: string; message: string } | null;
  lastCheck: string | null;
  at: string;
}

/** Typed events of {@link OtaAgent}. */
export interface OtaAgentEvents {
  status: [OtaStatus];
  installed: [{ card: ModelCard; cardPath: string; release: ReleaseInfo; health: HealthResult }];
  'rolled-back': [{ release: ReleaseInfo; reason: string; health?: HealthResult }];
}

/** Options of {@link OtaAgent}. */
export interface OtaAgentOptions {
  /** Repository base URL (serving metadata/ and targets/). */
  repoUrl: string;
  /** TUF metadata folder; holds the trusted root.json. */
  metadataDir: string;
  /** A root.json to provision into `metadataDir` when it has none (first boot). */
  trustedRoot?: string;
  /** The model store (see model-installer.ts). */
  modelsDir: string;
  deviceId: string;
  hardwareClass: string;
  /** Tier of the models to install; default 'device'. */
  tier?: Tier;
  /**
   * The pipeline's model. The agent swaps new models in and disposes the ones it replaces
   * (including the one the pipeline started with) once no frame runs on them. Without it the
   * agent installs and checks, and `onInstalled` is for the caller to load the new model.
   */
  model?: SwappableModel;
  /** MQTT client for announcements and status; the agent never ends it. */
  mqtt?: MqttClient;
  /** prom-client registry for the metrics; default: a private one (see {@link OtaAgent.metrics}). */
  registry?: Registry;
  /** Poll period; default 15 min. */
  pollIntervalMs?: number;
  /** Poll jitter as a fraction of the period (±); default 0.2. */
  pollJitter?: number;
  /** Largest random delay before acting on an announcement (spreads a fleet); default 5000 ms. */
  announceDelayMaxMs?: number;
  /**
   * Announcements within this time of the last one acted on are ignored, so a flood on the
   * announce topic cannot keep the device refreshing; polling still runs. Default 10000 ms.
   */
  announceMinIntervalMs?: number;
  /** pino-style logger for installs, rollbacks and failures; default: none (events only). */
  log?: Pick<Logger, 'info' | 'warn'>;
  /** Largest random delay before the first check after start(); default 30000 ms. */
  startDelayMaxMs?: number;
  /** Allowed probe-accuracy loss against the card; default 0.05. */
  healthMargin?: number;
  /** Probe images; default: the first 200 of the bundled sample. */
  probe?: ProbeSet;
  /** Transport; default an {@link HttpFetcher} with partial downloads under modelsDir. */
  fetcher?: Fetcher;
  limits?: Partial<MetadataLimits>;
  /** ONNX Runtime options for the new model. */
  loadOptions?: LoadOptions;
  /** Called after a new model passed its health check (and is live, with `model`). */
  onInstalled?: (card: ModelCard, cardPath: string) => void | Promise<void>;
  now?: () => Date;
  random?: () => number;
  /** Injected timers (tests); default the global ones. */
  timers?: { setTimeout: typeof setTimeout; clearTimeout: typeof clearTimeout };
}

function info(ref: ReleaseRef): ReleaseInfo {
  return { release: ref.release, model: ref.model, version: ref.version, sha256: ref.modelSha256 };
}

function infoOf(t: ModelTarget): ReleaseInfo {
  return { release: t.meta.release, model: t.meta.model, version: t.meta.version, sha256: t.sha256 };
}

/**
 * The OTA agent of one device. `start()` once, `checkNow()` any time, `close()` at the end
 * (idempotent; waits for a check in progress).
 */
export class OtaAgent extends EventEmitter<OtaAgentEvents> {
  readonly #o: OtaAgentOptions;
  readonly #installer: ModelInstaller;
  readonly #client: OtaClient;
  readonly #metrics: OtaMetrics;
  readonly #timers: { setTimeout: typeof setTimeout; clearTimeout: typeof clearTimeout };
  readonly #now: () => Date;
  readonly #random: () => number;
  #status: OtaStatus;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #announceTimer: ReturnType<typeof setTimeout> | undefined;
  #running: Promise<OtaStatus> | undefined;
  #again = false;
  #started = false;
  #closed = false;
  #probe: ProbeSet | undefined;
  #lastAnnounce = Number.NEGATIVE_INFINITY;
  readonly #onMessage = (topic: string): void => {
    if (topic !== ANNOUNCE_TOPIC || this.#closed || this.#announceTimer) return;
    const at = this.#now().getTime();
    if (at - this.#lastAnnounce < (this.#o.announceMinIntervalMs ?? 10_000)) return;
    this.#lastAnnounce = at;
    const delay = this.#random() * (this.#o.announceDelayMaxMs ?? 5000);
    this.#announceTimer = this.#timers.setTimeout(() => {
      this.#announceTimer = undefined;
      void this.checkNow();
    }, delay);
  };

  constructor(opts: OtaAgentOptions) {
    super();
    this.#o = opts;
    this.#now = opts.now ?? (() => new Date());
    this.#random = opts.random ?? Math.random;
    this.#timers = opts.timers ?? { setTimeout, clearTimeout };
    this.#metrics = new OtaMetrics(opts.registry);
    this.#installer = new ModelInstaller(opts.modelsDir, { now: this.#now });
    this.#probe = opts.probe;
    const fetcher =
      opts.fetcher ??
      new HttpFetcher({
        partialDir: join(opts.modelsDir, 'partial'),
        onBytes: (n) => this.#metrics.downloadBytes.inc(n),
        random: this.#random,
      });
    this.#client = new OtaClient({
      metadataDir: opts.metadataDir,
      repoUrl: opts.repoUrl,
      fetcher,
      limits: opts.limits,
    });
    this.#status = {
      deviceId: opts.deviceId,
      hardwareClass: opts.hardwareClass,
      state: 'current',
      current: null,
      pending: null,
      failed: [],
      lastError: null,
      lastCheck: null,
      at: this.#now().toISOString(),
    };
  }

  /**
   * Recovers the model store after a restart and returns the card to load: the installed
   * release's, or `factoryCard` when none is installed. Call before building the pipeline.
   */
  static async bootModel(
    modelsDir: string,
    factoryCard: string,
  ): Promise<{ cardPath: string; release: ReleaseRef | null }> {
    const installer = new ModelInstaller(modelsDir);
    const { active } = await installer.recover();
    return { cardPath: active ? installer.cardPath(active) : factoryCard, release: active };
  }

  /** The agent's metrics (the registry given in the options, or its own). */
  get metrics(): OtaMetrics {
    return this.#metrics;
  }

  /** The last status. */
  get status(): OtaStatus {
    return structuredClone(this.#status);
  }

  /**
   * Recovers the store, provisions the trusted root if needed, subscribes to announcements,
   * publishes the current status and schedules the first check.
   * @throws {CascadeError} OTA_ERR_METADATA_INVALID without a trusted root; OTA_ERR_INSTALL for
   *   a damaged store.
   */
  async start(): Promise<void> {
    if (this.#started) return;
    this.#started = true;
    await mkdir(this.#o.metadataDir, { recursive: true });
    const rootPath = join(this.#o.metadataDir, 'root.json');
    if (!(await stat(rootPath).catch(() => undefined))) {
      if (!this.#o.trustedRoot) {
        throw new CascadeError(
          ErrorCodes.OTA_ERR_METADATA_INVALID,
          `${rootPath}: no trusted root; provision the repository's root.json`,
        );
      }
      await copyFile(this.#o.trustedRoot, rootPath);
    }
    await this.#installer.recover();
    await this.#refreshStatus({});
    if (this.#o.mqtt) {
      this.#o.mqtt.on('message', this.#onMessage);
      await this.#o.mqtt.subscribeAsync(ANNOUNCE_TOPIC, { qos: 1 });
    }
    this.#schedule((this.#o.startDelayMaxMs ?? 30_000) * this.#random());
  }

  #schedule(delay: number): void {
    if (this.#closed) return;
    if (this.#timer) this.#timers.clearTimeout(this.#timer);
    this.#timer = this.#timers.setTimeout(() => {
      this.#timer = undefined;
      void this.checkNow();
    }, delay);
  }

  #nextPoll(): number {
    const interval = this.#o.pollIntervalMs ?? 15 * 60_000;
    const jitter = this.#o.pollJitter ?? 0.2;
    return interval * (1 + jitter * (2 * this.#random() - 1));
  }

  /**
   * Checks the repository now (calls during a check are merged into one more check after it)
   * and installs what it finds. Never throws: failures are reported in the status.
   */
  async checkNow(): Promise<OtaStatus> {
    if (this.#closed) return this.status;
    if (this.#running) {
      this.#again = true;
      return this.#running;
    }
    this.#running = (async () => {
      do {
        this.#again = false;
        await this.#check().catch((err: unknown) => this.#fatal(err));
      } while (this.#again && !this.#closed);
      this.#schedule(this.#nextPoll());
      return this.status;
    })().finally(() => {
      this.#running = undefined;
    });
    return this.#running;
  }

  async #refreshStatus(patch: Partial<OtaStatus>): Promise<void> {
    const p = await this.#installer.state();
    const blocked = await this.#installer.blocked();
    this.#status = {
      ...this.#status,
      ...patch,
      current: p.active ? info(p.active) : null,
      failed: p.failed
        .filter((f) => blocked.has(f.modelSha256))
        .map((f) => ({ release: f.release, sha256: f.modelSha256, reason: f.reason, at: f.at })),
      at: this.#now().toISOString(),
    };
    this.#metrics.setState(this.#status.state);
    this.#metrics.release.set(this.#status.current?.release ?? 0);
    this.emit('status', this.status);
    if (this.#o.mqtt && !this.#closed) {
      this.#o.mqtt.publish(statusTopic(this.#o.deviceId), JSON.stringify(this.#status), {
        qos: 1,
        retain: true,
      });
    }
  }

  /** Reports a failure of the store itself (status without reading the store again). */
  #fatal(err: unknown): void {
    const e = err instanceof CascadeError ? err : new CascadeError(ErrorCodes.OTA_ERR_INSTALL, String(err));
    this.#status = {
      ...this.#status,
      state: 'failed',
      pending: null,
      lastError: { code: e.code, message: e.message },
      at: this.#now().toISOString(),
    };
    this.#metrics.setState('failed');
    this.#o.log?.warn({ code: e.code, err: e.message }, 'ota: model store failure');
    this.emit('status', this.status);
    if (this.#o.mqtt && !this.#closed) {
      this.#o.mqtt.publish(statusTopic(this.#o.deviceId), JSON.stringify(this.#status), {
        qos: 1,
        retain: true,
      });
    }
  }

  async #check(): Promise<void> {
    let repo: Awaited<ReturnType<OtaClient['refresh']>>;
    try {
      repo = await this.#client.refresh();
    } catch (err) {
      const e =
        err instanceof CascadeError ? err : new CascadeError(ErrorCodes.OTA_ERR_DOWNLOAD, String(err));
      this.#metrics.checks.inc({ result: e.code });
      this.#o.log?.warn({ code: e.code, err: e.message }, 'ota: repository refresh failed');
      await this.#refreshStatus({
        state: 'failed',
        pending: null,
        lastError: { code: e.code, message: e.message },
      });
      return;
    }
    this.#metrics.checks.inc({ result: 'ok' });
    const checkedAt = this.#now();
    this.#metrics.lastCheck.set(checkedAt.getTime() / 1000);
    this.#metrics.timestampExpiry.set(new Date(repo.timestampExpires).getTime() / 1000);
    const p = await this.#installer.state();
    const decision = selectUpdate(repo.models, {
      deviceId: this.#o.deviceId,
      tier: this.#o.tier ?? 'device',
      hardwareClass: this.#o.hardwareClass,
      current: p.active ? { release: p.active.release, sha256: p.active.modelSha256 } : undefined,
      failed: await this.#installer.blocked(),
    });
    if (decision.action === 'none') {
      const keep = decision.reason === 'previously-failed' && this.#status.state !== 'pending';
      await this.#refreshStatus({
        state: keep ? this.#status.state : 'current',
        pending: null,
        reason: decision.reason,
        lastError: keep ? this.#status.lastError : null,
        lastCheck: checkedAt.toISOString(),
      });
      return;
    }
    await this.#install(decision.target, checkedAt);
  }

  async #install(target: ModelTarget, checkedAt: Date): Promise<void> {
    const pending = infoOf(target);
    await this.#refreshStatus({
      state: 'pending',
      pending,
      reason: undefined,
      lastCheck: checkedAt.toISOString(),
    });
    const dl = join(this.#o.modelsDir, 'download');
    let activated = false;
    try {
      await rm(dl, { recursive: true, force: true });
      await mkdir(dl, { recursive: true });
      const cardFile = join(dl, 'card.json');
      const modelFile = join(dl, 'model');
      await this.#client.download(target.meta.card.path, cardFile);
      const cardBytes = await readFile(cardFile);
      let card: ModelCard;
      try {
        card = parseModelCard(JSON.parse(cardBytes.toString('utf8')), target.meta.card.path);
      } catch (err) {
        throw new CascadeError(
          ErrorCodes.OTA_ERR_HARDWARE_MISMATCH,
          `${target.meta.card.path}: ${(err as Error).message}`,
        );
      }
      checkCardMatchesManifest(card, target, this.#o.hardwareClass);
      await this.#client.download(target.path, modelFile);
      const ref = await this.#installer.stage({
        release: target.meta.release,
        model: card.name,
        version: card.version,
        modelFile: card.files[0].file,
        card: cardBytes,
        modelBytes: await readFile(modelFile),
        modelSha256: target.sha256,
        cardSha256: target.meta.card.sha256,
      });
      await this.#installer.activate(ref);
      activated = true;
      await this.#swapAndCheck(ref, card, pending);
    } catch (err) {
      const e =
        err instanceof CascadeError
          ? err
          : new CascadeError(ErrorCodes.OTA_ERR_INSTALL, (err as Error).message);
      if (activated) await this.#installer.rollback(e.message);
      this.#metrics.updates.inc({ result: 'failed' });
      this.#o.log?.warn({ release: pending.release, code: e.code, err: e.message }, 'ota: update failed');
      await this.#refreshStatus({
        state: 'failed',
        pending: null,
        lastError: { code: e.code, message: e.message },
      });
    } finally {
      await rm(dl, { recursive: true, force: true });
    }
  }

  async #swapAndCheck(ref: ReleaseRef, card: ModelCard, pending: ReleaseInfo): Promise<void> {
    const cardPath = this.#installer.cardPath(ref);
    const next = await OnnxClassifier.load(cardPath, this.#o.loadOptions);
    this.#probe ??= await loadProbeSet();
    const slot = this.#o.model;
    const old = slot ? await slot.swap(next) : undefined;
    let health: HealthResult;
    try {
      health = await healthCheck(slot ? slot.current : next, this.#probe, { margin: this.#o.healthMargin });
    } catch (err) {
      health = { ok: false, expected: 0, margin: 0, n: 0, reason: (err as Error).message };
    }
    if (!health.ok) {
      const reason = `health check failed: ${health.reason ?? 'unknown'}`;
      if (slot && old) await slot.swap(old);
      await next.dispose();
      await this.#installer.rollback(reason);
      this.#metrics.updates.inc({ result: 'rolled_back' });
      await this.#refreshStatus({
        state: 'rolled-back',
        pending: null,
        lastError: { code: ErrorCodes.OTA_ERR_HEALTH_CHECK, message: reason },
      });
      this.#o.log?.warn({ release: pending.release, reason }, 'ota: new model rolled back');
      this.emit('rolled-back', { release: pending, reason, health });
      return;
    }
    await this.#installer.confirm();
    if (old) await old.dispose();
    else if (!slot) await next.dispose();
    this.#metrics.updates.inc({ result: 'installed' });
    await this.#refreshStatus({ state: 'current', pending: null, lastError: null });
    this.#o.log?.info(
      { release: pending.release, model: card.name, version: card.version, accuracy: health.accuracy },
      'ota: new model installed',
    );
    this.emit('installed', { card, cardPath, release: pending, health });
    await this.#o.onInstalled?.(card, cardPath);
  }

  /** Stops polling and listening; waits for a check in progress. Safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer) this.#timers.clearTimeout(this.#timer);
    if (this.#announceTimer) this.#timers.clearTimeout(this.#announceTimer);
    this.#o.mqtt?.removeListener('message', this.#onMessage);
    await this.#running?.catch(() => {});
    if (this.#o.mqtt?.connected) await this.#o.mqtt.unsubscribeAsync(ANNOUNCE_TOPIC).catch(() => {});
  }
}
