/**
 * `cascade demo`: argument parsing and output only; the work is in run.ts.
 */
import { numberOpt, parse } from '../args.ts';
import { CascadeError, ErrorCodes, invalidArgument } from '../errors.ts';
import { runDemo } from './run.ts';
import { formatProgress, formatReport } from './tally.ts';

const HELP = `Usage: cascade demo [options]

The whole cascade on this machine: an MQTT broker, a cloud teacher, a gateway and N
dataset-replay cameras, each a process of its own. Shows live progress, then a summary.

  --cameras N        camera processes (default 4)
  --frames N         frames per camera (default: each camera's share of the dataset, once:
                     the bundled sample's 2,000 images in all, the frames \`cascade eval\` scores)
  --duration S       run for S seconds instead (cameras loop over their share)
  --fps N            frames per second per camera (default 25)
  --budget-ms N      latency budget per frame, capture to result (default 50)
  --data DIR         replay dataset (e.g. the full Fashion-MNIST test set); default bundled sample
  --broker URL       use an external broker (mqtt://host:port) instead of the embedded one
  --no-shared        the external broker has no shared subscriptions
  --preprocess B     cameras' preprocessing: auto, native, worker, inline
  --json             print one JSON object at the end (progress goes to stderr)`;

/** Runs `cascade demo` with its arguments. */
export async function main(argv: string[]): Promise<void> {
  const { values: v, positionals } = parse(argv, {
    help: { type: 'boolean', short: 'h' },
    cameras: { type: 'string' },
    frames: { type: 'string' },
    duration: { type: 'string' },
    fps: { type: 'string' },
    'budget-ms': { type: 'string' },
    data: { type: 'string' },
    broker: { type: 'string' },
    'no-shared': { type: 'boolean' },
    preprocess: { type: 'string' },
    json: { type: 'boolean' },
  });
  if (v.help) {
    process.stdout.write(`${HELP}\n`);
    return;
  }
  if (positionals.length > 0) {
    throw new CascadeError(ErrorCodes.CLI_ERR_ARGS, `unexpected argument "${positionals[0]}"`);
  }
  if (v.broker !== undefined && !/^mqtts?:\/\/[^/]+$/.test(v.broker)) {
    throw invalidArgument('--broker', 'mqtt://host:port', v.broker);
  }
  if (v.frames !== undefined && v.duration !== undefined) {
    throw new CascadeError(ErrorCodes.CLI_ERR_ARGS, '--frames and --duration exclude each other');
  }
  const out = v.json ? process.stderr : process.stdout;
  // SIGINT/SIGTERM end the run early with a report; a second one exits at once.
  const abort = new AbortController();
  const onSignal = () => {
    if (abort.signal.aborted) process.exit(130);
    out.write('stopping: cameras finish their in-flight frames…\n');
    abort.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const report = await runDemo({
    signal: abort.signal,
    cameras: numberOpt('--cameras', v.cameras, { integer: true, min: 1, max: 64 }),
    frames: numberOpt('--frames', v.frames, { integer: true, min: 1 }),
    durationS: numberOpt('--duration', v.duration, { min: 1 }),
    fps: numberOpt('--fps', v.fps, { min: 0.1, max: 1000 }),
    budgetMs: numberOpt('--budget-ms', v['budget-ms'], { min: 1 }),
    data: v.data,
    broker: v.broker,
    brokerShared: v['no-shared'] !== true,
    preprocess: v.preprocess,
    onStatus: (line) => out.write(`${line}\n`),
    onProgress: (p, s) => out.write(`${formatProgress(p, s)}\n`),
  });
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  if (v.json) process.stdout.write(`${JSON.stringify(report)}\n`);
  else process.stdout.write(`\n${formatReport(report)}\n`);
}
