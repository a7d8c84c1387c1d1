/**
 * Builds the gateway from its config: engine (gateway model from the registry or `config.model`),
 * batcher, policy engine (tier 'gateway'), cloud client, MQTT consumer, fastify with KServe v2
 * and the ops routes, metrics and the graceful shutdown. Never listens: `main.ts` does, tests use
 * `app.http.inject()` or listen on port 0 themselves.
 */
import { readFile } from 'node:fs/promises';
import type { FastifyInstance } from 'fastify';
import type { Scheduler } from '../cascade/batcher.ts';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import { readMqttTls } from '../cascade/mqtt.ts';
import { type PolicyConfigPatch, PolicyEngine, registerPolicyMetrics } from '../cascade/policy/index.ts';
import type { ServingEngine } from '../cascade/service/engine.ts';
import { createLogger, type Logger } from '../cascade/service/log.ts';
import { closeGracefully, createServiceHttp, opsRoutes } from '../cascade/service/ops.ts';
import { loadConfiguredEngine } from '../cascade/service/serving.ts';
import { GracefulShutdown, type ShutdownReport } from '../cascade/service/shutdown.ts';
import type { ModelCard } from '../models/card.ts';
import { CloudClient } from './cloud-client.ts';
import type { GatewayConfig } from './config.ts';
import { FrameServer } from './frame-server.ts';
import { gatewayRoutes } from './http.ts';
import { type GatewayMetrics, gatewayMetrics } from './metrics.ts';
import { OffloadConsumer } from './mqtt-consumer.ts';

/** Injected parts (tests, benchmarks). */
export interface GatewayDeps {
  logger?: Logger;
  /** A ready engine instead of loading the card's model. */
  engine?: ServingEngine;
  scheduler?: Scheduler;
  /** Collect Node.js process metrics (default true). */
  defaultMetrics?: boolean;
  /** Admission control (default true; the benchmark's open-loop baseline turns it off). */
  admission?: boolean;
}

/** A built gateway. */
export interface GatewayApp {
  readonly http: FastifyInstance;
  readonly metrics: GatewayMetrics;
  readonly server: FrameServer;
  readonly policy: PolicyEngine;
  readonly card: ModelCard;
  readonly consumer: OffloadConsumer | undefined;
  readonly logger: Logger;
  /** Connects to the broker and subscribes (no-op without a broker). */
  start(): Promise<void>;
  /** Graceful shutdown: stop intake, drain, close. Idempotent. */
  close(reason?: string): Promise<ShutdownReport>;
  readonly shutdown: GracefulShutdown;
}

async function cloudToken(config: Readonly<GatewayConfig>): Promise<string | undefined> {
  if (config.cloud.token !== undefined) return config.cloud.token;
  if (config.cloud.tokenFile === undefined) return undefined;
  try {
    const line = (await readFile(config.cloud.tokenFile, 'utf8')).split('\n')[0].trim();
    if (line === '') throw new Error('empty');
    return line;
  } catch (err) {
    throw new CascadeError(
      ErrorCodes.CFG_ERR_INVALID,
      `cloud.tokenFile ${config.cloud.tokenFile}: no token in it`,
      {
        cause: err,
      },
    );
  }
}

/**
 * Builds a gateway.
 * @throws {CascadeError} MODEL_ERR_* for a missing or invalid model, POLICY_ERR_CONFIG for bad
 *   policy overrides, CFG_ERR_INVALID for an unreadable token file.
 */
export async function buildApp(config: Readonly<GatewayConfig>, deps: GatewayDeps = {}): Promise<GatewayApp> {
  const logger = deps.logger ?? createLogger({ service: 'gateway', level: config.logLevel });
  const token = await cloudToken(config);
  const tls = readMqttTls(
    { ca: config.mqttCaFile, cert: config.mqttCertFile, key: config.mqttKeyFile },
    { ca: 'mqttCaFile', cert: 'mqttCertFile', key: 'mqttKeyFile' },
  );
  const engine = deps.engine ?? (await loadConfiguredEngine(config, 'gateway', logger));
  const card = engine.card;
  const now = deps.scheduler ? () => deps.scheduler!.now() : () => performance.now();
  const metrics = gatewayMetrics({ defaultMetrics: deps.defaultMetrics });
  metrics.base.setModelInfo('gateway', card.name, card.version);
  const policy = new PolicyEngine({
    tier: 'gateway',
    card,
    config: config.policy as PolicyConfigPatch,
    now,
    logger,
  });
  registerPolicyMetrics(metrics.registry, policy);
  const cloud =
    config.cloud.url === undefined
      ? undefined
      : new CloudClient({
          url: config.cloud.url,
          model: config.cloud.model,
          token,
          connections: config.cloud.connections,
        });
  const server = new FrameServer({
    engine,
    policy,
    cloud,
    metrics,
    maxBatch: config.maxBatch,
    maxDelayMs: config.maxDelayMs,
    maxQueue: config.maxQueue,
    concurrency: config.concurrency,
    cloudMarginMs: config.cloud.marginMs,
    topk: config.topk,
    admission: deps.admission,
    scheduler: deps.scheduler,
  });
  await server.warmUp();
  logger.info(
    {
      model: card.name,
      version: card.version,
      backend: engine.backend,
      serviceModel: server.batcher.serviceModel.fit,
    },
    'gateway model loaded',
  );

  const consumer =
    config.broker === undefined
      ? undefined
      : new OffloadConsumer({
          url: config.broker,
          protocol: config.protocol,
          shared: config.shared,
          sharedGroup: config.sharedGroup,
          clientId: config.clientId,
          username: config.mqttUsername,
          password: config.mqttPassword,
          tls,
          server,
          card,
          metrics,
          logger,
          scheduler: deps.scheduler,
        });

  const shutdown = new GracefulShutdown({ drainTimeoutMs: config.drainTimeoutMs, logger });
  const ready = (): boolean => !shutdown.stopping && (consumer === undefined || consumer.connected);

  const http = await createServiceHttp({
    logger,
    bodyLimitBytes: config.bodyLimitBytes,
    rateLimitPerMinute: config.rateLimitPerMinute,
  });
  await http.register(opsRoutes, {
    registry: metrics.registry,
    ready: () => ({
      ready: ready(),
      detail: { mqtt: consumer === undefined ? 'off' : consumer.connected, draining: shutdown.stopping },
    }),
  });
  await http.register(gatewayRoutes, {
    card,
    server,
    defaultBudgetMs: config.defaultBudgetMs,
    ready,
    now,
    onBytes: (n) => metrics.received.inc({ transport: 'http' }, n),
  });

  shutdown
    .stopIntake('mqtt-unsubscribe', () => consumer?.stopIntake())
    .drain('batcher', () => server.close())
    .drain('mqtt-frames', () => consumer?.drain())
    .drain('http', () => closeGracefully(http))
    .close('mqtt', () => consumer?.close())
    .close('cloud', () => cloud?.close())
    .close('engine', () => (deps.engine ? undefined : engine.dispose()));

  return {
    http,
    metrics,
    server,
    policy,
    card,
    consumer,
    logger,
    shutdown,
    start: async () => {
      await consumer?.start();
    },
    close: (reason) => shutdown.shutdown(reason),
  };
}
