/**
 * Model cards: the JSON that travels with every model artifact and tells every runtime how to
 * feed it (input spec), how far to trust it (temperature, reliability, thresholds) and where it
 * came from (training config, data hash, backend). Validated by schema when loaded.
 */
import { type Static, Type } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';

export const Tier = Type.Union([Type.Literal('device'), Type.Literal('gateway'), Type.Literal('cloud')]);
export type Tier = Static<typeof Tier>;

/** How a runtime turns pixels into the model's input tensor. */
export const InputSpec = Type.Object(
  {
    /** ONNX input name. */
    name: Type.String(),
    /** Tensor layout of the ONNX input; the batch dimension is dynamic. */
    layout: Type.Union([Type.Literal('NCHW'), Type.Literal('NHWC')]),
    height: Type.Integer({ minimum: 1 }),
    width: Type.Integer({ minimum: 1 }),
    colour: Type.Union([Type.Literal('gray'), Type.Literal('rgb'), Type.Literal('bgr')]),
    /** x = (pixel / 255 - mean[c]) / std[c]. */
    mean: Type.Array(Type.Number()),
    std: Type.Array(Type.Number(), { minItems: 1 }),
    /** Quantization of the input activation in INT8 models (the first QuantizeLinear). */
    quant: Type.Optional(
      Type.Object({
        scale: Type.Number({ exclusiveMinimum: 0 }),
        zeroPoint: Type.Integer(),
        dtype: Type.Union([Type.Literal('uint8'), Type.Literal('int8')]),
      }),
    ),
  },
  { additionalProperties: false },
);
export type InputSpec = Static<typeof InputSpec>;

/** P(correct) per confidence bin, from validation predictions. */
export const ReliabilityBin = Type.Object(
  {
    lo: Type.Number(),
    hi: Type.Number(),
    n: Type.Integer({ minimum: 0 }),
    /** P(this tier correct | confidence in [lo, hi)); null when the bin is empty. */
    accuracy: Type.Union([Type.Number(), Type.Null()]),
    /** Mean confidence of the bin's samples; null when empty. */
    confidence: Type.Union([Type.Number(), Type.Null()]),
    /** For lower tiers: P(next tiers correct | this tier's confidence bin). */
    next: Type.Optional(Type.Record(Type.String(), Type.Union([Type.Number(), Type.Null()]))),
  },
  { additionalProperties: false },
);
export type ReliabilityBin = Static<typeof ReliabilityBin>;

export const ArtifactFile = Type.Object(
  {
    /** Path relative to the card's folder. */
    file: Type.String(),
    bytes: Type.Integer({ minimum: 0 }),
    sha256: Type.String({ pattern: '^[0-9a-f]{64}$' }),
    /** fp32: plain float; qdq-cpu: uint8 activations fused by ONNX Runtime; qdq-trt: TensorRT's int8 zp=0 form. */
    form: Type.Union([Type.Literal('fp32'), Type.Literal('qdq-cpu'), Type.Literal('qdq-trt')]),
  },
  { additionalProperties: false },
);
export type ArtifactFile = Static<typeof ArtifactFile>;

export const ModelCard = Type.Object(
  {
    schemaVersion: Type.Literal(1),
    name: Type.String(),
    tier: Tier,
    version: Type.String(),
    /** Architecture description (models/arch.ts ArchSpec) or a note for imported ONNX models. */
    arch: Type.Unknown(),
    params: Type.Integer({ minimum: 0 }),
    /** The file a runtime loads by default (first entry), then other flavours. */
    files: Type.Array(ArtifactFile, { minItems: 1 }),
    input: InputSpec,
    output: Type.Object({ name: Type.String(), classes: Type.Integer({ minimum: 2 }) }),
    labels: Type.Array(Type.String()),
    temperature: Type.Number({ exclusiveMinimum: 0 }),
    metrics: Type.Object({
      valAccuracy: Type.Number(),
      testAccuracy: Type.Optional(Type.Number()),
      fp32ValAccuracy: Type.Optional(Type.Number()),
      fp32TestAccuracy: Type.Optional(Type.Number()),
      /** Top-label ECE (15 bins) on the test set at T = 1 and at the card's temperature (fitted on validation). */
      eceBefore: Type.Number(),
      eceAfter: Type.Number(),
      testSet: Type.Optional(Type.String()),
    }),
    reliability: Type.Array(ReliabilityBin),
    /** Accept locally when calibrated confidence >= accept; otherwise hand on to the next tier. */
    thresholds: Type.Object({ accept: Type.Number({ minimum: 0, maximum: 1 }) }),
    training: Type.Record(Type.String(), Type.Unknown()),
    dataHash: Type.String(),
    createdAt: Type.String(),
  },
  { additionalProperties: false },
);
export type ModelCard = Static<typeof ModelCard>;

const check = TypeCompiler.Compile(ModelCard);

/**
 * Validates an unknown value as a model card.
 * @param where names the source in error messages (usually the card's path).
 * @throws {CascadeError} MODEL_ERR_INVALID listing every schema violation.
 */
export function parseModelCard(value: unknown, where: string): ModelCard {
  if (check.Check(value)) return value;
  const errors = [...check.Errors(value)].slice(0, 5).map((e) => `${e.path || '/'} ${e.message}`);
  throw new CascadeError(
    ErrorCodes.MODEL_ERR_INVALID,
    `${where}: not a valid model card: ${errors.join('; ')}`,
  );
}
