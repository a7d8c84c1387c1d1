/**
 * Builds a Triton / KServe model repository for the cloud teacher, so that replacing `cascade
 * cloud` with Triton Inference Server (or KServe on its Triton runtime) is a URL change for the
 * gateway. The gateway sends the teacher what it sends `cascade cloud`: tensor `input`, UINT8
 * pixels [n, H, W] (gray) or [n, H, W, C], and reads `probabilities`, FP32 [n, classes],
 * temperature-calibrated. The teacher's ONNX file takes normalized FP32 in the card's layout and
 * returns logits, so the repository's model wraps it: Cast → layout → (x/255 − mean)/std → teacher
 * → logits/T → Softmax, all standard ONNX operators, served by Triton's ONNX Runtime backend.
 *
 *   node --import tsx deploy/triton/make-model-repository.ts OUT_DIR [--card models/cloud/card.json]
 *
 * writes OUT_DIR/<model>/config.pbtxt and OUT_DIR/<model>/1/model.onnx (<model>: the gateway's
 * `cloud.model`, default "teacher").
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { onnx } from 'onnx-proto';
import {
  DType,
  decodeModel,
  encodeModel,
  irVersionFor,
  num,
  toTensorProto,
  valueInfo,
} from '../../distill/onnx/proto.ts';
import { parseModelCard } from '../../models/card.ts';

/** The cloud card shipped with the project. */
export const TEACHER_CARD = fileURLToPath(new URL('../../models/cloud/card.json', import.meta.url));

/** The serving model's tensor names: what the gateway's cloud client sends and reads. */
export const SERVING_INPUT = 'input';
export const SERVING_OUTPUT = 'probabilities';

/**
 * The teacher wrapped for serving: UINT8 pixels in, calibrated probabilities out.
 * @throws {CascadeError} MODEL_ERR_INVALID for a card or model file that cannot be read.
 */
export function servingModel(cardPath = TEACHER_CARD): {
  bytes: Uint8Array;
  name: string;
  classes: number;
  input: number[];
} {
  const card = parseModelCard(JSON.parse(readFileSync(cardPath, 'utf8')), cardPath);
  const file = card.files.find((f) => f.form === 'fp32') ?? card.files[0];
  const model = decodeModel(readFileSync(resolve(dirname(cardPath), file.file)), file.file);
  const g = model.graph as onnx.IGraphProto;
  const spec = card.input;
  const c = spec.colour === 'gray' ? 1 : 3;
  const { height: h, width: w } = spec;
  const opset = Math.max(
    13,
    ...(model.opsetImport ?? []).filter((o) => !o.domain).map((o) => num(o.version)),
  );
  const inner = `${spec.name}__normalized`;
  const logits = card.output.name;
  const nchw = spec.layout === 'NCHW';
  const perChannel = (v: number[]): number[] => Array.from({ length: c }, (_, i) => v[i] ?? v[0]);
  const mean = perChannel(spec.mean);
  const std = perChannel(spec.std);
  const bShape = nchw ? [1, c, 1, 1] : [1, 1, 1, c];
  const consts: onnx.ITensorProto[] = [
    toTensorProto('serve.shape', { dtype: 'int64', dims: [4], data: nchw ? [-1, c, h, w] : [-1, h, w, c] }),
    toTensorProto('serve.scale', {
      dtype: 'float32',
      dims: bShape,
      data: Float32Array.from(std, (s) => 1 / (255 * s)),
    }),
    toTensorProto('serve.bias', {
      dtype: 'float32',
      dims: bShape,
      data: Float32Array.from(mean, (m, i) => -m / std[i]),
    }),
    toTensorProto('serve.temperature', {
      dtype: 'float32',
      dims: [],
      data: Float32Array.of(card.temperature),
    }),
  ];
  const node = (op: string, inputs: string[], output: string, attribute: onnx.IAttributeProto[] = []) => ({
    name: `serve.${output}`,
    opType: op,
    domain: '',
    input: inputs,
    output: [output],
    attribute,
  });
  // Pixels arrive HWC ([n,H,W] or [n,H,W,C]); a colour NCHW model needs them transposed.
  const layoutNodes =
    c === 1 || !nchw
      ? [node('Reshape', ['serve.float', 'serve.shape'], 'serve.shaped')]
      : [node('Transpose', ['serve.float'], 'serve.shaped', [{ name: 'perm', type: 7, ints: [0, 3, 1, 2] }])];
  const pre = [
    node('Cast', [SERVING_INPUT], 'serve.float', [{ name: 'to', type: 2, i: DType.FLOAT }]),
    ...layoutNodes,
    node('Mul', ['serve.shaped', 'serve.scale'], 'serve.scaled'),
    node('Add', ['serve.scaled', 'serve.bias'], inner),
  ];
  const post = [
    node('Div', [logits, 'serve.temperature'], 'serve.tempered'),
    node('Softmax', ['serve.tempered'], SERVING_OUTPUT, [{ name: 'axis', type: 2, i: 1 }]),
  ];
  const teacherNodes = (g.node ?? []).map((n) => ({
    ...n,
    input: (n.input ?? []).map((i) => (i === spec.name ? inner : i)),
  }));
  const inputDims = c === 1 ? ['N', h, w] : ['N', h, w, c];
  const bytes = encodeModel({
    irVersion: irVersionFor(opset),
    producerName: 'edge-cascade',
    producerVersion: '0.1.0',
    docString: `${card.name} ${card.version} for KServe v2 serving: UINT8 pixels in, calibrated probabilities out`,
    opsetImport: [{ domain: '', version: opset }],
    graph: {
      name: 'teacher_serving',
      input: [valueInfo(SERVING_INPUT, DType.UINT8, inputDims)],
      output: [valueInfo(SERVING_OUTPUT, DType.FLOAT, ['N', card.output.classes])],
      initializer: [...(g.initializer ?? []), ...consts],
      node: [...pre, ...teacherNodes, ...post],
    },
  });
  return { bytes, name: card.name, classes: card.output.classes, input: inputDims.slice(1) as number[] };
}

/** Triton's config.pbtxt for the serving model (dynamic batching, like `cascade cloud`). */
export function tritonConfig(model: string, input: number[], classes: number): string {
  return [
    `name: "${model}"`,
    'backend: "onnxruntime"',
    'max_batch_size: 32',
    `input [ { name: "${SERVING_INPUT}", data_type: TYPE_UINT8, dims: [ ${input.join(', ')} ] } ]`,
    `output [ { name: "${SERVING_OUTPUT}", data_type: TYPE_FP32, dims: [ ${classes} ] } ]`,
    // The gateway's cloud calls carry the frame's remaining budget: a short queue delay, as
    // `cascade cloud`'s batcher (maxDelayMs 2).
    'dynamic_batching { max_queue_delay_microseconds: 2000 }',
    'instance_group [ { kind: KIND_AUTO } ]',
    '',
  ].join('\n');
}

function main(argv: string[]): void {
  const out = argv.find((a) => !a.startsWith('--'));
  const cardAt = argv.indexOf('--card');
  const modelAt = argv.indexOf('--model');
  if (out === undefined) {
    process.stderr.write('usage: make-model-repository.ts OUT_DIR [--card CARD] [--model NAME]\n');
    process.exitCode = 2;
    return;
  }
  const served = servingModel(cardAt >= 0 ? argv[cardAt + 1] : TEACHER_CARD);
  const name = modelAt >= 0 ? argv[modelAt + 1] : 'teacher';
  mkdirSync(join(out, name, '1'), { recursive: true });
  writeFileSync(join(out, name, '1', 'model.onnx'), served.bytes);
  writeFileSync(join(out, name, 'config.pbtxt'), tritonConfig(name, served.input, served.classes));
  process.stdout.write(`wrote ${join(out, name)} (${served.name}, ${served.bytes.length} bytes)\n`);
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2));
}
