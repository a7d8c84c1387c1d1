/**
 * The device's per-frame decision, after inference: ask the policy engine (accept here, or
 * offload with which payload), offload through the {@link OffloadClient} with the frame's
 * remaining budget as deadline, and publish the final result: the gateway's or cloud's answer
 * when a usable one came in time, else the local answer (a miss when an offload went
 * unanswered). While no offload is possible (no broker, disconnected, too many in flight, the
 * gateway asked to wait) the engine's choice is only explained, never acted on, and the frame is
 * answered locally with reason `local:offline`, `local:nobroker`, `local:busy` or
 * `local:overloaded` when the engine would have offloaded.
 */
import type { PayloadKind, PolicyEngine } from '../cascade/policy/index.ts';
import type { ContentType, OffloadMessage, Ranked, TierName, TraceContext } from '../cascade/protocol.ts';
import { rootTrace } from '../cascade/service/trace.ts';
import type { InputSpec } from '../models/card.ts';
import { wallClock } from './frames.ts';
import { bump, type DeviceCounts, type LatencyRings } from './metrics.ts';
import type { OffloadClient, OffloadOutcome } from './offload-client.ts';
import {
  cropRgb,
  encodeJpeg,
  JpegSizeModel,
  jpegQuality,
  payloadQuant,
  quantizeInput,
  tensorInfo,
} from './payload.ts';
import type { Inference } from './pipeline.ts';
import type { ResultPublisher } from './result-publisher.ts';

/** Trace of results no other tier took part in (all-zero ids: "not traced"). */
const NO_TRACE: TraceContext = Object.freeze({
  traceId: '0'.repeat(32),
  spanId: '0'.repeat(16),
  flags: 0,
});

const TOPK = 3;
const JPEG_QUALITIES = [90, 75, 50] as const;

/** Options of {@link FrameDecider}. */
export interface DeciderOptions {
  deviceId: string;
  budgetMs: number;
  /** Kept back from the budget for publishing the result, ms. */
  marginMs: number;
  engine: PolicyEngine;
  /** null: no broker configured. */
  offload: OffloadClient | null;
  publisher: ResultPublisher;
  counts: DeviceCounts;
  latency: LatencyRings;
  spec: InputSpec;
  /** Offer JPEG payloads to the policy (which refuses them in privacy mode). */
  jpeg: boolean;
  privacy: boolean;
  /** Reports an asynchronous failure (a JPEG encode). */
  onError?: (err: unknown) => void;
}

/** What a frame's result needs once its offload has ended. */
interface Local {
  frameId: number;
  captureTime: number;
  truth: number;
  label: number;
  confidence: number;
  reason: string;
  trace: TraceContext;
}

export class FrameDecider {
  readonly #o: DeciderOptions;
  #spec: InputSpec;
  #quant: { scale: number; zeroPoint: number };
  #tensor: ReturnType<typeof tensorInfo>;
  readonly #jpegSizes = new JpegSizeModel();
  readonly #payloadBytes: Partial<Record<PayloadKind, number>> = {};
  readonly #facts = { confidence: 0, budgetLeftMs: 0, payloadBytes: this.#payloadBytes, privacy: false };
  #encoding = 0;
  readonly #idle: (() => void)[] = [];

  constructor(opts: DeciderOptions) {
    this.#o = opts;
    this.#spec = opts.spec;
    this.#quant = payloadQuant(opts.spec);
    this.#tensor = tensorInfo(opts.spec);
    this.#facts.privacy = opts.privacy;
  }

  /** A new model is live: its input spec drives the tensor payload from now on. */
  setSpec(spec: InputSpec): void {
    this.#spec = spec;
    this.#quant = payloadQuant(spec);
    this.#tensor = tensorInfo(spec);
  }

  /** Decides one inferred frame (synchronously reads the frame and buffers; keeps copies only). */
  onInference(inf: Inference): void {
    const o = this.#o;
    const frame = inf.frame;
    const budgetLeft = o.budgetMs - (wallClock() - frame.captureTime) - o.marginMs;
    const facts = this.#facts;
    facts.confidence = inf.confidence;
    facts.budgetLeftMs = budgetLeft;
    const pb = this.#payloadBytes;
    pb.tensor = inf.input.length;
    // Offered even in privacy mode: the engine refuses them there and says so (local:privacy).
    const offerJpeg = o.jpeg;
    const pixels = frame.roi ? frame.roi.width * frame.roi.height : frame.width * frame.height;
    for (const q of JPEG_QUALITIES) pb[`jpeg-q${q}`] = offerJpeg ? this.#jpegSizes.estimate(q, pixels) : 0;
    const blocked = o.offload === null ? 'nobroker' : o.offload.blocked();
    let reason: string;
    let payload: PayloadKind | null = null;
    if (blocked !== null) {
      const d = o.engine.explain(facts);
      reason = d.offload ? `local:${blocked}` : d.reason;
    } else {
      const d = o.engine.decide(facts);
      reason = d.reason;
      payload = d.offload ? d.payload : null;
      if (o.privacy && payload !== null && jpegQuality(payload) !== null) {
        // Defence in depth: whatever the policy says, no pixels leave in privacy mode.
        payload = null;
        reason = 'local:privacy';
      }
    }
    if (payload === null) {
      this.#result(
        frame.frameId,
        frame.captureTime,
        frame.truth,
        'device',
        inf.label,
        inf.confidence,
        reason,
        false,
        NO_TRACE,
      );
      return;
    }
    const local: Local = {
      frameId: frame.frameId,
      captureTime: frame.captureTime,
      truth: frame.truth,
      label: inf.label,
      confidence: inf.confidence,
      reason,
      trace: rootTrace(),
    };
    const topk = topK(inf.probs, TOPK);
    const quality = jpegQuality(payload);
    const base = {
      kind: 'offload' as const,
      deviceId: o.deviceId,
      frameId: frame.frameId,
      captureTime: frame.captureTime,
      modelVersion: inf.model.card.version,
      topk,
      trace: local.trace,
      privacy: o.privacy,
    };
    bump(o.counts.offloads, `${reason}|${payload}`);
    if (quality === null) {
      const bytes = quantizeInput(inf.input, this.#quant, new Uint8Array(inf.input.length));
      this.#send(
        {
          ...base,
          budgetLeftMs: 0, // set when sent
          contentType: 'tensorU8',
          tensor: this.#tensor,
          payload: bytes,
        },
        local,
      );
      return;
    }
    // JPEG: copy the ROI now (the frame goes back to its pool), encode off the main thread.
    const rgb = cropRgb(frame);
    this.#encoding++;
    encodeJpeg(rgb, quality)
      .then((jpeg) => {
        this.#jpegSizes.observe(quality, rgb.width * rgb.height, jpeg.length);
        if (o.offload?.blocked() !== null) {
          this.#missed(local, 'timeout');
          return;
        }
        this.#send({ ...base, budgetLeftMs: 0, contentType: 'jpeg' as ContentType, payload: jpeg }, local);
      })
      .catch((err: unknown) => {
        o.onError?.(err);
        this.#missed(local, 'error');
      })
      .finally(() => {
        this.#encoding--;
        this.#checkIdle();
      });
  }

  /**
   * Publishes an offload. Its deadline is the frame's (capture + budget − margin), read at the
   * moment of sending: time spent since the decision (a JPEG encode, or a preempted process)
   * comes out of the wait, never out of the budget.
   */
  #send(msg: OffloadMessage, local: Local): void {
    const o = this.#o;
    const left = o.budgetMs - o.marginMs - (wallClock() - local.captureTime);
    if (left <= 0) {
      this.#missed(local, 'timeout');
      return;
    }
    msg.budgetLeftMs = left;
    const client = o.offload as OffloadClient;
    const bytes = client.send(msg, left, (outcome) => this.#settled(local, outcome));
    o.counts.bytes.offload += bytes;
  }

  #settled(local: Local, outcome: OffloadOutcome): void {
    if (outcome.kind === 'answer') {
      const best = outcome.answer.topk[0];
      this.#result(
        local.frameId,
        local.captureTime,
        local.truth,
        outcome.answer.tier,
        best.label,
        best.prob,
        local.reason,
        false,
        local.trace,
      );
    } else {
      this.#missed(local, outcome.why);
    }
  }

  #missed(local: Local, why: string): void {
    bump(this.#o.counts.misses, why);
    this.#result(
      local.frameId,
      local.captureTime,
      local.truth,
      'device',
      local.label,
      local.confidence,
      local.reason,
      true,
      local.trace,
    );
  }

  #result(
    frameId: number,
    captureTime: number,
    truth: number,
    tier: TierName,
    label: number,
    confidence: number,
    reason: string,
    missed: boolean,
    trace: TraceContext,
  ): void {
    const o = this.#o;
    const latencyMs = wallClock() - captureTime;
    const bytes = o.publisher.publish({
      kind: 'result',
      deviceId: o.deviceId,
      frameId,
      captureTime,
      tier,
      label,
      confidence,
      latencyMs,
      budgetMs: o.budgetMs,
      reason,
      missed,
      truth,
      trace,
    });
    o.counts.bytes.result += bytes;
    bump(o.counts.results, `${tier}|${reason}`);
    o.latency.record(missed ? 'missed' : tier, latencyMs);
  }

  /** JPEG encodes in progress. */
  get encoding(): number {
    return this.#encoding;
  }

  #checkIdle(): void {
    if (this.#encoding === 0) for (const w of this.#idle.splice(0)) w();
  }

  /** Resolves when no JPEG encode is in progress (offloads: {@link OffloadClient.idle}). */
  idle(): Promise<void> {
    if (this.#encoding === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }
}

/** The k most probable classes, best first. */
export function topK(probs: Float32Array, k: number): Ranked[] {
  const out: Ranked[] = [];
  for (let i = 0; i < probs.length; i++) {
    const p = probs[i];
    if (out.length < k || p > out[out.length - 1].prob) {
      let at = out.length < k ? out.length : k - 1;
      if (out.length === k) out.pop();
      out.splice(at, 0, { label: i, prob: p });
      while (at > 0 && out[at - 1].prob < out[at].prob) {
        [out[at - 1], out[at]] = [out[at], out[at - 1]];
        at--;
      }
    }
  }
  return out;
}
