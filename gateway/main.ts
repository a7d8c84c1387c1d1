/**
 * Runs a gateway process: build, listen, connect, shut down gracefully on SIGTERM/SIGINT.
 * Prints one `gateway ready` log line (JSON, with `httpUrl`) once it serves HTTP and, with a
 * broker, once the first subscription is in place; a broker that is down at start is retried in
 * the background (readiness stays false until it connects).
 */
import { buildApp, type GatewayDeps } from './app.ts';
import type { GatewayConfig } from './config.ts';

/** Runs until shut down; resolves then (the exit code is set from the report). */
export async function runGateway(config: Readonly<GatewayConfig>, deps: GatewayDeps = {}): Promise<void> {
  const app = await buildApp(config, deps);
  const log = app.logger;
  const done = new Promise<void>((resolve) => {
    app.shutdown.installSignals(process, (report) => {
      if (report.failed.length > 0) process.exitCode = 1;
      resolve();
    });
  });
  await app.http.listen({ host: config.httpHost, port: config.httpPort });
  const address = app.http.server.address();
  const port = typeof address === 'object' && address !== null ? address.port : config.httpPort;
  const host = config.httpHost === '0.0.0.0' ? '127.0.0.1' : config.httpHost;
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
      httpUrl: `http://${host}:${port}`,
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
