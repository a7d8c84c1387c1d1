/**
 * W3C trace context across the tiers: the device starts a trace and carries it in the MQTT
 * envelope (protocol `trace`), the gateway continues it and sends it to the cloud as the HTTP
 * `traceparent` header, the cloud continues it from there. Each hop keeps the trace id and mints
 * its own span id. {@link otelContext} hands the same ids to @opentelemetry/api, so a service
 * that installs an OpenTelemetry SDK gets its spans parented correctly without other changes.
 */
import { randomBytes } from 'node:crypto';
import { type Context, trace as otelTrace, ROOT_CONTEXT, type SpanContext } from '@opentelemetry/api';
import { newTrace, parseTraceparent, type TraceContext, traceparent } from '../protocol.ts';

/** Source of random bytes (injected in tests). */
export type RandomBytes = (n: number) => Uint8Array;

/** Random bytes from a pooled buffer: one getrandom call per 4 KiB instead of one per span. */
const POOL_BYTES = 4096;
let pool = randomBytes(POOL_BYTES);
let poolAt = 0;
const defaultRandom: RandomBytes = (n) => {
  if (n > POOL_BYTES) return randomBytes(n);
  if (poolAt + n > POOL_BYTES) {
    pool = randomBytes(POOL_BYTES);
    poolAt = 0;
  }
  const out = pool.subarray(poolAt, poolAt + n);
  poolAt += n;
  return out;
};

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex');
}

/** A child of `parent`: same trace id and flags, a new span id. */
export function childTrace(parent: TraceContext, random: RandomBytes = defaultRandom): TraceContext {
  return { traceId: parent.traceId, spanId: hex(random(8)), flags: parent.flags };
}

/** A new root trace (sampled). */
export function rootTrace(random: RandomBytes = defaultRandom): TraceContext {
  return newTrace(random);
}

const TRACE_ID = /^[0-9a-f]{32}$/;
const SPAN_ID = /^[0-9a-f]{16}$/;
const ZEROS = /^0+$/;

/**
 * True for a trace context with a valid, non-zero trace and span id: what
 * `parseTraceparent(traceparent(t))` accepts, without building the header (every frame asks).
 */
export function isValidTrace(t: TraceContext): boolean {
  return (
    Number.isInteger(t.flags) &&
    t.flags >= 0 &&
    t.flags <= 0xff &&
    TRACE_ID.test(t.traceId) &&
    SPAN_ID.test(t.spanId) &&
    !ZEROS.test(t.traceId) &&
    !ZEROS.test(t.spanId)
  );
}

/**
 * Continues the trace of an incoming HTTP request: a child of its `traceparent` header, or a new
 * root when the header is absent or malformed.
 */
export function traceFromHeaders(
  headers: Readonly<Record<string, string | string[] | undefined>>,
  random: RandomBytes = defaultRandom,
): TraceContext {
  const raw = headers.traceparent;
  const parent = parseTraceparent(Array.isArray(raw) ? raw[0] : raw);
  return parent ? childTrace(parent, random) : rootTrace(random);
}

/**
 * Continues the trace carried by an envelope: a child of it, or a new root when the envelope's
 * ids are zero (a sender without tracing).
 */
export function traceFromEnvelope(t: TraceContext, random: RandomBytes = defaultRandom): TraceContext {
  return isValidTrace(t) ? childTrace(t, random) : rootTrace(random);
}

/** Headers that carry `t` to the next tier. */
export function traceHeaders(t: TraceContext): { traceparent: string } {
  return { traceparent: traceparent(t) };
}

/** The OpenTelemetry span context of `t` (remote, so an SDK makes it a parent, not a span). */
export function toSpanContext(t: TraceContext): SpanContext {
  return { traceId: t.traceId, spanId: t.spanId, traceFlags: t.flags, isRemote: true };
}

/** An OpenTelemetry context whose active span context is `t`, for `context.with(...)`. */
export function otelContext(t: TraceContext, base: Context = ROOT_CONTEXT): Context {
  return otelTrace.setSpanContext(base, toSpanContext(t));
}

export { parseTraceparent, type TraceContext, traceparent };
