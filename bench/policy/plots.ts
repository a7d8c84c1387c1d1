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

/** Seconds of the moving average of the per-second deadline-hit rate. */
const SMOOTH_S = 5;

/**
 * Vega-Lite spec, two panels over time: the cumulative share of frames within the deadline per
 * policy against the 99 % line (where a policy breaks as capacity drops), and the per-second
 * rate (5 s moving average) over the trace's capacity (grey, right axis).
 */
export function deadlineTimelineSpec(r: RunReport): vl.TopLevelSpec {
  const cumulative: { second: number; policy: string; hit: number }[] = [];
  const rolling: { second: number; policy: string; hit: number }[] = [];
  for (const [policy, p] of Object.entries(r.policies) as [PolicyName, PolicyResult][]) {
    if (policy === 'device-only') continue; // always 100 %: it never waits on the network
    const { frames, hits } = p.timeline;
    let f = 0;
    let h = 0;
    frames.forEach((n, s) => {
      f += n;
      h += hits[s];
      if (f > 0) cumulative.push({ second: s + 1, policy, hit: (h / f) * 100 });
      let wf = 0;
      let wh = 0;
      for (let k = Math.max(0, s - SMOOTH_S + 1); k <= s; k++) {
        wf += frames[k];
        wh += hits[k];
      }
      if (wf > 0) rolling.push({ second: s + 1, policy, hit: (wh / wf) * 100 });
    });
  }
  const capacity = r.capacityBps.map((bps, second) => ({ second, mbps: bps / 1e6 }));
  // Zoom on the threshold policies and the engine; cloud-only usually falls off the bottom.
  const near = cumulative.filter((c) => c.second > 10 && c.policy !== 'cloud-only').map((c) => c.hit);
  const floor = Math.max(0, Math.floor(Math.min(98, ...near) - 1));
  const color = { field: 'policy', type: 'nominal' } as const;
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: title(r, 'Frames within the deadline'),
    vconcat: [
      {
        width: 720,
        height: 220,
        title: 'cumulative share within the deadline (dashed: 99 %; lines below the axis are off the chart)',
        layer: [
          {
            data: { values: cumulative },
            mark: { type: 'line', strokeWidth: 2, clip: true },
            encoding: {
              x: { field: 'second', type: 'quantitative', title: 'time (s)' },
              y: {
                field: 'hit',
                type: 'quantitative',
                title: 'within deadline so far %',
                scale: { domain: [floor, 100] },
              },
              color,
            },
          },
          {
            data: { values: [{ y: 99 }] },
            mark: { type: 'rule', strokeDash: [6, 4], color: 'black' },
            encoding: { y: { field: 'y', type: 'quantitative' } },
          },
        ],
      },
      {
        width: 720,
        height: 220,
        title: `per second (${SMOOTH_S} s moving average) over the trace capacity (grey)`,
        layer: [
          {
            data: { values: capacity },
            mark: { type: 'area', color: '#bbbbbb', opacity: 0.45, interpolate: 'step-after' },
            encoding: {
              x: { field: 'second', type: 'quantitative', title: 'time (s)' },
              y: { field: 'mbps', type: 'quantitative', title: 'capacity Mbit/s', axis: { orient: 'right' } },
            },
          },
          {
            data: { values: rolling },
            mark: { type: 'line', strokeWidth: 1.5 },
            encoding: {
              x: { field: 'second', type: 'quantitative' },
              y: {
                field: 'hit',
                type: 'quantitative',
                title: 'within deadline %',
                scale: { domain: [0, 100] },
              },
              color,
            },
          },
        ],
        resolve: { scale: { y: 'independent' } },
      },
    ],
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
