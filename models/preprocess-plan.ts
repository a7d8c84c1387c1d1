/**
 * Preprocessing plan: argument validation, geometry (crop, letterbox) and the integer resampling
 * tables shared by the TypeScript reference (models/preprocess.ts) and the native kernel
 * (native/preprocess.ts). Both execute the same plan with the same integer arithmetic, so their
 * outputs are bit-identical: every sum is exact (integers below 2^53) until the final
 * `x = fround(r * A[k] + B[k])`, which both compute as two IEEE double operations.
 *
 * Fixed point: each resampling axis has integer weights summing to {@link AXIS_ONE} (Q11), so a
 * resampled channel value is `sum(wy * sum(wx * p))` in units of 2^-22 pixel levels; BT.601 luma
 * (for gray models fed colour frames) adds Q16 weights, 2^-38 in all.
 */
import type { InputSpec } from './card.ts';

/** Pixel formats of camera frames. NV12: full-size Y plane, then a half-size interleaved UV plane. */
export type PixelFormat = 'rgb' | 'bgr' | 'nv12' | 'gray';

/** A camera frame. `data` is borrowed for the duration of a call, never kept. */
export interface Frame {
  data: Uint8Array;
  width: number;
  height: number;
  format: PixelFormat;
  /** Bytes from one row to the next (of both planes for NV12); default: width × bytes per pixel. */
  stride?: number;
}

/** A rectangle in frame pixels. */
export interface Rect {
  x: number;
  y: number;
  width: number;
  height: number;
}

/** Options of preprocessing; every field is optional. */
export interface PreprocessOptions {
  /**
   * Resampling filter. 'area' (default): box filter, each output pixel the exact average of the
   * frame area it covers (the right filter for camera frame → small model input). 'bilinear':
   * two taps per axis with half-pixel centres (OpenCV INTER_LINEAR, no antialiasing).
   */
  resize?: 'bilinear' | 'area';
  /** Region of the frame to use; default the whole frame. Integer pixels inside the frame. */
  crop?: Rect;
  /** Keep the aspect ratio, centring the image and padding the rest; default false (stretch). */
  letterbox?: boolean;
  /** Pixel level (0–255, every channel) of letterbox padding; default 0 (black). */
  padValue?: number;
}

/** Weight sum of one resampling axis (Q11). Two axes: 2^22, which keeps 255 × 2^22 below 2^31. */
export const AXIS_BITS = 11;
export const AXIS_ONE = 1 << AXIS_BITS;
/** BT.601 luma weights in Q16 (sum 65536), R, G, B. */
export const LUMA_Q16 = [19595, 38470, 7471] as const;

/** Numeric codes shared with the native kernel. */
export const FormatCode = { gray: 0, rgb: 1, bgr: 2, nv12: 3 } as const satisfies Record<PixelFormat, number>;
export const OutputCode = { float32: 0, uint8: 1, int8: 2 } as const;

/** Resampling tables for one geometry; cached and reused across calls. */
export interface Plan {
  readonly key: string;
  /** Content box inside the model input (the whole input unless letterboxed). */
  readonly boxX: number;
  readonly boxY: number;
  readonly boxW: number;
  readonly boxH: number;
  /** Taps per output column, and per output column `kx` absolute frame x indices and weights. */
  readonly kx: number;
  readonly xIdx: Int32Array;
  readonly xW: Int32Array;
  readonly ky: number;
  readonly yIdx: Int32Array;
  readonly yW: Int32Array;
  /** Scratch row of resampled values (boxW × 3) for the reference implementation. */
  readonly acc: Float64Array;
}

function fail(
  Kind: typeof TypeError | typeof RangeError,
  what: string,
  expected: string,
  got: unknown,
): never {
  const shown = typeof got === 'string' ? JSON.stringify(got) : String(got);
  throw new Kind(`preprocess: ${what}: expected ${expected}, received ${shown}`);
}

function isPosInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v > 0;
}

/** Output channels of a model input: 1 for gray, 3 for rgb/bgr. */
export function channelsOf(spec: InputSpec): number {
  return spec.colour === 'gray' ? 1 : 3;
}

/** Number of elements of one model input (height × width × channels). */
export function inputLength(spec: InputSpec): number {
  return spec.height * spec.width * channelsOf(spec);
}

/** Bytes per pixel of packed formats (NV12: its Y plane). */
function bppOf(format: PixelFormat): number {
  return format === 'rgb' || format === 'bgr' ? 3 : 1;
}

/**
 * Validates a frame and returns its stride.
 * @throws {TypeError} for a non-Uint8Array `data`, an unknown format or non-integer dimensions.
 * @throws {RangeError} for odd NV12 dimensions, a stride shorter than a row, or too little data.
 */
export function checkFrame(frame: Frame): number {
  if (frame === null || typeof frame !== 'object') fail(TypeError, 'frame', 'an object', frame);
  if (!(frame.data instanceof Uint8Array)) fail(TypeError, 'frame.data', 'a Uint8Array', frame.data);
  if (!isPosInt(frame.width)) fail(TypeError, 'frame.width', 'a positive integer', frame.width);
  if (!isPosInt(frame.height)) fail(TypeError, 'frame.height', 'a positive integer', frame.height);
  if (!Object.hasOwn(FormatCode, frame.format)) {
    fail(TypeError, 'frame.format', "one of 'rgb', 'bgr', 'nv12', 'gray'", frame.format);
  }
  const { width, height, format } = frame;
  if (format === 'nv12' && (width % 2 !== 0 || height % 2 !== 0)) {
    fail(RangeError, 'NV12 frame size', 'even width and height', `${width}x${height}`);
  }
  const row = width * bppOf(format);
  const stride = frame.stride ?? row;
  if (!Number.isInteger(stride) || stride < row) {
    fail(RangeError, 'frame.stride', `an integer >= ${row} (width x bytes per pixel)`, frame.stride);
  }
  // The last row need not be padded to the stride.
  const need = format === 'nv12' ? stride * (height + height / 2 - 1) + row : stride * (height - 1) + row;
  if (frame.data.length < need) {
    fail(
      RangeError,
      'frame.data length',
      `>= ${need} bytes for a ${width}x${height} ${format} frame`,
      frame.data.length,
    );
  }
  return stride;
}

/**
 * Validates the output buffer against the spec: its length, and its type against the spec's quant.
 * @returns the output kind code ({@link OutputCode}).
 * @throws {TypeError} for an unsupported buffer type or a quantized buffer the spec does not describe.
 * @throws {RangeError} for a wrong length.
 */
export function checkOutput(spec: InputSpec, out: unknown): number {
  let code: number;
  if (out instanceof Float32Array) code = OutputCode.float32;
  else if (out instanceof Uint8Array && !(out instanceof Uint8ClampedArray)) code = OutputCode.uint8;
  else if (out instanceof Int8Array) code = OutputCode.int8;
  else return fail(TypeError, 'out', 'a Float32Array, Uint8Array or Int8Array', out);
  if (code !== OutputCode.float32) {
    const want = code === OutputCode.uint8 ? 'uint8' : 'int8';
    if (spec.quant?.dtype !== want) {
      fail(
        TypeError,
        'out',
        `a Float32Array or a ${spec.quant?.dtype ?? 'float'} buffer (the card's input quantization)`,
        `${want} buffer`,
      );
    }
  }
  const len = inputLength(spec);
  const got = (out as Float32Array).length;
  if (got !== len) {
    fail(RangeError, 'out length', `${len} (${spec.height}x${spec.width}x${channelsOf(spec)})`, got);
  }
  return code;
}

/**
 * Validates the spec fields preprocessing reads (cards are schema-checked on load; specs built by
 * hand are not).
 * @throws {TypeError} for a malformed spec.
 */
export function checkSpec(spec: InputSpec): void {
  if (spec === null || typeof spec !== 'object') fail(TypeError, 'spec', 'an InputSpec object', spec);
  if (!isPosInt(spec.width) || !isPosInt(spec.height)) {
    fail(TypeError, 'spec size', 'positive integer width and height', `${spec.width}x${spec.height}`);
  }
  if (spec.colour !== 'gray' && spec.colour !== 'rgb' && spec.colour !== 'bgr') {
    fail(TypeError, 'spec.colour', "'gray', 'rgb' or 'bgr'", spec.colour);
  }
  if (spec.layout !== 'NCHW' && spec.layout !== 'NHWC')
    fail(TypeError, 'spec.layout', "'NCHW' or 'NHWC'", spec.layout);
  const c = channelsOf(spec);
  // Plain loops: this runs on every call and must not allocate.
  const { mean, std } = spec;
  if (!Array.isArray(mean) || (mean.length !== 1 && mean.length !== c)) {
    fail(TypeError, 'spec.mean', `1 or ${c} finite numbers`, JSON.stringify(mean));
  }
  if (!Array.isArray(std) || (std.length !== 1 && std.length !== c)) {
    fail(TypeError, 'spec.std', `1 or ${c} positive numbers`, JSON.stringify(std));
  }
  for (let k = 0; k < mean.length; k++) {
    if (!Number.isFinite(mean[k]))
      fail(TypeError, 'spec.mean', `1 or ${c} finite numbers`, JSON.stringify(mean));
  }
  for (let k = 0; k < std.length; k++) {
    if (!(std[k] > 0) || !Number.isFinite(std[k])) {
      fail(TypeError, 'spec.std', `1 or ${c} positive numbers`, JSON.stringify(std));
    }
  }
  const q = spec.quant;
  if (q !== undefined) {
    if (!(q.scale > 0) || !Number.isInteger(q.zeroPoint) || (q.dtype !== 'uint8' && q.dtype !== 'int8')) {
      fail(
        TypeError,
        'spec.quant',
        'scale > 0, an integer zeroPoint and dtype uint8|int8',
        JSON.stringify(q),
      );
    }
  }
}

/** Area filter: weights proportional to the overlap of output cell `o` with each source pixel. */
function areaAxis(n: number, src: number, offset: number, idx: Int32Array, w: Int32Array, k: number): void {
  for (let o = 0; o < n; o++) {
    // In units of 1/n source pixels: output cell [o*src, (o+1)*src), source pixel i [i*n, (i+1)*n).
    const lo = o * src;
    const hi = lo + src;
    const first = Math.floor(lo / n);
    let cum = 0;
    let prev = 0;
    for (let t = 0; t < k; t++) {
      const i = first + t;
      const overlap = i < src ? Math.max(0, Math.min(hi, (i + 1) * n) - Math.max(lo, i * n)) : 0;
      cum += overlap;
      // Cumulative rounding: the integer weights sum to exactly AXIS_ONE.
      const next = Math.floor((2 * AXIS_ONE * cum + src) / (2 * src));
      idx[o * k + t] = offset + Math.min(i, src - 1);
      w[o * k + t] = next - prev;
      prev = next;
    }
  }
}

/** Bilinear filter with half-pixel centres, clamped at the edges; all in integers. */
function bilinearAxis(n: number, src: number, offset: number, idx: Int32Array, w: Int32Array): void {
  const den = 2 * n;
  for (let o = 0; o < n; o++) {
    // Source coordinate (o + 0.5) * src / n - 0.5 = num / den.
    const num = Math.max(0, (2 * o + 1) * src - n);
    let i0 = Math.floor(num / den);
    let frac = num - i0 * den;
    if (i0 >= src - 1) {
      i0 = src - 1;
      frac = 0;
    }
    const w1 = Math.floor((2 * AXIS_ONE * frac + den) / (2 * den));
    idx[2 * o] = offset + i0;
    idx[2 * o + 1] = offset + Math.min(i0 + 1, src - 1);
    w[2 * o] = AXIS_ONE - w1;
    w[2 * o + 1] = w1;
  }
}

function buildAxis(
  method: 'bilinear' | 'area',
  n: number,
  src: number,
  offset: number,
): { k: number; idx: Int32Array; w: Int32Array } {
  const k = method === 'bilinear' ? 2 : Math.ceil(src / n) + 1;
  const idx = new Int32Array(n * k);
  const w = new Int32Array(n * k);
  if (method === 'bilinear') bilinearAxis(n, src, offset, idx, w);
  else areaAxis(n, src, offset, idx, w, k);
  return { k, idx, w };
}

const PLAN_CACHE_SIZE = 16;
const plans = new Map<string, Plan>();
let lastPlan: Plan | null = null;
let lastArgs: number[] = [];

/**
 * The resampling plan for a frame size, crop, model size and options; cached (the last plan is
 * matched without allocating, others by key in a small LRU).
 * @throws {TypeError} for an unknown resize method or a malformed crop.
 * @throws {RangeError} for a crop outside the frame or a padValue outside 0–255.
 */
export function planFor(frame: Frame, spec: InputSpec, opts: PreprocessOptions | undefined): Plan {
  const method = opts?.resize ?? 'area';
  if (method !== 'area' && method !== 'bilinear')
    fail(TypeError, 'opts.resize', "'area' or 'bilinear'", method);
  const crop = opts?.crop;
  let cx = 0;
  let cy = 0;
  let cw = frame.width;
  let ch = frame.height;
  if (crop !== undefined) {
    if (crop === null || typeof crop !== 'object')
      fail(TypeError, 'opts.crop', '{x, y, width, height}', crop);
    ({ x: cx, y: cy, width: cw, height: ch } = crop);
    if (!Number.isInteger(cx) || !Number.isInteger(cy) || !isPosInt(cw) || !isPosInt(ch)) {
      fail(TypeError, 'opts.crop', 'integer x, y and positive integer width, height', JSON.stringify(crop));
    }
    if (cx < 0 || cy < 0 || cx + cw > frame.width || cy + ch > frame.height) {
      fail(
        RangeError,
        'opts.crop',
        `a rectangle inside the ${frame.width}x${frame.height} frame`,
        JSON.stringify(crop),
      );
    }
  }
  const pad = opts?.padValue ?? 0;
  if (!Number.isInteger(pad) || pad < 0 || pad > 255)
    fail(RangeError, 'opts.padValue', 'an integer 0-255', pad);
  const letterbox = opts?.letterbox === true ? 1 : 0;
  const m = method === 'area' ? 1 : 0;
  const { width: W, height: H } = spec;
  const a = lastArgs;
  if (
    lastPlan !== null &&
    a[0] === cx &&
    a[1] === cy &&
    a[2] === cw &&
    a[3] === ch &&
    a[4] === W &&
    a[5] === H &&
    a[6] === letterbox &&
    a[7] === m
  ) {
    return lastPlan;
  }
  const key = `${cx},${cy},${cw},${ch},${W},${H},${letterbox},${m}`;
  let plan = plans.get(key);
  if (plan === undefined) {
    let boxW = W;
    let boxH = H;
    if (letterbox) {
      // Fit the crop inside W×H keeping its aspect ratio (integer rounding, at least one pixel).
      if (W * ch <= H * cw) boxH = Math.max(1, Math.floor((2 * ch * W + cw) / (2 * cw)));
      else boxW = Math.max(1, Math.floor((2 * cw * H + ch) / (2 * ch)));
    }
    const x = buildAxis(method, boxW, cw, cx);
    const y = buildAxis(method, boxH, ch, cy);
    plan = {
      key,
      boxX: (W - boxW) >> 1,
      boxY: (H - boxH) >> 1,
      boxW,
      boxH,
      kx: x.k,
      xIdx: x.idx,
      xW: x.w,
      ky: y.k,
      yIdx: y.idx,
      yW: y.w,
      acc: new Float64Array(boxW * 3),
    };
    if (plans.size >= PLAN_CACHE_SIZE) plans.delete(plans.keys().next().value as string);
    plans.set(key, plan);
  }
  lastPlan = plan;
  lastArgs = [cx, cy, cw, ch, W, H, letterbox, m];
  return plan;
}

/**
 * Per-call constants, written into preallocated arrays (no allocation per call). Valid until the
 * next call to {@link constantsFor}; the native kernel copies them synchronously.
 */
export interface Constants {
  /** Channels the resampler produces: 1 (gray source, NV12 → gray) or 3. */
  srcChannels: number;
  /** Output channels (1 or 3). */
  outChannels: number;
  /** Output channel k reads resampled channel perm[k] (3 → 3). */
  perm: Int32Array;
  /** Luma weights in resampled channel order (3 → 1). */
  luma: Float64Array;
  /** x = fround(r × A[k] + B[k]), r the exact fixed-point value. */
  A: Float64Array;
  B: Float64Array;
  /** Fixed-point value r of the letterbox padding. */
  padR: number;
  /** float32 quantization scale, zero point, clamp range. */
  qScale: number;
  qZero: number;
  qMin: number;
  qMax: number;
}

const consts: Constants = {
  srcChannels: 1,
  outChannels: 1,
  perm: new Int32Array(3),
  luma: new Float64Array(3),
  A: new Float64Array(3),
  B: new Float64Array(3),
  padR: 0,
  qScale: 1,
  qZero: 0,
  qMin: 0,
  qMax: 255,
};

/** Fills the shared {@link Constants} for a frame format, spec and padding level. */
export function constantsFor(format: PixelFormat, spec: InputSpec, padValue: number): Constants {
  const outC = channelsOf(spec);
  const srcC = format === 'gray' || (format === 'nv12' && outC === 1) ? 1 : 3;
  // Resampled channels are in byte order for rgb/bgr frames and RGB order for NV12.
  const srcBgr = format === 'bgr';
  const dstBgr = spec.colour === 'bgr';
  for (let k = 0; k < 3; k++) consts.perm[k] = srcBgr !== dstBgr ? 2 - k : k;
  for (let k = 0; k < 3; k++) consts.luma[k] = LUMA_Q16[srcBgr ? 2 - k : k];
  const toLuma = srcC === 3 && outC === 1;
  const unit = 2 ** (2 * AXIS_BITS + (toLuma ? 16 : 0));
  for (let k = 0; k < outC; k++) {
    const m = spec.mean[k] ?? spec.mean[0];
    const s = spec.std[k] ?? spec.std[0];
    consts.A[k] = 1 / (255 * s) / unit;
    consts.B[k] = -m / s;
  }
  consts.srcChannels = srcC;
  consts.outChannels = outC;
  consts.padR = padValue * unit;
  const q = spec.quant;
  consts.qScale = Math.fround(q?.scale ?? 1);
  consts.qZero = q?.zeroPoint ?? 0;
  consts.qMin = q?.dtype === 'int8' ? -128 : 0;
  consts.qMax = q?.dtype === 'int8' ? 127 : 255;
  return consts;
}

/** Round half to even (ONNX QuantizeLinear's rounding). */
export function roundHalfEven(t: number): number {
  const r = Math.round(t);
  return r - t === 0.5 && r % 2 !== 0 ? r - 1 : r;
}
