/**
 * `cascade cloud`: argument parsing only; the service is built in app.ts and run in main.ts.
 */
import { numberOpt, parse } from '../cascade/args.ts';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import { loadCloudConfig } from './config.ts';

const HELP = `Usage: cascade cloud [options]

The cloud teacher: KServe v2 / Open Inference Protocol over HTTP (POST /v2/models/<name>/infer),
dynamic batching, bearer-token auth, a bounded hard-example log for retraining.
/metrics, /healthz, /readyz on the same port.

  --http-host HOST        default 0.0.0.0
  --http-port N           default 8081 (0 = any free port)
  --token-file FILE       bearer token (first line); or CASCADE_CLOUD_TOKEN
  --no-auth               serve without a token (trusted networks only)
  --model CARD            teacher model card (default: the registry's cloud model)
  --registry FILE         model registry (default models/registry.json)
  --max-batch N           largest batch (default 32)
  --max-delay-ms MS       longest wait for a batch to fill (default 2)
  --intra-op-threads N    ONNX Runtime threads per batch (default 1)
  --hard-examples DIR     append hard examples to DIR (JSON lines, bounded)
  --hard-examples-max-bytes N   cap of the log on disk (default 64 MiB)
  --log-level LEVEL       fatal|error|warn|info|debug|trace|silent (default info)
  --config FILE           JSON config file (flags and env override it)

Environment: CASCADE_CLOUD_<KEY> for every config key, e.g. CASCADE_CLOUD_TOKEN,
CASCADE_CLOUD_HTTP_PORT, CASCADE_CLOUD_HARD_EXAMPLES_DIR.`;

/** Runs `cascade cloud`. */
export async function main(argv: string[]): Promise<void> {
  const { values: v, positionals } = parse(argv, {
    help: { type: 'boolean', short: 'h' },
    'http-host': { type: 'string' },
    'http-port': { type: 'string' },
    'token-file': { type: 'string' },
    'no-auth': { type: 'boolean' },
    model: { type: 'string' },
    registry: { type: 'string' },
    'max-batch': { type: 'string' },
    'max-delay-ms': { type: 'string' },
    'intra-op-threads': { type: 'string' },
    'hard-examples': { type: 'string' },
    'hard-examples-max-bytes': { type: 'string' },
    'log-level': { type: 'string' },
    config: { type: 'string' },
  });
  if (v.help) {
    process.stdout.write(`${HELP}\n`);
    return;
  }
  if (positionals.length > 0)
    throw new CascadeError(ErrorCodes.CLI_ERR_ARGS, `unexpected argument "${positionals[0]}"`);
  const config = loadCloudConfig({
    file: v.config,
    env: process.env,
    flags: {
      httpHost: v['http-host'],
      httpPort: numberOpt('--http-port', v['http-port'], { integer: true, min: 0, max: 65535 }),
      tokenFile: v['token-file'],
      auth: v['no-auth'] ? false : undefined,
      model: v.model,
      registry: v.registry,
      maxBatch: numberOpt('--max-batch', v['max-batch'], { integer: true, min: 1 }),
      maxDelayMs: numberOpt('--max-delay-ms', v['max-delay-ms'], { min: 0 }),
      intraOpThreads: numberOpt('--intra-op-threads', v['intra-op-threads'], { integer: true, min: 1 }),
      logLevel: v['log-level'],
      hardExamples: {
        dir: v['hard-examples'],
        maxBytes: numberOpt('--hard-examples-max-bytes', v['hard-examples-max-bytes'], {
          integer: true,
          min: 4096,
        }),
      },
    },
  });
  const { runCloud } = await import('./main.ts');
  await runCloud(config);
}
