/**
 * Runs a cloud teacher process: build, listen, shut down gracefully on SIGTERM/SIGINT. Prints one
 * `cloud ready` log line (JSON, with `httpUrl`) once it serves.
 */
import { listenUntilShutdown } from '../cascade/service/ops.ts';
import { buildCloudApp, type CloudDeps } from './app.ts';
import type { CloudConfig } from './config.ts';

/** Runs until shut down. */
export async function runCloud(config: Readonly<CloudConfig>, deps: CloudDeps = {}): Promise<void> {
  const app = await buildCloudApp(config, deps);
  const { httpUrl, done } = await listenUntilShutdown(app, config.httpHost, config.httpPort);
  app.logger.info(
    {
      httpUrl,
      model: app.card.name,
      hardExamples: config.hardExamples.dir ?? null,
      maxBatch: config.maxBatch,
    },
    'cloud ready',
  );
  await done;
}
