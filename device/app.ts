/**
 * `cascade device` as a library: {@link DeviceApp.build} wires the frame source, back-pressure
 * slot, double-buffered pipeline, INT8 student (through a hot-swappable {@link ModelSlot}),
 * policy engine, offload client, result publisher, metrics, the optional ops HTTP server and the
 * optional OTA agent; `start()` runs it; `shutdown()` (or the source's end) drains in-flight
 * frames and offloads (each bounded by its deadline), publishes their results and closes every
 * part in order. It never listens or reads the environment on its own: device/main.ts does.
 */
import { join } from 'node:path';
import Fastify, { type FastifyInstance } from 'fastify';
import { MqttConnection, readMqttTls } from '../cascade/mqtt.ts';
import {
  loadPolicyFile,
  type PolicyConfigPatch,
  PolicyEngine,
  type PolicyFileWatcher,
  registerPolicyMetrics,
  watchPolicyFile,
} from '../cascade/policy/index.ts';
import { createLogger, type Logger } from '../cascade/service/log.ts';
import type { ServiceMetrics } from '../cascade/service/metrics.ts';
import { opsRoutes } from '../cascade/service/ops.ts';
import { GracefulShutdown } from '../cascade/service/shutdown.ts';
import type { ImageDataset } from '../models/data/dataset.ts';
import { loadRegistry, modelForTier } from '../models/registry.ts';
import { type InferenceBuffers, OnnxClassifier } from '../models/runtime.ts';
import type { DeviceConfig } from './config.ts';
import { FrameDecider } from './decider.ts';

export type { DeviceReport } from './report.ts';

import { FrameSlot } from './frame-slot.ts';
import { FramePool, type FrameSource } from './frames.ts';
import { createDeviceMetrics, type DeviceCounts, LatencyRings, newDeviceCounts } from './metrics.ts';
import { ModelSlot } from './model-slot.ts';
import { OffloadClient } from './offload-client.ts';
import { OtaAgent } from './ota-agent.ts';
import { DevicePipeline } from './pipeline.ts';
import { Preprocessor, resolveBackend } from './preprocessor.ts';
import { buildReport, type DeviceReport, tensorEnvelopeBytes } from './report.ts';
import { ResultPublisher } from './result-publisher.ts';
import { createSource } from './sources.ts';
import { StageStats } from './stage-stats.ts';

/** Injected parts (tests); everything else comes from the config. */
export interface DeviceDeps {
  logger?: Logger;
  /** The replay dataset, instead of loading the configured one. */
  dataset?: ImageDataset;
  /** A frame source instead of the configured one. */
  source?: (pool: FramePool) => FrameSource;
}

export class DeviceApp {
  readonly config: Readonly<DeviceConfig>;
  readonly logger: Logger;
  readonly metrics: ServiceMetrics;
  readonly counts: DeviceCounts;
  readonly model: ModelSlot;
  readonly engine: PolicyEngine;
  readonly pipeline: DevicePipeline;
  readonly conn: MqttConnection | null;
  readonly source: FrameSource;
  readonly #slot: FrameSlot;
  readonly #pool: FramePool;
  readonly #pre: Preprocessor;
  readonly #offload: OffloadClient | null;
  readonly #publisher: ResultPublisher;
  readonly #decider: FrameDecider;
  readonly #shutdown: GracefulShutdown;
  readonly #tensorEnvelope: number;
  #http: FastifyInstance | null = null;
  #ota: OtaAgent | null = null;
  #watcher: PolicyFileWatcher | null = null;
  #started: Promise<void> | null = null;
  #pump: Promise<void> = Promise.resolve();
  #run: Promise<void> = Promise.resolve();
  #report: Promise<DeviceReport> | null = null;
  #finished!: (r: DeviceReport) => void;
  /** Resolves with the report once the device has shut down (camera end, signal or a call). */
  readonly finished: Promise<DeviceReport> = new Promise((resolve) => {
    this.#finished = resolve;
  });

  private constructor(parts: {
    config: Readonly<DeviceConfig>;
    logger: Logger;
    model: ModelSlot;
    buffers: readonly [InferenceBuffers, InferenceBuffers];
    engine: PolicyEngine;
    source: FrameSource;
    slot: FrameSlot;
    pool: FramePool;
    pre: Preprocessor;
    conn: MqttConnection | null;
    counts: DeviceCounts;
  }) {
    const { config, logger, model, engine, source, slot, pre, conn, counts } = parts;
    this.#pool = parts.pool;
    this.config = config;
    this.logger = logger;
    this.model = model;
    this.engine = engine;
    this.source = source;
    this.#slot = slot;
    this.#pre = pre;
    this.conn = conn;
    this.counts = counts;
    const id = config.deviceId;
    this.#offload = conn
      ? new OffloadClient({
          conn,
          deviceId: id,
          engine,
          protocolVersion: config.broker.protocolVersion,
          maxInFlight: config.offload.maxInFlight,
        })
      : null;
    this.#publisher = new ResultPublisher(conn, id, config.offload.outboxSize);
    const stages = new StageStats();
    const latency = new LatencyRings();
    const offload = this.#offload;
    const publisher = this.#publisher;
    this.metrics = createDeviceMetrics(
      counts,
      stages,
      latency,
      {
        inFlight: () => offload?.inFlight ?? 0,
        connected: () => conn?.connected ?? false,
        queuedResults: () => publisher.queued,
        late: () => offload?.counters.late ?? 0,
        rejects: () => offload?.counters.rejected ?? {},
        offloadBytes: () => counts.bytes.offload,
        resultBytes: () => counts.bytes.result,
        slotPending: () => slot.pending,
      },
      { device: id },
    );
    const card = model.current.card;
    this.metrics.setModelInfo('device', card.name, card.version);
    registerPolicyMetrics(this.metrics.registry, engine);
    this.#decider = new FrameDecider({
      deviceId: id,
      budgetMs: config.budgetMs,
      marginMs: config.offload.marginMs,
      engine,
      offload: this.#offload,
      publisher: this.#publisher,
      counts,
      latency,
      spec: card.input,
      jpeg: config.offload.jpeg,
      privacy: config.policy.privacy,
      onError: (err) => logger.warn({ err }, 'JPEG encode failed'),
    });
    this.pipeline = new DevicePipeline({
      slot,
      preprocessor: pre,
      model,
      buffers: parts.buffers,
      mode: config.pipeline.mode,
      stats: stages,
      onInference: (inf) => {
        counts.processed++;
        this.#decider.onInference(inf);
      },
      onError: (frame, err) => {
        counts.dropped.error++;
        logger.error({ err, frameId: frame.frameId }, 'frame failed');
      },
    });
    this.#tensorEnvelope = tensorEnvelopeBytes(id, card.version, card.input);
    this.#shutdown = new GracefulShutdown({ drainTimeoutMs: config.drainTimeoutMs, logger });
  }

  /**
   * Loads the model (the OTA store's installed one when OTA is on), the replay dataset and the
   * policy file, and starts the preprocessor. Connects nothing and listens nowhere yet.
   * @throws {CascadeError} for a missing or invalid model, dataset, policy file, native kernel
   *   (when requested), or source input, with the thing named.
   */
  static async build(config: Readonly<DeviceConfig>, deps: DeviceDeps = {}): Promise<DeviceApp> {
    const logger = deps.logger ?? createLogger({ service: 'device', level: config.log.level });
    let cardPath =
      config.model.card ?? modelForTier(await loadRegistry(config.model.registry), 'device').card;
    if (config.ota.url !== null) {
      cardPath = (await OtaAgent.bootModel(join(config.ota.dir, 'models'), cardPath)).cardPath;
    }
    let patch: PolicyConfigPatch = {};
    if (config.policy.file !== undefined) patch = await loadPolicyFile(config.policy.file);
    const model = await OnnxClassifier.load(cardPath, { intraOpThreads: 1 });
    const { backend, why } = resolveBackend(config.pipeline.preprocess);
    const s = config.source;
    const pool = new FramePool({
      size: config.pipeline.slotCapacity + 4,
      bytes: s.width * s.height * 3,
      shared: backend === 'worker',
    });
    const buffers = [model.createBuffers(), model.createBuffers()] as const;
    let source: FrameSource | undefined;
    let pre: Preprocessor | undefined;
    try {
      source = deps.source ? deps.source(pool) : await createSource(config, pool, deps.dataset);
      pre = await Preprocessor.create({
        spec: model.card.input,
        buffers,
        pool,
        backend,
        resize: config.pipeline.resize,
      });
    } catch (err) {
      await source?.close();
      await model.dispose();
      throw err;
    }
    logger.info(
      { model: model.card.name, version: model.card.version, source: source.name, preprocess: backend, why },
      'device ready',
    );
    const engine = new PolicyEngine({
      tier: 'device',
      card: model.card,
      now: () => performance.now(),
      config: { ...patch, privacy: config.policy.privacy || (patch.privacy ?? false) },
      logger,
    });
    const counts = newDeviceCounts();
    const slot = new FrameSlot({
      capacity: config.pipeline.slotCapacity,
      onDrop: () => counts.dropped.backpressure++,
    });
    const conn =
      config.broker.url === null
        ? null
        : new MqttConnection({
            url: config.broker.url,
            clientId: `cascade-device-${config.deviceId}`,
            protocolVersion: config.broker.protocolVersion,
            username: config.broker.username,
            password: config.broker.password,
            ...readMqttTls(
              { ca: config.broker.caFile, cert: config.broker.certFile, key: config.broker.keyFile },
              { ca: 'broker.caFile', cert: 'broker.certFile', key: 'broker.keyFile' },
            ),
            backoffInitialMs: config.broker.backoffInitialMs,
            backoffMaxMs: config.broker.backoffMaxMs,
          });
    return new DeviceApp({
      config,
      logger,
      model: new ModelSlot(model),
      buffers,
      engine,
      source,
      slot,
      pool,
      pre,
      conn,
      counts,
    });
  }

  /** The OTA agent, once started (null without `ota.url`). */
  get ota(): OtaAgent | null {
    return this.#ota;
  }

  /** The preprocessing backend in use. */
  get preprocessBackend(): string {
    return this.#pre.backend;
  }

  /** Address of the ops HTTP server, once started (null when disabled). */
  get httpAddress(): string | null {
    const a = this.#http?.server.address();
    return a && typeof a === 'object' ? `http://${a.address}:${a.port}` : null;
  }

  /**
   * Starts the ops server, the broker connection (waiting up to `connectWaitMs` for it, so the
   * first frames can already offload; the device runs without it too), the policy file watcher,
   * the OTA agent, then, once `beforeCamera` resolves (a start barrier shared by several cameras),
   * the camera and the pipeline. Calling it again returns the same promise.
   */
  start(opts: { connectWaitMs?: number; beforeCamera?: () => Promise<void> } = {}): Promise<void> {
    this.#started ??= this.#start(opts.connectWaitMs ?? 3000, opts.beforeCamera);
    return this.#started;
  }

  async #start(connectWaitMs: number, beforeCamera?: () => Promise<void>): Promise<void> {
    const { config, logger } = this;
    if (config.http.port !== null) {
      const http = Fastify({ logger: false });
      await http.register(opsRoutes, {
        registry: this.metrics.registry,
        ready: () => ({
          ready: !this.#shutdown.stopping && (this.conn === null || this.conn.connected),
          detail: {
            broker: this.conn === null ? 'none' : this.conn.connected ? 'connected' : 'disconnected',
          },
        }),
      });
      await http.listen({ port: config.http.port, host: config.http.host });
      this.#http = http;
      logger.info({ address: this.httpAddress }, 'ops server listening');
    }
    const conn = this.conn;
    if (conn !== null) {
      conn.on('connect', () => logger.info({ broker: config.broker.url }, 'broker connected'));
      conn.on('offline', (attempt, delayMs) =>
        logger.warn({ attempt, delayMs }, 'broker unreachable: classifying locally, reconnecting'),
      );
      conn.on('error', (err) => logger.debug({ err }, 'mqtt error'));
      await this.#offload?.start();
      await conn.waitConnected(connectWaitMs).catch(() => {
        logger.warn({ broker: config.broker.url }, 'broker not reachable yet: starting locally');
      });
    }
    if (config.policy.file !== undefined) {
      this.#watcher = watchPolicyFile(
        config.policy.file,
        (patch) => {
          this.engine.setConfig({ ...patch, privacy: config.policy.privacy || (patch.privacy ?? false) });
          logger.info({ file: config.policy.file }, 'policy file reloaded');
        },
        (err) => logger.error({ err: err.message }, 'policy file rejected; previous policy stays'),
      );
    }
    if (config.ota.url !== null) await this.#startOta(config.ota.url);
    await this.#warmUp();
    await beforeCamera?.();
    if (this.#shutdown.stopping) return;
    this.#pump = this.#pumpFrames();
    this.#run = this.pipeline.run();
    // The source's end is a shutdown too: drain, publish, close.
    Promise.all([this.#pump, this.#run]).then(
      () => this.shutdown('source ended'),
      (err: unknown) => {
        logger.error({ err }, 'frame loop failed');
        return this.shutdown('frame loop failed');
      },
    );
  }

  /**
   * Runs a blank frame through the whole frame path (ROI and whole frame, both buffers), the
   * policy and the result encoder before the camera starts: the first real frames must not pay
   * for lazy initialisation and JIT compilation (measured: ~200 ms for the very first frame).
   */
  async #warmUp(): Promise<void> {
    const f = this.#pool.acquire();
    if (f === null) return;
    try {
      const { width, height } = this.config.source;
      f.data.fill(0);
      f.width = width;
      f.height = height;
      const side = Math.min(width, height, 2 * this.model.current.card.input.width);
      f.roi = Object.assign(f.roiBox, { x: 0, y: 0, width: side, height: side });
      await this.pipeline.warmUp(f, 3);
      f.roi = null;
      await this.pipeline.warmUp(f, 2);
    } catch (err) {
      this.logger.warn({ err }, 'warm-up failed');
    } finally {
      f.release();
    }
    this.engine.explain({ confidence: 0.5, budgetLeftMs: this.config.budgetMs, payloadBytes: { tensor: 1 } });
    tensorEnvelopeBytes(this.config.deviceId, this.model.current.card.version, this.model.current.card.input);
  }

  async #startOta(url: string): Promise<void> {
    const { config, logger } = this;
    const ota = new OtaAgent({
      repoUrl: url,
      metadataDir: join(config.ota.dir, 'tuf'),
      modelsDir: join(config.ota.dir, 'models'),
      trustedRoot: config.ota.trustedRoot,
      deviceId: config.deviceId,
      hardwareClass: config.ota.hardwareClass,
      tier: 'device',
      model: this.model,
      mqtt: this.conn?.client,
      registry: this.metrics.registry,
      pollIntervalMs: config.ota.pollIntervalMs,
      loadOptions: { intraOpThreads: 1 },
      onInstalled: (card) => {
        this.engine.setCard(card);
        this.#decider.setSpec(card.input);
        this.metrics.setModelInfo('device', card.name, card.version);
        logger.info({ model: card.name, version: card.version }, 'model updated over the air');
      },
    });
    ota.on('rolled-back', (e) =>
      logger.warn({ release: e.release, reason: e.reason }, 'OTA update rolled back'),
    );
    this.#ota = ota;
    await ota.start();
  }

  async #pumpFrames(): Promise<void> {
    const { source, counts } = this;
    const slot = this.#slot;
    try {
      for await (const frame of source) {
        if (slot.closed) {
          // Captured after shutdown began: never part of the run.
          frame.release();
          break;
        }
        counts.captured++;
        if (!source.live) await slot.waitForRoom();
        slot.push(frame);
      }
    } catch (err) {
      this.logger.error({ err, source: source.name }, 'camera failed');
    } finally {
      counts.dropped.source = source.lost;
      slot.close();
    }
  }

  /**
   * Graceful shutdown: stops the camera, lets the pipeline finish the frames already taken,
   * waits for outstanding offloads (each ends by its deadline) and JPEG encodes, publishes their
   * results and waits for the broker's acknowledgements (bounded by `drainTimeoutMs`), then
   * closes the OTA agent, the connection, the preprocessor, the ops server and the model. Safe to
   * call twice: later calls return the same report.
   */
  shutdown(reason = 'shutdown'): Promise<DeviceReport> {
    this.#report ??= this.#stop(reason);
    return this.#report;
  }

  async #stop(reason: string): Promise<DeviceReport> {
    const s = this.#shutdown;
    s.stopIntake('camera', async () => {
      this.#slot.close();
      await this.source.close();
      await this.#pump;
    });
    s.drain('frames', async () => {
      await this.#run;
      await this.#decider.idle();
      await this.#offload?.idle();
      const ok = await this.#publisher.settle(this.config.drainTimeoutMs);
      if (!ok) this.logger.warn({ queued: this.#publisher.queued }, 'results left unpublished');
    });
    s.close('ota', () => this.#ota?.close());
    s.close('policy watcher', () => this.#watcher?.close());
    s.close('offload client', () => this.#offload?.close());
    s.close('publisher', () => this.#publisher.close());
    s.close('broker connection', () => this.conn?.close());
    s.close('preprocessor', () => this.#pre.close());
    s.close('ops server', () => this.#http?.close());
    s.close('model', async () => {
      this.#slot.clear();
      await this.model.current.dispose();
    });
    await s.shutdown(reason);
    const report = this.report();
    this.#finished(report);
    return report;
  }

  /** The run so far. */
  report(): DeviceReport {
    return buildReport({
      deviceId: this.config.deviceId,
      counts: this.counts,
      lost: this.source.lost,
      late: this.#offload?.counters.late ?? 0,
      tensorEnvelopeBytes: this.#tensorEnvelope,
      unpublished: this.#publisher.queued,
      preprocess: this.#pre.backend,
      mode: this.pipeline.mode,
    });
  }
}
