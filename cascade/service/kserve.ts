/**
 * The KServe v2 / Open Inference Protocol surface shared by the gateway and the cloud teacher, so
 * that Triton Inference Server or KServe can stand in for either: `GET /v2`, `/v2/health/live`,
 * `/v2/health/ready`, `/v2/models/<name>` (metadata from the model card), `/v2/models/<name>/ready`
 * and `POST /v2/models/<name>/infer` with JSON tensors.
 *
 * Inputs (one tensor): `UINT8` raw pixels, shape [n, H, W] (gray) or [n, H, W, C] (HWC), at the
 * card's size; or `FP32` preprocessed tensors in the card's layout, [n, C, H, W] or [n, H, W, C].
 * The leading n may be left out for one image. `data` may be flat or nested. Outputs:
 * `probabilities` FP32 [n, classes] (calibrated), `labels` INT32 [n], `confidence` FP32 [n].
 * Request `parameters` carry the cascade's extras (e.g. `budget_ms`); response `parameters` the
 * latency breakdown (`queue_ms`, `service_ms`, …). Errors are `{"error": "..."}` with a status.
 */
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ModelCard } from '../../models/card.ts';
import { CascadeError, type ErrorCode, ErrorCodes } from '../errors.ts';

/** A request refused for load or time: carries Retry-After. */
export class RefusedError extends CascadeError {
  readonly retryAfterMs: number;
  constructor(code: ErrorCode, message: string, statusCode: number, retryAfterMs: number) {
    super(code, message, { statusCode });
    this.retryAfterMs = retryAfterMs;
  }
}

/** A parsed inference request. */
export interface InferRequest {
  id: string | undefined;
  n: number;
  input: { kind: 'pixels'; pixels: Uint8Array } | { kind: 'tensor'; data: Float32Array };
  /** Request-level parameters (strings, numbers, booleans). */
  parameters: Readonly<Record<string, unknown>>;
  headers: FastifyRequest['headers'];
  /** Bytes of the request body. */
  bodyBytes: number;
}

/** What an infer handler returns. */
export interface InferReply {
  /** n × classes calibrated probabilities. */
  probs: Float32Array;
  n: number;
  classes: number;
  /** Version of the model that answered (default the card's). */
  modelVersion?: string;
  parameters?: Record<string, string | number | boolean>;
}

/** Options of {@link kserveRoutes}. */
export interface KserveOptions {
  card: ModelCard;
  /** Server name in `GET /v2`. */
  serverName: string;
  ready: () => boolean;
  infer: (req: InferRequest) => Promise<InferReply>;
  /** Called before the body of infer and metadata requests is read (bearer auth); throws to refuse. */
  authorize?: (req: FastifyRequest) => void;
}

const Input = {
  type: 'object',
  required: ['name', 'shape', 'datatype', 'data'],
  properties: {
    name: { type: 'string' },
    shape: { type: 'array', items: { type: 'integer', minimum: 1 }, minItems: 2, maxItems: 4 },
    datatype: { type: 'string', enum: ['UINT8', 'FP32'] },
    data: { type: 'array' },
    parameters: { type: 'object' },
  },
} as const;

const InferBody = {
  type: 'object',
  required: ['inputs'],
  properties: {
    id: { type: 'string', maxLength: 256 },
    parameters: { type: 'object' },
    inputs: { type: 'array', items: Input, minItems: 1, maxItems: 1 },
    outputs: { type: 'array' },
  },
} as const;

interface InferBodyT {
  id?: string;
  parameters?: Record<string, unknown>;
  inputs: { name: string; shape: number[]; datatype: 'UINT8' | 'FP32'; data: unknown[] }[];
}

function bad(message: string): CascadeError {
  return new CascadeError(ErrorCodes.GW_ERR_BAD_REQUEST, message, { statusCode: 400 });
}

function channelsOf(card: ModelCard): number {
  return card.input.colour === 'gray' ? 1 : 3;
}

/** Flattens nested `data` into `out`, checking every value. */
function flatten(data: unknown[], out: number[], integer: boolean): void {
  for (const v of data) {
    if (Array.isArray(v)) flatten(v, out, integer);
    else if (
      typeof v === 'number' &&
      Number.isFinite(v) &&
      (!integer || (Number.isInteger(v) && v >= 0 && v <= 255))
    )
      out.push(v);
    else
      throw bad(
        `input data: expected ${integer ? 'integers 0-255' : 'finite numbers'}, received ${JSON.stringify(v)}`,
      );
  }
}

/**
 * Validates an input tensor against the card and converts it.
 * @throws {CascadeError} GW_ERR_BAD_REQUEST (400) naming what was expected and received.
 */
export function parseInput(
  card: ModelCard,
  input: InferBodyT['inputs'][number],
): { n: number; input: InferRequest['input'] } {
  const { height: h, width: w, layout } = card.input;
  const c = channelsOf(card);
  const shape = input.shape;
  let n: number;
  if (input.datatype === 'UINT8') {
    // [n,H,W], [n,H,W,C], [H,W], [H,W,C]
    const dims =
      shape.length === 4 || (shape.length === 3 && !(shape[0] === h && shape[1] === w))
        ? shape
        : [1, ...shape];
    const ok =
      dims[1] === h && dims[2] === w && (dims.length === 3 ? c === 1 : dims[3] === c) && dims.length <= 4;
    if (!ok)
      throw bad(`input ${input.name}: UINT8 shape [${shape}] is not [n, ${h}, ${w}${c > 1 ? `, ${c}` : ''}]`);
    n = dims[0];
  } else {
    const per = layout === 'NCHW' ? [c, h, w] : [h, w, c];
    const dims = shape.length === 4 ? shape : [1, ...shape];
    if (dims.length !== 4 || dims[1] !== per[0] || dims[2] !== per[1] || dims[3] !== per[2])
      throw bad(`input ${input.name}: FP32 shape [${shape}] is not [n, ${per}] (${layout})`);
    n = dims[0];
  }
  const values: number[] = [];
  flatten(input.data, values, input.datatype === 'UINT8');
  const expected = n * h * w * c;
  if (values.length !== expected)
    throw bad(`input ${input.name}: ${values.length} values for shape [${shape}] (expected ${expected})`);
  return input.datatype === 'UINT8'
    ? { n, input: { kind: 'pixels', pixels: Uint8Array.from(values) } }
    : { n, input: { kind: 'tensor', data: Float32Array.from(values) } };
}

/** The KServe v2 response body of a reply. */
export function inferResponse(card: ModelCard, id: string | undefined, r: InferReply): object {
  const labels = new Array<number>(r.n);
  const conf = new Array<number>(r.n);
  for (let i = 0; i < r.n; i++) {
    let best = 0;
    for (let k = 1; k < r.classes; k++)
      if (r.probs[i * r.classes + k] > r.probs[i * r.classes + best]) best = k;
    labels[i] = best;
    conf[i] = r.probs[i * r.classes + best];
  }
  return {
    model_name: card.name,
    model_version: r.modelVersion ?? card.version,
    ...(id === undefined ? {} : { id }),
    ...(r.parameters ? { parameters: r.parameters } : {}),
    outputs: [
      { name: 'probabilities', datatype: 'FP32', shape: [r.n, r.classes], data: Array.from(r.probs) },
      { name: 'labels', datatype: 'INT32', shape: [r.n], data: labels },
      { name: 'confidence', datatype: 'FP32', shape: [r.n], data: conf },
    ],
  };
}

/** Model metadata from the card (`GET /v2/models/<name>`). */
export function modelMetadata(card: ModelCard): object {
  const { height: h, width: w, layout } = card.input;
  const c = channelsOf(card);
  return {
    name: card.name,
    versions: [card.version],
    platform: 'onnxruntime_onnx',
    inputs: [
      { name: card.input.name, datatype: 'UINT8', shape: c === 1 ? [-1, h, w] : [-1, h, w, c] },
      { name: card.input.name, datatype: 'FP32', shape: layout === 'NCHW' ? [-1, c, h, w] : [-1, h, w, c] },
    ],
    outputs: [
      { name: 'probabilities', datatype: 'FP32', shape: [-1, card.output.classes] },
      { name: 'labels', datatype: 'INT32', shape: [-1] },
      { name: 'confidence', datatype: 'FP32', shape: [-1] },
    ],
    parameters: {
      tier: card.tier,
      labels: card.labels,
      temperature: card.temperature,
      accept_threshold: card.thresholds.accept,
      input_colour: card.input.colour,
      input_layout: layout,
    },
  };
}

/**
 * Error and not-found handlers for a service: `{error}` bodies, the right status, Retry-After on
 * refusals; 5xx bodies never show internals.
 */
export function jsonErrors(app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError | CascadeError, req: FastifyRequest, reply: FastifyReply) => {
    if (err instanceof RefusedError)
      reply.header('retry-after', String(Math.max(1, Math.ceil(err.retryAfterMs / 1000))));
    const headers = (err as { headers?: unknown }).headers;
    if (typeof headers === 'object' && headers !== null) reply.headers(headers as Record<string, string>);
    if (err instanceof CascadeError) {
      const status = err.statusCode ?? 500;
      if (status >= 500) req.log.warn({ err }, 'request failed');
      return reply.code(status).send({ error: err.message, code: err.code });
    }
    const fe = err as FastifyError;
    if (fe.validation)
      return reply
        .code(400)
        .send({ error: `invalid request: ${fe.message}`, code: ErrorCodes.GW_ERR_BAD_REQUEST });
    const status =
      fe.statusCode !== undefined && fe.statusCode >= 400 && fe.statusCode < 500 ? fe.statusCode : 500;
    if (status === 500) {
      req.log.error({ err }, 'internal error');
      return reply.code(500).send({ error: 'internal error' });
    }
    return reply.code(status).send({ error: fe.message, code: fe.code });
  });
  app.setNotFoundHandler((req, reply) =>
    reply.code(404).send({ error: `no route ${req.method} ${req.url}` }),
  );
}

function modelFor(card: ModelCard, name: string): ModelCard {
  if (name !== card.name)
    throw new CascadeError(
      ErrorCodes.GW_ERR_MODEL_NOT_FOUND,
      `model "${name}" is not served here (serving "${card.name}")`,
      {
        statusCode: 404,
      },
    );
  return card;
}

/** Registers the KServe v2 routes. */
export async function kserveRoutes(app: FastifyInstance, opts: KserveOptions): Promise<void> {
  const { card } = opts;
  app.get('/v2', async () => ({ name: opts.serverName, version: '2', extensions: [] }));
  app.get('/v2/health/live', async () => ({ live: true }));
  app.get('/v2/health/ready', async (_req, reply) => {
    const ready = opts.ready();
    return reply.code(ready ? 200 : 503).send({ ready });
  });
  app.get<{ Params: { name: string } }>(
    '/v2/models/:name',
    { onRequest: async (req) => opts.authorize?.(req) },
    async (req) => modelMetadata(modelFor(card, req.params.name)),
  );
  app.get<{ Params: { name: string } }>('/v2/models/:name/ready', async (req, reply) => {
    modelFor(card, req.params.name);
    const ready = opts.ready();
    return reply.code(ready ? 200 : 503).send({ name: card.name, ready });
  });
  app.post<{ Params: { name: string }; Body: InferBodyT }>(
    '/v2/models/:name/infer',
    {
      schema: { body: InferBody },
      // Authorize before the body is parsed: a stranger learns nothing, not even a 400.
      onRequest: async (req) => opts.authorize?.(req),
    },
    async (req) => {
      modelFor(card, req.params.name);
      const parsed = parseInput(card, req.body.inputs[0]);
      const reply = await opts.infer({
        id: req.body.id,
        n: parsed.n,
        input: parsed.input,
        parameters: req.body.parameters ?? {},
        headers: req.headers,
        bodyBytes: Number(req.headers['content-length'] ?? 0),
      });
      return inferResponse(card, req.body.id, reply);
    },
  );
}
