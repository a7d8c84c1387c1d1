/**
 * A small in-memory graph for fp32 ONNX classifiers: what the exporter builds, what the
 * calibrator and the quantizer rewrite, and what `serializeGraph` turns back into a ModelProto.
 *
 * `parseOnnx` accepts any ModelProto made of the operators a CNN classifier needs and rejects
 * the rest up front, naming the node, so quantization never meets an operator it cannot place
 * Q/DQ nodes around. After parsing, the graph is normalized (graph-normalize.ts): BatchNorm is
 * folded, Identity/Dropout are gone, MatMul+Add with constant weights became Gemm.
 */
import { CascadeError, ErrorCodes } from '../../cascade/errors.ts';
import { normalizeGraph } from './graph-normalize.ts';
import {
  type Attr,
  type ConstTensor,
  DType,
  decodeModel,
  encodeModel,
  fromAttrProto,
  fromTensorProto,
  irVersionFor,
  num,
  type onnx,
  toAttrProto,
  toTensorProto,
  valueInfo,
} from './proto.ts';

export type { Attr, ConstTensor };

/** One operator application. `inputs` may hold '' for an omitted optional input. */
export interface GraphNode {
  name: string;
  op: string;
  inputs: string[];
  outputs: string[];
  attrs: Record<string, Attr>;
}

/** A graph input or output: float32 with dims; strings are symbolic dims such as the batch. */
export interface GraphIO {
  name: string;
  dims: (number | string)[];
}

/** A single-input, single-output float graph in topological order. */
export interface Graph {
  /** Default-domain opset the graph is written for (never below 13 after parsing). */
  opset: number;
  input: GraphIO;
  output: GraphIO;
  nodes: GraphNode[];
  /** Initializers by tensor name. */
  consts: Map<string, ConstTensor>;
}

/** Operators accepted by {@link parseOnnx}. */
export const SUPPORTED_OPS: readonly string[] = [
  'Conv',
  'Relu',
  'Clip',
  'MaxPool',
  'AveragePool',
  'GlobalAveragePool',
  'Flatten',
  'Reshape',
  'Gemm',
  'MatMul',
  'Add',
  'BatchNormalization',
  'Identity',
  'Dropout',
];

/** Opset at which per-channel QuantizeLinear/DequantizeLinear (the `axis` attribute) exists. */
export const MIN_OUTPUT_OPSET = 13;

function unsupported(message: string): CascadeError {
  return new CascadeError(ErrorCodes.MODEL_ERR_UNSUPPORTED, message);
}

function invalid(message: string): CascadeError {
  return new CascadeError(ErrorCodes.MODEL_ERR_INVALID, message);
}

function ioOf(v: onnx.IValueInfoProto, where: string): GraphIO {
  const tt = v.type?.tensorType;
  if (!tt) throw unsupported(`${where}: ${v.name} is not a tensor`);
  if (tt.elemType !== DType.FLOAT) {
    throw unsupported(
      `${where}: ${v.name} has element type ${tt.elemType}; a float32 classifier is required`,
    );
  }
  const dims = (tt.shape?.dim ?? []).map((d, i) => {
    const value = num(d.dimValue);
    if (d.dimValue !== null && d.dimValue !== undefined && value > 0) return value;
    return d.dimParam || (i === 0 ? 'N' : `d${i}`);
  });
  return { name: v.name ?? '', dims };
}

/**
 * Parses, checks and normalizes an fp32 ONNX classifier.
 * @param where names the model in error messages (a path, or 'model').
 * @throws {CascadeError} MODEL_ERR_INVALID for bytes that are not a well-formed ModelProto
 *   (truncated, garbage, dangling tensor names, cycles); MODEL_ERR_UNSUPPORTED for an operator
 *   outside {@link SUPPORTED_OPS} (naming op and node), several inputs or outputs, non-float
 *   inputs, external data, or a form the pipeline cannot quantize (e.g. a BatchNormalization
 *   that follows no Conv/Gemm).
 */
export function parseOnnx(bytes: Uint8Array, where = 'model'): Graph {
  const model = decodeModel(bytes, where);
  const g = model.graph!;
  const opsets = model.opsetImport ?? [];
  const std = opsets.find((o) => !o.domain || o.domain === 'ai.onnx');
  const srcOpset = std ? num(std.version) : 0;
  if (srcOpset < 7) throw unsupported(`${where}: default-domain opset ${srcOpset} is older than 7`);

  const consts = new Map<string, ConstTensor>();
  for (const t of g.initializer ?? []) consts.set(t.name ?? '', fromTensorProto(t, where));
  const inputs = (g.input ?? []).filter((v) => !consts.has(v.name ?? ''));
  if (inputs.length !== 1)
    throw unsupported(`${where}: ${inputs.length} graph inputs; a classifier takes one`);
  if ((g.output ?? []).length !== 1) {
    throw unsupported(`${where}: ${(g.output ?? []).length} graph outputs; a classifier has one`);
  }
  const input = ioOf(inputs[0], where);
  if (input.dims.length < 2) {
    throw unsupported(`${where}: input ${input.name} has no shape; a classifier input needs [N, ...] dims`);
  }
  const output = ioOf(g.output![0], where);

  const nodes: GraphNode[] = [];
  (g.node ?? []).forEach((n, i) => {
    const op = n.opType ?? '';
    const name = n.name || `${op}_${i}`;
    const domain = n.domain ?? '';
    if (op === 'Constant' && (domain === '' || domain === 'ai.onnx')) {
      const value = (n.attribute ?? []).find((a) => a.name === 'value');
      const t = value ? fromAttrProto(value, where) : undefined;
      if (!t || !('dtype' in t)) throw unsupported(`${where}: Constant node "${name}" has no tensor value`);
      consts.set(n.output?.[0] ?? '', t);
      return;
    }
    if (op === 'QuantizeLinear' || op === 'DequantizeLinear' || op.startsWith('QLinear') || op === 'QGemm') {
      throw unsupported(
        `${where}: node "${name}" uses ${op}: the model is already quantized; pass the fp32 model`,
      );
    }
    if ((domain !== '' && domain !== 'ai.onnx') || !SUPPORTED_OPS.includes(op)) {
      throw unsupported(
        `${where}: node "${name}" uses operator ${domain ? `${domain}:` : ''}${op}, which is not supported ` +
          `(supported: ${SUPPORTED_OPS.join(', ')})`,
      );
    }
    const attrs: Record<string, Attr> = {};
    for (const a of n.attribute ?? []) {
      const v = fromAttrProto(a, where);
      if ('dtype' in v) throw unsupported(`${where}: node "${name}" has a tensor attribute ${a.name}`);
      attrs[a.name ?? ''] = v;
    }
    nodes.push({ name, op, inputs: [...(n.input ?? [])], outputs: [...(n.output ?? [])], attrs });
  });

  const graph: Graph = {
    opset: Math.max(srcOpset, MIN_OUTPUT_OPSET),
    input,
    output,
    nodes: toposort(nodes, new Set([input.name, ...consts.keys()]), where),
    consts,
  };
  if (!graph.nodes.some((n) => n.outputs.includes(output.name))) {
    throw invalid(`${where}: no node produces the graph output ${output.name}`);
  }
  return normalizeGraph(graph, where, srcOpset);
}

/**
 * Orders nodes so every input is produced before use (ONNX requires it, but some writers do not
 * comply), and checks that every tensor name is defined.
 * @throws {CascadeError} MODEL_ERR_INVALID on an undefined tensor or a cycle.
 */
export function toposort(nodes: GraphNode[], known: Set<string>, where: string): GraphNode[] {
  const produced = new Map<string, GraphNode>();
  for (const n of nodes) for (const o of n.outputs) if (o) produced.set(o, n);
  const done = new Set<GraphNode>();
  const visiting = new Set<GraphNode>();
  const order: GraphNode[] = [];
  const visit = (n: GraphNode): void => {
    if (done.has(n)) return;
    if (visiting.has(n)) throw invalid(`${where}: the graph has a cycle through node "${n.name}"`);
    visiting.add(n);
    for (const i of n.inputs) {
      if (!i || known.has(i)) continue;
      const p = produced.get(i);
      if (!p) throw invalid(`${where}: node "${n.name}" reads ${i}, which nothing defines`);
      visit(p);
    }
    visiting.delete(n);
    done.add(n);
    order.push(n);
  };
  for (const n of nodes) visit(n);
  return order;
}

/** Nodes reading each tensor, in graph order. */
export function consumers(g: Graph): Map<string, GraphNode[]> {
  const m = new Map<string, GraphNode[]>();
  for (const n of g.nodes) {
    for (const i of n.inputs) {
      if (!i) continue;
      const list = m.get(i);
      if (list) list.push(n);
      else m.set(i, [n]);
    }
  }
  return m;
}

/** The node producing each tensor. */
export function producers(g: Graph): Map<string, GraphNode> {
  const m = new Map<string, GraphNode>();
  for (const n of g.nodes) for (const o of n.outputs) m.set(o, n);
  return m;
}

/** The float32 constant named `name`, or undefined when it is an activation or another type. */
export function floatConst(g: Graph, name: string): Extract<ConstTensor, { dtype: 'float32' }> | undefined {
  const t = g.consts.get(name);
  return t?.dtype === 'float32' ? t : undefined;
}

/** Options of {@link serializeGraph}. */
export interface SerializeOptions {
  /** producer_name of the ModelProto; default 'edge-cascade'. */
  producer?: string;
  /** Extra float tensors to expose as graph outputs (calibration reads activations this way). */
  extraOutputs?: readonly string[];
  /** doc_string of the ModelProto (the quantizer records its flavour there); default ''. */
  docString?: string;
}

/** Writes a graph as an ONNX ModelProto. */
export function serializeGraph(g: Graph, opts: SerializeOptions = {}): Uint8Array {
  const used = new Set<string>();
  for (const n of g.nodes) for (const i of n.inputs) used.add(i);
  const initializer = [...g.consts]
    .filter(([name]) => used.has(name))
    .map(([name, t]) => toTensorProto(name, t));
  const outputs = [valueInfo(g.output.name, DType.FLOAT, g.output.dims)];
  for (const name of opts.extraOutputs ?? []) {
    if (name !== g.output.name) outputs.push(valueInfo(name, DType.FLOAT));
  }
  return encodeModel({
    irVersion: irVersionFor(g.opset),
    producerName: opts.producer ?? 'edge-cascade',
    producerVersion: '0.1.0',
    docString: opts.docString ?? '',
    opsetImport: [{ domain: '', version: g.opset }],
    graph: {
      name: 'main',
      input: [valueInfo(g.input.name, DType.FLOAT, g.input.dims)],
      output: outputs,
      initializer,
      node: g.nodes.map((n) => ({
        name: n.name,
        opType: n.op,
        domain: '',
        input: n.inputs,
        output: n.outputs,
        attribute: Object.entries(n.attrs).map(([k, a]) => toAttrProto(k, a)),
      })),
    },
  });
}
