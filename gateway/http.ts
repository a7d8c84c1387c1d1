/**
 * The gateway's HTTP front end: KServe v2 inference through the same frame pipeline as MQTT.
 * Each image of a request is its own frame in the batcher (so HTTP and MQTT traffic batch
 * together); the budget comes from `parameters.budget_ms` (default from the config), the trace
 * from the `traceparent` header. A refused request answers 429 with Retry-After, one whose budget
 * ran out 504, one arriving while the gateway drains 503.
 */
import type { FastifyInstance } from 'fastify';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import { type InferReply, type InferRequest, kserveRoutes, RefusedError } from '../cascade/service/kserve.ts';
import { traceFromHeaders } from '../cascade/service/trace.ts';
import type { ModelCard } from '../models/card.ts';
import type { FrameResult, FrameServer } from './frame-server.ts';

/** Options of {@link gatewayRoutes}. */
export interface GatewayRoutesOptions {
  card: ModelCard;
  server: FrameServer;
  defaultBudgetMs: number;
  ready: () => boolean;
  /** The frame server's clock (default performance.now). */
  now?: () => number;
  /** Counts request bytes. */
  onBytes?: (received: number) => void;
}

function budgetOf(req: InferRequest, fallback: number): number {
  const b = req.parameters.budget_ms;
  if (b === undefined) return fallback;
  if (typeof b !== 'number' || !Number.isFinite(b) || b <= 0)
    throw new CascadeError(
      ErrorCodes.GW_ERR_BAD_REQUEST,
      `parameters.budget_ms: expected a positive number, received ${JSON.stringify(b)}`,
      {
        statusCode: 400,
      },
    );
  return b;
}

/** Turns the per-image results into one reply, or the error the worst of them deserves. */
export function replyOf(results: FrameResult[], classes: number): InferReply {
  const overloaded = results.find((r) => r.status === 'overloaded');
  if (overloaded) {
    const draining = overloaded.reason === 'shutting-down';
    throw new RefusedError(
      draining ? ErrorCodes.GW_ERR_UNAVAILABLE : ErrorCodes.GW_ERR_OVERLOADED,
      draining
        ? 'gateway is shutting down'
        : `gateway overloaded: expected wait exceeds the budget; retry after ${Math.ceil(overloaded.retryAfterMs)} ms`,
      draining ? 503 : 429,
      overloaded.retryAfterMs,
    );
  }
  if (results.some((r) => r.status === 'expired'))
    throw new CascadeError(ErrorCodes.GW_ERR_EXPIRED, 'the budget ran out before the request was served', {
      statusCode: 504,
    });
  const failed = results.find((r) => r.status === 'error');
  if (failed)
    throw new CascadeError(ErrorCodes.GW_ERR_UNAVAILABLE, `inference failed: ${failed.reason}`, {
      statusCode: 500,
    });
  const probs = new Float32Array(results.length * classes);
  results.forEach((r, i) => {
    if (r.probs && r.probs.length === classes) probs.set(r.probs, i * classes);
  });
  const max = (f: (r: FrameResult) => number) => Math.max(...results.map(f));
  const tiers = new Set(results.map((r) => r.tier));
  return {
    probs,
    n: results.length,
    classes,
    modelVersion: results[0]?.modelVersion,
    parameters: {
      tier: tiers.size === 1 ? [...tiers][0] : 'mixed',
      reason: results.map((r) => r.reason).join(','),
      queue_ms: max((r) => r.queueMs),
      service_ms: max((r) => r.serviceMs),
      cloud_ms: max((r) => r.cloudMs),
    },
  };
}

/** Registers the KServe v2 routes of the gateway. */
export async function gatewayRoutes(app: FastifyInstance, opts: GatewayRoutesOptions): Promise<void> {
  const { card, server } = opts;
  const now = opts.now ?? (() => performance.now());
  await kserveRoutes(app, {
    card,
    serverName: 'cascade-gateway',
    ready: opts.ready,
    infer: async (req) => {
      opts.onBytes?.(req.bodyBytes);
      const budgetMs = budgetOf(req, opts.defaultBudgetMs);
      const trace = traceFromHeaders(req.headers);
      const arrivedAt = now();
      const results = await Promise.all(
        Array.from({ length: req.n }, (_, i) => {
          if (req.input.kind === 'pixels') {
            const per = req.input.pixels.length / req.n;
            return server.serve({
              pixels: req.input.pixels.subarray(i * per, (i + 1) * per),
              budgetMs,
              arrivedAt,
              trace,
              transport: 'http',
            });
          }
          const per = req.input.data.length / req.n;
          return server.serve({
            tensor: req.input.data.subarray(i * per, (i + 1) * per),
            budgetMs,
            arrivedAt,
            trace,
            transport: 'http',
          });
        }),
      );
      return replyOf(results, card.output.classes);
    },
  });
}
