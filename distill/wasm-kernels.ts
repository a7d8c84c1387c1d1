/**
 * Fast gradient kernels for TensorFlow.js's wasm backend.
 *
 * The wasm backend ships no Conv2DBackpropFilter and no depthwise backprops, and its
 * Conv2DBackpropInput is a slow direct loop. Each gradient here is rewritten as a *forward*
 * convolution, which runs on XNNPACK's fast kernels (measured on a 2-core x86 box, one 3x3 layer,
 * batch 64, 28x28, 32→32: input gradient 390 ms → 36 ms, filter gradient 502 ms (im2col) → 69 ms).
 *
 * The filter gradient takes GEMMs where they win: over a padded pixel grid for layers with many
 * input channels and big images ({@link filterGradGrid}: 28×28×32→32, batch 128: 108 ms → 72 ms),
 * over identity-conv patches for few input channels ({@link filterGradPatches}: the first layer).
 *
 * They are registered at kernel level, not as op gradients, so both the plain Conv2D path and the
 * FusedConv2D path (taken when a conv has no bias, e.g. before BatchNorm) use them. Cases outside
 * the fast formulations (strided input gradients, channel multipliers > 1, NCHW) run the cpu
 * backend's reference kernel on copies of the data: slow, but correct.
 *
 * MaxPoolWithArgmax is replaced too: the wasm backend's (4.22) starts every window at
 * numeric_limits<float>::min(), the smallest *positive* float, so a window whose values are all
 * ≤ 0 (every dead window after a ReLU) returns 1.2e-38 and index 0, and the max-pool gradient of
 * distill/model.ts sent all of those windows' gradients to element 0 of the batch. Identity and
 * same-dtype Cast share memory instead of copying (the engine clones every tensor it saves for
 * the backward pass through Identity).
 */

import {
  backend_util,
  Cast,
  Conv2DBackpropFilter,
  Conv2DBackpropInput,
  DepthwiseConv2dNativeBackpropFilter,
  DepthwiseConv2dNativeBackpropInput,
  findBackend,
  getKernel,
  Identity,
  type KernelBackend,
  type KernelFunc,
  MaxPoolWithArgmax,
  type NamedAttrMap,
  type NamedTensorInfoMap,
  registerKernel,
  type TensorInfo,
  unregisterKernel,
} from '@tensorflow/tfjs';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';

type Pads = { top: number; bottom: number; left: number; right: number };
type Attrs = NamedAttrMap;

/** Runs a wasm kernel by name on TensorInfos; the caller disposes what it no longer needs. */
function run(backend: BackendWasm, name: string, inputs: NamedTensorInfoMap, attrs: Attrs = {}): TensorInfo {
  const k = getKernel(name, 'wasm');
  if (k === undefined) throw new Error(`wasm kernel ${name} is not registered`);
  return k.kernelFunc({ inputs, attrs, backend }) as TensorInfo;
}

function free(backend: BackendWasm, ...infos: TensorInfo[]): void {
  for (const t of infos) backend.disposeData(t.dataId);
}

function pad4(backend: BackendWasm, x: TensorInfo, p: Pads): TensorInfo | null {
  if (p.top === 0 && p.bottom === 0 && p.left === 0 && p.right === 0) return null;
  return run(
    backend,
    'PadV2',
    { x },
    {
      paddings: [
        [0, 0],
        [p.top, p.bottom],
        [p.left, p.right],
        [0, 0],
      ],
      constantValue: 0,
    },
  );
}

function pairOf(v: number | [number, number]): [number, number] {
  return typeof v === 'number' ? [v, v] : v;
}

/**
 * Runs the cpu backend's kernel on copies of the inputs and writes the result into wasm memory.
 * Used only for shapes the fast formulations do not cover.
 */
function viaCpu(name: string, backend: BackendWasm, inputs: NamedTensorInfoMap, attrs: Attrs): TensorInfo {
  const cpu = findBackend('cpu') as KernelBackend | null;
  const kernel = getKernel(name, 'cpu');
  if (cpu === null || kernel === undefined) {
    throw new Error(
      `${name}: no fast wasm formulation for these arguments and the cpu backend is not loaded`,
    );
  }
  const cpuInputs: NamedTensorInfoMap = {};
  for (const [key, t] of Object.entries(inputs)) {
    if (t === undefined) continue;
    const values = backend.readSync(t.dataId) as Float32Array;
    cpuInputs[key] = { dataId: cpu.write(values.slice(), t.shape, t.dtype), shape: t.shape, dtype: t.dtype };
  }
  const out = kernel.kernelFunc({ inputs: cpuInputs, attrs, backend: cpu }) as TensorInfo;
  const values = cpu.readSync(out.dataId) as Float32Array;
  for (const t of [...Object.values(cpuInputs), out]) if (t !== undefined) cpu.disposeData(t.dataId);
  const result = backend.makeOutput(out.shape, 'float32');
  backend.typedArrayFromHeap(result).set(values);
  return result;
}

/** dW = correlation of padded x with dy, summed over the batch: a forward conv with channels as batch. */
const conv2DBackpropFilter: KernelFunc = ({ inputs, attrs = {}, backend }) => {
  const b = backend as BackendWasm;
  const { x, dy } = inputs as { x: TensorInfo; dy: TensorInfo };
  const { strides, pad, dataFormat, dimRoundingMode, filterShape } = attrs as unknown as {
    strides: number | [number, number];
    pad: backend_util.PadInfo['type'] | 'same' | 'valid' | number | backend_util.ExplicitPadding;
    dataFormat: 'NHWC' | 'NCHW';
    dimRoundingMode?: 'floor' | 'round' | 'ceil';
    filterShape: [number, number, number, number];
  };
  if (dataFormat === 'NCHW') return viaCpu(Conv2DBackpropFilter, b, inputs, attrs);
  const info = backend_util.computeConv2DInfo(
    x.shape as [number, number, number, number],
    filterShape,
    strides,
    1,
    pad as 'same',
    dimRoundingMode,
  );
  const [kh, kw] = [info.filterHeight, info.filterWidth];
  const p = info.padInfo;
  if (info.filterHeight * info.filterWidth * info.inChannels <= PATCH_MAX_COLUMNS) {
    return filterGradPatches(b, x, dy, info);
  }
  if (info.strideHeight === 1 && info.strideWidth === 1) {
    const grid = filterGradGrid(b, x, dy, info);
    if (grid !== null) return grid;
  }
  const xt = run(b, 'Transpose', { x }, { perm: [3, 1, 2, 0] }); // [Ci, H, W, N]
  const dyt = run(b, 'Transpose', { x: dy }, { perm: [1, 2, 0, 3] }); // [Ho, Wo, N, Co]
  // The forward padding becomes explicit padding of this conv (no padded copy of x); a stride s in
  // the forward pass becomes a dilation s of dy, used here as the filter.
  const r = run(
    b,
    'Conv2D',
    { x: xt, filter: dyt },
    {
      strides: [1, 1],
      pad: [
        [0, 0],
        [p.top, p.bottom],
        [p.left, p.right],
        [0, 0],
      ],
      dataFormat: 'NHWC',
      dilations: [info.strideHeight, info.strideWidth],
    },
  ); // [Ci, >=kh, >=kw, Co]
  let cut = r;
  if (r.shape[1] !== kh || r.shape[2] !== kw) {
    cut = run(b, 'Slice', { x: r }, { begin: [0, 0, 0, 0], size: [r.shape[0], kh, kw, r.shape[3]] });
  }
  const out = run(b, 'Transpose', { x: cut }, { perm: [1, 2, 0, 3] });
  free(b, xt, dyt, r);
  if (cut !== r) free(b, cut);
  return out;
};

/**
 * Largest kh·kw·Ci for which the filter gradient takes {@link filterGradPatches} (a network's
 * first layer on grey or colour images: 9 or 27). The patch extraction costs (kh·kw·Ci)² MACs per
 * output pixel, so wide layers take the other formulations.
 */
const PATCH_MAX_COLUMNS = 32;
/** Output pixels per GEMM of {@link filterGradPatches} (whole images per chunk). */
const PATCH_CHUNK = 4000;

/** Identity filters [kh, kw, Ci, kh·kw·Ci] by shape, kept: XNNPACK caches their packed form. */
const patchFilters = new Map<string, TensorInfo>();

function patchFilter(b: BackendWasm, kh: number, kw: number, ci: number): TensorInfo {
  const key = `${kh}x${kw}x${ci}`;
  let f = patchFilters.get(key);
  if (f === undefined || !b.dataIdMap.has(f.dataId)) {
    const cols = kh * kw * ci;
    const values = new Float32Array(cols * cols);
    for (let j = 0; j < cols; j++) values[j * cols + j] = 1;
    f = b.makeOutput([kh, kw, ci, cols], 'float32', undefined, values);
    patchFilters.set(key, f);
  }
  return f;
}

/**
 * Filter gradient for few input channels (any stride): dWᵀ = dyᵀ · patches.
 *
 * The patches (im2col, [N·Ho·Wo, kh·kw·Ci]) come from one forward conv of x with an identity
 * filter: every output channel copies one tap of one input channel (x·1 plus zeros, exact for
 * finite x), ~1 ms on XNNPACK. The GEMM then takes dy transposed as A and the patches as B,
 * chunked by whole images: XNNPACK packs B on every call (~4 ns a value), and the patches are
 * kh·kw·Ci wide where dy is Co wide (9 against 32 for the first layer), so this orientation packs
 * a quarter of the values that colsᵀ·dy would (28×28, 1→32, batch 128: 18 ms → 9 ms).
 */
function filterGradPatches(
  b: BackendWasm,
  x: TensorInfo,
  dy: TensorInfo,
  info: backend_util.Conv2DInfo,
): TensorInfo {
  const [n, , , ci] = x.shape;
  const [, ho, wo, co] = dy.shape;
  const [kh, kw] = [info.filterHeight, info.filterWidth];
  const cols = kh * kw * ci;
  const p = info.padInfo;
  const patches = run(
    b,
    'Conv2D',
    { x, filter: patchFilter(b, kh, kw, ci) },
    {
      strides: [info.strideHeight, info.strideWidth],
      pad: [
        [0, 0],
        [p.top, p.bottom],
        [p.left, p.right],
        [0, 0],
      ],
      dataFormat: 'NHWC',
      dilations: [1, 1],
    },
  ); // [N, Ho, Wo, cols]
  const img = ho * wo;
  let per = Math.max(1, Math.min(n, Math.round(PATCH_CHUNK / img)));
  // dyᵀ rows a multiple of 4 KiB apart alias in the cache during the transpose.
  if (per > 1 && (per * img) % 1024 === 0) per--;
  const kc = per * img;
  const full = Math.floor(n / per);
  const rest = (n - full * per) * img;
  // dyᵀ per chunk of images: [full, Co, kc], then the remaining images' [Co, rest].
  const dyT = run(b, 'Transpose', { x: { ...dy, shape: [full, kc, co] } }, { perm: [0, 2, 1] });
  const parts: TensorInfo[] = [];
  const gemm = (aT: TensorInfo, start: number, len: number): void => {
    const bChunk = view(b, patches, start * cols, [len, cols]);
    parts.push(run(b, 'BatchMatMul', { a: aT, b: bChunk }, { transposeA: false, transposeB: false }));
    dropView(b, bChunk);
  };
  for (let c = 0; c < full; c++) {
    const aT = view(b, dyT, c * co * kc, [co, kc]);
    gemm(aT, c * kc, kc);
    dropView(b, aT);
  }
  if (rest > 0) {
    const tail = view(b, dy, full * kc * co, [rest, co]);
    const aT = run(b, 'Transpose', { x: tail }, { perm: [1, 0] });
    dropView(b, tail);
    gemm(aT, full * kc, rest);
    free(b, aT);
  }
  free(b, patches, dyT);
  // The AddN kernel takes its inputs as a list.
  const sum = parts.length === 1 ? parts[0] : run(b, 'AddN', parts as unknown as NamedTensorInfoMap);
  const t = run(b, 'Transpose', { x: sum }, { perm: [1, 0] }); // [cols, Co]
  const out = run(b, 'Reshape', { x: t }, { shape: [kh, kw, ci, co] });
  free(b, t, sum);
  if (parts.length > 1) free(b, ...parts);
  return out;
}

/**
 * Target number of K positions (grid pixels) per GEMM of {@link filterGradGrid}: B (that many
 * rows of dy) then stays in cache. 2000–8000 measure the same; far larger chunks spill B, far
 * smaller ones pay the per-GEMM set-up (operator creation, packing) too often.
 */
const GRID_CHUNK = 4000;
/** Most grid positions per output pixel for which {@link filterGradGrid} beats the conv formulation. */
const GRID_MAX_WASTE = 1.25;

/**
 * A tensor aliasing part of another tensor's wasm memory (no copy), for kernels that feed slices
 * of one buffer to GEMMs. Release it with {@link dropView}, never with disposeData (which would
 * free memory the view does not own).
 */
function view(b: BackendWasm, base: TensorInfo, offset: number, shape: number[]): TensorInfo {
  const data = b.dataIdMap.get(base.dataId);
  if (data === undefined) throw new Error('view of a tensor that is not in wasm memory');
  return b.makeOutput(shape, 'float32', data.memoryOffset + offset * 4);
}

/** Forgets a {@link view}: unregisters it (dropping the GEMM operators cached on it) without freeing. */
function dropView(b: BackendWasm, v: TensorInfo): void {
  const data = b.dataIdMap.get(v.dataId);
  if (data === undefined) return;
  b.wasm.tfjs.disposeData(data.id);
  b.dataIdMap.delete(v.dataId);
}

/**
 * t [N, H, W, C] placed on a zero grid [N, rows, wg, C] at rows 0…H−1 and columns bc…bc+W−1: one
 * memset and a copy per image row (~2x faster than the wasm PadV2 kernel's element loop).
 */
function toGrid(b: BackendWasm, t: TensorInfo, rows: number, wg: number, bc: number): TensorInfo {
  const [n, h, w, c] = t.shape;
  const out = b.makeOutput([n, rows, wg, c], 'float32');
  const ov = b.typedArrayFromHeap(out) as Float32Array;
  const tv = b.typedArrayFromHeap(t) as Float32Array;
  ov.fill(0);
  const len = w * c;
  for (let i = 0; i < n; i++)
    for (let r = 0; r < h; r++) {
      const src = (i * h + r) * len;
      ov.set(tv.subarray(src, src + len), ((i * rows + r) * wg + bc) * c);
    }
  return out;
}

/**
 * Stride-1 filter gradient as GEMMs over a padded pixel grid, for layers with many input channels.
 *
 * dW[(a,b,ci), co] = Σ_p x[p + off(a,b), ci] · dy[p, co] over pixels p. With x laid out on a grid
 * whose zero bands are shared between neighbouring rows and images (x padded below and on the
 * left by the larger of the two pads), every tap (a, b) becomes a constant flat offset off(a,b),
 * and dy placed on the same grid is zero wherever no output pixel lives. The K positions are cut
 * into chunks of ~GRID_CHUNK pixels: per chunk, A = [kh·kw·Ci, K] rows copied as contiguous runs
 * from the channel-major grid, B = the chunk of dy (a view, no copy), one XNNPACK GEMM each; the
 * partial products are summed. Short K per GEMM keeps XNNPACK's packed B in cache, where the conv
 * formulation's filter (all of dy) is re-read from memory for every row block, and the only
 * transposes are one of x. ~1.5x faster than the conv formulation on 28×28×32→32, batch 128.
 *
 * Returns null where the output pixels do not fit the grid (pads larger than the kernel allows).
 */
function filterGradGrid(
  b: BackendWasm,
  x: TensorInfo,
  dy: TensorInfo,
  info: backend_util.Conv2DInfo,
): TensorInfo | null {
  const [n, h, w, ci] = x.shape;
  const [, ho, wo, co] = dy.shape;
  const [kh, kw] = [info.filterHeight, info.filterWidth];
  const p = info.padInfo;
  if (ho > h || wo > w) return null;
  const br = Math.max(p.top, p.bottom);
  let bc = Math.max(p.left, p.right);
  // Channel rows a multiple of 4 KiB apart alias in the cache during the transpose: widen the band.
  if ((n * (h + br) * (w + bc)) % 1024 === 0) bc++;
  const rowsPer = h + br;
  const wg = bc + w;
  // Grid positions without an output pixel are wasted GEMM work: past ~25 % the conv wins (7×7).
  if (rowsPer * wg > GRID_MAX_WASTE * ho * wo) return null;
  const total = n * rowsPer * wg;
  const xg = toGrid(b, x, rowsPer, wg, bc);
  const xgT = run(b, 'Transpose', { x: { ...xg, shape: [total, ci] } }, { perm: [1, 0] }); // [Ci, total]
  free(b, xg);
  const dyg = toGrid(b, dy, rowsPer, wg, bc); // flat [total, Co]
  const rows = kh * kw * ci;
  const chunks = Math.max(1, Math.round(total / GRID_CHUNK));
  const kc = Math.ceil(total / chunks);
  const a = b.makeOutput([rows, kc], 'float32');
  const offsets: number[] = [];
  for (let ta = 0; ta < kh; ta++)
    for (let tb = 0; tb < kw; tb++) offsets.push((ta - p.top) * wg + (tb - p.left));
  const parts: TensorInfo[] = [];
  for (let start = 0; start < total; start += kc) {
    const len = Math.min(kc, total - start);
    // Fresh views of the heap each chunk: a GEMM's allocation may have grown (moved) it.
    const av = b.typedArrayFromHeap(a) as Float32Array;
    const xv = b.typedArrayFromHeap(xgT) as Float32Array;
    let r = 0;
    for (const off of offsets) {
      for (let c = 0; c < ci; c++, r++) {
        // Row r of A: x[start + off … start + off + len) of channel c, zero outside the grid.
        const dst = r * len;
        const from = start + off;
        const lo = Math.max(0, -from);
        const hi = Math.min(len, total - from);
        if (lo > 0) av.fill(0, dst, dst + lo);
        if (hi > lo) av.set(xv.subarray(c * total + from + lo, c * total + from + hi), dst + lo);
        if (hi < len) av.fill(0, dst + Math.max(hi, lo), dst + len);
      }
    }
    const aChunk = len === kc ? a : view(b, a, 0, [rows, len]);
    const bChunk = view(b, dyg, start * co, [len, co]);
    parts.push(run(b, 'BatchMatMul', { a: aChunk, b: bChunk }, { transposeA: false, transposeB: false }));
    dropView(b, bChunk);
    if (aChunk !== a) dropView(b, aChunk);
  }
  free(b, xgT, dyg, a);
  // The AddN kernel takes its inputs as a list.
  const sum = parts.length === 1 ? parts[0] : run(b, 'AddN', parts as unknown as NamedTensorInfoMap);
  const out = run(b, 'Reshape', { x: sum }, { shape: [kh, kw, ci, co] });
  free(b, sum);
  if (parts.length > 1) free(b, ...parts);
  return out;
}

/**
 * The input gradient's filter: w [kh, kw, Ci, Co] flipped in both spatial axes with in/out
 * swapped, [kh, kw, Co, Ci], in one pass (the wasm Reverse kernel is an element loop ~10x slower).
 */
function flipTranspose(b: BackendWasm, w: TensorInfo): TensorInfo {
  const [kh, kw, ci, co] = w.shape;
  const out = b.makeOutput([kh, kw, co, ci], 'float32');
  const ov = b.typedArrayFromHeap(out) as Float32Array;
  const wv = b.typedArrayFromHeap(w) as Float32Array;
  for (let a = 0; a < kh; a++)
    for (let c = 0; c < kw; c++) {
      const src = ((kh - 1 - a) * kw + (kw - 1 - c)) * ci * co;
      const dst = (a * kw + c) * co * ci;
      for (let i = 0; i < ci; i++) for (let o = 0; o < co; o++) ov[dst + o * ci + i] = wv[src + i * co + o];
    }
  return out;
}

/** dX = forward conv of dy with the spatially flipped, in/out-swapped filter (stride 1 only). */
const conv2DBackpropInput: KernelFunc = ({ inputs, attrs = {}, backend }) => {
  const b = backend as BackendWasm;
  const { dy, filter } = inputs as { dy: TensorInfo; filter: TensorInfo };
  const { strides, pad, dataFormat, dimRoundingMode, inputShape } = attrs as unknown as {
    strides: number | [number, number];
    pad: 'same' | 'valid' | number | backend_util.ExplicitPadding;
    dataFormat: 'NHWC' | 'NCHW';
    dimRoundingMode?: 'floor' | 'round' | 'ceil';
    inputShape: [number, number, number, number];
  };
  const [sh, sw] = pairOf(strides);
  if (dataFormat === 'NCHW' || sh !== 1 || sw !== 1) return viaCpu(Conv2DBackpropInput, b, inputs, attrs);
  const info = backend_util.computeConv2DInfo(
    inputShape,
    filter.shape as [number, number, number, number],
    strides,
    1,
    pad as 'same',
    dimRoundingMode,
  );
  const [kh, kw] = [info.filterHeight, info.filterWidth];
  const p = info.padInfo;
  const tp = kh - 1 - p.top;
  const bp = kh - 1 - p.bottom;
  const lp = kw - 1 - p.left;
  const rp = kw - 1 - p.right;
  if (tp < 0 || bp < 0 || lp < 0 || rp < 0) return viaCpu(Conv2DBackpropInput, b, inputs, attrs);
  const wt = flipTranspose(b, filter); // [kh, kw, Co, Ci]
  const out = run(
    b,
    'Conv2D',
    { x: dy, filter: wt },
    {
      strides: [1, 1],
      pad: [
        [0, 0],
        [tp, bp],
        [lp, rp],
        [0, 0],
      ],
      dataFormat: 'NHWC',
      dilations: [1, 1],
    },
  );
  free(b, wt);
  return out;
};

/** Per-channel dW via one depthwise conv: (batch, channel) pairs become channels of a batch-1 image. */
const depthwiseBackpropFilter: KernelFunc = ({ inputs, attrs = {}, backend }) => {
  const b = backend as BackendWasm;
  const { x, dy } = inputs as { x: TensorInfo; dy: TensorInfo };
  const { strides, dilations, pad, dimRoundingMode, filterShape } = attrs as unknown as {
    strides: number | [number, number];
    dilations: number | [number, number];
    pad: 'same' | 'valid' | number | backend_util.ExplicitPadding;
    dimRoundingMode?: 'floor' | 'round' | 'ceil';
    filterShape: [number, number, number, number];
  };
  const [dh, dw] = pairOf(dilations);
  if (filterShape[3] !== 1 || dh !== 1 || dw !== 1)
    return viaCpu(DepthwiseConv2dNativeBackpropFilter, b, inputs, attrs);
  const info = backend_util.computeConv2DInfo(
    x.shape as [number, number, number, number],
    filterShape,
    strides,
    1,
    pad as 'same',
    dimRoundingMode,
    true,
  );
  const [n, , , c] = x.shape;
  const [kh, kw] = [info.filterHeight, info.filterWidth];
  const padded = pad4(b, x, info.padInfo);
  const xp = padded ?? x;
  const xt = run(b, 'Transpose', { x: xp }, { perm: [1, 2, 0, 3] }); // [Hp, Wp, N, C]
  const xr = run(b, 'Reshape', { x: xt }, { shape: [1, xp.shape[1], xp.shape[2], n * c] });
  const dyt = run(b, 'Transpose', { x: dy }, { perm: [1, 2, 0, 3] }); // [Ho, Wo, N, C]
  const dyr = run(b, 'Reshape', { x: dyt }, { shape: [dy.shape[1], dy.shape[2], n * c, 1] });
  const r = run(
    b,
    'DepthwiseConv2dNative',
    { x: xr, filter: dyr },
    { strides: [1, 1], pad: 'valid', dilations: [info.strideHeight, info.strideWidth] },
  ); // [1, >=kh, >=kw, N*C]
  let cut = r;
  if (r.shape[1] !== kh || r.shape[2] !== kw) {
    cut = run(b, 'Slice', { x: r }, { begin: [0, 0, 0, 0], size: [1, kh, kw, n * c] });
  }
  const r4 = run(b, 'Reshape', { x: cut }, { shape: [kh, kw, n, c] });
  const summed = run(b, 'Sum', { x: r4 }, { axis: [2], keepDims: false });
  const out = run(b, 'Reshape', { x: summed }, { shape: [kh, kw, c, 1] });
  free(b, xt, xr, dyt, dyr, r, r4, summed);
  if (cut !== r) free(b, cut);
  if (padded !== null) free(b, padded);
  return out;
};

/** Depthwise dX = depthwise conv of dy with the flipped filter (stride 1, multiplier 1). */
const depthwiseBackpropInput: KernelFunc = ({ inputs, attrs = {}, backend }) => {
  const b = backend as BackendWasm;
  const { dy, filter } = inputs as { dy: TensorInfo; filter: TensorInfo };
  const { strides, dilations, pad, dimRoundingMode, inputShape } = attrs as unknown as {
    strides: number | [number, number];
    dilations: number | [number, number];
    pad: 'same' | 'valid' | number | backend_util.ExplicitPadding;
    dimRoundingMode?: 'floor' | 'round' | 'ceil';
    inputShape: [number, number, number, number];
  };
  const [sh, sw] = pairOf(strides);
  const [dh, dw] = pairOf(dilations);
  if (filter.shape[3] !== 1 || sh !== 1 || sw !== 1 || dh !== 1 || dw !== 1) {
    return viaCpu(DepthwiseConv2dNativeBackpropInput, b, inputs, attrs);
  }
  const info = backend_util.computeConv2DInfo(
    inputShape,
    filter.shape as [number, number, number, number],
    strides,
    1,
    pad as 'same',
    dimRoundingMode,
    true,
  );
  const [kh, kw] = [info.filterHeight, info.filterWidth];
  const p = info.padInfo;
  const tp = kh - 1 - p.top;
  const bp = kh - 1 - p.bottom;
  const lp = kw - 1 - p.left;
  const rp = kw - 1 - p.right;
  if (tp < 0 || bp < 0 || lp < 0 || rp < 0)
    return viaCpu(DepthwiseConv2dNativeBackpropInput, b, inputs, attrs);
  const flipped = run(b, 'Reverse', { x: filter }, { dims: [0, 1] });
  // Explicit padding through a PadV2, since the wasm depthwise kernel takes only same/valid.
  const dyp = pad4(b, dy, { top: tp, bottom: bp, left: lp, right: rp });
  const out = run(
    b,
    'DepthwiseConv2dNative',
    { x: dyp ?? dy, filter: flipped },
    { strides: [1, 1], pad: 'valid', dilations: [1, 1] },
  );
  free(b, flipped);
  if (dyp !== null) free(b, dyp);
  return out;
};

/**
 * MaxPoolWithArgmax (NHWC) computed on the wasm heap in place: each window starts at its first
 * in-bounds element and keeps the first maximum, as the cpu backend and TensorFlow do. Windows
 * that lie inside the image (valid padding, the trainer's pooling) take a loop without clipping,
 * and 2×2 windows a branch-free one (~4x faster than the clipping loop).
 */
const maxPoolWithArgmax: KernelFunc = ({ inputs, attrs = {}, backend }) => {
  const b = backend as BackendWasm;
  const { x } = inputs as { x: TensorInfo };
  const { filterSize, strides, pad, includeBatchInIndex } = attrs as unknown as {
    filterSize: number | [number, number];
    strides: number | [number, number];
    pad: 'valid' | 'same' | number;
    includeBatchInIndex: boolean;
  };
  const info = backend_util.computePool2DInfo(
    x.shape as [number, number, number, number],
    filterSize,
    strides,
    [1, 1],
    pad,
  );
  const pooled = b.makeOutput(info.outShape, x.dtype);
  const indexes = b.makeOutput(info.outShape, 'int32');
  const xv = b.typedArrayFromHeap(x) as Float32Array;
  const pv = b.typedArrayFromHeap(pooled) as Float32Array;
  const iv = b.typedArrayFromHeap(indexes) as Int32Array;
  const p = info.padInfo;
  if (
    p.top === 0 &&
    p.left === 0 &&
    (info.outHeight - 1) * info.strideHeight + info.effectiveFilterHeight <= info.inHeight &&
    (info.outWidth - 1) * info.strideWidth + info.effectiveFilterWidth <= info.inWidth
  ) {
    argmaxInside(xv, pv, iv, info, includeBatchInIndex);
  } else {
    argmaxClipped(xv, pv, iv, info, includeBatchInIndex);
  }
  return [pooled, indexes];
};

/** Argmax pooling where every window lies inside the image: no clipping, 2×2 branch-free. */
function argmaxInside(
  xv: Float32Array,
  pv: Float32Array,
  iv: Int32Array,
  info: backend_util.Conv2DInfo,
  includeBatchInIndex: boolean,
): void {
  const { batchSize: n, inHeight: h, inWidth: w, inChannels: c, outHeight: oh, outWidth: ow } = info;
  const [fh, fw] = [info.effectiveFilterHeight, info.effectiveFilterWidth];
  const row = w * c;
  const image = h * row;
  let o = 0;
  for (let bi = 0; bi < n; bi++) {
    const shift = includeBatchInIndex ? 0 : bi * image;
    for (let oy = 0; oy < oh; oy++) {
      for (let ox = 0; ox < ow; ox++) {
        const base = bi * image + oy * info.strideHeight * row + ox * info.strideWidth * c;
        if (fh === 2 && fw === 2) {
          // A branch-free tournament (pairs of a row, then the two winners): comparisons turned
          // into 0/1 offsets, since the windows' winners are random and mispredicted branches
          // dominated (3x slower). Ties keep the earlier element, as the sequential scan does;
          // only NaN inputs could order differently.
          for (let ch = 0; ch < c; ch++, o++) {
            const k0 = base + ch;
            const i1 = k0 + c * +(xv[k0 + c] > xv[k0]);
            const k2 = k0 + row;
            const i2 = k2 + c * +(xv[k2 + c] > xv[k2]);
            const best = i1 + (i2 - i1) * +(xv[i2] > xv[i1]);
            pv[o] = xv[best];
            iv[o] = best - shift;
          }
        } else {
          for (let ch = 0; ch < c; ch++, o++) {
            let best = base + ch;
            let v = xv[best];
            for (let y = 0; y < fh; y++) {
              for (let xx = 0; xx < fw; xx++) {
                const k = base + ch + y * row + xx * c;
                if (xv[k] > v) {
                  best = k;
                  v = xv[k];
                }
              }
            }
            pv[o] = v;
            iv[o] = best - shift;
          }
        }
      }
    }
  }
}

/** Argmax pooling with windows clipped to the image (padded pooling). */
function argmaxClipped(
  xv: Float32Array,
  pv: Float32Array,
  iv: Int32Array,
  info: backend_util.Conv2DInfo,
  includeBatchInIndex: boolean,
): void {
  const { batchSize: n, inHeight: h, inWidth: w, inChannels: c, outHeight: oh, outWidth: ow } = info;
  const [fh, fw] = [info.effectiveFilterHeight, info.effectiveFilterWidth];
  let o = 0;
  for (let bi = 0; bi < n; bi++)
    for (let oy = 0; oy < oh; oy++) {
      const y0 = Math.max(0, oy * info.strideHeight - info.padInfo.top);
      const y1 = Math.min(h, oy * info.strideHeight - info.padInfo.top + fh);
      for (let ox = 0; ox < ow; ox++) {
        const x0 = Math.max(0, ox * info.strideWidth - info.padInfo.left);
        const x1 = Math.min(w, ox * info.strideWidth - info.padInfo.left + fw);
        for (let ch = 0; ch < c; ch++, o++) {
          let best = ((bi * h + y0) * w + x0) * c + ch;
          for (let y = y0; y < y1; y++)
            for (let xx = x0; xx < x1; xx++) {
              const k = ((bi * h + y) * w + xx) * c + ch;
              if (xv[k] > xv[best]) best = k;
            }
          pv[o] = xv[best];
          iv[o] = includeBatchInIndex ? best : best - bi * h * w * c;
        }
      }
    }
}

/**
 * Identity sharing the input's memory (one more reference) instead of copying it, as the cpu
 * backend does. The engine clones every tensor it saves for the backward pass through Identity,
 * so the wasm backend's copying Identity cost ~10 ms per teacher step; no kernel writes into its
 * inputs, so sharing is safe.
 */
const identity: KernelFunc = ({ inputs, backend }) => {
  const { x } = inputs as { x: TensorInfo };
  (backend as BackendWasm).incRef(x.dataId);
  return { dataId: x.dataId, shape: [...x.shape], dtype: x.dtype };
};

/** The wasm backend's own Cast, kept for real conversions. */
let wasmCast: KernelFunc | undefined;

/** Cast to the same dtype shares memory like {@link identity} (the ReLU gradient casts a float mask). */
const cast: KernelFunc = (args) => {
  const { x } = args.inputs as { x: TensorInfo };
  if ((args.attrs as { dtype?: string } | undefined)?.dtype === x.dtype) return identity(args);
  return wasmCast!(args);
};

let installed = false;

/**
 * Registers the fast gradient kernels for the wasm backend. Safe to call more than once.
 * Call before training; the cpu backend should be imported too, for the rare fallback cases.
 */
export function installWasmGradKernels(): void {
  if (installed) return;
  installed = true;
  wasmCast = getKernel(Cast, 'wasm')?.kernelFunc;
  for (const [kernelName, kernelFunc] of [
    [Conv2DBackpropFilter, conv2DBackpropFilter],
    [Conv2DBackpropInput, conv2DBackpropInput],
    [DepthwiseConv2dNativeBackpropFilter, depthwiseBackpropFilter],
    [DepthwiseConv2dNativeBackpropInput, depthwiseBackpropInput],
    [MaxPoolWithArgmax, maxPoolWithArgmax],
    [Identity, identity],
    ...(wasmCast === undefined ? [] : ([[Cast, cast]] as const)),
  ] as const) {
    if (getKernel(kernelName, 'wasm') !== undefined) unregisterKernel(kernelName, 'wasm');
    registerKernel({ kernelName, backendName: 'wasm', kernelFunc });
  }
}
