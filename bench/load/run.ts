/**
 * bench:load — simulated cameras through a real Mosquitto against N real gateway processes that
 * share the offload subscription ($share), with every offloaded frame accounted for.
 *
 *   npm run bench:load -- --replicas 2 --cameras 200 --fps 15 --seconds 60 --budget-ms 100 --json
 *
 * Every camera offloads every frame (the worst case for the gateways; real devices offload only
 * the frames they are unsure of). Prints {"frames","unaccounted","withinBudget","p99Ms",
 * "budgetMs","replicas", …} where withinBudget is the share of frames with an `ok` answer within
 * the budget, p99Ms the send-to-answer latency of every answer, and unaccounted the frames
 * without exactly one terminal state (must be 0). Each replica runs with a V8 heap cap and its
 * peak resident memory is reported against `--max-rss-mb`.
 */
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { numberOpt, parse } from '../../cascade/args.ts';
import { CascadeError, ErrorCodes } from '../../cascade/errors.ts';
import { CameraFleet } from './cameras.ts';
import { loadFramePool } from './frames.ts';
import { type GatewayProcess, processCpuSeconds, startGateway, sumMetric } from './gateways.ts';
import {
  DEFAULT_CONFIG,
  type MosquittoBroker,
  mosquittoPath,
  PRODUCTION_QUEUES_CONFIG,
  startMosquitto,
} from './mosquitto.ts';

/** Options of {@link runLoad}. */
export interface LoadOptions {
  replicas: number;
  cameras: number;
  fps: number;
  seconds: number;
  budgetMs: number;
  /** External broker URL; default: start Mosquitto on a free loopback port. */
  broker?: string;
  /** Peak RSS each replica must stay under, MB. Default 512. */
  maxRssMb?: number;
  /** Extra `cascade gateway` flags for every replica. */
  gatewayArgs?: string[];
  /** Privacy flag on every envelope. */
  privacy?: boolean;
  /** Config of the Mosquitto it starts. Default {@link PRODUCTION_QUEUES_CONFIG}. */
  brokerConfig?: string;
  /** Progress lines to stderr. */
  progress?: (line: string) => void;
}

/** Per-replica figures. */
export interface ReplicaReport {
  name: string;
  /** MQTT requests the replica answered (cascade_gateway_requests_total{transport="mqtt"}). */
  served: number;
  maxRssMb: number;
  /** CPU seconds used during the run. */
  cpuSeconds: number;
}

/** The report. The first six fields are the contract of `--json`. */
export interface LoadReport {
  frames: number;
  unaccounted: number;
  withinBudget: number;
  p99Ms: number;
  budgetMs: number;
  replicas: number;
  p50Ms: number;
  maxMs: number;
  answered: number;
  refused: number;
  refusedBy: Record<string, number>;
  missed: number;
  late: number;
  publishErrors: number;
  cameras: number;
  fps: number;
  seconds: number;
  offloadsPerSecond: number;
  /** Sum over replicas of MQTT requests answered plus malformed messages rejected. */
  gatewayCounted: number;
  perReplica: ReplicaReport[];
  memoryBoundMb: number;
  maxRssMb: number;
  memoryOk: boolean;
  /** CPU seconds during the run: the simulated cameras (this process) and the broker. */
  cpuSeconds: { cameras: number; broker: number };
}

const MB = 1024 * 1024;

/**
 * Runs one load test end to end and tears everything down.
 * @throws {Error} when Mosquitto or a gateway cannot start.
 */
export async function runLoad(o: LoadOptions): Promise<LoadReport> {
  const say = o.progress ?? (() => {});
  const bound = o.maxRssMb ?? 512;
  let broker: MosquittoBroker | undefined;
  const gateways: GatewayProcess[] = [];
  let fleet: CameraFleet | undefined;
  try {
    if (o.broker === undefined)
      broker = await startMosquitto({ config: o.brokerConfig ?? PRODUCTION_QUEUES_CONFIG });
    const url = o.broker ?? broker?.url ?? '';
    say(`broker ${url}`);
    const pool = await loadFramePool();
    // Replicas start one after the other: model loading and warm-up compete for the same cores.
    for (let i = 0; i < o.replicas; i++) {
      gateways.push(
        await startGateway({
          broker: url,
          name: `gateway-${i}`,
          args: o.gatewayArgs ?? [],
          maxOldSpaceMb: Math.max(64, Math.floor(bound / 2)),
        }),
      );
      say(`gateway-${i} ready`);
    }
    fleet = new CameraFleet({
      broker: url,
      pool,
      cameras: o.cameras,
      fps: o.fps,
      budgetMs: o.budgetMs,
      privacy: o.privacy,
    });
    await fleet.connect();
    say(`${o.cameras} cameras connected`);
    const cpu0 = {
      gateways: gateways.map((g) => g.cpuSeconds()),
      self: process.cpuUsage(),
      broker: processCpuSeconds(broker?.pid ?? 0) ?? 0,
    };
    fleet.start();
    const sampler = setInterval(() => {
      for (const g of gateways) g.sampleRss();
    }, 250);
    const started = performance.now();
    const ticker = setInterval(() => {
      const s = fleet?.ledger.summary();
      if (s)
        say(
          `${((performance.now() - started) / 1000).toFixed(0)} s: ${s.frames} frames, ${s.answered} answered`,
        );
    }, 5000);
    await new Promise((r) => setTimeout(r, o.seconds * 1000));
    fleet.stop();
    clearInterval(ticker);
    await fleet.settle(1000);
    clearInterval(sampler);
    const self = process.cpuUsage(cpu0.self);
    const cpuSeconds = {
      cameras: round((self.user + self.system) / 1e6, 2),
      broker: round((processCpuSeconds(broker?.pid ?? 0) ?? 0) - cpu0.broker, 2),
    };
    const perReplica: ReplicaReport[] = [];
    let gatewayCounted = 0;
    for (const [i, g] of gateways.entries()) {
      const cpuUsed = round(g.cpuSeconds() - cpu0.gateways[i], 2);
      const text = g.alive ? await g.metrics() : '';
      const served = sumMetric(text, 'cascade_gateway_requests_total', ['transport="mqtt"']);
      gatewayCounted += served + sumMetric(text, 'cascade_gateway_rejects_total');
      perReplica.push({ name: g.name, served, maxRssMb: round(g.maxRssBytes / MB, 1), cpuSeconds: cpuUsed });
    }
    const s = fleet.ledger.summary();
    const maxRssMb = Math.max(0, ...perReplica.map((r) => r.maxRssMb));
    return {
      frames: s.frames,
      unaccounted: s.unaccounted,
      withinBudget: round(s.withinBudget, 5),
      p99Ms: round(s.p99Ms, 2),
      budgetMs: o.budgetMs,
      replicas: o.replicas,
      p50Ms: round(s.p50Ms, 2),
      maxMs: round(s.maxMs, 2),
      answered: s.answered,
      refused: s.refused,
      refusedBy: s.refusedBy,
      missed: s.missed,
      late: s.late,
      publishErrors: fleet.publishErrors,
      cameras: o.cameras,
      fps: o.fps,
      seconds: o.seconds,
      offloadsPerSecond: round(s.frames / o.seconds, 1),
      gatewayCounted,
      perReplica,
      memoryBoundMb: bound,
      maxRssMb,
      memoryOk: maxRssMb > 0 && maxRssMb <= bound,
      cpuSeconds,
    };
  } finally {
    await fleet?.close();
    await Promise.all(gateways.map((g) => g.stop()));
    await broker?.close();
  }
}

function round(v: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

async function main(): Promise<void> {
  const { values: v } = parse(process.argv.slice(2), {
    replicas: { type: 'string' },
    cameras: { type: 'string' },
    fps: { type: 'string' },
    seconds: { type: 'string' },
    'budget-ms': { type: 'string' },
    broker: { type: 'string' },
    'max-rss-mb': { type: 'string' },
    privacy: { type: 'boolean' },
    'unbounded-queues': { type: 'boolean' },
    json: { type: 'boolean' },
  });
  if (v.broker === undefined && mosquittoPath() === undefined)
    throw new CascadeError(
      ErrorCodes.CLI_ERR_ARGS,
      'mosquitto is not installed; install it or pass --broker URL',
    );
  const report = await runLoad({
    replicas: numberOpt('--replicas', v.replicas, { integer: true, min: 1, max: 64 }) ?? 2,
    cameras: numberOpt('--cameras', v.cameras, { integer: true, min: 1, max: 10_000 }) ?? 200,
    fps: numberOpt('--fps', v.fps, { min: 0.1, max: 120 }) ?? 15,
    seconds: numberOpt('--seconds', v.seconds, { min: 1, max: 3600 }) ?? 60,
    budgetMs: numberOpt('--budget-ms', v['budget-ms'], { min: 1, max: 60_000 }) ?? 100,
    broker: v.broker,
    maxRssMb: numberOpt('--max-rss-mb', v['max-rss-mb'], { min: 64 }),
    privacy: v.privacy,
    brokerConfig: v['unbounded-queues'] ? DEFAULT_CONFIG : PRODUCTION_QUEUES_CONFIG,
    progress: v.json ? undefined : (line) => process.stderr.write(`bench:load ${line}\n`),
  });
  if (v.json) {
    process.stdout.write(`${JSON.stringify(report)}\n`);
    return;
  }
  const pct = (x: number): string => `${(x * 100).toFixed(2)}%`;
  process.stdout.write(
    [
      `frames ${report.frames} (${report.offloadsPerSecond}/s from ${report.cameras} cameras at ${report.fps} fps, ${report.replicas} replicas)`,
      `answered within ${report.budgetMs} ms: ${pct(report.withinBudget)}; refused ${report.refused} ${JSON.stringify(report.refusedBy)}; missed ${report.missed} (late ${report.late})`,
      `latency p50 ${report.p50Ms} ms, p99 ${report.p99Ms} ms, max ${report.maxMs} ms`,
      `unaccounted ${report.unaccounted}; gateways counted ${report.gatewayCounted}`,
      ...report.perReplica.map(
        (r) => `  ${r.name}: served ${r.served}, peak RSS ${r.maxRssMb} MB, CPU ${r.cpuSeconds} s`,
      ),
      `  cameras CPU ${report.cpuSeconds.cameras} s, broker CPU ${report.cpuSeconds.broker} s`,
      `memory bound ${report.memoryBoundMb} MB per replica: ${report.memoryOk ? 'held' : 'EXCEEDED'}`,
    ].join('\n') + '\n',
  );
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((err: unknown) => {
    process.stderr.write(`bench:load: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  });
}
