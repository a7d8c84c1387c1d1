/**
 * The wire protocol between the tiers: one binary envelope per message, the same on MQTT 3.1.1
 * and 5 (everything a receiver needs is in the envelope, nothing in MQTT 5 properties), pure
 * encode/decode with strict validation. A malformed message becomes a {@link ProtocolError} with
 * a {@link RejectReason} the services count; it never throws anything else.
 *
 * Layout (all integers big-endian):
 * ```
 * 0   'C' 'E'            magic
 * 2   u8  version        PROTOCOL_VERSION
 * 3   u8  kind           1 offload, 2 answer, 3 result
 * 4   u16 headerBytes    length of the header that follows
 * 6   header             kind-specific fields (below), then a u32 payload length and the payload
 * ```
 * Strings are u8 length + UTF-8; probabilities and milliseconds are f32; wall-clock times are
 * f64 milliseconds since the epoch. Deadlines travel as *budget left* so that no tier depends on
 * another tier's clock.
 */

/** Current envelope version. Decoders reject any other with reason `version`. */
export const PROTOCOL_VERSION = 1;
/** Hard cap on any envelope (1 MiB): large enough for a VGA JPEG, small enough to bound memory. */
export const MAX_MESSAGE_BYTES = 1 << 20;
/** Most top-k entries an envelope carries. */
export const MAX_TOPK = 10;

const MAGIC0 = 0x43; // 'C'
const MAGIC1 = 0x45; // 'E'
const PREFIX = 6;

/** Message kinds. */
export const Kind = { offload: 1, answer: 2, result: 3 } as const;
export type Kind = keyof typeof Kind;

/** What the payload of an offload is. */
export const ContentType = {
  /** The device model's input tensor, quantized to uint8 with `tensor.scale` and `tensor.zeroPoint`. */
  tensorU8: 1,
  /** A JPEG of the (cropped) frame. */
  jpeg: 2,
  /** A float32 feature vector (privacy mode: no pixels leave the device). */
  featuresF32: 3,
} as const;
export type ContentType = keyof typeof ContentType;

/** Tier codes used in answers and results. */
export const TierCode = { device: 1, gateway: 2, cloud: 3 } as const;
export type TierName = keyof typeof TierCode;

/** Outcome of a remote request. */
export const AnswerStatus = {
  ok: 0,
  /** The budget ran out before the frame could be served; no label. */
  expired: 1,
  /** Admission control: the queue's expected wait exceeds the budget. `retryAfterMs` is set. */
  overloaded: 2,
  /** The request was malformed or the engine failed. */
  error: 3,
} as const;
export type AnswerStatus = keyof typeof AnswerStatus;

/** A class and its calibrated probability. */
export interface Ranked {
  label: number;
  prob: number;
}

/** W3C trace context, binary: 16-byte trace id, 8-byte parent span id, flags. */
export interface TraceContext {
  traceId: string; // 32 lowercase hex
  spanId: string; // 16 lowercase hex
  flags: number;
}

/** Shape and quantization of a tensor payload, enough for any tier to recover pixel values. */
export interface TensorInfo {
  layout: 'NCHW' | 'NHWC';
  channels: number;
  height: number;
  width: number;
  /** Quantization of the normalized input: x = (q - zeroPoint) * scale. */
  scale: number;
  zeroPoint: number;
  /** Normalization of the device model: pixel/255 = x * std[c] + mean[c]. */
  mean: number[];
  std: number[];
}

/** A frame the device hands on to the gateway. */
export interface OffloadMessage {
  kind: 'offload';
  deviceId: string;
  frameId: number;
  /** Capture time, device clock (ms since epoch): for logs and end-to-end latency on one host. */
  captureTime: number;
  /** Milliseconds of the frame's latency budget left when the message was sent. */
  budgetLeftMs: number;
  /** Device model version (model card `version`). */
  modelVersion: string;
  /** Device top-k with calibrated probabilities; `topk[0]` is the device's answer. */
  topk: Ranked[];
  trace: TraceContext;
  contentType: ContentType;
  /** Present when `contentType` is `tensorU8`. */
  tensor?: TensorInfo;
  /** Frame carries no pixels (privacy mode). */
  privacy: boolean;
  payload: Uint8Array;
}

/** A gateway's or cloud's answer to one offload. */
export interface AnswerMessage {
  kind: 'answer';
  deviceId: string;
  frameId: number;
  status: AnswerStatus;
  /** Tier that produced the label (gateway, or cloud when the gateway forwarded). */
  tier: TierName;
  modelVersion: string;
  /** Top-k with calibrated probabilities; empty unless status is ok. */
  topk: Ranked[];
  /** Time the request waited in the gateway's queue. */
  queueMs: number;
  /** Engine time of the batch that served it (gateway, plus the cloud round trip when forwarded). */
  serviceMs: number;
  /** Cloud round trip seen by the gateway, 0 when not forwarded. */
  cloudMs: number;
  /** Suggested wait before offloading again (overloaded), else 0. */
  retryAfterMs: number;
  /** Short machine-readable reason for non-ok answers or forwarding (e.g. `forward:gain`). */
  reason: string;
  trace: TraceContext;
}

/** A device's final result for a frame. */
export interface ResultMessage {
  kind: 'result';
  deviceId: string;
  frameId: number;
  captureTime: number;
  /** Tier whose label was used. */
  tier: TierName;
  label: number;
  confidence: number;
  /** Capture to decision, device clock. */
  latencyMs: number;
  budgetMs: number;
  /** Policy reason code of the device's decision (e.g. `local:confident`, `offload:gain`). */
  reason: string;
  /** True when an offload was sent but no usable answer came within the budget. */
  missed: boolean;
  /** Ground truth when the source knows it (dataset replay), else -1. */
  truth: number;
  trace: TraceContext;
}

export type Message = OffloadMessage | AnswerMessage | ResultMessage;

/** Why a message was rejected: stable strings, used as metric label values. */
export type RejectReason =
  | 'too-large'
  | 'magic'
  | 'version'
  | 'kind'
  | 'truncated'
  | 'trailing'
  | 'field'
  | 'topic';

/** A malformed, oversized or unknown message. `reason` is for counting; `message` for logs. */
export class ProtocolError extends Error {
  readonly reason: RejectReason;
  constructor(reason: RejectReason, message: string) {
    super(message);
    this.name = 'ProtocolError';
    this.reason = reason;
  }
}

const KIND_BY_CODE = invert(Kind);
const CONTENT_BY_CODE = invert(ContentType);
const TIER_BY_CODE = invert(TierCode);
const STATUS_BY_CODE = invert(AnswerStatus);

function invert<K extends string>(table: Record<K, number>): Map<number, K> {
  return new Map(Object.entries(table).map(([k, v]) => [v as number, k as K]));
}

const HEX = /^[0-9a-f]*$/;

/** A fresh random trace context (sampled). */
export function newTrace(random: (bytes: number) => Uint8Array): TraceContext {
  return { traceId: hex(random(16)), spanId: hex(random(8)), flags: 1 };
}

/** The W3C `traceparent` header value of a trace context. */
export function traceparent(t: TraceContext): string {
  return `00-${t.traceId}-${t.spanId}-${t.flags.toString(16).padStart(2, '0')}`;
}

/** Parses a W3C `traceparent` header; undefined when absent or malformed. */
export function parseTraceparent(value: string | undefined): TraceContext | undefined {
  const m = value === undefined ? null : /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/.exec(value);
  if (!m || /^0+$/.test(m[1]) || /^0+$/.test(m[2])) return undefined;
  return { traceId: m[1], spanId: m[2], flags: Number.parseInt(m[3], 16) };
}

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex');
}

/** Appends fields to a growing buffer. */
class Writer {
  #buf: Buffer;
  #at = 0;
  constructor(size: number) {
    this.#buf = Buffer.allocUnsafe(size);
  }
  #need(n: number): void {
    if (this.#at + n <= this.#buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.#buf.length * 2, this.#at + n));
    this.#buf.copy(next, 0, 0, this.#at);
    this.#buf = next;
  }
  u8(v: number): void {
    this.#need(1);
    this.#buf.writeUInt8(v, this.#at++);
  }
  u16(v: number): void {
    this.#need(2);
    this.#at = this.#buf.writeUInt16BE(v, this.#at);
  }
  u32(v: number): void {
    this.#need(4);
    this.#at = this.#buf.writeUInt32BE(v, this.#at);
  }
  i32(v: number): void {
    this.#need(4);
    this.#at = this.#buf.writeInt32BE(v, this.#at);
  }
  f32(v: number): void {
    this.#need(4);
    this.#at = this.#buf.writeFloatBE(v, this.#at);
  }
  f64(v: number): void {
    this.#need(8);
    this.#at = this.#buf.writeDoubleBE(v, this.#at);
  }
  str(s: string, field: string): void {
    // Written in place (no intermediate Buffer): answers are encoded for every frame.
    const n = Buffer.byteLength(s, 'utf8');
    if (n > 255) throw new RangeError(`${field}: ${n} bytes of UTF-8, at most 255`);
    this.u8(n);
    this.#need(n);
    this.#at += this.#buf.write(s, this.#at, n, 'utf8');
  }
  bytes(b: Uint8Array): void {
    this.#need(b.length);
    this.#buf.set(b, this.#at);
    this.#at += b.length;
  }
  hex(s: string, bytes: number, field: string): void {
    if (s.length !== bytes * 2 || !HEX.test(s))
      throw new RangeError(`${field}: expected ${bytes * 2} hex digits`);
    this.#need(bytes);
    this.#at += this.#buf.write(s, this.#at, bytes, 'hex');
  }
  get length(): number {
    return this.#at;
  }
  patchU16(at: number, v: number): void {
    this.#buf.writeUInt16BE(v, at);
  }
  done(): Buffer {
    return this.#buf.subarray(0, this.#at);
  }
}

/** Reads fields, throwing {@link ProtocolError} `truncated` past the end. */
class Reader {
  readonly #buf: Buffer;
  #at: number;
  readonly #end: number;
  constructor(buf: Buffer, at: number, end: number) {
    this.#buf = buf;
    this.#at = at;
    this.#end = end;
  }
  #take(n: number, what: string): number {
    if (this.#at + n > this.#end) throw new ProtocolError('truncated', `message ends inside ${what}`);
    const at = this.#at;
    this.#at += n;
    return at;
  }
  u8(what: string): number {
    return this.#buf.readUInt8(this.#take(1, what));
  }
  u16(what: string): number {
    return this.#buf.readUInt16BE(this.#take(2, what));
  }
  u32(what: string): number {
    return this.#buf.readUInt32BE(this.#take(4, what));
  }
  i32(what: string): number {
    return this.#buf.readInt32BE(this.#take(4, what));
  }
  f32(what: string): number {
    return this.#buf.readFloatBE(this.#take(4, what));
  }
  f64(what: string): number {
    return this.#buf.readDoubleBE(this.#take(8, what));
  }
  str(what: string): string {
    const n = this.u8(what);
    const at = this.#take(n, what);
    const s = this.#buf.toString('utf8', at, at + n);
    if (Buffer.byteLength(s) !== n) throw new ProtocolError('field', `${what} is not valid UTF-8`);
    return s;
  }
  bytes(n: number, what: string): Buffer {
    const at = this.#take(n, what);
    return this.#buf.subarray(at, at + n);
  }
  hex(n: number, what: string): string {
    return this.bytes(n, what).toString('hex');
  }
  get at(): number {
    return this.#at;
  }
}

function field(ok: boolean, what: string): void {
  if (!ok) throw new ProtocolError('field', `invalid ${what}`);
}

function finite(
  v: number,
  what: string,
  min = Number.NEGATIVE_INFINITY,
  max = Number.POSITIVE_INFINITY,
): number {
  field(Number.isFinite(v) && v >= min && v <= max, what);
  return v;
}

function writeTopk(w: Writer, topk: Ranked[]): void {
  if (topk.length > MAX_TOPK) throw new RangeError(`topk: ${topk.length} entries, at most ${MAX_TOPK}`);
  w.u8(topk.length);
  for (const r of topk) {
    w.u16(r.label);
    w.f32(r.prob);
  }
}

function readTopk(r: Reader): Ranked[] {
  const k = r.u8('top-k count');
  field(k <= MAX_TOPK, 'top-k count');
  const out: Ranked[] = [];
  for (let i = 0; i < k; i++) {
    out.push({ label: r.u16('top-k label'), prob: finite(r.f32('top-k prob'), 'top-k probability', 0, 1) });
  }
  return out;
}

function writeTrace(w: Writer, t: TraceContext): void {
  w.hex(t.traceId, 16, 'traceId');
  w.hex(t.spanId, 8, 'spanId');
  w.u8(t.flags);
}

function readTrace(r: Reader): TraceContext {
  return { traceId: r.hex(16, 'trace id'), spanId: r.hex(8, 'span id'), flags: r.u8('trace flags') };
}

function uint(v: number, bits: 8 | 16 | 32, what: string): number {
  if (!Number.isInteger(v) || v < 0 || v >= 2 ** bits)
    throw new RangeError(`${what}: expected a u${bits}, received ${v}`);
  return v;
}

/**
 * Encodes a message into one envelope.
 * @throws {RangeError} for a field out of range (a bug in the caller, not bad input).
 */
export function encode(m: Message): Buffer {
  const payloadBytes = m.kind === 'offload' ? m.payload.length : 0;
  const w = new Writer(160 + payloadBytes);
  w.u8(MAGIC0);
  w.u8(MAGIC1);
  w.u8(PROTOCOL_VERSION);
  w.u8(Kind[m.kind]);
  w.u16(0); // header length, patched below
  w.str(m.deviceId, 'deviceId');
  w.u32(uint(m.frameId, 32, 'frameId'));
  switch (m.kind) {
    case 'offload': {
      w.f64(m.captureTime);
      w.f32(m.budgetLeftMs);
      w.str(m.modelVersion, 'modelVersion');
      writeTopk(w, m.topk);
      writeTrace(w, m.trace);
      w.u8(ContentType[m.contentType]);
      w.u8(m.privacy ? 1 : 0);
      if (m.contentType === 'tensorU8') {
        const t = m.tensor;
        if (t === undefined) throw new RangeError('tensor: required for contentType tensorU8');
        if (t.mean.length !== t.channels || t.std.length !== t.channels)
          throw new RangeError('tensor: mean and std need one entry per channel');
        w.u8(t.layout === 'NCHW' ? 0 : 1);
        w.u8(uint(t.channels, 8, 'channels'));
        w.u16(uint(t.height, 16, 'height'));
        w.u16(uint(t.width, 16, 'width'));
        w.f32(t.scale);
        w.i32(t.zeroPoint);
        for (let c = 0; c < t.channels; c++) {
          w.f32(t.mean[c]);
          w.f32(t.std[c]);
        }
      }
      break;
    }
    case 'answer':
      w.u8(AnswerStatus[m.status]);
      w.u8(TierCode[m.tier]);
      w.str(m.modelVersion, 'modelVersion');
      writeTopk(w, m.topk);
      w.f32(m.queueMs);
      w.f32(m.serviceMs);
      w.f32(m.cloudMs);
      w.f32(m.retryAfterMs);
      w.str(m.reason, 'reason');
      writeTrace(w, m.trace);
      break;
    case 'result':
      w.f64(m.captureTime);
      w.u8(TierCode[m.tier]);
      w.u16(uint(m.label, 16, 'label'));
      w.f32(m.confidence);
      w.f32(m.latencyMs);
      w.f32(m.budgetMs);
      w.str(m.reason, 'reason');
      w.u8(m.missed ? 1 : 0);
      w.u16(m.truth < 0 ? 0xffff : uint(m.truth, 16, 'truth'));
      writeTrace(w, m.trace);
      break;
  }
  w.patchU16(4, w.length - PREFIX);
  w.u32(payloadBytes);
  if (m.kind === 'offload') w.bytes(m.payload);
  if (w.length > MAX_MESSAGE_BYTES)
    throw new RangeError(`message of ${w.length} bytes exceeds ${MAX_MESSAGE_BYTES}`);
  return w.done();
}

/**
 * Decodes and validates one envelope. The payload of an offload is a view into `buf`.
 * @param maxBytes reject anything larger (default {@link MAX_MESSAGE_BYTES}).
 * @throws {ProtocolError} for anything malformed, oversized, of an unknown version or kind.
 */
export function decode(buf: Uint8Array, maxBytes = MAX_MESSAGE_BYTES): Message {
  if (buf.length > maxBytes)
    throw new ProtocolError('too-large', `message of ${buf.length} bytes exceeds ${maxBytes}`);
  if (buf.length < PREFIX)
    throw new ProtocolError('truncated', `message of ${buf.length} bytes has no header`);
  const b = Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (b[0] !== MAGIC0 || b[1] !== MAGIC1)
    throw new ProtocolError('magic', 'not a cascade envelope (bad magic)');
  if (b[2] !== PROTOCOL_VERSION)
    throw new ProtocolError(
      'version',
      `envelope version ${b[2]} is not supported (this build speaks ${PROTOCOL_VERSION})`,
    );
  const kind = KIND_BY_CODE.get(b[3]);
  if (kind === undefined) throw new ProtocolError('kind', `unknown message kind ${b[3]}`);
  const headerEnd = PREFIX + b.readUInt16BE(4);
  if (headerEnd + 4 > b.length) throw new ProtocolError('truncated', 'message ends inside the header');
  const r = new Reader(b, PREFIX, headerEnd);
  const deviceId = r.str('device id');
  field(deviceId.length > 0 && !/[/+#\0]/.test(deviceId), 'device id');
  const frameId = r.u32('frame id');
  let m: Message;
  switch (kind) {
    case 'offload': {
      const captureTime = finite(r.f64('capture time'), 'capture time', 0);
      const budgetLeftMs = finite(r.f32('budget'), 'budget', Number.NEGATIVE_INFINITY, 3.6e6);
      const modelVersion = r.str('model version');
      const topk = readTopk(r);
      const trace = readTrace(r);
      const contentType = CONTENT_BY_CODE.get(r.u8('content type'));
      if (contentType === undefined) throw new ProtocolError('field', 'unknown content type');
      const privacy = r.u8('flags') === 1;
      let tensor: TensorInfo | undefined;
      if (contentType === 'tensorU8') {
        const layoutCode = r.u8('layout');
        field(layoutCode <= 1, 'tensor layout');
        const channels = r.u8('channels');
        const height = r.u16('height');
        const width = r.u16('width');
        field(channels >= 1 && channels <= 4 && height > 0 && width > 0, 'tensor shape');
        const scale = finite(r.f32('scale'), 'tensor scale', 1e-12);
        const zeroPoint = r.i32('zero point');
        field(zeroPoint >= -128 && zeroPoint <= 255, 'tensor zero point');
        const mean: number[] = [];
        const std: number[] = [];
        for (let c = 0; c < channels; c++) {
          mean.push(finite(r.f32('mean'), 'tensor mean'));
          std.push(finite(r.f32('std'), 'tensor std', 1e-12));
        }
        tensor = {
          layout: layoutCode === 0 ? 'NCHW' : 'NHWC',
          channels,
          height,
          width,
          scale,
          zeroPoint,
          mean,
          std,
        };
      }
      m = {
        kind,
        deviceId,
        frameId,
        captureTime,
        budgetLeftMs,
        modelVersion,
        topk,
        trace,
        contentType,
        privacy,
        tensor,
        payload: Buffer.alloc(0),
      };
      break;
    }
    case 'answer': {
      const status = STATUS_BY_CODE.get(r.u8('status'));
      const tier = TIER_BY_CODE.get(r.u8('tier'));
      if (status === undefined || tier === undefined)
        throw new ProtocolError('field', 'unknown status or tier');
      m = {
        kind,
        deviceId,
        frameId,
        status,
        tier,
        modelVersion: r.str('model version'),
        topk: readTopk(r),
        queueMs: finite(r.f32('queue time'), 'queue time', 0),
        serviceMs: finite(r.f32('service time'), 'service time', 0),
        cloudMs: finite(r.f32('cloud time'), 'cloud time', 0),
        retryAfterMs: finite(r.f32('retry-after'), 'retry-after', 0),
        reason: r.str('reason'),
        trace: readTrace(r),
      };
      break;
    }
    case 'result': {
      const captureTime = finite(r.f64('capture time'), 'capture time', 0);
      const tier = TIER_BY_CODE.get(r.u8('tier'));
      if (tier === undefined) throw new ProtocolError('field', 'unknown tier');
      const label = r.u16('label');
      const confidence = finite(r.f32('confidence'), 'confidence', 0, 1);
      const latencyMs = finite(r.f32('latency'), 'latency');
      const budgetMs = finite(r.f32('budget'), 'budget', 0);
      const reason = r.str('reason');
      const missed = r.u8('missed') === 1;
      const truth = r.u16('truth');
      m = {
        kind,
        deviceId,
        frameId,
        captureTime,
        tier,
        label,
        confidence,
        latencyMs,
        budgetMs,
        reason,
        missed,
        truth: truth === 0xffff ? -1 : truth,
        trace: readTrace(r),
      };
      break;
    }
  }
  if (r.at !== headerEnd) throw new ProtocolError('field', `header has ${headerEnd - r.at} unexpected bytes`);
  const tail = new Reader(b, headerEnd, b.length);
  const payloadBytes = tail.u32('payload length');
  if (m.kind !== 'offload' && payloadBytes !== 0)
    throw new ProtocolError('field', `${m.kind} carries a payload`);
  const payload = tail.bytes(payloadBytes, 'payload');
  if (tail.at !== b.length)
    throw new ProtocolError('trailing', `${b.length - tail.at} bytes after the payload`);
  if (m.kind === 'offload') {
    m.payload = payload;
    if (m.contentType === 'tensorU8' && m.tensor) {
      const t = m.tensor;
      field(payload.length === t.channels * t.height * t.width, 'tensor payload length');
    }
    field(!m.privacy || m.contentType !== 'jpeg', 'privacy flag on a JPEG payload');
  }
  return m;
}

/** Decodes a message that must be of one kind. */
export function decodeAs<K extends Kind>(
  buf: Uint8Array,
  kind: K,
  maxBytes?: number,
): Extract<Message, { kind: K }> {
  const m = decode(buf, maxBytes);
  if (m.kind !== kind) throw new ProtocolError('kind', `expected a ${kind} message, received ${m.kind}`);
  return m as Extract<Message, { kind: K }>;
}

/** MQTT topics. `deviceId` must not contain `/`, `+`, `#`. */
export const Topics = {
  prefix: 'cascade/v1',
  offload: (deviceId: string): string => `cascade/v1/${deviceId}/offload`,
  answer: (deviceId: string): string => `cascade/v1/${deviceId}/answer`,
  results: (deviceId: string): string => `cascade/v1/${deviceId}/results`,
  /** Every device's offloads; the gateway prefixes `$share/<group>/` on brokers that support it. */
  allOffloads: 'cascade/v1/+/offload',
  allResults: 'cascade/v1/+/results',
  sharedOffloads: (group: string): string => `$share/${group}/cascade/v1/+/offload`,
  otaAnnounce: 'cascade/v1/ota/announce',
  /** Device id of a `cascade/v1/<id>/<leaf>` topic, or undefined. */
  deviceOf(topic: string, leaf: string): string | undefined {
    const parts = topic.split('/');
    return parts.length === 4 && parts[0] === 'cascade' && parts[1] === 'v1' && parts[3] === leaf
      ? parts[2]
      : undefined;
  },
} as const;

/** Checks a device id usable in topics: 1–64 of [A-Za-z0-9._-]. */
export function isValidDeviceId(id: string): boolean {
  return /^[A-Za-z0-9._-]{1,64}$/.test(id);
}

/** MQTT 5 message expiry (whole seconds, at least 1) for a budget in milliseconds. */
export function messageExpirySeconds(budgetLeftMs: number): number {
  return Math.max(1, Math.ceil(budgetLeftMs / 1000));
}

/**
 * Recovers 0–255 pixel values (HWC, as models/runtime.ts `classify` takes them) from a tensor
 * payload, so a tier with another normalization or quantization can run its own model on it.
 * @param out n = height × width × channels bytes.
 */
export function tensorToPixels(t: TensorInfo, payload: Uint8Array, out: Uint8Array): Uint8Array {
  const { channels: c, height: h, width: w } = t;
  if (out.length !== c * h * w || payload.length !== c * h * w)
    throw new RangeError('tensorToPixels: size mismatch');
  const n = h * w;
  const nchw = t.layout === 'NCHW';
  for (let ch = 0; ch < c; ch++) {
    const a = t.scale * t.std[ch] * 255;
    const b = t.mean[ch] * 255 - t.zeroPoint * a;
    // A byte has 256 values: map each once (the same arithmetic), then look every pixel up. The
    // table is kept for the next call: a device's frames all carry the same quantization.
    if (!Object.is(a, pixelOfA) || !Object.is(b, pixelOfB)) {
      for (let q = 0; q < 256; q++) PIXEL_OF[q] = Math.min(255, Math.max(0, Math.round(q * a + b)));
      pixelOfA = a;
      pixelOfB = b;
    }
    if (c === 1) for (let i = 0; i < n; i++) out[i] = PIXEL_OF[payload[i]];
    else if (nchw) for (let i = 0, src = ch * n; i < n; i++, src++) out[i * c + ch] = PIXEL_OF[payload[src]];
    else for (let i = ch; i < n * c; i += c) out[i] = PIXEL_OF[payload[i]];
  }
  return out;
}

/** Table of {@link tensorToPixels}: payload byte → pixel value for `q * pixelOfA + pixelOfB`. */
const PIXEL_OF = new Uint8Array(256);
let pixelOfA = Number.NaN;
let pixelOfB = Number.NaN;
