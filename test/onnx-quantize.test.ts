import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as ort from 'onnxruntime-node';
import { ErrorCodes } from '../cascade/errors.ts';
import {
  type ActivationStats,
  type CalibrationRanges,
  calibrateRanges,
  collectActivationStats,
  rangesFromStats,
} from '../distill/onnx/calibrate-ranges.ts';
import { exportOnnx } from '../distill/onnx/export.ts';
import { parseOnnx } from '../distill/onnx/graph.ts';
import { decodeModel, num } from '../distill/onnx/proto.ts';
import { planQdq, quantizeQdq } from '../distill/onnx/quantize.ts';
import { type ArchSpec, DEVICE, GATEWAY, TEACHER } from '../models/arch.ts';
import { mulberry32 } from '../models/data/rng.ts';
import {
  argmaxAgreement,
  buildModel,
  centredWeights,
  foreignModel,
  relativeError,
  runOnnx,
  sampleImages,
} from './onnx-fixtures.ts';

const CALIB = 64;
const EVAL = 300;
let tmp: string;
let calib: Float32Array;
let evalImages: Float32Array;

/** Calibration batches of 16 images. */
function batches(x: Float32Array, per = 16 * 784): Float32Array[] {
  return Array.from({ length: x.length / per }, (_, i) => x.subarray(i * per, (i + 1) * per));
}

/** Operator types of the graph ONNX Runtime writes after its optimizations (level 'all'). */
async function optimizedOps(model: Uint8Array, name: string): Promise<string[]> {
  const path = join(tmp, `${name}.onnx`);
  // Level 3 silences the warning that the saved graph is specific to this CPU (expected here).
  const s = await ort.InferenceSession.create(model, { optimizedModelFilePath: path, logSeverityLevel: 3 });
  await s.release();
  return decodeModel(await readFile(path), path).graph!.node!.map((n) => n.opType ?? '');
}

describe('calibration and QDQ quantization', () => {
  let fp32: Uint8Array;
  let stats: ActivationStats;
  let ranges: CalibrationRanges;
  const progress: Array<[number, number]> = [];

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'onnx-quantize-'));
    calib = await sampleImages(CALIB, 0);
    evalImages = await sampleImages(EVAL, 1000);
    fp32 = exportOnnx(DEVICE, await centredWeights(DEVICE, 1, calib));
    stats = await collectActivationStats(fp32, batches(calib), {
      onProgress: (done, total) => progress.push([done, total]),
      intraOpThreads: 1,
    });
    ranges = rangesFromStats(stats, 'percentile');
  });

  after(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  it('reports progress per batch and collects every tensor the quantizer needs', () => {
    assert.deepEqual(progress, [
      [1, 4],
      [2, 4],
      [3, 4],
      [4, 4],
    ]);
    assert.equal(stats.samples, CALIB);
    assert.deepEqual([...stats.tensors.keys()], planQdq(parseOnnx(fp32)).calibrated);
    // Input, one per ReLU block (4), the pooled features, the logits.
    assert.equal(stats.tensors.size, 7);
  });

  it('each method gives finite, ordered ranges; percentile and entropy lie within min/max', () => {
    const minmax = rangesFromStats(stats, 'minmax');
    const entropy = rangesFromStats(stats, 'entropy');
    assert.equal(ranges.percentile, 99.99);
    let clipped = 0;
    for (const r of [minmax, ranges, entropy]) {
      for (const [name, { min, max }] of Object.entries(r.tensors)) {
        assert.ok(Number.isFinite(min) && Number.isFinite(max) && min <= max, `${r.method} ${name}`);
        const mm = minmax.tensors[name];
        assert.ok(
          min >= mm.min && max <= mm.max,
          `${r.method} ${name} [${min}, ${max}] within [${mm.min}, ${mm.max}]`,
        );
        if (r.method === 'entropy' && max < 0.95 * mm.max) clipped++;
      }
    }
    // Entropy calibration clips the long tails of the ReLU outputs; the logits keep min/max.
    assert.ok(clipped >= 2, `entropy clipped ${clipped} tensors`);
    assert.deepEqual(entropy.tensors.logits, minmax.tensors.logits);
    assert.throws(() => rangesFromStats(stats, 'percentile', 20), RangeError);
  });

  it('calibrateRanges is collect + rangesFromStats', async () => {
    const direct = await calibrateRanges(fp32, batches(calib), { method: 'entropy', intraOpThreads: 1 });
    assert.deepEqual(direct, rangesFromStats(stats, 'entropy'));
    await assert.rejects(calibrateRanges(fp32, [new Float32Array(100)]), RangeError);
    await assert.rejects(calibrateRanges(fp32, []), RangeError);
  });

  it('qdq-cpu: ORT fuses to QLinearConv and QGemm, leaving no float Conv', async () => {
    const { model, inputQuant } = quantizeQdq(fp32, ranges, { flavour: 'qdq-cpu' });
    assert.equal(inputQuant.dtype, 'uint8');
    assert.ok(inputQuant.zeroPoint > 0 && inputQuant.zeroPoint < 255, 'normalised input spans both signs');
    const ops = await optimizedOps(model, 'cpu');
    assert.ok(ops.includes('QLinearConv'), ops.join(' '));
    assert.ok(ops.includes('QGemm') || ops.includes('QLinearMatMul'), ops.join(' '));
    assert.ok(ops.includes('QLinearGlobalAveragePool'), ops.join(' '));
    for (const float of ['Conv', 'FusedConv', 'Gemm', 'Relu']) assert.ok(!ops.includes(float), ops.join(' '));
    assert.ok(
      model.length * 3 < fp32.length,
      `int8 weights shrink the file: ${model.length} vs ${fp32.length}`,
    );
  });

  it('qdq-trt: runs in ORT but stays float Conv between Q/DQ (why it is slower on CPU)', async () => {
    const { model, inputQuant } = quantizeQdq(fp32, ranges, { flavour: 'qdq-trt' });
    assert.equal(inputQuant.dtype, 'int8');
    assert.equal(inputQuant.zeroPoint, 0);
    const ops = await optimizedOps(model, 'trt');
    assert.ok(ops.includes('Conv') || ops.includes('FusedConv'), ops.join(' '));
    assert.ok(!ops.includes('QLinearConv'), ops.join(' '));
    // Every activation zero point in the TensorRT form is 0 (and int8).
    const g = decodeModel(model, 'trt').graph!;
    const zps = g.initializer!.filter((t) => t.name?.endsWith('.zero_point'));
    assert.ok(zps.length > 0);
    for (const z of zps) {
      assert.equal(z.dataType, 3, `${z.name} is int8`);
      assert.ok(
        [...(z.rawData ?? [])].every((b) => b === 0),
        `${z.name} is 0`,
      );
    }
  });

  it('keeps the fp32 input and output names and shapes in both flavours', () => {
    for (const flavour of ['qdq-cpu', 'qdq-trt'] as const) {
      const g = decodeModel(quantizeQdq(fp32, ranges, { flavour }).model, flavour).graph!;
      const io = [...g.input!, ...g.output!].map((v) => [
        v.name,
        v.type?.tensorType?.elemType,
        v.type?.tensorType?.shape?.dim?.map((d) => d.dimParam || num(d.dimValue)),
      ]);
      assert.deepEqual(io, [
        ['input', 1, ['N', 1, 28, 28]],
        ['logits', 1, ['N', 10]],
      ]);
      assert.equal(g.node![0].opType, 'QuantizeLinear');
      assert.equal(g.node!.at(-1)!.opType, 'DequantizeLinear');
    }
  });

  const archs: ArchSpec[] = [DEVICE, GATEWAY, TEACHER];
  for (const arch of archs) {
    it(`${arch.name}: INT8 agrees with fp32 on argmax for ≥ 85% of ${EVAL} real images, both flavours`, async () => {
      const model = exportOnnx(arch, await centredWeights(arch, 2, calib));
      const r = await calibrateRanges(model, batches(calib), { intraOpThreads: 1 });
      const dims = [EVAL, 1, 28, 28];
      const ref = await runOnnx(model, evalImages, dims);
      const predicted = new Set(
        Array.from({ length: EVAL }, (_, i) =>
          ref.subarray(i * 10, i * 10 + 10).indexOf(Math.max(...ref.subarray(i * 10, i * 10 + 10))),
        ),
      );
      assert.ok(predicted.size >= 6, `fp32 predicts ${predicted.size} classes`);
      for (const flavour of ['qdq-cpu', 'qdq-trt'] as const) {
        const got = await runOnnx(quantizeQdq(model, r, { flavour }).model, evalImages, dims);
        const agree = argmaxAgreement(ref, got, 10);
        const err = relativeError(ref, got);
        assert.ok(agree >= 0.85, `${flavour}: argmax agreement ${agree}`);
        assert.ok(err < 0.15, `${flavour}: mean abs error ${err} of the logit std`);
      }
    });
  }

  it('quantizes an imported graph: residual Add, Clip, AveragePool, Reshape, MatMul→Gemm', async () => {
    const model = foreignModel();
    const rng = mulberry32(9);
    const x = Float32Array.from({ length: 128 * 192 }, () => rng() * 2 - 1);
    const r = await calibrateRanges(model, [x.subarray(0, 64 * 192)], { intraOpThreads: 1 });
    const q = quantizeQdq(model, r, { flavour: 'qdq-cpu' });
    const ops = await optimizedOps(q.model, 'foreign');
    for (const op of ['QLinearConv', 'QLinearAdd', 'QLinearAveragePool', 'QGemm'])
      assert.ok(ops.includes(op), ops.join(' '));
    const dims = [64, 3, 8, 8];
    const held = x.subarray(64 * 192);
    const ref = await runOnnx(model, held, dims);
    assert.ok(relativeError(ref, await runOnnx(q.model, held, dims)) < 0.1);
    // The TensorRT form as written: ORT's CPU provider would fuse its int8 Gemm into a kernel
    // that saturates int16 pair sums of 8-bit weights without VNNI; TensorRT accumulates in int32.
    const trt = quantizeQdq(model, r, { flavour: 'qdq-trt' });
    assert.ok(relativeError(ref, await runOnnx(trt.model, held, dims, { optimize: false })) < 0.1);
  });

  it('rejects ranges from another model, unsupported operators and garbage', () => {
    const partial: CalibrationRanges = { ...ranges, tensors: { ...ranges.tensors } };
    delete partial.tensors['L6.Relu'];
    assert.throws(() => quantizeQdq(fp32, partial, { flavour: 'qdq-cpu' }), {
      code: ErrorCodes.MODEL_ERR_INVALID,
      message: /L6\.Relu/,
    });
    const softmax = buildModel(
      [
        ['Flatten', ['x'], ['f']],
        ['Softmax', ['f'], ['y']],
      ],
      {},
    );
    assert.throws(() => quantizeQdq(softmax, ranges, { flavour: 'qdq-trt' }), {
      code: ErrorCodes.MODEL_ERR_UNSUPPORTED,
      message: /Softmax/,
    });
    const once = quantizeQdq(fp32, ranges, { flavour: 'qdq-cpu' }).model;
    assert.throws(() => quantizeQdq(once, ranges, { flavour: 'qdq-cpu' }), {
      code: ErrorCodes.MODEL_ERR_UNSUPPORTED,
      message: /already quantized/,
    });
    assert.throws(() => quantizeQdq(fp32.subarray(0, fp32.length >> 1), ranges, { flavour: 'qdq-cpu' }), {
      code: ErrorCodes.MODEL_ERR_INVALID,
    });
  });
});
