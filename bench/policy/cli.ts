/**
 * `cascade bench policy`: argument parsing and output only; the simulation is in sim.ts.
 */
import { readdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { numberOpt, parse } from '../../cascade/args.ts';
import { CascadeError, ErrorCodes, invalidArgument } from '../../cascade/errors.ts';
import { loadPolicyFile, type PolicyConfigPatch } from '../../cascade/policy/index.ts';
import { writePlots } from './plots.ts';
import { POLICY_NAMES, type PolicyName } from './policies.ts';
import { loadSimData } from './predictions.ts';
import { type RunReport, runPolicies, toJson, toTable } from './report.ts';
import {
  type CapacityTrace,
  capacityPerSecond,
  loadTrace,
  meanCapacityBps,
  type RttTrace,
} from './traces.ts';

const HELP = `Usage: cascade bench policy [--trace FILE ...] [options]

Trace-driven simulation of the cascade: N cameras at F fps share an uplink replayed from a
capacity trace; the gateway batches with service times measured from the real gateway model;
every frame is a Fashion-MNIST test image with the real predictions of the three models.
Compares device-only, cloud-only, fixed thresholds (0.6/0.85), the model cards' calibrated
thresholds and the policy engine on the same frames.

  --trace FILE         capacity trace: mahimahi (.up), or per-second CSV "value,unit";
                       repeat for several. Default: every *.up file under --traces-dir
  --traces-dir DIR     folder searched for mahimahi traces when no --trace is given
                       (default: $CASCADE_TRACES, else ../shared/traces beside the checkout)
  --rtt-trace FILE     radio round-trip time per second: UCC 5G CSV (PINGAVG) or CSV "value,ms"
  --cameras N          cameras sharing the uplink (default 8)
  --stress-cameras N   also run N cameras on the slowest trace (lowest mean capacity)
  --fps F              frames per second per camera (default 15)
  --budget-ms B        latency budget per frame from capture (default 50)
  --duration S         simulated seconds (default: one period of the trace)
  --rtt-ms MS          radio round trip device <-> gateway without queueing (default 10)
  --cloud-rtt-ms MS    gateway <-> cloud round trip (default 20)
  --device-ms MS       device inference time (default: measured on this machine)
  --policies LIST      comma-separated subset of ${POLICY_NAMES.join(',')}
  --policy-file FILE   engine config (a policy file) for both tiers
  --seed N             frame order seed (default 1)
  --out DIR            where the SVG plots go (default .scratch/bench-policy)
  --no-plots           skip the plots
  --cache DIR          prediction cache folder (default: the OS temp folder)
  --json               print JSON: one object per run ({"runs": [...]} for several)`;

async function defaultTraces(dir: string | undefined): Promise<string[]> {
  const root = dir ?? process.env.CASCADE_TRACES ?? resolve('..', 'shared', 'traces');
  const candidates = [join(root, 'mahimahi'), root];
  for (const folder of candidates) {
    let names: string[];
    try {
      names = await readdir(folder);
    } catch {
      continue;
    }
    const ups = names.filter((n) => n.endsWith('.up')).sort();
    if (ups.length > 0) return ups.map((n) => join(folder, n));
  }
  throw new CascadeError(
    ErrorCodes.DATA_ERR_NOT_FOUND,
    `no mahimahi traces (*.up) in ${candidates.join(' or ')}: pass --trace FILE or --traces-dir DIR`,
  );
}

function policiesOpt(raw: string | undefined): PolicyName[] {
  if (raw === undefined) return [...POLICY_NAMES];
  const list = raw.split(',').map((s) => s.trim());
  for (const p of list) {
    if (!(POLICY_NAMES as readonly string[]).includes(p)) {
      throw invalidArgument('--policies', `a comma-separated subset of ${POLICY_NAMES.join(',')}`, raw);
    }
  }
  return list as PolicyName[];
}

/** Runs `cascade bench policy` with its arguments. */
export async function main(argv: string[]): Promise<void> {
  const { values: v, positionals } = parse(argv, {
    help: { type: 'boolean', short: 'h' },
    trace: { type: 'string', multiple: true },
    'traces-dir': { type: 'string' },
    'rtt-trace': { type: 'string' },
    cameras: { type: 'string' },
    'stress-cameras': { type: 'string' },
    fps: { type: 'string' },
    'budget-ms': { type: 'string' },
    duration: { type: 'string' },
    'rtt-ms': { type: 'string' },
    'cloud-rtt-ms': { type: 'string' },
    'device-ms': { type: 'string' },
    policies: { type: 'string' },
    'policy-file': { type: 'string' },
    seed: { type: 'string' },
    out: { type: 'string' },
    'no-plots': { type: 'boolean' },
    cache: { type: 'string' },
    json: { type: 'boolean' },
  });
  if (v.help) {
    process.stdout.write(`${HELP}\n`);
    return;
  }
  if (positionals.length > 0)
    throw new CascadeError(ErrorCodes.CLI_ERR_ARGS, `unexpected argument "${positionals[0]}"`);
  const cameras = numberOpt('--cameras', v.cameras, { integer: true, min: 1, max: 4096 }) ?? 8;
  const stress = numberOpt('--stress-cameras', v['stress-cameras'], { integer: true, min: 1, max: 4096 });
  const fps = numberOpt('--fps', v.fps, { min: 0.01, max: 1000 }) ?? 15;
  const budgetMs = numberOpt('--budget-ms', v['budget-ms'], { min: 0.1 }) ?? 50;
  const duration = numberOpt('--duration', v.duration, { min: 0.1 });
  const radioRttMs = numberOpt('--rtt-ms', v['rtt-ms'], { min: 0 }) ?? 10;
  const cloudRttMs = numberOpt('--cloud-rtt-ms', v['cloud-rtt-ms'], { min: 0 }) ?? 20;
  const deviceMs = numberOpt('--device-ms', v['device-ms'], { min: 0 });
  const seed = numberOpt('--seed', v.seed, { integer: true, min: 0 }) ?? 1;
  const policies = policiesOpt(v.policies);
  let engine: { device?: PolicyConfigPatch; gateway?: PolicyConfigPatch } | undefined;
  if (v['policy-file'] !== undefined) {
    const patch = await loadPolicyFile(v['policy-file']);
    engine = { device: patch, gateway: patch };
  }

  const paths = v.trace ?? (await defaultTraces(v['traces-dir']));
  const traces: CapacityTrace[] = [];
  for (const p of paths) {
    const t = await loadTrace(p);
    if (t.kind !== 'capacity') {
      throw new CascadeError(
        ErrorCodes.TRACE_ERR_FORMAT,
        `${p}: a round-trip-time trace; give it as --rtt-trace`,
      );
    }
    traces.push(t);
  }
  let rttTrace: RttTrace | undefined;
  if (v['rtt-trace'] !== undefined) {
    const t = await loadTrace(v['rtt-trace']);
    if (t.kind !== 'rtt') {
      throw new CascadeError(
        ErrorCodes.TRACE_ERR_FORMAT,
        `${v['rtt-trace']}: a capacity trace; give it as --trace`,
      );
    }
    rttTrace = t;
  }

  const log = (line: string) => process.stderr.write(`${line}\n`);
  const data = await loadSimData({ cacheDir: v.cache, log });
  if (data.note) log(`note: ${data.note}`);
  const runs: { trace: CapacityTrace; cameras: number }[] = traces.map((trace) => ({ trace, cameras }));
  if (stress !== undefined) {
    const slowest = traces.reduce((a, b) => (meanCapacityBps(b) < meanCapacityBps(a) ? b : a));
    runs.push({ trace: slowest, cameras: stress });
  }
  const reports: RunReport[] = [];
  const out = v.out ?? join('.scratch', 'bench-policy');
  for (const { trace, cameras: n } of runs) {
    const durationMs = duration !== undefined ? duration * 1000 : trace.periodMs;
    const report = runPolicies(
      data,
      trace,
      {
        cameras: n,
        fps,
        budgetMs,
        durationMs,
        radioRttMs,
        rttTrace,
        rttLabel: rttTrace ? `from ${rttTrace.name}` : undefined,
        cloudRttMs,
        deviceMs,
        seed,
        engine,
      },
      policies,
      Array.from(capacityPerSecond(trace, Math.ceil(durationMs / 1000))),
    );
    reports.push(report);
    if (!v.json) process.stdout.write(`${toTable(report)}\n\n`);
    if (!v['no-plots']) {
      const files = await writePlots(report, out);
      log(`plots: ${files.join(', ')}`);
    }
  }
  if (v.json) {
    const json = reports.length === 1 ? toJson(reports[0]) : { runs: reports.map(toJson) };
    process.stdout.write(`${JSON.stringify(json)}\n`);
  }
}
