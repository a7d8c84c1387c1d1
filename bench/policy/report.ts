/**
 * Runs every policy on one trace and setting, and turns the results into the JSON shape of
 * `cascade bench policy --json` and a plain-text table. The targets of the engine (accuracy
 * within 0.3 points of the best policy, deadline-hit rate ≥ 99 %, uplink bytes ≤ 25 % of
 * cloud-only) are checked and reported as measured, met or not.
 */
import { POLICY_NAMES, type PolicyName } from './policies.ts';
import type { SimData } from './predictions.ts';
import { type PolicyResult, type SimOptions, simulate } from './sim.ts';
import { type CapacityTrace, meanCapacityBps } from './traces.ts';

/** The engine's targets (issue: policy engine). */
export const TARGETS = Object.freeze({ accuracyGapPp: 0.3, deadlineHit: 0.99, bytesShare: 0.25 });

/** One run: a trace, a setting, every policy. */
export interface RunReport {
  trace: string;
  setup: {
    cameras: number;
    fps: number;
    budgetMs: number;
    durationS: number;
    radioRttMs: number | string;
    cloudRttMs: number;
    deviceMs: number;
    meanCapacityMbps: number;
    frames: number;
    dataset: string;
    note: string | null;
  };
  policies: Partial<Record<PolicyName, PolicyResult>>;
  /** Engine against its targets; absent when the engine or cloud-only was not run. */
  targets?: {
    bestPolicy: PolicyName;
    accuracyGapPp: number;
    deadlineHit: number;
    bytesShare: number;
    met: { accuracy: boolean; deadlineHit: boolean; bytes: boolean };
  };
  /** Per-second capacity of the trace over the run, bit/s (for the plots). */
  capacityBps: number[];
}

/** Runs the listed policies (default all) over the same frames and trace. */
export function runPolicies(
  data: SimData,
  trace: CapacityTrace,
  opts: SimOptions & { rttLabel?: string },
  policies: readonly PolicyName[] = POLICY_NAMES,
  capacityBps: number[] = [],
): RunReport {
  const out: Partial<Record<PolicyName, PolicyResult>> = {};
  for (const p of policies) out[p] = simulate(data, trace, p, opts);
  const first = out[policies[0]] as PolicyResult;
  const report: RunReport = {
    trace: trace.name,
    setup: {
      cameras: opts.cameras,
      fps: opts.fps,
      budgetMs: opts.budgetMs,
      durationS: (opts.durationMs ?? trace.periodMs) / 1000,
      radioRttMs: opts.rttLabel ?? opts.radioRttMs ?? 10,
      cloudRttMs: opts.cloudRttMs ?? 20,
      deviceMs: opts.deviceMs ?? data.deviceMs,
      meanCapacityMbps: meanCapacityBps(trace) / 1e6,
      frames: first.frames,
      dataset: data.dataset,
      note: data.note,
    },
    policies: out,
    capacityBps,
  };
  const engine = out.engine;
  const cloud = out['cloud-only'];
  if (engine && cloud) {
    let best: PolicyName = 'engine';
    for (const p of policies)
      if ((out[p] as PolicyResult).accuracy > (out[best] as PolicyResult).accuracy) best = p;
    const gap = ((out[best] as PolicyResult).accuracy - engine.accuracy) * 100;
    const share = cloud.uplinkBytes > 0 ? engine.uplinkBytes / cloud.uplinkBytes : 0;
    report.targets = {
      bestPolicy: best,
      accuracyGapPp: gap,
      deadlineHit: engine.deadlineHit,
      bytesShare: share,
      met: {
        accuracy: gap <= TARGETS.accuracyGapPp + 1e-9,
        deadlineHit: engine.deadlineHit >= TARGETS.deadlineHit,
        bytes: share <= TARGETS.bytesShare,
      },
    };
  }
  return report;
}

const r4 = (x: number) => Math.round(x * 1e4) / 1e4;
const r2 = (x: number) => Math.round(x * 100) / 100;

/** The JSON form of a run (timelines left out: they are for the plots). */
export function toJson(r: RunReport): object {
  const policies: Record<string, object> = {};
  const cloudBytes = r.policies['cloud-only']?.uplinkBytes ?? 0;
  for (const [name, p] of Object.entries(r.policies) as [PolicyName, PolicyResult][]) {
    policies[name] = {
      accuracy: r4(p.accuracy),
      deadlineHit: r4(p.deadlineHit),
      uplinkBytes: p.uplinkBytes,
      uplinkShareOfCloudOnly: cloudBytes > 0 ? r4(p.uplinkBytes / cloudBytes) : null,
      resolved: {
        device: r4(p.resolved.device),
        gateway: r4(p.resolved.gateway),
        cloud: r4(p.resolved.cloud),
      },
      latencyMs: { p50: r2(p.latencyMs.p50), p95: r2(p.latencyMs.p95), p99: r2(p.latencyMs.p99) },
      offloaded: r4(p.offloaded),
      gatewayUtilization: r4(p.gatewayUtilization),
      reasons: p.reasons,
      missesByReason: p.missesByReason,
      ...(name === 'engine' ? { calibration: p.calibration.map((b) => ({ ...b, hit: r4(b.hit) })) } : {}),
    };
  }
  return {
    trace: r.trace,
    setup: { ...r.setup, meanCapacityMbps: r2(r.setup.meanCapacityMbps), deviceMs: r4(r.setup.deviceMs) },
    policies,
    ...(r.targets
      ? {
          targets: {
            ...r.targets,
            accuracyGapPp: r2(r.targets.accuracyGapPp),
            deadlineHit: r4(r.targets.deadlineHit),
            bytesShare: r4(r.targets.bytesShare),
          },
        }
      : {}),
  };
}

function pad(cells: string[], widths: number[]): string {
  return cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
}

/** A plain-text table of one run, with a header naming the setting and a targets line. */
export function toTable(r: RunReport): string {
  const s = r.setup;
  const rtt = typeof s.radioRttMs === 'number' ? `${s.radioRttMs} ms` : s.radioRttMs;
  const lines = [
    `${r.trace} (mean ${s.meanCapacityMbps.toFixed(2)} Mbit/s, ${s.durationS} s) · ${s.cameras} cameras × ${s.fps} fps · ${s.budgetMs} ms budget · radio RTT ${rtt} · cloud RTT ${s.cloudRttMs} ms · ${s.frames} frames of ${s.dataset}`,
  ];
  if (s.note) lines.push(`note: ${s.note}`);
  const head = [
    'policy',
    'accuracy %',
    'deadline hit %',
    'uplink MB',
    'vs cloud-only',
    'device/gw/cloud %',
    'p50/p95/p99 ms',
    'gw util %',
  ];
  const cloudBytes = r.policies['cloud-only']?.uplinkBytes ?? 0;
  const rows = (Object.entries(r.policies) as [PolicyName, PolicyResult][]).map(([name, p]) => [
    name,
    (p.accuracy * 100).toFixed(2),
    (p.deadlineHit * 100).toFixed(2),
    (p.uplinkBytes / 1e6).toFixed(2),
    cloudBytes > 0 ? `${((p.uplinkBytes / cloudBytes) * 100).toFixed(1)} %` : '-',
    [p.resolved.device, p.resolved.gateway, p.resolved.cloud].map((x) => (x * 100).toFixed(1)).join('/'),
    [p.latencyMs.p50, p.latencyMs.p95, p.latencyMs.p99]
      .map((x) => (x >= 100 ? x.toFixed(0) : x.toFixed(1)))
      .join('/'),
    (p.gatewayUtilization * 100).toFixed(2),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  lines.push(pad(head, widths), ...rows.map((row) => pad(row, widths)));
  if (r.targets) {
    const t = r.targets;
    const mark = (ok: boolean) => (ok ? 'met' : 'NOT met');
    lines.push(
      `engine targets: accuracy ${t.accuracyGapPp.toFixed(2)} pp below the best (${t.bestPolicy}) [≤ ${TARGETS.accuracyGapPp}: ${mark(t.met.accuracy)}], ` +
        `deadline hit ${(t.deadlineHit * 100).toFixed(2)} % [≥ ${TARGETS.deadlineHit * 100}: ${mark(t.met.deadlineHit)}], ` +
        `uplink ${(t.bytesShare * 100).toFixed(1)} % of cloud-only [≤ ${TARGETS.bytesShare * 100}: ${mark(t.met.bytes)}]`,
    );
  }
  return lines.join('\n');
}
