/**
 * Runs a cloud teacher process: build, listen, shut down gracefully on SIGTERM/SIGINT. Prints one
 * `cloud ready` log line (JSON, with `httpUrl`) once it serves.
 */
import { buildCloudApp, type CloudDeps } from './app.ts';
import type { CloudConfig } from './config.ts';

/** Runs until shut down. */
export async function runCloud(config: Readonly<CloudConfig>, deps: CloudDeps = {}): Promise<void> {
  const app = await buildCloudApp(config, deps);
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
  app.logger.info(
    {
      httpUrl: `http://${host}:${port}`,
      model: app.card.name,
      hardExamples: config.hardExamples.dir ?? null,
      maxBatch: config.maxBatch,
    },
    'cloud ready',
  );
  await done;
}
