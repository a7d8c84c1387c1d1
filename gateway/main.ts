/**
 * Runs a gateway process: build, listen, connect, shut down gracefully on SIGTERM/SIGINT.
 * Prints one `gateway ready` log line (JSON, with `httpUrl`) once it serves HTTP and, with a
 * broker, once the first subscription is in place; a broker that is down at start is retried in
 * the background (readiness stays false until it connects).
 */
import { listenUntilShutdown } from '../cascade/service/ops.ts';
import { buildApp, type GatewayDeps } from './app.ts';
import type { GatewayConfig } from './config.ts';

/** Runs until shut down; resolves then (the exit code is set from the report). */
export async function runGateway(config: Readonly<GatewayConfig>, deps: GatewayDeps = {}): Promise<void> {
  const app = await buildApp(config, deps);
  const log = app.logger;
  const { httpUrl, done } = await listenUntilShutdown(app, config.httpHost, config.httpPort);
  try {
    await app.start();
  } catch (err) {
    log.warn(
      { err: (err as Error).message, broker: config.broker },
      'broker not reachable yet; retrying in the background',
    );
  }
  log.info(
    {
      httpUrl,
      broker: config.broker ?? null,
      topic: app.consumer?.topic ?? null,
      cloud: config.cloud.url ?? null,
      model: app.card.name,
      maxBatch: config.maxBatch,
      maxDelayMs: config.maxDelayMs,
    },
    'gateway ready',
  );
  await done;
}
