/**
 * The operational routes every tier serves, as one fastify plugin: `/metrics` (Prometheus text
 * from the service's registry), `/healthz` (liveness: the process answers) and `/readyz`
 * (readiness from a callback: model loaded, broker connected, not draining). Also the fastify
 * instance the gateway and the cloud build on, and their listen-until-shutdown.
 */
import rateLimit from '@fastify/rate-limit';
import Fastify, {
  type FastifyBaseLogger,
  type FastifyInstance,
  type FastifyPluginAsync,
  LogController,
} from 'fastify';
import type { Registry } from 'prom-client';
import { jsonErrors } from './kserve.ts';
import type { Logger } from './log.ts';
import type { GracefulShutdown } from './shutdown.ts';

/** Options of {@link createServiceHttp}. */
export interface ServiceHttpOptions {
  logger: Logger;
  bodyLimitBytes: number;
  /** Requests per minute per client; 0 turns the limit off. */
  rateLimitPerMinute: number;
}

/**
 * The fastify instance of a serving tier: the service's pino logger without a line per request
 * (thousands of frames a second would drown the logs), the body limit, 503 once closing, errors
 * as JSON, and the per-client rate limit, registered before any route so that it covers them all.
 */
export async function createServiceHttp(o: ServiceHttpOptions): Promise<FastifyInstance> {
  const http = Fastify({
    loggerInstance: o.logger as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: o.bodyLimitBytes,
    return503OnClosing: true,
  });
  jsonErrors(http);
  if (o.rateLimitPerMinute > 0)
    await http.register(rateLimit, { max: o.rateLimitPerMinute, timeWindow: 60_000 });
  return http;
}

/** What a readiness check reports. */
export interface Readiness {
  ready: boolean;
  /** Why not ready (or extra facts), shown in the body. */
  detail?: Record<string, unknown>;
}

/** Options of {@link opsRoutes}. */
export interface OpsOptions {
  registry: Registry;
  /** Readiness; default always ready. May be async. */
  ready?: () => Readiness | Promise<Readiness>;
  /** Serve `/metrics`; default true. */
  metrics?: boolean;
}

/**
 * Adds `/metrics`, `/healthz` and `/readyz`. `/readyz` answers 200 `{ready: true}` or 503
 * `{ready: false, ...detail}`.
 */
export const opsRoutes: FastifyPluginAsync<OpsOptions> = async (app: FastifyInstance, opts: OpsOptions) => {
  const ready = opts.ready ?? ((): Readiness => ({ ready: true }));
  if (opts.metrics ?? true) {
    app.get('/metrics', async (_req, reply) => {
      reply.header('content-type', opts.registry.contentType);
      return opts.registry.metrics();
    });
  }
  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_req, reply) => {
    const r = await ready();
    reply.code(r.ready ? 200 : 503);
    return { ready: r.ready, ...r.detail };
  });
};

/**
 * Closes a fastify server gracefully: in-flight requests finish, new ones get 503, and
 * keep-alive connections are closed as soon as they turn idle (fastify closes only the ones
 * idle at the moment of the call, so a client's pooled connection would hold the close open
 * until the client's own keep-alive timeout).
 */
export async function closeGracefully(app: FastifyInstance, pollMs = 25): Promise<void> {
  const timer = setInterval(() => app.server.closeIdleConnections?.(), pollMs);
  try {
    await app.close();
  } finally {
    clearInterval(timer);
  }
}

/** A service as {@link listenUntilShutdown} runs it. */
export interface ListeningService {
  readonly http: FastifyInstance;
  readonly shutdown: GracefulShutdown;
}

/**
 * Installs the SIGTERM/SIGINT handlers (a failed shutdown step sets exit code 1), then listens.
 * @returns the URL a client on this host reaches (`0.0.0.0` becomes 127.0.0.1; port 0 resolved)
 *   and a promise that resolves once a signal's shutdown has finished.
 */
export async function listenUntilShutdown(
  app: ListeningService,
  host: string,
  port: number,
): Promise<{ httpUrl: string; done: Promise<void> }> {
  const done = new Promise<void>((resolve) => {
    app.shutdown.installSignals(process, (report) => {
      if (report.failed.length > 0) process.exitCode = 1;
      resolve();
    });
  });
  await app.http.listen({ host, port });
  const address = app.http.server.address();
  const bound = typeof address === 'object' && address !== null ? address.port : port;
  return { httpUrl: `http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${bound}`, done };
}
