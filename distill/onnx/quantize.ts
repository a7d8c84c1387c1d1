/**
 * INT8 post-training quantization of an fp32 ONNX classifier into QDQ form: QuantizeLinear /
 * DequantizeLinear pairs around every activation, per-channel symmetric int8 weights behind a
 * DequantizeLinear. One calibration, two flavours (see DESIGN.md, Models):
 *
 * - 'qdq-cpu': uint8 asymmetric activations and int32 biases with scale s_input·s_weight[c].
 *   Q sits after the ReLU, never between Conv and ReLU, so ONNX Runtime's CPU provider removes
 *   the ReLU (zero point 0 already clamps there) and fuses DQ→Conv→Q into QLinearConv,
 *   DQ→Gemm→Q into QGemm, DQ→Add→Q into QLinearAdd, pools into their uint8 forms. (uint8 rather
 *   than int8 with zero point −128: ORT 1.30 on x86 leaves an int8 Conv unfused whenever its
 *   input's zero point happens to be 0, e.g. after a symmetric input range.)
 * - 'qdq-trt': symmetric int8 activations with zero-point 0 and float biases, TensorRT's
 *   explicit-quantization form. ORT's CPU provider does not fuse int8 zero-point-0 Conv: it
 *   runs Conv in float between Q/DQ pairs, correct but slower than fp32 on CPU.
 *
 * Weights are per-channel symmetric int8; in 'qdq-cpu' they use 7 bits (−63…63) by default. On
 * x86 CPUs without VNNI (AVX2, AVX-512F) ONNX Runtime multiplies uint8 activations by int8 weights
 * with VPMADDUBSW, which adds two products into a saturating int16: 255·127·2 overflows it, and
 * the gateway student measured 92.18 % on such a CPU against 93.14 % with VNNI. With 7-bit weights
 * the pair stays below 2¹⁵ (255·63·2 = 32,130), so every x86 CPU computes the same logits (the
 * ORT quantizer's `reduce_range`); it cost the shipped students ≤ 0.04 pp. TensorRT accumulates
 * in int32, so 'qdq-trt' keeps 8 bits.
 *
 * The graph input and output keep their names and fp32 types: a Q right after the input and a
 * DQ producing the output, so every runtime feeds all flavours the same way.
 */
import { CascadeError, ErrorCodes } from '../../cascade/errors.ts';
import type { CalibrationRanges, TensorRange } from './calibrate-ranges.ts';
import {
  type ConstTensor,
  consumers,
  floatConst,
  type Graph,
  type GraphNode,
  parseOnnx,
  producers,
  serializeGraph,
} from './graph.ts';

/** Quantization parameters of one activation tensor (per tensor). */
export interface ActivationQuant {
  scale: number;
  zeroPoint: number;
  dtype: 'uint8' | 'int8';
}

/** The two QDQ forms written from one calibration. */
export type QdqFlavour = 'qdq-cpu' | 'qdq-trt';

/** Bits the int8 weights use: 7 keeps u8×s8 pair sums inside int16 (CPUs without VNNI). */
export type WeightBits = 7 | 8;

/** The largest |q| of a symmetric weight with `bits` bits: 127 with 8, 63 with 7. */
export function weightQmax(bits: WeightBits): number {
  return 2 ** (bits - 1) - 1;
}

/** The weight bits a flavour gets when the options name none. */
export function defaultWeightBits(flavour: QdqFlavour): WeightBits {
  return flavour === 'qdq-cpu' ? 7 : 8;
}

/** Options of {@link quantizeQdq}. */
export interface QuantizeOptions {
  flavour: QdqFlavour;
  /** Bits of the int8 weights: 7 (default for 'qdq-cpu', see the file comment) or 8 ('qdq-trt'). */
  weightBits?: WeightBits;
  /** producer_name of the written model; default 'edge-cascade'. */
  producer?: string;
}

/** Result of {@link quantizeQdq}. */
export interface QuantizedModel {
  /** Serialized ModelProto. */
  model: Uint8Array;
  /** Parameters of the QuantizeLinear applied to the fp32 input (the model card's input.quant). */
  inputQuant: ActivationQuant;
}

/** Ops whose output equals (a selection of) their input values: output reuses the input's scale. */
const SAME_SCALE = new Set(['MaxPool', 'Flatten', 'Reshape']);
/** Ops whose output, read only by a ReLU/Clip, is left unquantized so ORT fuses the pair. */
const ACTIVATION_FUSABLE = new Set(['Conv', 'Gemm', 'MatMul', 'Add']);

/** Which activation tensors get Q/DQ pairs and whose range each one uses. */
export interface QdqPlan {
  /** Quantized tensors in graph order (the input first), each mapped to the tensor owning its range. */
  owner: Map<string, string>;
  /** Tensors that need a calibrated range (the distinct owners), in graph order. */
  calibrated: string[];
}

/**
 * Decides where Q/DQ pairs go: after the input and after every node, except the output of a
 * Conv/Gemm/MatMul/Add read only by a ReLU or Clip (the pair is quantized after the activation).
 * MaxPool/Flatten/Reshape outputs share their input's parameters (ORT then runs them on int8).
 */
export function planQdq(g: Graph): QdqPlan {
  const uses = consumers(g);
  const owner = new Map<string, string>([[g.input.name, g.input.name]]);
  for (const n of g.nodes) {
    const out = n.outputs[0];
    const readers = uses.get(out) ?? [];
    const act = readers.length === 1 && (readers[0].op === 'Relu' || readers[0].op === 'Clip');
    if (ACTIVATION_FUSABLE.has(n.op) && act && out !== g.output.name) continue;
    const from = owner.get(n.inputs[0]);
    owner.set(out, SAME_SCALE.has(n.op) && from !== undefined ? from : out);
  }
  return { owner, calibrated: [...new Set(owner.values())] };
}

/**
 * Activation parameters for a range. The range is widened to include 0 (ONNX requires zero to
 * be exact) and the scale is rounded to float32 first so the zero point matches what is stored.
 */
export function activationQuant(r: TensorRange, flavour: QdqFlavour): ActivationQuant {
  const lo = Math.min(r.min, 0);
  const hi = Math.max(r.max, 0);
  if (flavour === 'qdq-trt') {
    const amax = Math.max(-lo, hi);
    return { scale: Math.fround(amax > 0 ? amax / 127 : 1 / 127), zeroPoint: 0, dtype: 'int8' };
  }
  const scale = Math.fround(hi > lo ? (hi - lo) / 255 : 1 / 255);
  return { scale, zeroPoint: Math.min(255, Math.max(0, Math.round(-lo / scale))), dtype: 'uint8' };
}

/**
 * Symmetric per-channel int8 quantization of a weight along `axis`, values in ±(2^(bits−1) − 1):
 * −127…127 with 8 bits, −63…63 with 7.
 */
export function quantizeWeight(
  w: Extract<ConstTensor, { dtype: 'float32' }>,
  axis: number,
  bits: WeightBits = 8,
): { q: Int8Array; scale: Float32Array } {
  const qmax = weightQmax(bits);
  const channels = w.dims[axis] ?? 1;
  const inner = w.dims.slice(axis + 1).reduce((a, b) => a * b, 1);
  const amax = new Float64Array(channels);
  for (let i = 0; i < w.data.length; i++) {
    const c = Math.floor(i / inner) % channels;
    amax[c] = Math.max(amax[c], Math.abs(w.data[i]));
  }
  const scale = Float32Array.from(amax, (a) => (a > 0 ? a / qmax : 1));
  const q = new Int8Array(w.data.length);
  for (let i = 0; i < w.data.length; i++) {
    const c = Math.floor(i / inner) % channels;
    q[i] = Math.max(-qmax, Math.min(qmax, Math.round(w.data[i] / scale[c])));
  }
  return { q, scale };
}

function invalid(message: string): CascadeError {
  return new CascadeError(ErrorCodes.MODEL_ERR_INVALID, message);
}

/** Builds the QDQ graph; see {@link quantizeQdq}. */
function rewrite(
  g: Graph,
  ranges: CalibrationRanges,
  opts: QuantizeOptions & { weightBits: WeightBits },
): { graph: Graph; input: ActivationQuant } {
  const flavour = opts.flavour;
  const bits = opts.weightBits;
  const plan = planQdq(g);
  const prod = producers(g);
  const params = new Map<string, ActivationQuant>();
  for (const t of plan.calibrated) {
    const r = ranges.tensors[t];
    if (!r || !Number.isFinite(r.min) || !Number.isFinite(r.max) || r.min > r.max) {
      throw invalid(`calibration ranges lack a finite range for tensor ${t} (calibrated on another model?)`);
    }
    // Bounded activations: the quantized range must clamp exactly where the activation does, so
    // ORT can drop the ReLU/Clip node and fused kernels saturate at the same place.
    let { min, max } = r;
    const p = prod.get(t);
    if (p?.op === 'Relu') min = 0;
    if (p?.op === 'Clip') {
      const lo = floatConst(g, p.inputs[1] ?? '')?.data[0];
      const hi = floatConst(g, p.inputs[2] ?? '')?.data[0];
      if (lo !== undefined) min = Math.max(min, lo);
      if (hi !== undefined) max = Math.min(max, hi);
    }
    params.set(t, activationQuant({ min, max: Math.max(max, min) }, flavour));
  }
  const qOf = (t: string): ActivationQuant => params.get(plan.owner.get(t)!)!;

  const out: Graph = { opset: g.opset, input: g.input, output: g.output, nodes: [], consts: new Map() };
  const used = new Set<string>([g.input.name, ...g.nodes.flatMap((n) => n.outputs)]);
  const fresh = (base: string): string => {
    let name = base;
    for (let i = 1; used.has(name) || g.consts.has(name); i++) name = `${base}_${i}`;
    used.add(name);
    return name;
  };
  const constant = (base: string, t: ConstTensor): string => {
    const name = fresh(base);
    out.consts.set(name, t);
    return name;
  };
  const scalarParams = (t: string): [string, string] => {
    const a = qOf(t);
    const owner = plan.owner.get(t)!;
    const s = `${owner}.scale`;
    const z = `${owner}.zero_point`;
    if (!out.consts.has(s)) {
      used.add(s);
      used.add(z);
      out.consts.set(s, { dtype: 'float32', dims: [], data: Float32Array.of(a.scale) });
      out.consts.set(
        z,
        a.dtype === 'uint8'
          ? { dtype: 'uint8', dims: [], data: Uint8Array.of(a.zeroPoint) }
          : { dtype: 'int8', dims: [], data: Int8Array.of(a.zeroPoint) },
      );
    }
    return [s, z];
  };
  const node = (
    op: string,
    name: string,
    inputs: string[],
    output: string,
    attrs: GraphNode['attrs'] = {},
  ): void => {
    out.nodes.push({ name: fresh(name), op, inputs, outputs: [output], attrs });
  };
  const quantizedName = (t: string): string => `${t}_quantized`;

  const emitQ = (t: string, from: string): void => {
    used.add(quantizedName(t));
    node('QuantizeLinear', `${t}_QuantizeLinear`, [from, ...scalarParams(t)], quantizedName(t));
  };
  emitQ(g.input.name, g.input.name);

  /** A constant quantized per channel (zero points 0) behind its DequantizeLinear; returns the float name. */
  const perChannelDq = (
    owner: string,
    role: 'weight' | 'bias',
    q:
      | { dtype: 'int8'; dims: number[]; data: Int8Array }
      | { dtype: 'int32'; dims: number[]; data: Int32Array },
    scale: Float32Array,
    axis: number,
  ): string => {
    const qs = constant(`${owner}.${role}_quantized`, q);
    const ss = constant(`${owner}.${role}_scale`, { dtype: 'float32', dims: [scale.length], data: scale });
    const n = scale.length;
    const zs = constant(
      `${owner}.${role}_zero_point`,
      q.dtype === 'int8'
        ? { dtype: 'int8', dims: [n], data: new Int8Array(n) }
        : { dtype: 'int32', dims: [n], data: new Int32Array(n) },
    );
    const dq = fresh(`${owner}.${role}_dequantized`);
    node('DequantizeLinear', `${owner}_${role}_DequantizeLinear`, [qs, ss, zs], dq, {
      axis: { type: 'int', value: axis },
    });
    return dq;
  };

  for (const n of g.nodes) {
    const inputs = n.inputs.map((t, k) => {
      if (!t) return t;
      if (plan.owner.has(t)) {
        const dq = fresh(`${t}_dequantized`);
        node('DequantizeLinear', `${t}_DequantizeLinear`, [quantizedName(t), ...scalarParams(t)], dq);
        return dq;
      }
      const w = floatConst(g, t);
      if (!w) {
        if (g.consts.has(t)) out.consts.set(t, g.consts.get(t)!);
        return t;
      }
      const weightSlot = (n.op === 'Conv' || n.op === 'Gemm' || n.op === 'MatMul') && k === 1;
      if (weightSlot) {
        // Conv [M, C/g, kh, kw] and Gemm B [N, K] (transB=1) quantize per output row;
        // MatMul B [K, N] per column.
        const axis = n.op === 'MatMul' ? Math.max(w.dims.length - 1, 0) : 0;
        const { q, scale } = quantizeWeight(w, axis, bits);
        return perChannelDq(n.name, 'weight', { dtype: 'int8', dims: w.dims, data: q }, scale, axis);
      }
      const biasSlot = (n.op === 'Conv' || n.op === 'Gemm') && k === 2 && flavour === 'qdq-cpu';
      if (biasSlot) {
        const sIn = qOf(n.inputs[0]).scale;
        const { scale: sW } = quantizeWeight(floatConst(g, n.inputs[1])!, 0, bits);
        // Exactly the float32 product, so fused kernels (which assume it) and DQ agree.
        const sB = Float32Array.from(sW, (s) => Math.fround(sIn * s));
        const qb = Int32Array.from(w.data, (b, c) =>
          Math.max(-(2 ** 31), Math.min(2 ** 31 - 1, Math.round(b / sB[c]))),
        );
        return perChannelDq(n.name, 'bias', { dtype: 'int32', dims: w.dims, data: qb }, sB, 0);
      }
      out.consts.set(t, w);
      return t;
    });
    const y = n.outputs[0];
    const isOutput = y === g.output.name;
    const target = isOutput && plan.owner.has(y) ? fresh(`${y}_float`) : y;
    out.nodes.push({ ...n, name: fresh(n.name), inputs, outputs: [target] });
    if (plan.owner.has(y)) {
      emitQ(y, target);
      if (isOutput)
        node('DequantizeLinear', `${y}_DequantizeLinear`, [quantizedName(y), ...scalarParams(y)], y);
    }
  }
  return { graph: out, input: qOf(g.input.name) };
}

/**
 * Quantizes an fp32 ONNX classifier to INT8 QDQ form (see the file comment for the flavours).
 * Weights are per-channel symmetric int8 in both flavours (axis 0 for Conv and for Gemm's
 * [N, K] weight, the column axis for MatMul), 7-bit in 'qdq-cpu' unless `opts.weightBits` says 8.
 * @param fp32Model a model {@link parseOnnx} accepts (the exporter's output, or any supported classifier).
 * @param ranges activation ranges from `calibrateRanges` on the same model.
 * @param opts.flavour 'qdq-cpu' (uint8 activations) or 'qdq-trt' (int8, zero point 0).
 * @returns the serialized model and the input's quantization parameters for the model card.
 * @throws {CascadeError} MODEL_ERR_INVALID / MODEL_ERR_UNSUPPORTED from parsing the model;
 *   MODEL_ERR_INVALID when `ranges` lack a finite range for a tensor that needs one.
 */
export function quantizeQdq(
  fp32Model: Uint8Array,
  ranges: CalibrationRanges,
  opts: QuantizeOptions,
): QuantizedModel {
  const g = parseOnnx(fp32Model);
  const bits = opts.weightBits ?? defaultWeightBits(opts.flavour);
  const { graph, input } = rewrite(g, ranges, { ...opts, weightBits: bits });
  const doc = `${opts.flavour} INT8 QDQ, ${bits}-bit weights; ${ranges.method} calibration on ${ranges.samples} samples`;
  return { model: serializeGraph(graph, { producer: opts.producer, docString: doc }), inputQuant: input };
}
