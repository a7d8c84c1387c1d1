/**
 * SVG plots of a simulator run, drawn with Vega-Lite and rendered by Vega's headless View
 * (`toSVG()`: no canvas, no native dependency): accuracy against uplink bytes per policy, and
 * the deadline-hit rate per second of every policy against the trace's capacity.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as vega from 'vega';
import * as vl from 'vega-lite';
import type { PolicyName } from './policies.ts';
import type { RunReport } from './report.ts';
import type { PolicyResult } from './sim.ts';

async function render(spec: vl.TopLevelSpec): Promise<string> {
  const { spec: compiled } = vl.compile(spec);
  const view = new vega.View(vega.parse(compiled), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

function title(r: RunReport, what: string): string {
  const s = r.setup;
  return `${what}: ${r.trace}, ${s.cameras} cameras × ${s.fps} fps, ${s.budgetMs} ms budget`;
}

/** Vega-Lite spec: one point per policy, accuracy (%) against uplink MB (log scale). */
export function accuracyBytesSpec(r: RunReport): vl.TopLevelSpec {
  const values = (Object.entries(r.policies) as [PolicyName, PolicyResult][]).map(([policy, p]) => ({
    policy,
    accuracy: p.accuracy * 100,
    // The log scale has no 0: device-only sends nothing, shown at 1 kB.
    uplinkMB: Math.max(p.uplinkBytes, 1000) / 1e6,
    deadlineHit: p.deadlineHit * 100,
  }));
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: title(r, 'Accuracy vs uplink bytes'),
    width: 480,
    height: 300,
    data: { values },
    layer: [
      {
        mark: { type: 'point', filled: true, size: 120 },
        encoding: {
          x: { field: 'uplinkMB', type: 'quantitative', scale: { type: 'log' }, title: 'uplink MB (log)' },
          y: { field: 'accuracy', type: 'quantitative', scale: { zero: false }, title: 'accuracy %' },
          color: { field: 'policy', type: 'nominal' },
          shape: { field: 'policy', type: 'nominal' },
        },
      },
      {
        mark: { type: 'text', dy: -12, fontSize: 11 },
        encoding: {
          x: { field: 'uplinkMB', type: 'quantitative', scale: { type: 'log' } },
          y: { field: 'accuracy', type: 'quantitative' },
          text: { field: 'label', type: 'nominal' },
        },
        transform: [
          { calculate: "datum.policy + ' (' + format(datum.deadlineHit, '.1f') + '% in time)'", as: 'label' },
        ],
      },
    ],
  };
}

/** Vega-Lite spec: deadline-hit % per second per policy (left axis), capacity Mbit/s (right). */
export function deadlineTimelineSpec(r: RunReport): vl.TopLevelSpec {
  const hits: { second: number; policy: string; hit: number }[] = [];
  for (const [policy, p] of Object.entries(r.policies) as [PolicyName, PolicyResult][]) {
    if (policy === 'device-only') continue; // always 100 %: it never waits on the network
    p.timeline.frames.forEach((n, s) => {
      if (n > 0) hits.push({ second: s, policy, hit: (p.timeline.hits[s] / n) * 100 });
    });
  }
  const capacity = r.capacityBps.map((bps, second) => ({ second, mbps: bps / 1e6 }));
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: title(r, 'Deadline-hit rate per second vs trace capacity'),
    width: 720,
    height: 320,
    layer: [
      {
        data: { values: capacity },
        mark: { type: 'area', color: '#bbbbbb', opacity: 0.45, interpolate: 'step-after' },
        encoding: {
          x: { field: 'second', type: 'quantitative', title: 'time (s)' },
          y: {
            field: 'mbps',
            type: 'quantitative',
            title: 'trace capacity, Mbit/s (grey)',
            axis: { orient: 'right' },
          },
        },
      },
      {
        data: { values: hits },
        mark: { type: 'line', strokeWidth: 1.5, interpolate: 'step-after' },
        encoding: {
          x: { field: 'second', type: 'quantitative' },
          y: {
            field: 'hit',
            type: 'quantitative',
            title: 'frames within the deadline %',
            scale: { domain: [0, 100] },
          },
          color: { field: 'policy', type: 'nominal' },
        },
      },
    ],
    resolve: { scale: { y: 'independent' } },
  };
}

/**
 * Writes both plots of a run into `dir` (created if needed).
 * @returns the paths written.
 */
export async function writePlots(r: RunReport, dir: string): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  const base = `${r.trace.replace(/[^A-Za-z0-9._-]+/g, '_')}-${r.setup.cameras}cam-${r.setup.fps}fps-${r.setup.budgetMs}ms`;
  const files: [string, vl.TopLevelSpec][] = [
    [join(dir, `${base}-accuracy-vs-bytes.svg`), accuracyBytesSpec(r)],
    [join(dir, `${base}-deadline-hit.svg`), deadlineTimelineSpec(r)],
  ];
  for (const [path, spec] of files) await writeFile(path, await render(spec));
  return files.map(([path]) => path);
}
