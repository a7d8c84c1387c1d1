/**
 * The gateway's client of the cloud teacher (KServe v2 over HTTP): one undici keep-alive pool,
 * bearer token, W3C `traceparent`, and a hard timeout per call (the frame's remaining budget
 * minus a margin, set by the caller), so a slow cloud costs a frame its cloud answer, never its
 * deadline. The gateway's own top-1 travels as a request parameter so the cloud can log
 * disagreements as hard examples.
 */
import { Pool } from 'undici';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import type { TraceContext } from '../cascade/protocol.ts';
import { traceHeaders } from '../cascade/service/trace.ts';

/** Options of {@link CloudClient}. */
export interface CloudClientOptions {
  /** Base URL, e.g. http://cloud:8081. */
  url: string;
  /** Model name on the server. */
  model: string;
  token?: string;
  /** Keep-alive connections. Default 16. */
  connections?: number;
}

/** One image to classify. */
export interface CloudRequest {
  /** HWC uint8 pixels. */
  pixels: Uint8Array;
  height: number;
  width: number;
  channels: number;
  timeoutMs: number;
  trace: TraceContext;
  /** Budget the cloud has (for its batcher), ms. */
  budgetMs: number;
  gatewayTop1: number;
  gatewayConfidence: number;
  deviceTop1?: number;
  deviceId?: string;
  frameId?: number;
}

/** The cloud's answer. */
export interface CloudAnswer {
  probs: Float32Array;
  classes: number;
  modelVersion: string;
  /** Queue and service time the cloud reported, ms (0 when absent). */
  queueMs: number;
  serviceMs: number;
  bytesSent: number;
  bytesReceived: number;
}

/** Why a cloud call failed: 'timeout', 'unauthorized', 'overloaded', 'status', 'network', 'response'. */
export type CloudFailure = 'timeout' | 'unauthorized' | 'overloaded' | 'status' | 'network' | 'response';

/** A failed cloud call. `failure` is for counting. */
export class CloudError extends CascadeError {
  readonly failure: CloudFailure;
  constructor(failure: CloudFailure, message: string, cause?: unknown) {
    super(ErrorCodes.CLOUD_ERR_UPSTREAM, message, { cause, statusCode: 502 });
    this.failure = failure;
  }
}

interface KserveOutput {
  name: string;
  shape: number[];
  data: number[];
}

function num(v: unknown): number {
  return typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : 0;
}

export class CloudClient {
  readonly #pool: Pool;
  readonly #path: string;
  readonly #auth: string | undefined;
  #closed = false;

  constructor(opts: CloudClientOptions) {
    const base = new URL(opts.url);
    this.#pool = new Pool(base.origin, {
      connections: opts.connections ?? 16,
      keepAliveTimeout: 30_000,
      pipelining: 1,
    });
    const prefix = base.pathname.replace(/\/$/, '');
    this.#path = `${prefix}/v2/models/${encodeURIComponent(opts.model)}/infer`;
    this.#auth = opts.token === undefined ? undefined : `Bearer ${opts.token}`;
  }

  /**
   * Classifies one image on the cloud.
   * @throws {CloudError} on timeout, a non-200 status, a network error or a malformed response.
   */
  async infer(r: CloudRequest): Promise<CloudAnswer> {
    if (this.#closed) throw new CloudError('network', 'cloud client closed');
    if (!(r.timeoutMs > 0)) throw new CloudError('timeout', 'no budget left for the cloud');
    const shape = r.channels === 1 ? [1, r.height, r.width] : [1, r.height, r.width, r.channels];
    const parameters: Record<string, number | string> = {
      budget_ms: Math.max(0, r.budgetMs),
      gateway_top1: r.gatewayTop1,
      gateway_confidence: r.gatewayConfidence,
    };
    if (r.deviceTop1 !== undefined) parameters.device_top1 = r.deviceTop1;
    if (r.deviceId !== undefined) parameters.device_id = r.deviceId;
    if (r.frameId !== undefined) parameters.frame_id = r.frameId;
    const body = JSON.stringify({
      parameters,
      inputs: [{ name: 'input', shape, datatype: 'UINT8', data: Array.from(r.pixels) }],
    });
    const headers: Record<string, string> = {
      'content-type': 'application/json',
      ...traceHeaders(r.trace),
    };
    if (this.#auth !== undefined) headers.authorization = this.#auth;
    const signal = AbortSignal.timeout(Math.max(1, Math.floor(r.timeoutMs)));
    let status: number;
    let text: string;
    try {
      const res = await this.#pool.request({ path: this.#path, method: 'POST', headers, body, signal });
      status = res.statusCode;
      text = await res.body.text();
    } catch (err) {
      const timedOut = signal.aborted || (err as { name?: string }).name === 'AbortError';
      throw new CloudError(
        timedOut ? 'timeout' : 'network',
        timedOut
          ? `cloud did not answer within ${Math.floor(r.timeoutMs)} ms`
          : `cloud unreachable: ${(err as Error).message}`,
        err,
      );
    }
    if (status !== 200) {
      const failure: CloudFailure =
        status === 401 || status === 403
          ? 'unauthorized'
          : status === 429 || status === 503
            ? 'overloaded'
            : 'status';
      throw new CloudError(failure, `cloud answered HTTP ${status}: ${text.slice(0, 200)}`);
    }
    let json: { model_version?: unknown; outputs?: KserveOutput[]; parameters?: Record<string, unknown> };
    try {
      json = JSON.parse(text);
    } catch (err) {
      throw new CloudError('response', 'cloud answered with invalid JSON', err);
    }
    const probs = json.outputs?.find((o) => o.name === 'probabilities');
    if (!probs || !Array.isArray(probs.data) || probs.shape?.length !== 2 || probs.shape[0] !== 1)
      throw new CloudError('response', 'cloud answer has no probabilities [1, classes]');
    const classes = probs.shape[1];
    if (probs.data.length !== classes || !probs.data.every((v) => typeof v === 'number' && v >= 0 && v <= 1))
      throw new CloudError('response', 'cloud probabilities are malformed');
    return {
      probs: Float32Array.from(probs.data),
      classes,
      modelVersion: typeof json.model_version === 'string' ? json.model_version : '',
      queueMs: num(json.parameters?.queue_ms),
      serviceMs: num(json.parameters?.service_ms),
      bytesSent: Buffer.byteLength(body),
      bytesReceived: Buffer.byteLength(text),
    };
  }

  /** Closes the pool (in-flight calls finish). Safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#pool.close();
  }
}
