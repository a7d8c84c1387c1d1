/**
 * `cascade device`: parses flags, loads the config (file, CASCADE_DEVICE_* environment, flags),
 * builds the {@link DeviceApp}, runs it until the camera ends or SIGTERM/SIGINT, and prints its
 * report. The work is in device/app.ts.
 */
import { pino } from 'pino';
import { choiceOpt, numberOpt, parse } from '../cascade/args.ts';
import { CascadeError, ErrorCodes, invalidArgument } from '../cascade/errors.ts';
import { createLogger, LOG_LEVELS } from '../cascade/service/log.ts';
import { DeviceApp, type DeviceReport } from './app.ts';
import { type DeviceConfig, loadDeviceConfig } from './config.ts';

const HELP = `Usage: cascade device [options]

The camera runtime: frames from a camera, INT8 student, policy decision, offload to the gateway
over MQTT with a deadline, final result per frame on cascade/v1/<id>/results.

Source:
  --source KIND        replay (default): dataset-replay camera; ffmpeg: file, rtsp://, /dev/videoN;
                       folder: a folder of images
  --input X            ffmpeg input or image folder
  --data DIR           replay dataset (IDX or ImageFolder test split; default: bundled sample)
  --fps N              frames per second (default 25; 0 = as fast as processed)
  --frames N           stop after N frames (default: one pass over the replay shard / the input)
  --loop               start over at the end (replay, folder, ffmpeg files)
  --shard I/N          replay images I, I+N, I+2N, … (one camera of N)
  --width N --height N frame size (default 640x480)
  --seed N             replay variation seed (default 1)
Cascade:
  --id ID              device id in topics (default cam-1)
  --broker URL         mqtt://host:port (default: none, classify locally only)
  --mqtt-version 4|5   MQTT 3.1.1 (default) or 5 (message expiry from the budget)
  --budget-ms N        latency budget per frame, capture to result (default 50)
  --policy FILE        policy file (JSON, reloaded on change)
  --privacy            never send pixels (tensor payloads only)
  --card FILE          model card (default: the registry's device model)
  --registry FILE      model registry (default models/registry.json)
Runtime:
  --preprocess B       auto (default: native kernel when built, else worker thread), native,
                       worker, inline
  --sequential         no double buffering (preprocess, then infer)
  --http-port N        serve /metrics /healthz /readyz (0: any free port)
  --ota URL            signed model updates from a TUF repository (with --ota-root, --ota-dir)
  --ota-root FILE      trusted root.json to provision
  --ota-dir DIR        OTA metadata and model store (default .cascade-device)
  --config FILE        JSON config file (keys as in device/config.ts)
  --log-level L        ${LOG_LEVELS.join(', ')} (default info)
  --json               print a JSON report at the end (logs go to stderr)
  --wait-start         load and connect, print {"event":"ready"} on stdout, then start the camera
                       when a line arrives on stdin (several cameras starting together)

Environment: CASCADE_DEVICE_<KEY> for any config key, e.g. CASCADE_DEVICE_BROKER_URL.`;

const OPTIONS = {
  help: { type: 'boolean', short: 'h' },
  config: { type: 'string' },
  id: { type: 'string' },
  broker: { type: 'string' },
  'mqtt-version': { type: 'string' },
  source: { type: 'string' },
  input: { type: 'string' },
  data: { type: 'string' },
  fps: { type: 'string' },
  frames: { type: 'string' },
  loop: { type: 'boolean' },
  shard: { type: 'string' },
  width: { type: 'string' },
  height: { type: 'string' },
  seed: { type: 'string' },
  'budget-ms': { type: 'string' },
  policy: { type: 'string' },
  privacy: { type: 'boolean' },
  card: { type: 'string' },
  registry: { type: 'string' },
  preprocess: { type: 'string' },
  sequential: { type: 'boolean' },
  'http-port': { type: 'string' },
  ota: { type: 'string' },
  'ota-root': { type: 'string' },
  'ota-dir': { type: 'string' },
  'log-level': { type: 'string' },
  json: { type: 'boolean' },
  'wait-start': { type: 'boolean' },
} as const;

function shardOpt(raw: string | undefined): { index: number; count: number } | undefined {
  if (raw === undefined) return undefined;
  const m = /^(\d+)\/(\d+)$/.exec(raw);
  if (!m || Number(m[2]) < 1 || Number(m[1]) >= Number(m[2])) {
    throw invalidArgument('--shard', 'I/N with 0 <= I < N', raw);
  }
  return { index: Number(m[1]), count: Number(m[2]) };
}

/** Flags as a partial config (undefined values are ignored by the loader). */
export function flagsToConfig(argv: string[]): {
  flags: Record<string, unknown>;
  file?: string;
  json: boolean;
  help: boolean;
  waitStart: boolean;
} {
  const { values: v, positionals } = parse(argv, OPTIONS);
  if (positionals.length > 0) {
    throw new CascadeError(ErrorCodes.CLI_ERR_ARGS, `unexpected argument "${positionals[0]}"`);
  }
  const int = (name: string, raw: string | undefined, min = 0) =>
    numberOpt(name, raw, { integer: true, min });
  const mqtt = numberOpt('--mqtt-version', v['mqtt-version'], { integer: true, min: 4, max: 5 });
  const flags = {
    deviceId: v.id,
    budgetMs: numberOpt('--budget-ms', v['budget-ms'], { min: 1 }),
    broker: { url: v.broker, protocolVersion: mqtt },
    source: {
      kind: choiceOpt('--source', v.source, ['replay', 'ffmpeg', 'folder'] as const),
      input: v.input,
      data: v.data,
      fps: numberOpt('--fps', v.fps, { min: 0 }),
      frames: int('--frames', v.frames),
      loop: v.loop,
      shard: shardOpt(v.shard),
      width: int('--width', v.width, 1),
      height: int('--height', v.height, 1),
      seed: int('--seed', v.seed),
    },
    model: { card: v.card, registry: v.registry },
    pipeline: {
      preprocess: choiceOpt('--preprocess', v.preprocess, ['auto', 'native', 'worker', 'inline'] as const),
      mode: v.sequential ? 'sequential' : undefined,
    },
    policy: { file: v.policy, privacy: v.privacy },
    http: { port: int('--http-port', v['http-port']) },
    ota: { url: v.ota, trustedRoot: v['ota-root'], dir: v['ota-dir'] },
    log: { level: choiceOpt('--log-level', v['log-level'], LOG_LEVELS) },
  };
  return {
    flags,
    file: v.config,
    json: v.json === true,
    help: v.help === true,
    waitStart: v['wait-start'] === true,
  };
}

/** Announces readiness on stdout and resolves at the first line on stdin (or its end). */
function readyThenWait(deviceId: string): Promise<void> {
  process.stdout.write(`${JSON.stringify({ event: 'ready', deviceId })}\n`);
  return new Promise((resolve) => {
    const done = () => {
      process.stdin.off('data', done);
      process.stdin.off('end', done);
      process.stdin.pause();
      resolve();
    };
    process.stdin.on('data', done);
    process.stdin.on('end', done);
  });
}

/** Runs `cascade device` with its arguments. */
export async function main(argv: string[]): Promise<void> {
  const args = flagsToConfig(argv);
  if (args.help) {
    process.stdout.write(`${HELP}\n`);
    return;
  }
  const config: Readonly<DeviceConfig> = loadDeviceConfig({
    file: args.file,
    env: process.env,
    flags: args.flags,
  });
  // With --json, stdout carries only the report.
  const logger = createLogger({
    service: 'device',
    level: config.log.level,
    destination: args.json ? pino.destination({ fd: 2, sync: false }) : undefined,
  });
  const app = await DeviceApp.build(config, { logger });
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    signals++;
    if (signals >= 3) process.exit(130);
    logger.info({ signal }, 'stopping');
    void app.shutdown(signal);
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  try {
    try {
      await app.start({ beforeCamera: args.waitStart ? () => readyThenWait(config.deviceId) : undefined });
    } catch (err) {
      await app.shutdown('start failed');
      throw err;
    }
    const report: DeviceReport = await app.finished;
    logger.info({ report }, 'device stopped');
    if (args.json) process.stdout.write(`${JSON.stringify(report)}\n`);
  } finally {
    if (args.waitStart) process.stdin.destroy();
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
    logger.flush();
  }
}
