/**
 * Exports a trained architecture (models/arch.ts) with TensorFlow-layout weights as an fp32 ONNX
 * classifier: input `input` float32 [N, C, H, W], output `logits` float32 [N, classes].
 *
 * The graph is what a runtime wants, not a transcript of the training graph: BatchNorm is folded
 * into the convolution before it, 'same' padding becomes explicit pads placed as TensorFlow
 * places them (the odd pixel at the bottom/right), depthwise convolutions become grouped Conv,
 * dropout disappears, and TensorFlow's NHWC flatten order is honoured by permuting the rows of
 * the following dense weights instead of transposing activations at run time.
 */
import { CascadeError, ErrorCodes } from '../../cascade/errors.ts';
import { type ArchSpec, paramShapes } from '../../models/arch.ts';
import { type Graph, type GraphNode, MIN_OUTPUT_OPSET, serializeGraph } from './graph.ts';

/** Options of {@link exportOnnx}. */
export interface ExportOptions {
  /** Default-domain opset, 13–21; default 13 (per-channel Q/DQ needs at least 13). */
  opset?: number;
  /** producer_name written into the model; default 'edge-cascade'. */
  producer?: string;
}

/** TensorFlow's BatchNormalization epsilon (Keras default), which the trainer uses. */
export const TF_BN_EPSILON = 1e-3;

/** Highest opset this exporter writes (ONNX Runtime 1.30 runs it; IR version follows it). */
const MAX_OPSET = 21;

/** The Conv/Gemm a following BatchNorm folds into, with its ONNX-layout weight and bias. */
interface Linear {
  node: GraphNode;
  weight: Float32Array;
  bias: Float32Array | undefined;
  out: number;
  layer: number;
}

/** TensorFlow 'same' padding along one axis: [before, after], the extra pixel after. */
function samePads(size: number, kernel: number, stride: number): [number, number] {
  const out = Math.ceil(size / stride);
  const total = Math.max((out - 1) * stride + kernel - size, 0);
  const before = Math.floor(total / 2);
  return [before, total - before];
}

/**
 * Builds the fp32 graph of an architecture (the part of {@link exportOnnx} before serialization).
 * @throws {CascadeError} MODEL_ERR_INVALID for missing or wrongly sized weights;
 *   MODEL_ERR_UNSUPPORTED for a layer order the exporter cannot express (e.g. BatchNorm that
 *   follows no conv/dense, spatial layers after flattening).
 * @throws {RangeError} from `paramShapes` when the architecture itself is inconsistent.
 */
export function archToGraph(
  arch: ArchSpec,
  weights: Map<string, Float32Array>,
  opset = MIN_OUTPUT_OPSET,
): Graph {
  for (const p of paramShapes(arch)) {
    const w = weights.get(p.name);
    const n = p.shape.reduce((a, b) => a * b, 1);
    if (!w) throw new CascadeError(ErrorCodes.MODEL_ERR_INVALID, `${arch.name}: weight ${p.name} is missing`);
    if (w.length !== n) {
      throw new CascadeError(
        ErrorCodes.MODEL_ERR_INVALID,
        `${arch.name}: weight ${p.name} has ${w.length} values, expected ${n} for [${p.shape.join(', ')}]`,
      );
    }
  }
  const W = (name: string): Float32Array => weights.get(name)!;
  const [H0, W0, C0] = arch.input;
  const g: Graph = {
    opset,
    input: { name: 'input', dims: ['N', C0, H0, W0] },
    output: { name: 'logits', dims: ['N', arch.classes] },
    nodes: [],
    consts: new Map(),
  };
  let h = H0;
  let w = W0;
  let c = C0;
  let flat: number | null = null;
  // perm[onnxIndex] = TensorFlow index of the same feature after an NHWC flatten.
  let perm: Int32Array | null = null;
  let x = 'input';
  let linear: Linear | null = null;
  const bad = (i: number, why: string): CascadeError =>
    new CascadeError(
      ErrorCodes.MODEL_ERR_UNSUPPORTED,
      `${arch.name}: layer ${i} (${arch.layers[i].kind}) ${why}`,
    );
  const emit = (i: number, op: string, inputs: string[], attrs: GraphNode['attrs'] = {}): GraphNode => {
    const node: GraphNode = {
      name: `L${i}_${op}`,
      op,
      inputs: [x, ...inputs],
      outputs: [`L${i}.${op}`],
      attrs,
    };
    g.nodes.push(node);
    x = node.outputs[0];
    return node;
  };
  const ints = (value: number[]) => ({ type: 'ints' as const, value });

  arch.layers.forEach((l, i) => {
    if (l.kind !== 'bn' && l.kind !== 'dropout') linear = null;
    if (
      flat !== null &&
      (l.kind === 'conv' || l.kind === 'dwconv' || l.kind === 'maxpool' || l.kind === 'gap')
    ) {
      throw bad(i, 'needs a spatial input but follows a gap/flatten layer');
    }
    switch (l.kind) {
      case 'conv':
      case 'dwconv': {
        const k = l.kernel;
        const s = l.stride ?? 1;
        const out = l.kind === 'conv' ? l.filters : c;
        const tf = W(`${i}/kernel`);
        const inPer = l.kind === 'conv' ? c : 1;
        // TF [kh, kw, in, out] (depthwise: [kh, kw, C, 1]) → ONNX [out, in/group, kh, kw].
        const wt = new Float32Array(out * inPer * k * k);
        for (let o = 0; o < out; o++)
          for (let ci = 0; ci < inPer; ci++)
            for (let y = 0; y < k; y++)
              for (let xx = 0; xx < k; xx++) {
                const src = l.kind === 'conv' ? ((y * k + xx) * c + ci) * out + o : (y * k + xx) * c + o;
                wt[((o * inPer + ci) * k + y) * k + xx] = tf[src];
              }
        const [pt, pb] = samePads(h, k, s);
        const [pl, pr] = samePads(w, k, s);
        g.consts.set(`L${i}.weight`, { dtype: 'float32', dims: [out, inPer, k, k], data: wt });
        const node = emit(i, 'Conv', [`L${i}.weight`], {
          kernel_shape: ints([k, k]),
          strides: ints([s, s]),
          pads: ints([pt, pl, pb, pr]),
          ...(l.kind === 'dwconv' ? { group: { type: 'int' as const, value: c } } : {}),
        });
        linear = { node, weight: wt, bias: undefined, out, layer: i };
        c = out;
        h = Math.ceil(h / s);
        w = Math.ceil(w / s);
        break;
      }
      case 'bn': {
        const lin = linear as Linear | null;
        if (!lin) throw bad(i, 'must follow a conv, dwconv or dense layer to be folded');
        const [gamma, beta, mean, variance] = ['gamma', 'beta', 'mean', 'variance'].map((p) =>
          W(`${i}/${p}`),
        );
        const per = lin.weight.length / lin.out;
        if (!lin.bias) {
          lin.bias = new Float32Array(lin.out);
          g.consts.set(`L${lin.layer}.bias`, { dtype: 'float32', dims: [lin.out], data: lin.bias });
          lin.node.inputs.push(`L${lin.layer}.bias`);
        }
        for (let o = 0; o < lin.out; o++) {
          const scale = gamma[o] / Math.sqrt(variance[o] + TF_BN_EPSILON);
          for (let j = 0; j < per; j++) lin.weight[o * per + j] *= scale;
          lin.bias[o] = (lin.bias[o] - mean[o]) * scale + beta[o];
        }
        break;
      }
      case 'relu':
        emit(i, 'Relu', []);
        break;
      case 'maxpool':
        emit(i, 'MaxPool', [], { kernel_shape: ints([l.size, l.size]), strides: ints([l.size, l.size]) });
        h = Math.floor(h / l.size);
        w = Math.floor(w / l.size);
        break;
      case 'gap':
        emit(i, 'GlobalAveragePool', []);
        emit(i, 'Flatten', [], { axis: { type: 'int', value: 1 } });
        flat = c;
        perm = null;
        break;
      case 'flatten':
        if (flat === null) {
          perm = new Int32Array(h * w * c);
          for (let ch = 0; ch < c; ch++)
            for (let y = 0; y < h; y++)
              for (let xx = 0; xx < w; xx++) perm[(ch * h + y) * w + xx] = (y * w + xx) * c + ch;
          flat = h * w * c;
          emit(i, 'Flatten', [], { axis: { type: 'int', value: 1 } });
        }
        break;
      case 'dropout':
        break;
      case 'dense': {
        const inF = flat!;
        const tf = W(`${i}/kernel`);
        const p = perm as Int32Array | null;
        // TF [in, out] with rows in NHWC flatten order → ONNX Gemm B [out, in] (transB=1) in NCHW order.
        const wt = new Float32Array(l.units * inF);
        for (let o = 0; o < l.units; o++)
          for (let j = 0; j < inF; j++) wt[o * inF + j] = tf[(p ? p[j] : j) * l.units + o];
        const bias = Float32Array.from(W(`${i}/bias`));
        g.consts.set(`L${i}.weight`, { dtype: 'float32', dims: [l.units, inF], data: wt });
        g.consts.set(`L${i}.bias`, { dtype: 'float32', dims: [l.units], data: bias });
        const node = emit(i, 'Gemm', [`L${i}.weight`, `L${i}.bias`], { transB: { type: 'int', value: 1 } });
        linear = { node, weight: wt, bias, out: l.units, layer: i };
        flat = l.units;
        perm = null;
        break;
      }
    }
  });
  if (flat !== arch.classes || g.nodes.length === 0) {
    throw new CascadeError(
      ErrorCodes.MODEL_ERR_UNSUPPORTED,
      `${arch.name}: the last layer gives ${flat ?? `${h}x${w}x${c}`} features, not ${arch.classes} logits`,
    );
  }
  g.nodes[g.nodes.length - 1].outputs[0] = 'logits';
  return g;
}

/**
 * Exports an architecture and its weights as an fp32 ONNX model (see the file comment).
 * @param weights keyed by `paramShapes(arch)` names in TensorFlow layouts; BatchNorm epsilon 1e-3.
 * @param opts.opset default 13; 13–21 accepted.
 * @param opts.producer default 'edge-cascade'.
 * @returns the serialized ModelProto.
 * @throws {CascadeError} MODEL_ERR_INVALID for missing or wrongly sized weights;
 *   MODEL_ERR_UNSUPPORTED for an opset outside 13–21 or a layer order ONNX export cannot express.
 * @throws {RangeError} when the architecture itself is inconsistent (from `paramShapes`).
 */
export function exportOnnx(
  arch: ArchSpec,
  weights: Map<string, Float32Array>,
  opts: ExportOptions = {},
): Uint8Array {
  const opset = opts.opset ?? MIN_OUTPUT_OPSET;
  if (!Number.isInteger(opset) || opset < MIN_OUTPUT_OPSET || opset > MAX_OPSET) {
    throw new CascadeError(
      ErrorCodes.MODEL_ERR_UNSUPPORTED,
      `opset ${opset} is not supported for export (${MIN_OUTPUT_OPSET}–${MAX_OPSET})`,
    );
  }
  const docString = `${arch.name}: ${arch.layers.length} layers, input ${arch.input.join('x')} (HWC) as NCHW`;
  return serializeGraph(archToGraph(arch, weights, opset), { producer: opts.producer, docString });
}
