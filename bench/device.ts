/**
 * bench:device — the device frame loop on dataset-replay 640×480 RGB frames: double-buffered
 * (preprocess frame n+1 off the main thread while frame n is inferred) against the same stages
 * run one after the other on one buffer, with the INT8 device student on one ONNX Runtime thread.
 *
 *   npm run bench:device -- [--frames N] [--rounds N] [--roi] [--backend auto|native|worker]
 *                           [--tier device|gateway|cloud] [--handoff sync|async]
 *                           [--spin-us N] [--idle-spin-us N] [--alloc-frames N] [--json]
 *
 * Frames are rendered once by the replay camera (so rendering is not timed) and fed as fast as
 * the loop takes them. By default the whole frame is resized to the model input, which with the
 * native kernel costs about what inference costs; `--roi` preprocesses only the item's ROI (what
 * `cascade device` does with the replay camera's detections: preprocessing becomes tiny).
 * `--tier` runs another tier's model on the camera (a larger camera SoC): double buffering can at
 * best hide the cheaper stage, so its gain is largest when the two stages cost about the same,
 * and with the device student (inference about half the full-frame preprocessing) it is bounded
 * by (pre + infer) / max(pre, infer) ≈ 1.5×.
 * `--handoff` picks how jobs reach the preprocessing thread: 'sync' (default; start/wait on the
 * preprocessor's own thread, no event-loop turn) or 'async' (the libuv pool behind a promise);
 * `--spin-us` / `--idle-spin-us` override the preprocessor's spins (PreprocessorOptions).
 * Rounds alternate the two modes so that a change in machine load does not favour one; the report
 * gives medians over rounds, and ratios per pair of rounds (a pipelined round against the
 * sequential round just before it), then their median. Stage times come from the sequential
 * rounds (no overlap): per-frame medians (`preprocessMs`, `inferMs`) and means (`stageMeanMs`).
 * `boundFraction` compares the pipelined frame rate with 1 / max(mean stage time), the bound for
 * a rate (frames over time is a mean); `inRunFraction` takes the stage means of the pipelined
 * round itself (the stages while they overlap); `boundFractionOfMedians` uses median stage times;
 * `preprocessMs` runs from the hand-off to the job's end as the preprocessing thread saw it, and
 * with the native thread `kernelMs` is the kernel's own part (the rest is the hand-off). The
 * machine's load average before and after is reported: on a shared machine it explains outliers.
 * Then `--alloc-frames` frames (default 10000) run pipelined to measure allocation: the sum of
 * heap-used increases between samples every 100 frames (an estimate of bytes allocated; a
 * collection in an interval hides that interval), garbage collections by kind, and the change of
 * heap and ArrayBuffer memory after a full collection.
 *
 * Prints {"pipelinedFps","sequentialFps","preprocessMs","inferMs", ...}.
 */
import { availableParallelism, loadavg } from 'node:os';
import { type PerformanceEntry, PerformanceObserver } from 'node:perf_hooks';
import { setImmediate as yieldNow } from 'node:timers/promises';
import { choiceOpt, numberOpt, parse } from '../cascade/args.ts';
import { FrameSlot } from '../device/frame-slot.ts';
import { FramePool, wallClock } from '../device/frames.ts';
import { ModelSlot } from '../device/model-slot.ts';
import { DevicePipeline } from '../device/pipeline.ts';
import { Preprocessor, resolveBackend } from '../device/preprocessor.ts';
import { ReplayCamera } from '../device/replay-source.ts';
import { StageStats } from '../device/stage-stats.ts';
import { loadBundledSample } from '../models/data/load.ts';
import type { Rect } from '../models/preprocess.ts';
import { loadRegistry, modelForTier } from '../models/registry.ts';
import { OnnxClassifier } from '../models/runtime.ts';

const { values: v } = parse(process.argv.slice(2), {
  frames: { type: 'string' },
  rounds: { type: 'string' },
  roi: { type: 'boolean' },
  backend: { type: 'string' },
  tier: { type: 'string' },
  handoff: { type: 'string' },
  'spin-us': { type: 'string' },
  'idle-spin-us': { type: 'string' },
  'alloc-frames': { type: 'string' },
  json: { type: 'boolean' },
});
const FRAMES = numberOpt('--frames', v.frames, { integer: true, min: 10 }) ?? 1000;
const ROUNDS = numberOpt('--rounds', v.rounds, { integer: true, min: 1 }) ?? 9;
const ALLOC_FRAMES = numberOpt('--alloc-frames', v['alloc-frames'], { integer: true, min: 0 }) ?? 10_000;
const want = choiceOpt('--backend', v.backend, ['auto', 'native', 'worker'] as const) ?? 'auto';
const { backend, why } = resolveBackend(want);
const useRoi = v.roi === true;
const tier = choiceOpt('--tier', v.tier, ['device', 'gateway', 'cloud'] as const) ?? 'device';
const handoff = choiceOpt('--handoff', v.handoff, ['sync', 'async'] as const) ?? 'sync';
const spinUs = numberOpt('--spin-us', v['spin-us'], { min: 0, max: 1e6 });
const idleSpinUs = numberOpt('--idle-spin-us', v['idle-spin-us'], { min: 0, max: 1e6 });
const loadBefore = loadavg();

const registry = await loadRegistry();
const card = modelForTier(registry, tier).card;
const model = await OnnxClassifier.load(card, { intraOpThreads: 1 });
const ds = await loadBundledSample();
const POOL = 64;
const pool = new FramePool({ size: POOL, bytes: 640 * 480 * 3, shared: backend === 'worker' });
const camera = new ReplayCamera({ dataset: ds, pool, fps: 0 });
const rois: (Rect | null)[] = [];
const rendered = [];
for (let i = 0; i < POOL; i++) {
  const f = pool.acquire();
  if (f === null) throw new Error('pool exhausted');
  camera.render(i, f);
  rois[f.slot] = f.roi === null ? null : { ...f.roi };
  rendered.push(f);
}
for (const f of rendered) f.release();
const buffers = [model.createBuffers(), model.createBuffers()] as const;
const pre = await Preprocessor.create({
  spec: model.card.input,
  buffers,
  pool,
  backend,
  handoff,
  spinUs,
  idleSpinUs,
});
const slotModel = new ModelSlot(model);

/** Runs `n` frames in `mode`; returns frames per second and the stage stats. */
async function run(mode: 'pipelined' | 'sequential', n: number, onFrame?: (i: number) => void) {
  const slot = new FrameSlot({ capacity: 2 });
  const stats = new StageStats(1024, n);
  const kernel = new Float64Array(n);
  let k = 0;
  let sink = 0;
  const pipeline = new DevicePipeline({
    slot,
    preprocessor: pre,
    model: slotModel,
    buffers,
    mode,
    stats,
    onInference: (inf) => {
      sink += inf.label;
      // The last job waited for: this frame's when sequential, the next one's when pipelined.
      if (k < n) kernel[k++] = pre.lastRunMs;
    },
  });
  const t0 = performance.now();
  const done = pipeline.run();
  for (let i = 0; i < n; i++) {
    await slot.waitForRoom();
    let f = pool.acquire();
    while (f === null) {
      await yieldNow();
      f = pool.acquire();
    }
    f.roi = useRoi ? rois[f.slot] : null;
    f.width = 640;
    f.height = 480;
    f.frameId = i;
    f.captureTime = wallClock();
    slot.push(f);
    onFrame?.(i);
  }
  slot.close();
  await done;
  const seconds = (performance.now() - t0) / 1000;
  if (pipeline.errors > 0) throw new Error(`${pipeline.errors} frames failed`);
  return { fps: n / seconds, stats, sink, kernelMs: median(Array.from(kernel.subarray(0, k))) };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

await run('sequential', 200);
await run('pipelined', 200);
const seqFps: number[] = [];
const pipeFps: number[] = [];
const preMs: number[] = [];
const infMs: number[] = [];
const preMeanMs: number[] = [];
const infMeanMs: number[] = [];
const kernelMs: number[] = [];
const pipePreMs: number[] = [];
const pipeInfMs: number[] = [];
const pipePreMeanMs: number[] = [];
const pipeInfMeanMs: number[] = [];
for (let r = 0; r < ROUNDS; r++) {
  const s = await run('sequential', FRAMES);
  seqFps.push(s.fps);
  preMs.push(s.stats.median('preprocess'));
  infMs.push(s.stats.median('infer'));
  preMeanMs.push(s.stats.mean('preprocess'));
  infMeanMs.push(s.stats.mean('infer'));
  kernelMs.push(s.kernelMs);
  const p = await run('pipelined', FRAMES);
  pipeFps.push(p.fps);
  pipePreMs.push(p.stats.median('preprocess'));
  pipeInfMs.push(p.stats.median('infer'));
  pipePreMeanMs.push(p.stats.mean('preprocess'));
  pipeInfMeanMs.push(p.stats.mean('infer'));
}

let alloc: Record<string, number> | null = null;
if (ALLOC_FRAMES > 0) {
  const gc = (globalThis as { gc?: () => void }).gc;
  const gcs = { minor: 0, major: 0, incremental: 0, weak: 0 };
  const kinds: Record<number, keyof typeof gcs> = { 1: 'minor', 2: 'major', 4: 'incremental', 8: 'weak' };
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      const k = kinds[(e as PerformanceEntry & { detail?: { kind?: number } }).detail?.kind ?? 0];
      if (k) gcs[k]++;
    }
  });
  await run('pipelined', 500);
  gc?.();
  const before = process.memoryUsage();
  obs.observe({ entryTypes: ['gc'] });
  let last = process.memoryUsage().heapUsed;
  let grown = 0;
  await run('pipelined', ALLOC_FRAMES, (i) => {
    if (i % 100 === 99) {
      const now = process.memoryUsage().heapUsed;
      if (now > last) grown += now - last;
      last = now;
    }
  });
  await yieldNow();
  obs.disconnect();
  gc?.();
  const after = process.memoryUsage();
  alloc = {
    frames: ALLOC_FRAMES,
    bytesPerFrame: Math.round(grown / ALLOC_FRAMES),
    minorGcs: gcs.minor,
    majorGcs: gcs.major + gcs.incremental,
    heapDeltaBytes: gc ? after.heapUsed - before.heapUsed : Number.NaN,
    arrayBuffersDeltaBytes: after.arrayBuffers - before.arrayBuffers,
  };
}

const counters = pre.handoffCounters;
const preprocessMs = median(preMs);
const inferMs = median(infMs);
const pipelinedFps = median(pipeFps);
const sequentialFps = median(seqFps);
// Throughput is frames over time, a mean: its bound is the slower stage's mean time (medians
// leave out the tail, collections and preemption, that the frame rate pays for). Each pipelined
// round is compared with the sequential round just before it: a shared machine's speed drifts
// between rounds by more than the effects measured, and a pair runs in about the same state.
const pairs = pipeFps.map((fps, i) => ({
  speedup: fps / seqFps[i],
  fraction: (fps * Math.max(preMeanMs[i], infMeanMs[i])) / 1000,
  inRun: (fps * Math.max(pipePreMeanMs[i], pipeInfMeanMs[i])) / 1000,
}));
const slowestMedianMs = Math.max(preprocessMs, inferMs);
const report = {
  pipelinedFps: round(pipelinedFps, 1),
  sequentialFps: round(sequentialFps, 1),
  preprocessMs: round(preprocessMs, 4),
  inferMs: round(inferMs, 4),
  /** Median over round pairs of pipelined / sequential fps. */
  speedup: round(median(pairs.map((p) => p.speedup)), 3),
  /** The most double buffering can give with these stage times: (pre + infer) / max(pre, infer). */
  speedupBound: round((preprocessMs + inferMs) / slowestMedianMs, 3),
  /** Mean stage times of the sequential rounds (medians over rounds), ms. */
  stageMeanMs: { preprocess: round(median(preMeanMs), 4), infer: round(median(infMeanMs), 4) },
  /**
   * Pipelined fps relative to 1 / max(stage), stage times the means of the sequential round
   * paired with it (the stages alone); median over pairs.
   */
  boundFraction: round(median(pairs.map((p) => p.fraction)), 3),
  /** The same with the stage means of the pipelined round itself (the stages while overlapped). */
  inRunFraction: round(median(pairs.map((p) => p.inRun)), 3),
  /** Median pipelined fps relative to 1 / max(median stage time) over all rounds. */
  boundFractionOfMedians: round((pipelinedFps * slowestMedianMs) / 1000, 3),
  pipelinedStageMs: { preprocess: round(median(pipePreMs), 4), infer: round(median(pipeInfMs), 4) },
  /** Each round's figures, in order (a shared machine's load shows as a drift or an outlier). */
  perRound: {
    sequentialFps: seqFps.map((x) => round(x, 0)),
    pipelinedFps: pipeFps.map((x) => round(x, 0)),
    preprocessMeanMs: preMeanMs.map((x) => round(x, 4)),
    inferMeanMs: infMeanMs.map((x) => round(x, 4)),
    pipelinedPreprocessMeanMs: pipePreMeanMs.map((x) => round(x, 4)),
    pipelinedInferMeanMs: pipeInfMeanMs.map((x) => round(x, 4)),
    boundFraction: pairs.map((p) => round(p.fraction, 3)),
  },
  /** The native kernel's own time (sequential median); preprocessMs − kernelMs is the hand-off. */
  kernelMs: round(median(kernelMs), 4),
  backend,
  backendWhy: why,
  handoff: pre.handoff,
  /** Sync hand-off: waits that found the job done while spinning, and those that blocked (whole run). */
  waits: counters,
  loadavg: { before: loadBefore.map((x) => round(x, 2)), after: loadavg().map((x) => round(x, 2)) },
  model: model.card.name,
  input: useRoi ? 'roi' : 'full-frame',
  frames: FRAMES,
  rounds: ROUNDS,
  cores: availableParallelism(),
  alloc,
};
await pre.close();
await model.dispose();

function round(x: number, d: number): number {
  return Number.isFinite(x) ? Math.round(x * 10 ** d) / 10 ** d : x;
}

if (v.json) {
  process.stdout.write(`${JSON.stringify(report)}\n`);
} else {
  const r = report;
  process.stdout.write(
    [
      `device pipeline, ${r.input} 640x480 → ${model.card.input.width}x${model.card.input.height}, model ${r.model}, backend ${r.backend} (${r.backendWhy}), ${r.handoff} hand-off`,
      `  stages (sequential medians): preprocess ${r.preprocessMs} ms (kernel ${r.kernelMs} ms), infer ${r.inferMs} ms`,
      `  stage means: preprocess ${r.stageMeanMs.preprocess} ms, infer ${r.stageMeanMs.infer} ms`,
      `  sequential ${r.sequentialFps} fps, pipelined ${r.pipelinedFps} fps: ${r.speedup}x (at most ${r.speedupBound}x with these stages)`,
      `  ${r.boundFraction} of 1/max(mean stage alone), ${r.inRunFraction} of 1/max(mean stage overlapped), ${r.boundFractionOfMedians} of 1/max(median stage)`,
      alloc
        ? `  allocation over ${alloc.frames} frames: ~${alloc.bytesPerFrame} B/frame, ${alloc.minorGcs} minor / ${alloc.majorGcs} major GCs, heap Δ ${alloc.heapDeltaBytes} B, ArrayBuffers Δ ${alloc.arrayBuffersDeltaBytes} B`
        : '',
      `  load average ${r.loadavg.before.join(' ')} before, ${r.loadavg.after.join(' ')} after`,
    ].join('\n') + '\n',
  );
}
