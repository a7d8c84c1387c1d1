/**
 * `cascade gateway`: argument parsing only; the service is built in app.ts and run in main.ts.
 */
import { choiceOpt, numberOpt, parse } from '../cascade/args.ts';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import { loadGatewayConfig } from './config.ts';

const HELP = `Usage: cascade gateway [options]

The MEC gateway: consumes device offloads over MQTT (shared subscription) and serves KServe v2
over HTTP, batches frames under their deadlines, answers with the gateway student or forwards
to the cloud teacher. /metrics, /healthz, /readyz on the HTTP port.

  --broker URL          MQTT broker (mqtt://host:port); unset: HTTP only
  --protocol 4|5        MQTT 3.1.1 (4, default) or 5 (adds message expiry on answers)
  --shared-group NAME   shared subscription group (default cascade-gateways)
  --mqtt-ca FILE        CA to trust for an mqtts:// broker (PEM; default Node's store)
  --mqtt-cert FILE      client certificate for mutual TLS (PEM; its CN is the MQTT identity)
  --mqtt-key FILE       the client certificate's key (PEM)
  --no-shared           plain subscription (the embedded broker has no $share)
  --http-host HOST      default 0.0.0.0
  --http-port N         default 8080 (0 = any free port)
  --cloud URL           cloud teacher base URL (KServe v2); unset: never forward
  --cloud-token TOKEN   bearer token (prefer CASCADE_GATEWAY_CLOUD_TOKEN or cloud.tokenFile)
  --model CARD          gateway model card (default: the registry's gateway model)
  --registry FILE       model registry (default models/registry.json)
  --max-batch N         largest batch (default 32)
  --max-delay-ms MS     longest wait for a batch to fill (default 2)
  --concurrency N       batches running at once (default 1)
  --intra-op-threads N  ONNX Runtime threads per batch (default 1)
  --budget-ms MS        budget of HTTP requests without parameters.budget_ms (default 50)
  --log-level LEVEL     fatal|error|warn|info|debug|trace|silent (default info)
  --config FILE         JSON config file (every key of the schema; flags and env override it)

Environment: CASCADE_GATEWAY_<KEY> for every config key, e.g. CASCADE_GATEWAY_BROKER,
CASCADE_GATEWAY_MAX_BATCH, CASCADE_GATEWAY_CLOUD_URL, CASCADE_GATEWAY_CLOUD_TOKEN.`;

/** Runs `cascade gateway`. */
export async function main(argv: string[]): Promise<void> {
  const { values: v, positionals } = parse(argv, {
    help: { type: 'boolean', short: 'h' },
    broker: { type: 'string' },
    protocol: { type: 'string' },
    'shared-group': { type: 'string' },
    'mqtt-ca': { type: 'string' },
    'mqtt-cert': { type: 'string' },
    'mqtt-key': { type: 'string' },
    'no-shared': { type: 'boolean' },
    'http-host': { type: 'string' },
    'http-port': { type: 'string' },
    cloud: { type: 'string' },
    'cloud-token': { type: 'string' },
    model: { type: 'string' },
    registry: { type: 'string' },
    'max-batch': { type: 'string' },
    'max-delay-ms': { type: 'string' },
    concurrency: { type: 'string' },
    'intra-op-threads': { type: 'string' },
    'budget-ms': { type: 'string' },
    'log-level': { type: 'string' },
    config: { type: 'string' },
  });
  if (v.help) {
    process.stdout.write(`${HELP}\n`);
    return;
  }
  if (positionals.length > 0)
    throw new CascadeError(ErrorCodes.CLI_ERR_ARGS, `unexpected argument "${positionals[0]}"`);
  const protocol = choiceOpt('--protocol', v.protocol, ['4', '5'] as const);
  const config = loadGatewayConfig({
    file: v.config,
    env: process.env,
    flags: {
      broker: v.broker,
      protocol: protocol === undefined ? undefined : Number(protocol),
      sharedGroup: v['shared-group'],
      mqttCaFile: v['mqtt-ca'],
      mqttCertFile: v['mqtt-cert'],
      mqttKeyFile: v['mqtt-key'],
      shared: v['no-shared'] ? false : undefined,
      httpHost: v['http-host'],
      httpPort: numberOpt('--http-port', v['http-port'], { integer: true, min: 0, max: 65535 }),
      model: v.model,
      registry: v.registry,
      maxBatch: numberOpt('--max-batch', v['max-batch'], { integer: true, min: 1 }),
      maxDelayMs: numberOpt('--max-delay-ms', v['max-delay-ms'], { min: 0 }),
      concurrency: numberOpt('--concurrency', v.concurrency, { integer: true, min: 1 }),
      intraOpThreads: numberOpt('--intra-op-threads', v['intra-op-threads'], { integer: true, min: 1 }),
      defaultBudgetMs: numberOpt('--budget-ms', v['budget-ms'], { min: 0 }),
      logLevel: v['log-level'],
      cloud: { url: v.cloud, token: v['cloud-token'] },
    },
  });
  const { runGateway } = await import('./main.ts');
  await runGateway(config);
}
