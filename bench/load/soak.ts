/**
 * soak — a long steady load (default 10 minutes, not part of CI) against gateway replicas, with
 * each replica's heap, resident memory and active handles sampled from its /metrics, to show
 * there is no growth trend: the slope of a least-squares line over the second half of the run
 * (after warm-up), reported per minute and as a share of the mean.
 *
 *   npm run soak -- [--minutes 10] [--replicas 1] [--cameras 50] [--fps 10] [--budget-ms 100]
 *                   [--sample-seconds 10] [--json]
 */
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { numberOpt, parse } from '../../cascade/args.ts';
import { CameraFleet } from './cameras.ts';
import { loadFramePool } from './frames.ts';
import { type GatewayProcess, startGateway, sumMetric } from './gateways.ts';
import { startMosquitto } from './mosquitto.ts';

interface Sample {
  t: number;
  heapMb: number;
  rssMb: number;
  handles: number;
}

/** Least-squares slope of y over x. */
export function slope(xs: number[], ys: number[]): number {
  const n = xs.length;
  if (n < 2) return 0;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let num = 0;
  let den = 0;
  for (let i = 0; i < n; i++) {
    num += (xs[i] - mx) * (ys[i] - my);
    den += (xs[i] - mx) ** 2;
  }
  return den === 0 ? 0 : num / den;
}

/** Trend of one series over the second half: change per minute and over that half, vs its mean. */
function trend(samples: Sample[], key: 'heapMb' | 'rssMb' | 'handles') {
  const half = samples.slice(Math.floor(samples.length / 2));
  const xs = half.map((s) => s.t / 60);
  const ys = half.map((s) => s[key]);
  const perMin = slope(xs, ys);
  const mean = ys.reduce((a, b) => a + b, 0) / Math.max(1, ys.length);
  const span = (xs.at(-1) ?? 0) - (xs[0] ?? 0);
  return {
    first: round(samples[0]?.[key] ?? 0),
    last: round(samples.at(-1)?.[key] ?? 0),
    perMinute: round(perMin),
    /** Growth over the second half as a share of its mean. */
    relativeGrowth: round(mean === 0 ? 0 : (perMin * span) / mean),
  };
}

function round(v: number): number {
  return Math.round(v * 1000) / 1000;
}

async function sample(g: GatewayProcess, t: number): Promise<Sample> {
  const text = await g.metrics();
  return {
    t,
    heapMb: sumMetric(text, 'nodejs_heap_size_used_bytes') / 2 ** 20,
    rssMb: sumMetric(text, 'process_resident_memory_bytes') / 2 ** 20,
    handles: sumMetric(text, 'nodejs_active_handles_total'),
  };
}

async function main(): Promise<void> {
  const { values: v } = parse(process.argv.slice(2), {
    minutes: { type: 'string' },
    replicas: { type: 'string' },
    cameras: { type: 'string' },
    fps: { type: 'string' },
    'budget-ms': { type: 'string' },
    'sample-seconds': { type: 'string' },
    json: { type: 'boolean' },
  });
  const minutes = numberOpt('--minutes', v.minutes, { min: 0.1, max: 24 * 60 }) ?? 10;
  const replicas = numberOpt('--replicas', v.replicas, { integer: true, min: 1, max: 16 }) ?? 1;
  const cameras = numberOpt('--cameras', v.cameras, { integer: true, min: 1 }) ?? 50;
  const fps = numberOpt('--fps', v.fps, { min: 0.1 }) ?? 10;
  const budgetMs = numberOpt('--budget-ms', v['budget-ms'], { min: 1 }) ?? 100;
  const every = (numberOpt('--sample-seconds', v['sample-seconds'], { min: 1 }) ?? 10) * 1000;
  const say = (line: string): void => {
    if (!v.json) process.stderr.write(`soak ${line}\n`);
  };

  const broker = await startMosquitto();
  const gateways: GatewayProcess[] = [];
  let fleet: CameraFleet | undefined;
  try {
    const pool = await loadFramePool();
    for (let i = 0; i < replicas; i++)
      gateways.push(await startGateway({ broker: broker.url, name: `gateway-${i}` }));
    fleet = new CameraFleet({ broker: broker.url, pool, cameras, fps, budgetMs });
    await fleet.connect();
    fleet.start();
    const t0 = performance.now();
    const series: Sample[][] = gateways.map(() => []);
    const self: Sample[] = [];
    const end = t0 + minutes * 60_000;
    while (performance.now() < end) {
      await new Promise((r) => setTimeout(r, Math.min(every, end - performance.now())));
      const t = (performance.now() - t0) / 1000;
      for (const [i, g] of gateways.entries()) series[i].push(await sample(g, t));
      const mem = process.memoryUsage();
      self.push({ t, heapMb: mem.heapUsed / 2 ** 20, rssMb: mem.rss / 2 ** 20, handles: 0 });
      const s = fleet.ledger.summary();
      say(
        `${t.toFixed(0)} s: ${s.frames} frames, heap ${series.map((x) => x.at(-1)?.heapMb.toFixed(1)).join('/')} MB`,
      );
    }
    fleet.stop();
    await fleet.settle(1000);
    const s = fleet.ledger.summary();
    const report = {
      minutes,
      replicas,
      cameras,
      fps,
      budgetMs,
      frames: s.frames,
      unaccounted: s.unaccounted,
      withinBudget: round(s.withinBudget),
      p99Ms: round(s.p99Ms),
      samples: self.length,
      gateways: series.map((x, i) => ({
        name: gateways[i].name,
        heapMb: trend(x, 'heapMb'),
        rssMb: trend(x, 'rssMb'),
        handles: trend(x, 'handles'),
      })),
      camerasProcess: { heapMb: trend(self, 'heapMb'), rssMb: trend(self, 'rssMb') },
    };
    process.stdout.write(`${JSON.stringify(report, null, v.json ? undefined : 2)}\n`);
  } finally {
    await fleet?.close();
    await Promise.all(gateways.map((g) => g.stop()));
    await broker.close();
  }
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((err: unknown) => {
    process.stderr.write(`soak: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  });
}
