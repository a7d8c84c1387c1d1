/**
 * Thin helpers over the `onnx-proto` protobuf classes: encode/decode a ModelProto with the
 * project's error codes, and convert tensors and attributes to and from plain typed arrays.
 * Everything that knows the protobuf field names lives here, so the graph code reads as ONNX.
 */

import type { onnx } from 'onnx-proto';
import onnxProto from 'onnx-proto';
import { CascadeError, ErrorCodes } from '../../cascade/errors.ts';

/** The generated protobuf namespace (a CommonJS module, hence the default import). */
export const pb = onnxProto.onnx;
export type { onnx };

/** ONNX TensorProto.DataType values used by the pipeline. */
export const DType = {
  FLOAT: 1,
  UINT8: 2,
  INT8: 3,
  INT32: 6,
  INT64: 7,
} as const;

/** A constant tensor as plain data. int64 values are kept as numbers (shapes and axes only). */
export type ConstTensor =
  | { dtype: 'float32'; dims: number[]; data: Float32Array }
  | { dtype: 'int32'; dims: number[]; data: Int32Array }
  | { dtype: 'int8'; dims: number[]; data: Int8Array }
  | { dtype: 'uint8'; dims: number[]; data: Uint8Array }
  | { dtype: 'int64'; dims: number[]; data: number[] };

/** A node attribute, typed as ONNX types it (the serialiser needs to know int from float). */
export type Attr =
  | { type: 'int'; value: number }
  | { type: 'ints'; value: number[] }
  | { type: 'float'; value: number }
  | { type: 'floats'; value: number[] }
  | { type: 'string'; value: string };

/** protobufjs hands int64 fields back as `Long` objects when the `long` package is present. */
export function num(v: number | { toNumber(): number } | null | undefined): number {
  if (v === null || v === undefined) return 0;
  return typeof v === 'number' ? v : v.toNumber();
}

/**
 * Decodes a serialized ModelProto.
 * @param where names the model in error messages.
 * @throws {CascadeError} MODEL_ERR_INVALID when the bytes are not a ModelProto with a graph.
 */
export function decodeModel(bytes: Uint8Array, where: string): onnx.ModelProto {
  let model: onnx.ModelProto;
  try {
    model = pb.ModelProto.decode(bytes);
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    throw new CascadeError(ErrorCodes.MODEL_ERR_INVALID, `${where}: not an ONNX model (${why})`, {
      cause: err,
    });
  }
  // Random bytes sometimes decode as a protobuf message with unknown fields only.
  if (!model.graph || (model.graph.node ?? []).length === 0 || num(model.irVersion) < 3) {
    throw new CascadeError(
      ErrorCodes.MODEL_ERR_INVALID,
      `${where}: not an ONNX model (no graph or IR version)`,
    );
  }
  return model;
}

/** Serializes a ModelProto to bytes. */
export function encodeModel(model: onnx.IModelProto): Uint8Array {
  return pb.ModelProto.encode(pb.ModelProto.create(model)).finish();
}

/**
 * The ONNX IR version that goes with an opset, so older runtimes accept the file
 * (onnx/onnx docs/Versioning.md: IR 7 ↔ opset 13–14, IR 8 ↔ 15–18, IR 9 ↔ 19–20, IR 10 ↔ 21).
 */
export function irVersionFor(opset: number): number {
  if (opset <= 14) return 7;
  if (opset <= 18) return 8;
  if (opset <= 20) return 9;
  return 10;
}

function bytesOf(a: Float32Array | Int32Array | Int8Array | Uint8Array): Uint8Array {
  return new Uint8Array(a.buffer.slice(a.byteOffset, a.byteOffset + a.byteLength));
}

/** Converts a plain tensor to a TensorProto (little-endian raw data, as every runtime writes). */
export function toTensorProto(name: string, t: ConstTensor): onnx.ITensorProto {
  const base = { name, dims: t.dims };
  switch (t.dtype) {
    case 'float32':
      return { ...base, dataType: DType.FLOAT, rawData: bytesOf(t.data) };
    case 'int32':
      return { ...base, dataType: DType.INT32, rawData: bytesOf(t.data) };
    case 'int8':
      return { ...base, dataType: DType.INT8, rawData: bytesOf(t.data) };
    case 'uint8':
      return { ...base, dataType: DType.UINT8, rawData: bytesOf(t.data) };
    case 'int64':
      return { ...base, dataType: DType.INT64, int64Data: t.data };
  }
}

/** Copies raw bytes into a fresh, aligned buffer (decoded fields are views into the file). */
function aligned(raw: Uint8Array): ArrayBuffer {
  const buf = new ArrayBuffer(raw.byteLength);
  new Uint8Array(buf).set(raw);
  return buf;
}

/**
 * Converts a TensorProto to a plain tensor.
 * @throws {CascadeError} MODEL_ERR_UNSUPPORTED for external data or data types other than
 *   float32/int64/int32/int8/uint8; MODEL_ERR_INVALID when the data size disagrees with the dims.
 */
export function fromTensorProto(t: onnx.ITensorProto, where: string): ConstTensor {
  const dims = (t.dims ?? []).map(num);
  const n = dims.reduce((a, b) => a * b, 1);
  if (t.dataLocation === pb.TensorProto.DataLocation.EXTERNAL) {
    throw new CascadeError(ErrorCodes.MODEL_ERR_UNSUPPORTED, `${where}: tensor ${t.name} uses external data`);
  }
  const raw = t.rawData && t.rawData.byteLength > 0 ? t.rawData : undefined;
  let out: ConstTensor;
  switch (t.dataType) {
    case DType.FLOAT:
      out = {
        dtype: 'float32',
        dims,
        data: raw ? new Float32Array(aligned(raw)) : Float32Array.from(t.floatData ?? []),
      };
      break;
    case DType.INT32:
      out = {
        dtype: 'int32',
        dims,
        data: raw ? new Int32Array(aligned(raw)) : Int32Array.from(t.int32Data ?? []),
      };
      break;
    case DType.INT8:
      out = {
        dtype: 'int8',
        dims,
        data: raw ? new Int8Array(aligned(raw)) : Int8Array.from(t.int32Data ?? []),
      };
      break;
    case DType.UINT8:
      out = {
        dtype: 'uint8',
        dims,
        data: raw ? new Uint8Array(aligned(raw)) : Uint8Array.from(t.int32Data ?? []),
      };
      break;
    case DType.INT64: {
      const data = raw ? Array.from(new BigInt64Array(aligned(raw)), Number) : (t.int64Data ?? []).map(num);
      out = { dtype: 'int64', dims, data };
      break;
    }
    default:
      throw new CascadeError(
        ErrorCodes.MODEL_ERR_UNSUPPORTED,
        `${where}: tensor ${t.name} has data type ${t.dataType}; only float32 weights are supported`,
      );
  }
  if (out.data.length !== n) {
    throw new CascadeError(
      ErrorCodes.MODEL_ERR_INVALID,
      `${where}: tensor ${t.name} holds ${out.data.length} values for dims [${dims.join(', ')}]`,
    );
  }
  return out;
}

/** Converts a plain attribute to an AttributeProto. */
export function toAttrProto(name: string, a: Attr): onnx.IAttributeProto {
  const T = pb.AttributeProto.AttributeType;
  switch (a.type) {
    case 'int':
      return { name, type: T.INT, i: a.value };
    case 'ints':
      return { name, type: T.INTS, ints: a.value };
    case 'float':
      return { name, type: T.FLOAT, f: a.value };
    case 'floats':
      return { name, type: T.FLOATS, floats: a.value };
    case 'string':
      return { name, type: T.STRING, s: new TextEncoder().encode(a.value) };
  }
}

/**
 * Converts an AttributeProto to a plain attribute; tensor attributes (Constant's `value`) are
 * returned as tensors, graph-valued attributes are not supported.
 */
export function fromAttrProto(a: onnx.IAttributeProto, where: string): Attr | ConstTensor {
  const T = pb.AttributeProto.AttributeType;
  switch (a.type) {
    case T.INT:
      return { type: 'int', value: num(a.i) };
    case T.INTS:
      return { type: 'ints', value: (a.ints ?? []).map(num) };
    case T.FLOAT:
      return { type: 'float', value: a.f ?? 0 };
    case T.FLOATS:
      return { type: 'floats', value: [...(a.floats ?? [])] };
    case T.STRING:
      return { type: 'string', value: new TextDecoder().decode(a.s ?? new Uint8Array()) };
    case T.TENSOR:
      if (a.t) return fromTensorProto(a.t, where);
      break;
  }
  throw new CascadeError(
    ErrorCodes.MODEL_ERR_UNSUPPORTED,
    `${where}: attribute ${a.name} has an unsupported type (${a.type})`,
  );
}

/** A ValueInfoProto for a tensor; `dims` strings are symbolic (e.g. the batch 'N'). */
export function valueInfo(name: string, elemType: number, dims?: (number | string)[]): onnx.IValueInfoProto {
  const shape = dims
    ? { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) }
    : null;
  return { name, type: { tensorType: { elemType, ...(shape ? { shape } : {}) } } };
}
