/**
 * Discrete-event simulation of the cascade, frame by frame: N cameras at F fps share one uplink
 * replayed from a capacity trace; a gateway with a deadline-aware dynamic batcher and the
 * service time per batch size measured from the real gateway model; a cloud tier behind its own
 * round-trip time with the teacher's measured service time. Every frame is a real test image
 * with the real prediction of each tier on the payload it was sent as, so accuracy is measured,
 * not assumed. An answer that misses the frame's deadline is not used: the device's own answer
 * stands, and the frame counts as a deadline miss.
 */
import type { PayloadKind, PolicyConfigPatch } from '../../cascade/policy/index.ts';
import { mulberry32, shuffleInPlace } from '../../models/data/rng.ts';
import { type EngineInspector, makePolicy, type PolicyName, type SimPolicy } from './policies.ts';
import { gatewayServiceMs, SIM_PAYLOADS, type SimData, type SimPayload } from './predictions.ts';
import { type CapacityTrace, type RttTrace, rttAt } from './traces.ts';
import { DEFAULT_OVERHEAD, EventQueue, Uplink, type WireOverhead, wireBytes } from './uplink.ts';

/** Settings of one simulation run. */
export interface SimOptions {
  cameras: number;
  fps: number;
  /** Latency budget per frame from capture, ms. */
  budgetMs: number;
  /** Simulated time, ms; default one period of the capacity trace. */
  durationMs?: number;
  /** Device ↔ gateway round trip without the uplink queue and serialisation, ms; default 10. */
  radioRttMs?: number;
  /** Drives the radio round trip instead of `radioRttMs` (e.g. UCC 5G PINGAVG). */
  rttTrace?: RttTrace;
  /** Gateway ↔ cloud round trip, ms; default 20. */
  cloudRttMs?: number;
  /** Device inference time, ms; default the measured one. */
  deviceMs?: number;
  /** Gateway batcher: largest batch (default 32) and longest wait for more (default 2 ms). */
  maxBatch?: number;
  maxWaitMs?: number;
  overhead?: WireOverhead;
  /** Seed of the frame order; default 1. */
  seed?: number;
  /** Engine config patches per tier. */
  engine?: { device?: PolicyConfigPatch; gateway?: PolicyConfigPatch };
  /** Called with every engine the run creates. */
  inspect?: EngineInspector;
}

/** Per-second series of a run, for the plots. */
export interface Timeline {
  frames: number[];
  hits: number[];
  uplinkBytes: number[];
}

/** The outcome of one policy. */
export interface PolicyResult {
  accuracy: number;
  deadlineHit: number;
  /** Bytes the policy put on the shared uplink, including protocol overhead. */
  uplinkBytes: number;
  resolved: { device: number; gateway: number; cloud: number };
  latencyMs: { p50: number; p95: number; p99: number };
  offloaded: number;
  gatewayUtilization: number;
  reasons: { device: Record<string, number>; gateway: Record<string, number> };
  /** Deadline misses by the device decision's reason code. */
  missesByReason: Record<string, number>;
  /**
   * Calibration of the engine's P(in time) for its offloads: per predicted-probability bin
   * [lo, hi), how many offloads and the share that met the deadline. Empty for other policies.
   */
  calibration: { lo: number; hi: number; n: number; hit: number }[];
  frames: number;
  timeline: Timeline;
}

type Tier = 'device' | 'gateway' | 'cloud';

interface Frame {
  camera: number;
  image: number;
  capture: number;
  deadline: number;
  payload: SimPayload | null;
  reason: string;
  pDeadline: number;
  bytes: number;
  sentAt: number;
  done: boolean;
  tier: Tier;
  latency: number;
  hit: boolean;
}

type Event =
  | { kind: 'decide'; frame: Frame }
  | { kind: 'gw-arrive'; frame: Frame }
  | { kind: 'gw-flush' }
  | { kind: 'gw-done'; batch: Frame[]; start: number; arrivals: number[] }
  | { kind: 'cloud-answer-at-gw'; frame: Frame; forwardedAt: number; queueMs: number; serviceMs: number }
  | {
      kind: 'answer';
      frame: Frame;
      tier: Tier | 'expired';
      queueMs: number;
      serviceMs: number;
      forwardMs: number;
    }
  | { kind: 'timer'; frame: Frame };

function quantile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return 0;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i];
}

/**
 * Runs one policy over the trace. Deterministic for given inputs.
 * @throws {RangeError} for non-positive cameras, fps or budget.
 */
export function simulate(
  data: SimData,
  trace: CapacityTrace,
  name: PolicyName,
  opts: SimOptions,
): PolicyResult {
  if (!(opts.cameras >= 1 && opts.fps > 0 && opts.budgetMs > 0)) {
    throw new RangeError('cameras, fps and budget must be positive');
  }
  const duration = opts.durationMs ?? trace.periodMs;
  const radio = (t: number) => (opts.rttTrace ? rttAt(opts.rttTrace, t) : (opts.radioRttMs ?? 10));
  const cloudRtt = opts.cloudRttMs ?? 20;
  const deviceMs = opts.deviceMs ?? data.deviceMs;
  const maxBatch = opts.maxBatch ?? 32;
  const maxWait = opts.maxWaitMs ?? 2;
  const overhead = opts.overhead ?? DEFAULT_OVERHEAD;
  const clock = { now: 0 };
  const policy: SimPolicy = makePolicy(name, data.cards, opts.cameras, clock, opts.engine, opts.inspect);
  const uplink = new Uplink(trace);
  const events = new EventQueue<Event>();

  // The same frames, in the same order, for every policy: a seeded permutation of the test set.
  const order = shuffleInPlace(
    Uint32Array.from({ length: data.n }, (_, i) => i),
    mulberry32(opts.seed ?? 1),
  );
  const frames: Frame[] = [];
  const interval = 1000 / opts.fps;
  for (let k = 0; k * interval < duration; k++) {
    for (let c = 0; c < opts.cameras; c++) {
      // Cameras are not in phase: spread their capture instants over one frame interval.
      const capture = k * interval + (c * interval) / opts.cameras;
      if (capture >= duration) continue;
      const f: Frame = {
        camera: c,
        image: order[frames.length % data.n],
        capture,
        deadline: capture + opts.budgetMs,
        payload: null,
        reason: '',
        pDeadline: Number.NaN,
        bytes: 0,
        sentAt: 0,
        done: false,
        tier: 'device',
        latency: deviceMs,
        hit: true,
      };
      frames.push(f);
      events.push(capture + deviceMs, { kind: 'decide', frame: f });
    }
  }

  const seconds = Math.ceil(duration / 1000);
  const timeline: Timeline = {
    frames: new Array(seconds).fill(0),
    hits: new Array(seconds).fill(0),
    uplinkBytes: new Array(seconds).fill(0),
  };
  const queue: { frame: Frame; arrival: number }[] = [];
  let gwBusy = false;
  let gwFlushAt = Number.POSITIVE_INFINITY;
  let gwBusyMs = 0;

  const startBatch = (now: number) => {
    if (gwBusy || queue.length === 0) return;
    if (queue.length < maxBatch && now < queue[0].arrival + maxWait) {
      const at = queue[0].arrival + maxWait;
      if (at < gwFlushAt) {
        gwFlushAt = at;
        events.push(at, { kind: 'gw-flush' });
      }
      return;
    }
    const taken = queue.splice(0, maxBatch);
    const batch: Frame[] = [];
    const arrivals: number[] = [];
    for (const { frame, arrival } of taken) {
      // Deadline-aware: a request whose answer cannot be back in time is answered as expired.
      if (now + radio(now) / 2 >= frame.deadline) {
        events.push(now + radio(now) / 2, {
          kind: 'answer',
          frame,
          tier: 'expired',
          queueMs: now - arrival,
          serviceMs: 0,
          forwardMs: 0,
        });
      } else {
        batch.push(frame);
        arrivals.push(arrival);
      }
    }
    if (batch.length === 0) return startBatch(now);
    gwBusy = true;
    const service = gatewayServiceMs(data, batch.length);
    gwBusyMs += service;
    events.push(now + service, { kind: 'gw-done', batch, start: now, arrivals });
  };

  for (let e = events.pop(); e !== undefined; e = events.pop()) {
    const now = e.at;
    clock.now = now;
    const ev = e.ev;
    switch (ev.kind) {
      case 'decide': {
        const f = ev.frame;
        const payloadBytes: Partial<Record<PayloadKind, number>> = {};
        for (const p of SIM_PAYLOADS) payloadBytes[p] = wireBytes(data.payloadBytes[p][f.image], overhead);
        const choice = policy.device(
          {
            camera: f.camera,
            confidence: data.device.conf[f.image],
            budgetLeftMs: f.deadline - now,
            payloadBytes,
          },
          now,
        );
        f.reason = choice.reason;
        f.pDeadline = choice.pDeadline;
        if (choice.target === 'local' || choice.payload === null) break;
        const p = choice.payload as SimPayload;
        f.payload = p;
        f.bytes = payloadBytes[p] ?? 0;
        f.sentAt = now;
        const second = Math.floor(f.capture / 1000);
        if (second < seconds) timeline.uplinkBytes[second] += f.bytes;
        const delivered = uplink.send(now, f.bytes) + radio(now) / 2;
        if (choice.target === 'gateway') {
          events.push(delivered, { kind: 'gw-arrive', frame: f });
        } else {
          const answered = delivered + cloudRtt + data.cloudMs;
          events.push(answered + radio(answered) / 2, {
            kind: 'answer',
            frame: f,
            tier: 'cloud',
            queueMs: 0,
            serviceMs: data.cloudMs,
            forwardMs: cloudRtt,
          });
        }
        events.push(f.deadline, { kind: 'timer', frame: f });
        break;
      }
      case 'gw-arrive':
        queue.push({ frame: ev.frame, arrival: now });
        startBatch(now);
        break;
      case 'gw-flush':
        gwFlushAt = Number.POSITIVE_INFINITY;
        startBatch(now);
        break;
      case 'gw-done': {
        gwBusy = false;
        const service = now - ev.start;
        ev.batch.forEach((f, i) => {
          const payload = f.payload as SimPayload;
          const conf = data.gateway[payload].conf[f.image];
          const back = radio(now) / 2;
          const queueMs = ev.start - ev.arrivals[i];
          if (policy.gatewayForward(conf, f.deadline - now - back, payload, f.bytes, now)) {
            events.push(now + cloudRtt + data.cloudMs, {
              kind: 'cloud-answer-at-gw',
              frame: f,
              forwardedAt: now,
              queueMs,
              serviceMs: service,
            });
          } else {
            events.push(now + back, {
              kind: 'answer',
              frame: f,
              tier: 'gateway',
              queueMs,
              serviceMs: service,
              forwardMs: 0,
            });
          }
        });
        startBatch(now);
        break;
      }
      case 'cloud-answer-at-gw': {
        policy.gatewayObserve(now, ev.frame.bytes, now - ev.forwardedAt, data.cloudMs);
        events.push(now + radio(now) / 2, {
          kind: 'answer',
          frame: ev.frame,
          tier: 'cloud',
          queueMs: ev.queueMs,
          serviceMs: ev.serviceMs,
          forwardMs: now - ev.forwardedAt,
        });
        break;
      }
      case 'answer': {
        const f = ev.frame;
        policy.deviceObserve(f.camera, now, f.bytes, now - f.sentAt, ev.queueMs, ev.serviceMs, ev.forwardMs);
        f.latency = now - f.capture;
        if (ev.tier !== 'expired' && now <= f.deadline) {
          f.tier = ev.tier;
          f.hit = true;
        } else {
          f.hit = false;
        }
        f.done = true;
        break;
      }
      case 'timer': {
        const f = ev.frame;
        if (!f.done) {
          f.hit = false;
          policy.deviceMiss(f.camera, now, f.bytes, now - f.sentAt);
        }
        break;
      }
    }
  }

  let correct = 0;
  let hits = 0;
  let offloaded = 0;
  const resolved = { device: 0, gateway: 0, cloud: 0 };
  const missesByReason: Record<string, number> = {};
  const edges = [0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 1.000001];
  const calibration = edges
    .slice(0, -1)
    .map((lo, i) => ({ lo, hi: Math.min(1, edges[i + 1]), n: 0, hit: 0 }));
  const latencies = new Float64Array(frames.length);
  frames.forEach((f, i) => {
    const pred =
      f.tier === 'device'
        ? data.device.pred[f.image]
        : (f.tier === 'gateway' ? data.gateway : data.cloud)[f.payload as SimPayload].pred[f.image];
    if (pred === data.labels[f.image]) correct++;
    if (f.hit) hits++;
    else missesByReason[f.reason] = (missesByReason[f.reason] ?? 0) + 1;
    if (f.payload !== null) {
      offloaded++;
      const bin = calibration.find((b, j) => f.pDeadline >= b.lo && f.pDeadline < edges[j + 1]);
      if (bin) {
        bin.n++;
        if (f.hit) bin.hit++;
      }
    }
    resolved[f.tier]++;
    latencies[i] = f.latency;
    const s = Math.floor(f.capture / 1000);
    timeline.frames[s]++;
    if (f.hit) timeline.hits[s]++;
  });
  latencies.sort();
  const n = frames.length;
  return {
    accuracy: correct / n,
    deadlineHit: hits / n,
    uplinkBytes: uplink.bytes,
    resolved: { device: resolved.device / n, gateway: resolved.gateway / n, cloud: resolved.cloud / n },
    latencyMs: {
      p50: quantile(latencies, 0.5),
      p95: quantile(latencies, 0.95),
      p99: quantile(latencies, 0.99),
    },
    offloaded: offloaded / n,
    gatewayUtilization: gwBusyMs / duration,
    reasons: policy.reasons(),
    missesByReason,
    calibration: calibration.filter((b) => b.n > 0).map((b) => ({ ...b, hit: b.hit / b.n })),
    frames: n,
    timeline,
  };
}
