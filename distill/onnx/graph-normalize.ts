/**
 * Rewrites a parsed graph into the one form the quantizer handles: no Identity or Dropout, no
 * BatchNormalization (folded into the Conv/Gemm before it), Gemm always as Y = A·Bᵀ + C with a
 * constant [N, K] weight and a [N] bias, MatMul+Add with constant weights turned into Gemm,
 * and Clip bounds as inputs. Also infers tensor shapes, which the rewrites need for ranks.
 * Every rewrite is exact in fp32 up to rounding.
 */
import { CascadeError, ErrorCodes } from '../../cascade/errors.ts';
import {
  type ConstTensor,
  consumers,
  floatConst,
  type Graph,
  type GraphNode,
  producers,
  toposort,
} from './graph.ts';

type F32 = Extract<ConstTensor, { dtype: 'float32' }>;

function unsupported(message: string): CascadeError {
  return new CascadeError(ErrorCodes.MODEL_ERR_UNSUPPORTED, message);
}

/** Renames a tensor everywhere it appears (node inputs and outputs). */
function rename(g: Graph, from: string, to: string): void {
  for (const n of g.nodes) {
    n.inputs = n.inputs.map((i) => (i === from ? to : i));
    n.outputs = n.outputs.map((o) => (o === from ? to : o));
  }
}

/** A constant name not yet used in the graph. */
export function freshName(g: Graph, base: string): string {
  const taken = new Set<string>([...g.consts.keys(), g.input.name, ...g.nodes.flatMap((n) => n.outputs)]);
  let name = base;
  for (let i = 1; taken.has(name); i++) name = `${base}_${i}`;
  return name;
}

/** Adds a float constant under a fresh name derived from `base` and returns the name. */
function addConst(g: Graph, base: string, dims: number[], data: Float32Array): string {
  const name = freshName(g, base);
  g.consts.set(name, { dtype: 'float32', dims, data });
  return name;
}

/**
 * Removes a node whose first output equals its first input (Identity, inference Dropout, or a
 * folded BatchNorm/Add after its producer absorbed it): readers of the output read the input.
 * When the output is the graph output, the input is renamed instead so the output name survives.
 */
function bypass(g: Graph, node: GraphNode, where: string): void {
  const [from] = node.inputs;
  const [to] = node.outputs;
  g.nodes = g.nodes.filter((n) => n !== node);
  if (to === g.output.name) {
    if (from === g.input.name || g.consts.has(from)) {
      throw unsupported(
        `${where}: node "${node.name}" makes the graph output a copy of an input or constant`,
      );
    }
    rename(g, from, to);
  } else {
    rename(g, to, from);
  }
}

/** Shape of every tensor; -1 marks a dimension unknown until run time (the batch). */
export function inferShapes(g: Graph): Map<string, number[]> {
  const shapes = new Map<string, number[]>();
  shapes.set(
    g.input.name,
    g.input.dims.map((d) => (typeof d === 'number' ? d : -1)),
  );
  for (const [name, t] of g.consts) shapes.set(name, t.dims);
  const get = (name: string): number[] => shapes.get(name) ?? [];
  const ints = (n: GraphNode, key: string, fallback: number[]): number[] => {
    const a = n.attrs[key];
    return a?.type === 'ints' ? a.value : fallback;
  };
  const int = (n: GraphNode, key: string, fallback: number): number => {
    const a = n.attrs[key];
    return a?.type === 'int' ? a.value : fallback;
  };
  const spatial = (n: GraphNode, x: number[], kernel: number[]): number[] => {
    const k = kernel.length;
    const strides = ints(n, 'strides', new Array(k).fill(1));
    const dil = ints(n, 'dilations', new Array(k).fill(1));
    const pads = ints(n, 'pads', new Array(2 * k).fill(0));
    const auto = n.attrs['auto_pad']?.type === 'string' ? n.attrs['auto_pad'].value : 'NOTSET';
    const ceil = int(n, 'ceil_mode', 0) === 1;
    return kernel.map((kk, i) => {
      const size = x[2 + i];
      if (size < 0) return -1;
      if (auto === 'SAME_UPPER' || auto === 'SAME_LOWER') return Math.ceil(size / strides[i]);
      const ext = (kk - 1) * dil[i] + 1;
      const pad = auto === 'VALID' ? 0 : pads[i] + pads[i + k];
      const q = (size + pad - ext) / strides[i];
      return (ceil ? Math.ceil(q) : Math.floor(q)) + 1;
    });
  };
  const broadcast = (a: number[], b: number[]): number[] => {
    const r = Math.max(a.length, b.length);
    return Array.from({ length: r }, (_, i) => {
      const x = a[a.length - r + i] ?? 1;
      const y = b[b.length - r + i] ?? 1;
      return x === 1 ? y : y === 1 ? x : x < 0 ? y : x;
    });
  };
  for (const n of g.nodes) {
    const x = get(n.inputs[0]);
    let y: number[];
    switch (n.op) {
      case 'Conv': {
        const w = get(n.inputs[1]);
        y = [x[0], w[0], ...spatial(n, x, ints(n, 'kernel_shape', w.slice(2)))];
        break;
      }
      case 'MaxPool':
      case 'AveragePool':
        y = [x[0], x[1], ...spatial(n, x, ints(n, 'kernel_shape', []))];
        break;
      case 'GlobalAveragePool':
        y = [x[0], x[1], ...x.slice(2).map(() => 1)];
        break;
      case 'Flatten': {
        const axis = (int(n, 'axis', 1) + x.length) % Math.max(x.length, 1);
        const prod = (d: number[]): number => (d.some((v) => v < 0) ? -1 : d.reduce((p, v) => p * v, 1));
        y = [prod(x.slice(0, axis)), prod(x.slice(axis))];
        break;
      }
      case 'Reshape': {
        const t = g.consts.get(n.inputs[1]);
        const spec = t?.dtype === 'int64' ? t.data : [];
        const known = x.every((d) => d >= 0);
        const total = x.reduce((p, v) => p * v, 1);
        y = spec.map((d, i) => (d === 0 && int(n, 'allowzero', 0) === 0 ? (x[i] ?? -1) : d));
        const rest = y.filter((d) => d !== -1).reduce((p, v) => p * v, 1);
        y = y.map((d) => (d === -1 ? (known && rest > 0 ? total / rest : -1) : d));
        break;
      }
      case 'Gemm': {
        const b = get(n.inputs[1]);
        const m = int(n, 'transA', 0) ? x[1] : x[0];
        y = [m, int(n, 'transB', 0) ? b[0] : b[1]];
        break;
      }
      case 'MatMul': {
        const b = get(n.inputs[1]);
        if (x.length === 1 && b.length === 1) y = [];
        else if (x.length === 1) y = [...b.slice(0, -2), b[b.length - 1]];
        else if (b.length === 1) y = x.slice(0, -1);
        else y = [...broadcast(x.slice(0, -2), b.slice(0, -2)), x[x.length - 2], b[b.length - 1]];
        break;
      }
      case 'Add':
        y = broadcast(x, get(n.inputs[1]));
        break;
      default:
        y = x;
    }
    shapes.set(n.outputs[0], y);
  }
  return shapes;
}

/** Whether a tensor is read by exactly one node and is not the graph output (so a fold may remove it). */
function readOnce(g: Graph, tensor: string, uses: Map<string, GraphNode[]>): boolean {
  return tensor !== g.output.name && (uses.get(tensor)?.length ?? 0) === 1;
}

function transpose2d(t: F32): Float32Array {
  const [r, c] = t.dims;
  const out = new Float32Array(r * c);
  for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) out[j * r + i] = t.data[i * c + j];
  return out;
}

/** A bias of `n` values from a constant broadcastable as per-channel (size n or 1), else undefined. */
function perChannel(
  t: F32 | undefined,
  n: number,
  channelDims: (dims: number[]) => boolean,
): Float32Array | undefined {
  if (!t) return undefined;
  if (t.data.length === 1) return new Float32Array(n).fill(t.data[0]);
  return t.data.length === n && channelDims(t.dims) ? Float32Array.from(t.data) : undefined;
}

/** Turns MatMul(A, W) with a constant 2-D W and a 2-D A into Gemm, and puts every Gemm in A·Bᵀ + C form. */
function normalizeGemms(g: Graph, where: string): void {
  const shapes = inferShapes(g);
  for (const n of g.nodes) {
    if (n.op === 'MatMul') {
      const w = floatConst(g, n.inputs[1]);
      if (w?.dims.length !== 2 || shapes.get(n.inputs[0])?.length !== 2) continue;
      n.op = 'Gemm';
      n.attrs = {};
    }
    if (n.op !== 'Gemm') continue;
    const b = floatConst(g, n.inputs[1]);
    if (b?.dims.length !== 2)
      throw unsupported(`${where}: Gemm node "${n.name}" needs a constant 2-D weight B`);
    const a = n.attrs;
    const num = (k: string, d: number): number => {
      const v = a[k];
      return v?.type === 'int' || v?.type === 'float' ? v.value : d;
    };
    if (num('transA', 0) !== 0)
      throw unsupported(`${where}: Gemm node "${n.name}" with transA=1 is not supported`);
    const alpha = num('alpha', 1);
    const beta = num('beta', 1);
    const w = num('transB', 0) ? Float32Array.from(b.data) : transpose2d(b);
    const [outN, inK] = num('transB', 0) ? b.dims : [b.dims[1], b.dims[0]];
    if (alpha !== 1) for (let i = 0; i < w.length; i++) w[i] *= alpha;
    n.inputs[1] = addConst(g, `${n.name}.weight`, [outN, inK], w);
    if (n.inputs[2]) {
      const c = perChannel(
        floatConst(g, n.inputs[2]),
        outN,
        (d) => d.length === 1 || (d.length === 2 && d[0] === 1),
      );
      if (!c) throw unsupported(`${where}: Gemm node "${n.name}" needs a constant per-output bias C`);
      for (let i = 0; i < c.length; i++) c[i] *= beta;
      n.inputs[2] = addConst(g, `${n.name}.bias`, [outN], c);
    }
    n.attrs = { transB: { type: 'int', value: 1 } };
  }
}

/** Folds Add(conv_or_gemm(x), per-channel constant) into the bias; leaves other Adds alone. */
function foldBiasAdds(g: Graph, where: string): void {
  for (const add of [...g.nodes]) {
    if (add.op !== 'Add') continue;
    const uses = consumers(g);
    const prod = producers(g);
    for (const k of [0, 1]) {
      const x = add.inputs[k];
      const p = prod.get(x);
      if (!p || (p.op !== 'Conv' && p.op !== 'Gemm') || !readOnce(g, x, uses)) continue;
      const out = floatConst(g, p.inputs[1])!.dims[0];
      const ok =
        p.op === 'Conv' ? (d: number[]) => d.slice(-2).every((v) => v === 1) && d.length >= 3 : () => true;
      const c = perChannel(floatConst(g, add.inputs[1 - k]), out, ok);
      if (!c) continue;
      const old = p.inputs[2] ? floatConst(g, p.inputs[2])!.data : new Float32Array(out);
      for (let i = 0; i < out; i++) c[i] += old[i];
      p.inputs[2] = addConst(g, `${p.name}.bias`, [out], c);
      add.inputs = [x];
      bypass(g, add, where);
      break;
    }
  }
}

/** Folds every BatchNormalization into the Conv or Gemm that feeds it. */
function foldBatchNorms(g: Graph, where: string): void {
  for (const bn of g.nodes.filter((n) => n.op === 'BatchNormalization')) {
    const uses = consumers(g);
    const p = producers(g).get(bn.inputs[0]);
    const [gamma, beta, mean, variance] = bn.inputs.slice(1, 5).map((name) => floatConst(g, name));
    const training = bn.attrs['training_mode'];
    if (!p || (p.op !== 'Conv' && p.op !== 'Gemm') || !readOnce(g, bn.inputs[0], uses)) {
      throw unsupported(
        `${where}: BatchNormalization node "${bn.name}" cannot be folded: its input must come from a Conv or Gemm that nothing else reads`,
      );
    }
    if (
      !gamma ||
      !beta ||
      !mean ||
      !variance ||
      bn.outputs.length > 1 ||
      (training?.type === 'int' && training.value)
    ) {
      throw unsupported(
        `${where}: BatchNormalization node "${bn.name}" is not in inference form with constant statistics`,
      );
    }
    const eps = bn.attrs['epsilon']?.type === 'float' ? bn.attrs['epsilon'].value : 1e-5;
    const w = floatConst(g, p.inputs[1])!;
    const out = w.dims[0];
    if (gamma.data.length !== out) {
      throw unsupported(
        `${where}: BatchNormalization node "${bn.name}" has ${gamma.data.length} channels, not ${out}`,
      );
    }
    const per = w.data.length / out;
    const nw = Float32Array.from(w.data);
    const nb = new Float32Array(out);
    const bias = p.inputs[2] ? floatConst(g, p.inputs[2])?.data : undefined;
    for (let c = 0; c < out; c++) {
      const s = gamma.data[c] / Math.sqrt(variance.data[c] + eps);
      for (let i = 0; i < per; i++) nw[c * per + i] *= s;
      nb[c] = ((bias?.[c] ?? 0) - mean.data[c]) * s + beta.data[c];
    }
    p.inputs[1] = addConst(g, `${p.name}.weight`, w.dims, nw);
    p.inputs[2] = addConst(g, `${p.name}.bias`, [out], nb);
    bn.inputs = [bn.inputs[0]];
    bypass(g, bn, where);
  }
}

/** Drops nodes nothing downstream of the graph output needs (they would be calibrated for nothing). */
function pruneDead(g: Graph): void {
  const live = new Set([g.output.name]);
  const kept: GraphNode[] = [];
  for (const n of [...g.nodes].reverse()) {
    if (!n.outputs.some((o) => live.has(o))) continue;
    kept.push(n);
    for (const i of n.inputs) live.add(i);
  }
  g.nodes = kept.reverse();
}

/** Op-specific checks on what must be constant for quantization. */
function check(g: Graph, where: string): void {
  for (const n of g.nodes) {
    if (n.op === 'Conv') {
      const w = floatConst(g, n.inputs[1]);
      if (w?.dims.length !== 4) {
        throw unsupported(`${where}: Conv node "${n.name}" needs a constant 4-D weight (2-D convolution)`);
      }
      if (n.inputs[2] && !floatConst(g, n.inputs[2])) {
        throw unsupported(`${where}: Conv node "${n.name}" has a bias that is not a constant`);
      }
    } else if (n.op === 'Clip') {
      if (n.inputs.slice(1).some((i) => i && !floatConst(g, i))) {
        throw unsupported(`${where}: Clip node "${n.name}" needs constant bounds`);
      }
    } else if (n.op === 'Reshape') {
      if (g.consts.get(n.inputs[1])?.dtype !== 'int64') {
        throw unsupported(`${where}: Reshape node "${n.name}" needs a constant int64 shape`);
      }
    }
    if (n.outputs.length !== 1)
      throw unsupported(`${where}: node "${n.name}" has ${n.outputs.length} outputs`);
  }
}

/**
 * Normalizes a parsed graph in place (see the file comment) and returns it.
 * @param srcOpset the opset the file was written for: Clip before opset 11 keeps its bounds in attributes.
 * @throws {CascadeError} MODEL_ERR_UNSUPPORTED for forms that cannot be normalized, naming the node.
 */
export function normalizeGraph(g: Graph, where: string, srcOpset: number): Graph {
  const uses = consumers(g);
  for (const n of [...g.nodes]) {
    if (n.op === 'Clip' && srcOpset < 11) {
      const lo = n.attrs['min']?.type === 'float' ? n.attrs['min'].value : -3.4028234663852886e38;
      const hi = n.attrs['max']?.type === 'float' ? n.attrs['max'].value : 3.4028234663852886e38;
      n.inputs = [
        n.inputs[0],
        addConst(g, `${n.name}.min`, [], Float32Array.of(lo)),
        addConst(g, `${n.name}.max`, [], Float32Array.of(hi)),
      ];
      n.attrs = {};
    } else if (n.op === 'Identity' || n.op === 'Dropout') {
      const mask = n.outputs[1];
      if (mask && (uses.has(mask) || mask === g.output.name)) {
        throw unsupported(`${where}: Dropout node "${n.name}" has its mask output read`);
      }
      n.inputs = [n.inputs[0]];
      n.outputs = [n.outputs[0]];
      bypass(g, n, where);
    }
  }
  normalizeGemms(g, where);
  foldBiasAdds(g, where);
  foldBatchNorms(g, where);
  pruneDead(g);
  check(g, where);
  g.nodes = toposort(g.nodes, new Set([g.input.name, ...g.consts.keys()]), where);
  return g;
}
