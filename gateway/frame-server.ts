/**
 * The gateway's per-frame pipeline, shared by the MQTT and HTTP front ends: the dynamic batcher
 * runs the gateway model, the policy engine (tier 'gateway') decides with the remaining budget
 * whether the gateway's answer stands or the frame goes to the cloud teacher, and a cloud timeout
 * or error falls back to the gateway's own answer inside the budget. Every frame resolves to
 * exactly one {@link FrameResult} with its queue, service and cloud times.
 */
import { DeadlineBatcher, realScheduler, type Scheduler } from '../cascade/batcher.ts';
import type { PolicyEngine } from '../cascade/policy/index.ts';
import type { AnswerStatus, Ranked, TierName, TraceContext } from '../cascade/protocol.ts';
import { rowOf, type ScoredBatch, type ServingEngine } from '../cascade/service/engine.ts';
import { childTrace } from '../cascade/service/trace.ts';
import { type CloudClient, CloudError } from './cloud-client.ts';
import type { GatewayMetrics, Transport } from './metrics.ts';

/** One frame to serve. */
export interface FrameRequest {
  /** HWC uint8 pixels at the model's size (forwardable to the cloud), or … */
  pixels?: Uint8Array;
  /** … a preprocessed tensor in the model's layout (served here only). */
  tensor?: Float32Array;
  /** Budget left when the frame arrived, ms. */
  budgetMs: number;
  /** Arrival time on the server's clock (default now). */
  arrivedAt?: number;
  trace: TraceContext;
  privacy?: boolean;
  transport: Transport;
  deviceId?: string;
  frameId?: number;
  deviceTop1?: number;
}

/** What happened to one frame. */
export interface FrameResult {
  status: AnswerStatus;
  tier: TierName;
  modelVersion: string;
  /** Calibrated probabilities of the answering tier (ok only). */
  probs: Float32Array | null;
  topk: Ranked[];
  queueMs: number;
  /** Gateway engine time, plus the cloud round trip when forwarded. */
  serviceMs: number;
  cloudMs: number;
  retryAfterMs: number;
  /** `local:confident`, `forward:gain`, `fallback:cloud-timeout`, `expired`, `overloaded`, … */
  reason: string;
}

/** Options of {@link FrameServer}. */
export interface FrameServerOptions {
  engine: ServingEngine;
  policy: PolicyEngine;
  cloud?: CloudClient;
  metrics: GatewayMetrics;
  maxBatch: number;
  maxDelayMs: number;
  maxQueue: number;
  concurrency: number;
  /** The cloud call ends this long before the deadline. */
  cloudMarginMs: number;
  topk: number;
  /** Admission control on (default true). */
  admission?: boolean;
  scheduler?: Scheduler;
  random?: (n: number) => Uint8Array;
}

/** The k most probable classes, most probable first (ties: lower label first). */
function topOf(probs: Float32Array, k: number): Ranked[] {
  // Insertion into a short sorted list: k is small, and this runs for every frame.
  const top: number[] = [];
  const n = Math.min(k, probs.length);
  for (let label = 0; label < probs.length; label++) {
    const p = probs[label];
    let at = top.length;
    while (at > 0 && probs[top[at - 1]] < p) at--;
    if (at >= n) continue;
    if (top.length === n) top.pop();
    top.splice(at, 0, label);
  }
  return top.map((label) => ({ label, prob: Math.min(1, Math.max(0, probs[label])) }));
}

export class FrameServer {
  readonly #engine: ServingEngine;
  readonly #policy: PolicyEngine;
  readonly #cloud: CloudClient | undefined;
  readonly #m: GatewayMetrics;
  /** Inputs are images (preprocessed straight into the batch buffer at dispatch) or tensors. */
  readonly #batcher: DeadlineBatcher<Uint8Array | Float32Array, Float32Array>;
  readonly #sched: Scheduler;
  readonly #opts: FrameServerOptions;

  constructor(opts: FrameServerOptions) {
    this.#opts = opts;
    this.#engine = opts.engine;
    this.#policy = opts.policy;
    this.#cloud = opts.cloud;
    this.#m = opts.metrics;
    this.#sched = opts.scheduler ?? realScheduler;
    const engine = opts.engine;
    const per = engine.tensorFloats;
    this.#batcher = new DeadlineBatcher<Uint8Array | Float32Array, Float32Array>({
      maxBatch: opts.maxBatch,
      maxDelayMs: opts.maxDelayMs,
      maxQueue: opts.maxQueue,
      concurrency: opts.concurrency,
      admission: opts.admission ?? true,
      scheduler: this.#sched,
      run: async (inputs) => {
        const batch = new Float32Array(inputs.length * per);
        for (let i = 0; i < inputs.length; i++) {
          const x = inputs[i];
          if (x instanceof Float32Array) batch.set(x, i * per);
          else engine.preprocessInto(x, 1, batch.subarray(i * per, (i + 1) * per));
        }
        const scored: ScoredBatch = await engine.runTensor(batch, inputs.length);
        return inputs.map((_, i) => rowOf(scored, i));
      },
      onBatch: (size) => this.#m.batchSize.observe(size),
    });
    const batcher = this.#batcher;
    this.#m.bindQueue(() => ({ depth: batcher.depth, running: batcher.running }));
  }

  /** The batcher (for warm-up measurements and draining). */
  get batcher(): DeadlineBatcher<Uint8Array | Float32Array, Float32Array> {
    return this.#batcher;
  }

  /**
   * Warms the whole path (preprocessing, engine at several batch sizes: first runs are slow) and
   * seeds the batcher's service model with measured times.
   */
  async warmUp(rounds = 3): Promise<void> {
    const per = this.#engine.tensorFloats;
    const max = this.#opts.maxBatch;
    const pixels = new Uint8Array(this.#engine.imageBytes);
    for (let i = 0; i < 64; i++) this.#engine.preprocess(pixels, 1);
    for (let n = 2; n < max; n *= 2) await this.#engine.runTensor(new Float32Array(n * per), n);
    for (const n of [1, max]) {
      for (let r = 0; r < rounds; r++) {
        const t0 = this.#sched.now();
        await this.#engine.runTensor(new Float32Array(n * per), n);
        if (r > 0) this.#batcher.observeService(n, this.#sched.now() - t0);
      }
    }
  }

  /** Serves one frame. Never rejects. */
  async serve(req: FrameRequest): Promise<FrameResult> {
    const arrived = req.arrivedAt ?? this.#sched.now();
    const deadline = arrived + req.budgetMs;
    if (!(req.budgetMs > 0)) {
      this.#m.misses.inc({ kind: 'expired' });
      return this.#finish(req, arrived, this.#result('expired', 'expired', 0, 0, 0));
    }
    // Admission before any work: refuse at once when the queue cannot serve it in its budget.
    const wait = this.#opts.admission === false ? undefined : this.#batcher.refusal(req.budgetMs);
    if (wait !== undefined) {
      return this.#finish(
        req,
        arrived,
        this.#result('overloaded', 'overloaded', 0, 0, Math.max(1, Math.ceil(wait - req.budgetMs))),
      );
    }
    // Pixels are preprocessed into the batch buffer at dispatch; only their size can be wrong.
    const input = req.tensor ?? req.pixels ?? new Uint8Array(0);
    try {
      if (!(input instanceof Float32Array) && input.length !== this.#engine.imageBytes)
        this.#engine.preprocess(input, 1); // throws the engine's own RangeError
    } catch (err) {
      return this.#finish(
        req,
        arrived,
        this.#result('error', `bad-input:${(err as Error).message.slice(0, 60)}`, 0, 0, 0),
      );
    }
    const outcome = await this.#batcher.submit(input, deadline - this.#sched.now());
    switch (outcome.status) {
      case 'overloaded':
        return this.#finish(
          req,
          arrived,
          this.#result('overloaded', 'overloaded', 0, 0, outcome.retryAfterMs),
        );
      case 'expired':
        this.#m.misses.inc({ kind: 'expired' });
        return this.#finish(req, arrived, this.#result('expired', 'expired', outcome.queueMs, 0, 0));
      case 'closed':
        return this.#finish(req, arrived, this.#result('overloaded', 'shutting-down', 0, 0, 1000));
      case 'error':
        return this.#finish(
          req,
          arrived,
          this.#result('error', 'engine-error', outcome.queueMs, outcome.serviceMs, 0),
        );
      case 'ok':
        break;
    }
    const { queueMs, serviceMs } = outcome;
    this.#m.latency.observe({ stage: 'queue', transport: req.transport }, queueMs / 1000);
    this.#m.latency.observe({ stage: 'service', transport: req.transport }, serviceMs / 1000);
    const probs = outcome.output;
    let top1 = 0;
    for (let k = 1; k < probs.length; k++) if (probs[k] > probs[top1]) top1 = k;
    const confidence = probs[top1];
    const own = this.#result(
      'ok',
      'local:nocloud',
      queueMs,
      serviceMs,
      0,
      probs,
      topOf(probs, this.#opts.topk),
    );
    const cloud = this.#cloud;
    if (cloud === undefined || req.pixels === undefined) {
      own.reason = cloud === undefined ? 'local:nocloud' : 'local:nopayload';
      return this.#finish(req, arrived, own);
    }
    const left = deadline - this.#sched.now();
    const bytes = req.pixels.length;
    const decision = this.#policy.decide({
      confidence,
      budgetLeftMs: left,
      payloadBytes: { tensor: bytes },
      privacy: req.privacy,
    });
    if (!decision.offload) {
      own.reason = decision.reason;
      return this.#finish(req, arrived, own);
    }
    const forward = decision.reason.replace(/^offload:/, 'forward:');
    this.#m.forwards.inc({ reason: forward });
    const { height, width } = this.#engine.card.input;
    const start = this.#sched.now();
    try {
      const a = await cloud.infer({
        pixels: req.pixels,
        height,
        width,
        channels: req.pixels.length / (height * width),
        timeoutMs: left - this.#opts.cloudMarginMs,
        budgetMs: left - this.#opts.cloudMarginMs,
        trace: childTrace(req.trace, this.#opts.random),
        gatewayTop1: top1,
        gatewayConfidence: confidence,
        deviceTop1: req.deviceTop1,
        deviceId: req.deviceId,
        frameId: req.frameId,
      });
      const end = this.#sched.now();
      const cloudMs = end - start;
      this.#m.sent.inc({ transport: 'http', peer: 'cloud' }, a.bytesSent);
      this.#m.received.inc({ transport: 'http' }, a.bytesReceived);
      this.#m.latency.observe({ stage: 'cloud', transport: req.transport }, cloudMs / 1000);
      this.#policy.observe({ at: end, bytes, rttMs: cloudMs, queueMs: a.queueMs, serviceMs: a.serviceMs });
      return this.#finish(req, arrived, {
        status: 'ok',
        tier: 'cloud',
        modelVersion: a.modelVersion,
        probs: a.probs,
        topk: topOf(a.probs, this.#opts.topk),
        queueMs,
        serviceMs: serviceMs + cloudMs,
        cloudMs,
        retryAfterMs: 0,
        reason: forward,
      });
    } catch (err) {
      const end = this.#sched.now();
      const failure = err instanceof CloudError ? err.failure : 'network';
      this.#m.fallbacks.inc({ reason: failure });
      this.#policy.observeMiss(end, bytes, end - start);
      own.reason = `fallback:cloud-${failure}`;
      return this.#finish(req, arrived, own);
    }
  }

  /** A result of the gateway's own: every field, always in this order (one object shape). */
  #result(
    status: AnswerStatus,
    reason: string,
    queueMs: number,
    serviceMs: number,
    retryAfterMs: number,
    probs: Float32Array | null = null,
    topk: Ranked[] = [],
  ): FrameResult {
    const modelVersion = this.#engine.card.version;
    return {
      status,
      tier: 'gateway',
      modelVersion,
      probs,
      topk,
      queueMs,
      serviceMs,
      cloudMs: 0,
      retryAfterMs,
      reason,
    };
  }

  #finish(req: FrameRequest, arrived: number, r: FrameResult): FrameResult {
    const total = this.#sched.now() - arrived;
    this.#m.requests.inc({ transport: req.transport, status: r.status });
    if (r.status === 'ok') {
      this.#m.answers.inc({ tier: r.tier, reason: r.reason });
      this.#m.latency.observe({ stage: 'total', transport: req.transport }, total / 1000);
      if (total > req.budgetMs) this.#m.misses.inc({ kind: 'late' });
    }
    return r;
  }

  /** Stops intake and waits for queued and running batches. */
  close(): Promise<void> {
    return this.#batcher.close();
  }
}
