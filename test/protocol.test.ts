import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  type AnswerMessage,
  decode,
  decodeAs,
  encode,
  MAX_MESSAGE_BYTES,
  type Message,
  type OffloadMessage,
  ProtocolError,
  parseTraceparent,
  type ResultMessage,
  type TensorInfo,
  Topics,
  tensorToPixels,
  traceparent,
} from '../cascade/protocol.ts';

const f32 = (v: number): number => Math.fround(v);
const trace = { traceId: 'ab'.repeat(16), spanId: 'cd'.repeat(8), flags: 1 };
const tensor: TensorInfo = {
  layout: 'NCHW',
  channels: 1,
  height: 28,
  width: 28,
  scale: f32(0.0111),
  zeroPoint: 73,
  mean: [f32(0.286)],
  std: [f32(0.353)],
};

function offload(over: Partial<OffloadMessage> = {}): OffloadMessage {
  return {
    kind: 'offload',
    deviceId: 'cam-1',
    frameId: 42,
    captureTime: 1_790_000_000_123.5,
    budgetLeftMs: f32(37.5),
    modelVersion: '2026-11-22',
    topk: [
      { label: 3, prob: f32(0.41) },
      { label: 6, prob: f32(0.3) },
    ],
    trace,
    contentType: 'tensorU8',
    tensor,
    privacy: false,
    payload: new Uint8Array(784).map((_, i) => i & 0xff),
    ...over,
  };
}

const answer: AnswerMessage = {
  kind: 'answer',
  deviceId: 'cam-1',
  frameId: 42,
  status: 'ok',
  tier: 'cloud',
  modelVersion: 'teacher-1',
  topk: [{ label: 3, prob: f32(0.9) }],
  queueMs: f32(1.5),
  serviceMs: f32(2.25),
  cloudMs: f32(4),
  retryAfterMs: 0,
  reason: 'forward:gain',
  trace,
};

const result: ResultMessage = {
  kind: 'result',
  deviceId: 'cam-1',
  frameId: 42,
  captureTime: 1_790_000_000_123.5,
  tier: 'gateway',
  label: 3,
  confidence: f32(0.8),
  latencyMs: f32(12.5),
  budgetMs: 50,
  reason: 'offload:gain',
  missed: false,
  truth: -1,
  trace,
};

function plain(m: Message): unknown {
  return JSON.parse(JSON.stringify(m.kind === 'offload' ? { ...m, payload: [...m.payload] } : m));
}

describe('protocol envelope', () => {
  it('round-trips each kind exactly', () => {
    for (const m of [offload(), answer, result]) assert.deepEqual(plain(decode(encode(m))), plain(m));
  });

  it('round-trips JPEG and feature payloads without tensor info', () => {
    const j = offload({ contentType: 'jpeg', tensor: undefined, payload: randomBytes(5000) });
    assert.deepEqual(plain(decode(encode(j))), plain(j));
    const feat = offload({
      contentType: 'featuresF32',
      tensor: undefined,
      privacy: true,
      payload: randomBytes(256),
    });
    assert.equal(decodeAs(encode(feat), 'offload').privacy, true);
  });

  it('writes strings as UTF-8 up to 255 bytes and trace ids as hex, refusing anything else', () => {
    const a: AnswerMessage = { ...answer, modelVersion: 'v1-ü-✓-😀', reason: 'é'.repeat(127) };
    assert.deepEqual(plain(decode(encode(a))), plain(a));
    assert.doesNotThrow(() => encode({ ...answer, reason: 'x'.repeat(255) }));
    assert.throws(() => encode({ ...answer, reason: 'é'.repeat(128) }), /reason: 256 bytes/);
    assert.throws(() => encode({ ...answer, trace: { ...trace, traceId: 'AB'.repeat(16) } }), RangeError);
    assert.throws(() => encode({ ...answer, trace: { ...trace, spanId: 'cd'.repeat(7) } }), RangeError);
    // A failed encode leaves nothing behind: the next one is whole.
    assert.deepEqual(plain(decode(encode(answer))), plain(answer));
  });

  it('an offload header costs well under the payload it carries', () => {
    const m = offload();
    assert.ok(
      encode(m).length - m.payload.length < 120,
      `${encode(m).length - m.payload.length} bytes of header`,
    );
  });

  it('rejects an unknown version with a clear reason', () => {
    const b = encode(answer);
    b[2] = 9;
    assert.throws(
      () => decode(b),
      (e: unknown) => e instanceof ProtocolError && e.reason === 'version' && /version 9/.test(e.message),
    );
  });

  it('rejects oversized, truncated, trailing, wrong-kind and bad-magic messages by reason', () => {
    const reasons = (b: Uint8Array, kind?: 'offload'): string => {
      try {
        if (kind) decodeAs(b, kind);
        else decode(b);
        return 'accepted';
      } catch (e) {
        assert.ok(e instanceof ProtocolError, String(e));
        return e.reason;
      }
    };
    const good = encode(offload());
    assert.equal(reasons(new Uint8Array(MAX_MESSAGE_BYTES + 1)), 'too-large');
    assert.equal(reasons(good.subarray(0, good.length - 1)), 'truncated');
    assert.equal(reasons(Buffer.concat([good, Buffer.from([0])])), 'trailing');
    assert.equal(reasons(encode(answer), 'offload'), 'kind');
    const bad = Buffer.from(good);
    bad[0] = 0x7b;
    assert.equal(reasons(bad), 'magic');
    // A tensor payload whose length does not match its declared shape.
    const short = offload({ payload: new Uint8Array(100) });
    assert.equal(reasons(encode(short)), 'field');
  });

  it('survives 5,000 mutated and random messages: every one decodes or is a ProtocolError', () => {
    const seeds = [encode(offload()), encode(answer), encode(result)];
    let rejected = 0;
    let accepted = 0;
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 2 }),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 8 }),
        fc.integer({ min: -40, max: 40 }),
        fc.uint8Array({ maxLength: 64 }),
        (which, flips, cut, junk) => {
          const b = Buffer.from(seeds[which]);
          for (const [at, v] of flips) b[at % b.length] = v;
          const body =
            cut < 0 ? b.subarray(0, Math.max(0, b.length + cut)) : Buffer.concat([b, junk.subarray(0, cut)]);
          try {
            const m = decode(body);
            accepted++;
            // Whatever decodes must re-encode (a decoded message is always well-formed).
            assert.doesNotThrow(() => encode(m));
          } catch (e) {
            if (!(e instanceof ProtocolError)) throw e;
            rejected++;
          }
        },
      ),
      { numRuns: 4000, seed: 7 },
    );
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (b) => {
        try {
          decode(b);
        } catch (e) {
          if (!(e instanceof ProtocolError)) throw e;
        }
      }),
      { numRuns: 1000, seed: 8 },
    );
    assert.equal(accepted + rejected, 4000);
    assert.ok(rejected > 1000, `only ${rejected} of 4000 mutations rejected`);
  });
});

describe('trace context', () => {
  it('formats and parses W3C traceparent, rejecting all-zero ids', () => {
    assert.deepEqual(parseTraceparent(traceparent(trace)), trace);
    assert.equal(parseTraceparent(`00-${'0'.repeat(32)}-${'1'.repeat(16)}-01`), undefined);
    assert.equal(parseTraceparent('garbage'), undefined);
  });
});

describe('topics', () => {
  it('builds and parses per-device topics', () => {
    assert.equal(Topics.offload('cam-7'), 'cascade/v1/cam-7/offload');
    assert.equal(Topics.deviceOf('cascade/v1/cam-7/offload', 'offload'), 'cam-7');
    assert.equal(Topics.deviceOf('cascade/v1/cam-7/answer', 'offload'), undefined);
    assert.equal(Topics.sharedOffloads('gw'), '$share/gw/cascade/v1/+/offload');
  });
});

describe('tensorToPixels', () => {
  it('recovers pixels within one grey level from a quantized normalized tensor', () => {
    const spec = { ...tensor, height: 4, width: 4 };
    const pixels = Uint8Array.from({ length: 16 }, (_, i) => i * 16);
    const q = pixels.map((p) => {
      const x = (p / 255 - spec.mean[0]) / spec.std[0];
      return Math.max(0, Math.min(255, Math.round(x / spec.scale + spec.zeroPoint)));
    });
    const back = tensorToPixels(spec, q, new Uint8Array(16));
    for (let i = 0; i < 16; i++)
      assert.ok(Math.abs(back[i] - pixels[i]) <= 1, `${i}: ${back[i]} vs ${pixels[i]}`);
  });

  it('computes, pixel by pixel, round(q · scale · std · 255 + mean · 255 − zp · scale · std · 255)', () => {
    /** The formula applied to every pixel, in the layout's order. */
    const direct = (t: TensorInfo, q: Uint8Array): Uint8Array => {
      const { channels: c, height: h, width: w } = t;
      const out = new Uint8Array(c * h * w);
      for (let ch = 0; ch < c; ch++) {
        const a = t.scale * t.std[ch] * 255;
        const b = t.mean[ch] * 255 - t.zeroPoint * a;
        for (let i = 0; i < h * w; i++) {
          const src = t.layout === 'NCHW' ? ch * h * w + i : i * c + ch;
          out[i * c + ch] = Math.min(255, Math.max(0, Math.round(q[src] * a + b)));
        }
      }
      return out;
    };
    const spec = fc
      .record({
        layout: fc.constantFrom<TensorInfo['layout'][]>('NCHW', 'NHWC'),
        channels: fc.integer({ min: 1, max: 4 }),
        height: fc.integer({ min: 1, max: 9 }),
        width: fc.integer({ min: 1, max: 9 }),
        scale: fc.double({ min: 1e-4, max: 0.1, noNaN: true }),
        zeroPoint: fc.integer({ min: -128, max: 255 }),
        ms: fc.array(
          fc.tuple(fc.double({ min: -1, max: 1, noNaN: true }), fc.double({ min: 0.05, max: 2 })),
          {
            minLength: 4,
            maxLength: 4,
          },
        ),
      })
      .map(
        ({ ms, ...t }): TensorInfo => ({
          ...t,
          mean: ms.slice(0, t.channels).map((x) => x[0]),
          std: ms.slice(0, t.channels).map((x) => x[1]),
        }),
      );
    // Consecutive calls with the same and with other quantizations (the lookup table is kept).
    fc.assert(
      fc.property(fc.array(spec, { minLength: 1, maxLength: 3 }), fc.integer(), (specs, seed) => {
        // Another mean alone changes the offset only; another std or scale, the slope only.
        const shifted = specs.map((t) => ({ ...t, mean: t.mean.map((m) => m + 0.1) }));
        const scaled = specs.map((t) => ({ ...t, scale: t.scale * 2, zeroPoint: t.zeroPoint >> 1 }));
        for (const t of [...specs, ...shifted, ...specs, ...scaled, ...specs]) {
          const n = t.channels * t.height * t.width;
          const q = Uint8Array.from({ length: n }, (_, i) => (seed + i * 31) & 255);
          assert.deepEqual(tensorToPixels(t, q, new Uint8Array(n)), direct(t, q));
        }
      }),
      { numRuns: 300 },
    );
  });
});
