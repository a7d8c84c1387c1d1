/**
 * Narrows the int8 weights of an existing QDQ model to fewer bits (7: see quantize.ts on CPUs
 * without VNNI) without its fp32 original. A per-channel weight q with scale s becomes
 * round(q · s / s′), s′ = s · max|q| / (2^(bits−1) − 1), and the int32 bias of the same Conv or
 * Gemm is requantized to the scale s_in · s′ that fused kernels expect. Activation ranges, the
 * graph and every other tensor stay as they are. Only channels beyond the range change, so
 * narrowing twice, or a model quantized with 7 bits already, changes nothing.
 */
import { CascadeError, ErrorCodes } from '../../cascade/errors.ts';
import {
  type ConstTensor,
  decodeModel,
  encodeModel,
  fromTensorProto,
  num,
  type onnx,
  toTensorProto,
} from './proto.ts';
import { type WeightBits, weightQmax } from './quantize.ts';

/** Result of {@link narrowWeights}. */
export interface NarrowedModel {
  model: Uint8Array;
  /** Weight tensors with at least one channel narrowed. */
  tensors: number;
}

const WEIGHTED = new Set(['Conv', 'Gemm', 'MatMul']);

function invalid(where: string, message: string): CascadeError {
  return new CascadeError(ErrorCodes.MODEL_ERR_INVALID, `${where}: ${message}`);
}

/**
 * @param where names the model in error messages.
 * @throws {CascadeError} MODEL_ERR_INVALID for bytes that are not an ONNX model, and for a weight
 *   behind a DequantizeLinear whose zero point is not 0 (only symmetric weights can be narrowed).
 */
export function narrowWeights(model: Uint8Array, bits: WeightBits, where = 'model'): NarrowedModel {
  const m = decodeModel(model, where);
  const g = m.graph!;
  const inits = new Map((g.initializer ?? []).map((t, i) => [t.name ?? '', i]));
  const read = (name: string): ConstTensor | undefined => {
    const i = inits.get(name);
    return i === undefined ? undefined : fromTensorProto(g.initializer![i], where);
  };
  const write = (name: string, t: ConstTensor): void => {
    g.initializer![inits.get(name)!] = toTensorProto(name, t);
  };
  const producer = new Map<string, onnx.INodeProto>();
  for (const n of g.node ?? []) for (const o of n.output ?? []) producer.set(o, n);
  const dqInputs = (tensor: string | undefined): string[] | undefined => {
    const p = tensor === undefined ? undefined : producer.get(tensor);
    return p?.opType === 'DequantizeLinear' ? (p.input ?? []) : undefined;
  };
  const qmax = weightQmax(bits);
  let tensors = 0;

  for (const n of g.node ?? []) {
    if (!WEIGHTED.has(n.opType ?? '')) continue;
    const wDq = dqInputs(n.input?.[1]);
    const q = wDq && read(wDq[0]);
    if (!wDq || q?.dtype !== 'int8') continue;
    const scaleT = read(wDq[1]);
    if (scaleT?.dtype !== 'float32') continue;
    const zero = read(wDq[2] ?? '');
    if (zero && zero.dtype !== 'int64' && zero.data.some((z: number) => z !== 0))
      throw invalid(where, `weight ${wDq[0]} has a non-zero zero point; only symmetric weights narrow`);
    const channels = scaleT.data.length;
    const axisAttr = producer.get(n.input![1])?.attribute?.find((a) => a.name === 'axis');
    const rank = q.dims.length;
    const axis = channels === 1 ? 0 : ((num(axisAttr?.i) % rank) + rank) % rank;
    const inner = q.dims.slice(axis + 1).reduce((a, b) => a * b, 1);
    const chan = (i: number): number => (channels === 1 ? 0 : Math.floor(i / inner) % channels);

    const maxAbs = new Int32Array(channels);
    for (let i = 0; i < q.data.length; i++) {
      const c = chan(i);
      maxAbs[c] = Math.max(maxAbs[c], Math.abs(q.data[i]));
    }
    if (!maxAbs.some((a) => a > qmax)) continue;
    const oldScale = scaleT.data;
    const newScale = Float32Array.from(oldScale, (s, c) =>
      maxAbs[c] > qmax ? Math.fround((s * maxAbs[c]) / qmax) : s,
    );
    const narrowed = Int8Array.from(q.data, (v, i) => {
      const c = chan(i);
      return Math.max(-qmax, Math.min(qmax, Math.round((v * oldScale[c]) / newScale[c])));
    });
    write(wDq[0], { dtype: 'int8', dims: q.dims, data: narrowed });
    write(wDq[1], { dtype: 'float32', dims: scaleT.dims, data: newScale });
    tensors++;

    // An int32 bias is quantized with scale s_in · s_w: follow the new weight scale.
    const bDq = dqInputs(n.input?.[2]);
    const bq = bDq && read(bDq[0]);
    const xDq = dqInputs(n.input?.[0]);
    const sIn = xDq && read(xDq[1]);
    if (!bDq || bq?.dtype !== 'int32' || sIn?.dtype !== 'float32') continue;
    const bScaleT = read(bDq[1]);
    if (bScaleT?.dtype !== 'float32' || bScaleT.data.length !== channels) continue;
    const bScale = Float32Array.from(newScale, (s) => Math.fround(sIn.data[0] * s));
    const bias = Int32Array.from(bq.data, (b, c) =>
      Math.max(-(2 ** 31), Math.min(2 ** 31 - 1, Math.round((b * bScaleT.data[c]) / bScale[c]))),
    );
    write(bDq[0], { dtype: 'int32', dims: bq.dims, data: bias });
    write(bDq[1], { dtype: 'float32', dims: bScaleT.dims, data: bScale });
  }
  if (tensors > 0) {
    const note = `int8 weights narrowed to ${bits} bits`;
    m.docString = m.docString ? `${m.docString}; ${note}` : note;
  }
  return { model: encodeModel(m), tensors };
}
