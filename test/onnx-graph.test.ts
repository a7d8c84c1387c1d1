import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as ort from 'onnxruntime-node';
import { ErrorCodes } from '../cascade/errors.ts';
import { exportOnnx } from '../distill/onnx/export.ts';
import { parseOnnx, serializeGraph } from '../distill/onnx/graph.ts';
import { DEVICE } from '../models/arch.ts';
import { mulberry32 } from '../models/data/rng.ts';
import { buildModel, float, foreignModel, randomWeights } from './onnx-fixtures.ts';

const rng = mulberry32(5);
const rand = (n: number, scale = 1): Float32Array =>
  Float32Array.from({ length: n }, () => (rng() * 2 - 1) * scale);

async function run(model: Uint8Array, x: Float32Array, n: number): Promise<Float32Array> {
  const s = await ort.InferenceSession.create(model, { intraOpNumThreads: 1 });
  const feeds = { [s.inputNames[0]]: new ort.Tensor('float32', x, [n, 3, 8, 8]) };
  const out = await s.run(feeds);
  const data = Float32Array.from(out[s.outputNames[0]].data as Float32Array);
  await s.release();
  return data;
}

describe('parseOnnx', () => {
  it('normalizes a foreign classifier without changing its outputs', async () => {
    const model = foreignModel();
    const g = parseOnnx(model);
    assert.deepEqual(
      g.nodes.map((n) => n.op),
      ['Conv', 'Clip', 'Conv', 'Add', 'Relu', 'AveragePool', 'Reshape', 'Gemm'],
    );
    assert.equal(g.input.name, 'x');
    assert.equal(g.output.name, 'y');
    assert.equal(g.opset, 13);
    const x = rand(5 * 192, 2);
    const want = await run(model, x, 5);
    const got = await run(serializeGraph(g), x, 5);
    for (let i = 0; i < want.length; i++) assert.ok(Math.abs(want[i] - got[i]) < 1e-5, `logit ${i}`);
  });

  it('turns opset-10 Clip attributes into inputs', async () => {
    const model = buildModel(
      [
        ['Clip', ['x'], ['clipped'], [float('min', -0.5), float('max', 0.5)]],
        ['Flatten', ['clipped'], ['f']],
        ['Gemm', ['f', 'w', 'c'], ['y'], [{ name: 'transB', type: 2, i: 1 }]],
      ],
      { w: { dims: [10, 192], data: rand(1920) }, c: { dims: [10], data: rand(10) } },
      { opset: 10 },
    );
    const g = parseOnnx(model);
    assert.equal(g.nodes[0].inputs.length, 3);
    const x = rand(192, 2);
    const want = await run(model, x, 1);
    const got = await run(serializeGraph(g), x, 1);
    for (let i = 0; i < 10; i++) assert.ok(Math.abs(want[i] - got[i]) < 1e-5);
  });

  it('drops nodes the output does not depend on', () => {
    const model = buildModel(
      [
        ['Relu', ['x'], ['dead']],
        ['Flatten', ['x'], ['f']],
        ['Gemm', ['f', 'w'], ['y'], [{ name: 'transB', type: 2, i: 1 }]],
      ],
      { w: { dims: [10, 192], data: rand(1920) } },
    );
    assert.deepEqual(
      parseOnnx(model).nodes.map((n) => n.op),
      ['Flatten', 'Gemm'],
    );
  });

  it('rejects an unsupported operator with MODEL_ERR_UNSUPPORTED naming op and node', () => {
    const softmax = buildModel(
      [
        ['Flatten', ['x'], ['f']],
        ['Gemm', ['f', 'w'], ['g'], [{ name: 'transB', type: 2, i: 1 }]],
        ['Softmax', ['g'], ['y']],
      ],
      { w: { dims: [10, 192], data: rand(1920) } },
    );
    assert.throws(() => parseOnnx(softmax), {
      code: ErrorCodes.MODEL_ERR_UNSUPPORTED,
      message: /node "n2_Softmax" uses operator Softmax/,
    });
    const custom = buildModel([['Flatten', ['x'], ['y']]], {}, { domain: 'com.example' });
    assert.throws(() => parseOnnx(custom), {
      code: ErrorCodes.MODEL_ERR_UNSUPPORTED,
      message: /com\.example:Flatten/,
    });
    const twoInputs = buildModel([['Add', ['x', 'x2'], ['y']]], {}, { inputs: ['x', 'x2'] });
    assert.throws(() => parseOnnx(twoInputs), {
      code: ErrorCodes.MODEL_ERR_UNSUPPORTED,
      message: /2 graph inputs/,
    });
    const looseBn = buildModel(
      [
        ['Relu', ['x'], ['r']],
        ['BatchNormalization', ['r', 's', 's', 's', 's'], ['y']],
      ],
      { s: { dims: [3], data: Float32Array.of(1, 1, 1) } },
    );
    assert.throws(() => parseOnnx(looseBn), {
      code: ErrorCodes.MODEL_ERR_UNSUPPORTED,
      message: /cannot be folded/,
    });
  });

  it('rejects truncated, garbage and dangling files with MODEL_ERR_INVALID', () => {
    const good = exportOnnx(DEVICE, randomWeights(DEVICE, 2));
    for (const cut of [1, 17, good.length >> 2, good.length >> 1, good.length - 3]) {
      assert.throws(
        () => parseOnnx(good.subarray(0, cut), 'cut.onnx'),
        { code: ErrorCodes.MODEL_ERR_INVALID },
        `cut at ${cut}`,
      );
    }
    const noise = Uint8Array.from({ length: 4096 }, () => Math.floor(rng() * 256));
    assert.throws(() => parseOnnx(noise), { code: ErrorCodes.MODEL_ERR_INVALID });
    assert.throws(() => parseOnnx(new TextEncoder().encode('{"not": "onnx"}')), {
      code: ErrorCodes.MODEL_ERR_INVALID,
    });
    assert.throws(() => parseOnnx(new Uint8Array(0)), { code: ErrorCodes.MODEL_ERR_INVALID });
    const dangling = buildModel([['Add', ['x', 'nowhere'], ['y']]], {});
    assert.throws(() => parseOnnx(dangling), { code: ErrorCodes.MODEL_ERR_INVALID, message: /nowhere/ });
  });
});
