/**
 * Builds the cloud teacher: the teacher model behind the shared deadline batcher, KServe v2 routes
 * with bearer-token auth, the ops routes, metrics, the hard-example log and the graceful shutdown.
 * Never listens: `main.ts` does; tests use `app.http.inject()` or listen on port 0.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { DeadlineBatcher, realScheduler, type Scheduler } from '../cascade/batcher.ts';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import { rowOf, type ServingEngine } from '../cascade/service/engine.ts';
import { type InferReply, type InferRequest, kserveRoutes, RefusedError } from '../cascade/service/kserve.ts';
import { createLogger, type Logger } from '../cascade/service/log.ts';
import { closeGracefully, createServiceHttp, opsRoutes } from '../cascade/service/ops.ts';
import { loadConfiguredEngine } from '../cascade/service/serving.ts';
import { GracefulShutdown, type ShutdownReport } from '../cascade/service/shutdown.ts';
import { traceFromHeaders } from '../cascade/service/trace.ts';
import type { ModelCard } from '../models/card.ts';
import type { CloudConfig } from './config.ts';
import { type HardExample, HardExampleLog } from './hard-examples.ts';
import { type CloudMetrics, cloudMetrics } from './metrics.ts';

/** Injected parts (tests). */
export interface CloudDeps {
  logger?: Logger;
  engine?: ServingEngine;
  scheduler?: Scheduler;
  defaultMetrics?: boolean;
}

/** A built cloud teacher. */
export interface CloudApp {
  readonly http: FastifyInstance;
  readonly metrics: CloudMetrics;
  readonly card: ModelCard;
  readonly batcher: DeadlineBatcher<Float32Array, Float32Array>;
  readonly hardExamples: HardExampleLog | undefined;
  readonly logger: Logger;
  readonly shutdown: GracefulShutdown;
  close(reason?: string): Promise<ShutdownReport>;
}

async function loadToken(config: Readonly<CloudConfig>): Promise<Buffer | undefined> {
  if (!config.auth) return undefined;
  let token = config.token;
  if (token === undefined && config.tokenFile !== undefined) {
    try {
      token = (await readFile(config.tokenFile, 'utf8')).split('\n')[0].trim();
    } catch (err) {
      throw new CascadeError(
        ErrorCodes.CFG_ERR_INVALID,
        `cloud tokenFile ${config.tokenFile} cannot be read`,
        {
          cause: err,
        },
      );
    }
  }
  if (token === undefined || token.length < 8)
    throw new CascadeError(
      ErrorCodes.CFG_ERR_INVALID,
      'cloud config: a bearer token of at least 8 characters is required (CASCADE_CLOUD_TOKEN, tokenFile or --token-file), or auth: false',
    );
  return createHash('sha256').update(token).digest();
}

/** Checks `Authorization: Bearer <token>` in constant time. */
function authorizer(
  digest: Buffer | undefined,
  metrics: CloudMetrics,
): ((req: FastifyRequest) => void) | undefined {
  if (digest === undefined) return undefined;
  return (req) => {
    const h = req.headers.authorization;
    const m = typeof h === 'string' ? /^Bearer\s+(\S+)$/i.exec(h) : null;
    const ok = m !== null && timingSafeEqual(createHash('sha256').update(m[1]).digest(), digest);
    if (!ok) {
      metrics.requests.inc({ status: 'unauthorized' });
      throw Object.assign(
        new CascadeError(
          ErrorCodes.CLOUD_ERR_UNAUTHORIZED,
          m === null ? 'missing bearer token' : 'invalid bearer token',
          { statusCode: 401 },
        ),
        { headers: { 'www-authenticate': 'Bearer' } },
      );
    }
  };
}

function intParam(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 ? v : undefined;
}

/**
 * Builds the cloud teacher.
 * @throws {CascadeError} CFG_ERR_INVALID without a token (unless auth is off), MODEL_ERR_* for
 *   a missing or invalid teacher.
 */
export async function buildCloudApp(config: Readonly<CloudConfig>, deps: CloudDeps = {}): Promise<CloudApp> {
  const logger = deps.logger ?? createLogger({ service: 'cloud', level: config.logLevel });
  const digest = await loadToken(config);
  const engine = deps.engine ?? (await loadConfiguredEngine(config, 'cloud', logger));
  const card = engine.card;
  const sched = deps.scheduler ?? realScheduler;
  const metrics = cloudMetrics({ defaultMetrics: deps.defaultMetrics });
  metrics.base.setModelInfo('cloud', card.name, card.version);
  const per = engine.tensorFloats;
  const batcher = new DeadlineBatcher<Float32Array, Float32Array>({
    maxBatch: config.maxBatch,
    maxDelayMs: config.maxDelayMs,
    maxQueue: config.maxQueue,
    concurrency: config.concurrency,
    scheduler: sched,
    run: async (inputs) => {
      const batch = new Float32Array(inputs.length * per);
      for (let i = 0; i < inputs.length; i++) batch.set(inputs[i], i * per);
      const scored = await engine.runTensor(batch, inputs.length);
      return inputs.map((_, i) => rowOf(scored, i));
    },
    onBatch: (n) => metrics.batchSize.observe(n),
  });
  metrics.bindQueue(() => batcher.depth);
  for (const n of [1, config.maxBatch]) {
    for (let r = 0; r < 3; r++) {
      const t0 = sched.now();
      await engine.runTensor(new Float32Array(n * per), n);
      if (r > 0) batcher.observeService(n, sched.now() - t0);
    }
  }

  const he = config.hardExamples;
  const hardExamples =
    he.dir === undefined
      ? undefined
      : new HardExampleLog({
          dir: he.dir,
          maxBytes: he.maxBytes,
          segments: he.segments,
          maxPending: he.maxPending,
          onError: (err) => logger.warn({ code: err.code, msg: err.message }, 'hard example not written'),
        });
  await hardExamples?.open();
  metrics.bindHardExamples(() => hardExamples?.stats);

  const logHard = (req: InferRequest, i: number, probs: Float32Array, traceId: string): void => {
    if (!hardExamples) return;
    let top1 = 0;
    for (let k = 1; k < probs.length; k++) if (probs[k] > probs[top1]) top1 = k;
    const gatewayTop1 = intParam(req.parameters.gateway_top1);
    const deviceTop1 = intParam(req.parameters.device_top1);
    const disagree =
      he.disagreement &&
      ((gatewayTop1 !== undefined && gatewayTop1 !== top1) ||
        (deviceTop1 !== undefined && deviceTop1 !== top1));
    const unsure = probs[top1] < he.confidenceBelow;
    if (!disagree && !unsure) return;
    const reason = disagree ? 'disagreement' : 'low-confidence';
    const { height: h, width: w, layout } = card.input;
    const c = per / (h * w);
    let input: HardExample['input'];
    if (req.input.kind === 'pixels') {
      const size = req.input.pixels.length / req.n;
      const px = req.input.pixels.subarray(i * size, (i + 1) * size);
      input = {
        datatype: 'UINT8',
        shape: c === 1 ? [h, w] : [h, w, c],
        base64: Buffer.from(px).toString('base64'),
      };
    } else {
      const t = req.input.data.subarray(i * per, (i + 1) * per);
      input = {
        datatype: 'FP32',
        shape: layout === 'NCHW' ? [c, h, w] : [h, w, c],
        base64: Buffer.from(t.buffer, t.byteOffset, t.byteLength).toString('base64'),
      };
    }
    const deviceId = req.parameters.device_id;
    if (
      hardExamples.append({
        time: new Date().toISOString(),
        reason,
        traceId,
        deviceId: typeof deviceId === 'string' ? deviceId.slice(0, 64) : undefined,
        frameId: intParam(req.parameters.frame_id),
        modelVersion: card.version,
        teacherTop1: top1,
        teacherConfidence: probs[top1],
        gatewayTop1,
        deviceTop1,
        probs: Array.from(probs, (p) => Math.round(p * 1e6) / 1e6),
        input,
      })
    )
      metrics.hardExamples.inc({ reason });
  };

  const infer = async (req: InferRequest): Promise<InferReply> => {
    const arrived = sched.now();
    metrics.received.inc(req.bodyBytes);
    const b = req.parameters.budget_ms;
    const budget = typeof b === 'number' && Number.isFinite(b) && b > 0 ? b : config.defaultBudgetMs;
    const trace = traceFromHeaders(req.headers);
    const tensor = req.input.kind === 'tensor' ? req.input.data : engine.preprocess(req.input.pixels, req.n);
    const outcomes = await Promise.all(
      Array.from({ length: req.n }, (_, i) =>
        batcher.submit(tensor.subarray(i * per, (i + 1) * per), budget - (sched.now() - arrived)),
      ),
    );
    const probs = new Float32Array(req.n * card.output.classes);
    let queueMs = 0;
    let serviceMs = 0;
    for (const [i, o] of outcomes.entries()) {
      if (o.status === 'overloaded' || o.status === 'closed') {
        metrics.requests.inc({ status: 'overloaded' });
        const closing = o.status === 'closed';
        throw new RefusedError(
          closing ? ErrorCodes.GW_ERR_UNAVAILABLE : ErrorCodes.GW_ERR_OVERLOADED,
          closing ? 'cloud is shutting down' : 'cloud overloaded: expected wait exceeds the budget',
          closing ? 503 : 429,
          o.status === 'overloaded' ? o.retryAfterMs : 1000,
        );
      }
      if (o.status === 'expired') {
        metrics.requests.inc({ status: 'expired' });
        metrics.misses.inc({ kind: 'expired' });
        throw new CascadeError(
          ErrorCodes.GW_ERR_EXPIRED,
          'the budget ran out before the request was served',
          {
            statusCode: 504,
          },
        );
      }
      if (o.status === 'error') {
        metrics.requests.inc({ status: 'error' });
        throw new CascadeError(ErrorCodes.GW_ERR_UNAVAILABLE, 'teacher inference failed', {
          statusCode: 500,
          cause: o.error,
        });
      }
      probs.set(o.output, i * card.output.classes);
      queueMs = Math.max(queueMs, o.queueMs);
      serviceMs = Math.max(serviceMs, o.serviceMs);
      metrics.latency.observe({ stage: 'queue' }, o.queueMs / 1000);
      metrics.latency.observe({ stage: 'service' }, o.serviceMs / 1000);
      logHard(req, i, o.output, trace.traceId);
    }
    const total = sched.now() - arrived;
    metrics.latency.observe({ stage: 'total' }, total / 1000);
    if (total > budget) metrics.misses.inc({ kind: 'late' });
    metrics.requests.inc({ status: 'ok' });
    return {
      probs,
      n: req.n,
      classes: card.output.classes,
      parameters: { tier: 'cloud', queue_ms: queueMs, service_ms: serviceMs },
    };
  };

  const shutdown = new GracefulShutdown({ drainTimeoutMs: config.drainTimeoutMs, logger });
  const http = await createServiceHttp({
    logger,
    bodyLimitBytes: config.bodyLimitBytes,
    rateLimitPerMinute: config.rateLimitPerMinute,
  });
  http.addHook('onSend', async (req, reply, payload) => {
    if (req.url.includes('/infer')) {
      if (typeof payload === 'string') metrics.sent.inc(Buffer.byteLength(payload));
      if (reply.statusCode === 400) metrics.requests.inc({ status: 'bad-request' });
    }
    return payload;
  });
  const ready = (): boolean => !shutdown.stopping;
  await http.register(opsRoutes, {
    registry: metrics.registry,
    ready: () => ({ ready: ready(), detail: { draining: shutdown.stopping } }),
  });
  await http.register(kserveRoutes, {
    card,
    serverName: 'cascade-cloud',
    ready,
    infer,
    authorize: authorizer(digest, metrics),
  });
  logger.info(
    { model: card.name, version: card.version, backend: engine.backend, auth: digest !== undefined },
    'teacher loaded',
  );

  shutdown
    .drain('batcher', () => batcher.close())
    .drain('http', () => closeGracefully(http))
    .close('hard-examples', () => hardExamples?.close())
    .close('engine', () => (deps.engine ? undefined : engine.dispose()));

  return {
    http,
    metrics,
    card,
    batcher,
    hardExamples,
    logger,
    shutdown,
    close: (reason) => shutdown.shutdown(reason),
  };
}
