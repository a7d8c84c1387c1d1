/**
 * 7-bit weights in the CPU flavour (distill/onnx/quantize.ts) and narrowing the weights of an
 * existing INT8 model (distill/onnx/narrow-weights.ts). Without VNNI, ONNX Runtime adds pairs of
 * u8×s8 products in a saturating int16: 255 · |w| · 2 must stay ≤ 32,767, which 7 bits (|w| ≤ 63)
 * guarantee and 8 bits (|w| ≤ 127) do not. Checked on a device student with real images: weight
 * ranges per flavour, the int32 bias scales fused kernels rely on, logits close to fp32, narrowing
 * that matches quantizing with 7 bits, is idempotent, and refuses asymmetric weights.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ErrorCodes } from '../cascade/errors.ts';
import { type CalibrationRanges, calibrateRanges } from '../distill/onnx/calibrate-ranges.ts';
import { exportOnnx } from '../distill/onnx/export.ts';
import { narrowWeights } from '../distill/onnx/narrow-weights.ts';
import {
  type ConstTensor,
  decodeModel,
  encodeModel,
  fromTensorProto,
  toTensorProto,
} from '../distill/onnx/proto.ts';
import { quantizeQdq } from '../distill/onnx/quantize.ts';
import { requantizeCard } from '../distill/onnx-tools.ts';
import { silentProgress } from '../distill/progress.ts';
import { DEVICE } from '../models/arch.ts';
import { parseModelCard } from '../models/card.ts';
import { splitTrainVal } from '../models/data/dataset.ts';
import { loadBundledSample } from '../models/data/load.ts';
import { argmaxAgreement, centredWeights, relativeError, runOnnx, sampleImages } from './onnx-fixtures.ts';

const EVAL = 200;
const DIMS = [EVAL, 1, 28, 28];

/** Initializers of a serialized model by name. */
function initializers(model: Uint8Array): Map<string, ConstTensor> {
  const g = decodeModel(model, 'test').graph!;
  return new Map((g.initializer ?? []).map((t) => [t.name ?? '', fromTensorProto(t, 'test')]));
}

/** The largest |q| of the quantized weights, and how many weight tensors there are. */
function weightRange(model: Uint8Array): { maxAbs: number; tensors: number } {
  let maxAbs = 0;
  let tensors = 0;
  for (const [name, t] of initializers(model)) {
    if (!name.endsWith('.weight_quantized') || t.dtype !== 'int8') continue;
    tensors++;
    for (const v of t.data) maxAbs = Math.max(maxAbs, Math.abs(v));
  }
  return { maxAbs, tensors };
}

describe('INT8 weight bits', () => {
  let fp32: Uint8Array;
  let ranges: CalibrationRanges;
  let images: Float32Array;
  let ref: Float32Array;

  before(async () => {
    const calib = await sampleImages(64, 0);
    images = await sampleImages(EVAL, 1000);
    fp32 = exportOnnx(DEVICE, await centredWeights(DEVICE, 1, calib));
    ranges = await calibrateRanges(fp32, [calib], { intraOpThreads: 1 });
    ref = await runOnnx(fp32, images, DIMS);
  });

  it('the CPU flavour uses 7-bit weights (no int16 saturation), TensorRT 8 bits; both can be chosen', () => {
    const cpu = weightRange(quantizeQdq(fp32, ranges, { flavour: 'qdq-cpu' }).model);
    assert.equal(cpu.maxAbs, 63);
    assert.ok(255 * cpu.maxAbs * 2 <= 32_767);
    assert.equal(weightRange(quantizeQdq(fp32, ranges, { flavour: 'qdq-trt' }).model).maxAbs, 127);
    const cpu8 = weightRange(quantizeQdq(fp32, ranges, { flavour: 'qdq-cpu', weightBits: 8 }).model);
    assert.equal(cpu8.maxAbs, 127);
    assert.ok(255 * cpu8.maxAbs * 2 > 32_767, 'the case 7 bits exists for');
    assert.equal(cpu.tensors, cpu8.tensors);
  });

  it('7-bit logits stay close to fp32', async () => {
    const q7 = await runOnnx(quantizeQdq(fp32, ranges, { flavour: 'qdq-cpu' }).model, images, DIMS);
    assert.ok(relativeError(ref, q7) < 0.15, `relative error ${relativeError(ref, q7)}`);
  });

  it('narrowing an 8-bit model gives 7-bit weights, bias scales s_in·s_w, and logits like quantizing with 7 bits', async () => {
    const q8 = quantizeQdq(fp32, ranges, { flavour: 'qdq-cpu', weightBits: 8 }).model;
    const narrowed = narrowWeights(q8, 7, 'q8');
    const range = weightRange(narrowed.model);
    assert.equal(range.maxAbs, 63);
    assert.equal(narrowed.tensors, range.tensors);
    // Every int32 bias scale is exactly fround(input scale × new weight scale) per channel.
    const g = decodeModel(narrowed.model, 'narrowed').graph!;
    const init = initializers(narrowed.model);
    const producer = new Map(g.node!.flatMap((n) => n.output!.map((o) => [o, n] as const)));
    let biases = 0;
    for (const n of g.node!) {
      if (n.opType !== 'Conv' && n.opType !== 'Gemm') continue;
      const [x, w, b] = n.input!.map((t) => producer.get(t));
      if (!b) continue;
      const sIn = init.get(x!.input![1])!.data[0] as number;
      const sW = init.get(w!.input![1])!.data as Float32Array;
      const sB = init.get(b.input![1])!.data as Float32Array;
      for (let c = 0; c < sB.length; c++) assert.equal(sB[c], Math.fround(sIn * sW[c]));
      biases++;
    }
    assert.ok(biases >= 4, `${biases} biases checked`);
    const got = await runOnnx(narrowed.model, images, DIMS);
    const q7 = await runOnnx(quantizeQdq(fp32, ranges, { flavour: 'qdq-cpu' }).model, images, DIMS);
    // Narrowing rounds twice (fp32 → 8 → 7 bits; ~1 weight in 7 ends one step away from a
    // direct 7-bit rounding): close to fp32, and to its argmax about as often as quantizing with 7.
    const twice = relativeError(ref, got);
    assert.ok(twice < 0.15, `vs fp32 ${twice}`);
    const direct = argmaxAgreement(ref, q7, 10);
    const narrowedAgree = argmaxAgreement(ref, got, 10);
    assert.ok(narrowedAgree >= direct - 0.03, `argmax agreement ${narrowedAgree} vs ${direct}`);
  });

  it('narrowing is idempotent and leaves a 7-bit model alone', () => {
    const q7 = quantizeQdq(fp32, ranges, { flavour: 'qdq-cpu' }).model;
    assert.equal(narrowWeights(q7, 7).tensors, 0);
    const once = narrowWeights(quantizeQdq(fp32, ranges, { flavour: 'qdq-cpu', weightBits: 8 }).model, 7);
    const twice = narrowWeights(once.model, 7);
    assert.equal(twice.tensors, 0);
    assert.deepEqual(initializers(twice.model), initializers(once.model));
  });

  it('refuses asymmetric weights and garbage', () => {
    const m = decodeModel(quantizeQdq(fp32, ranges, { flavour: 'qdq-cpu', weightBits: 8 }).model, 'q8');
    const zp = m.graph!.initializer!.findIndex((t) => t.name?.endsWith('.weight_zero_point'));
    const t = fromTensorProto(m.graph!.initializer![zp], 'zp');
    assert.equal(t.dtype, 'int8');
    m.graph!.initializer![zp] = toTensorProto(m.graph!.initializer![zp].name ?? '', {
      dtype: 'int8',
      dims: t.dims,
      data: Int8Array.from(t.data as Int8Array, () => 1),
    });
    assert.throws(() => narrowWeights(encodeModel(m), 7, 'asymmetric.onnx'), {
      code: ErrorCodes.MODEL_ERR_INVALID,
      message: /asymmetric\.onnx: weight .* non-zero zero point/,
    });
    assert.throws(() => narrowWeights(new Uint8Array([1, 2, 3]), 7, 'junk.onnx'), {
      code: ErrorCodes.MODEL_ERR_INVALID,
      message: /junk\.onnx/,
    });
  });

  describe('cascade distill requantize', () => {
    let dir: string;
    after(async () => {
      if (dir) await rm(dir, { recursive: true, force: true });
    });

    it("narrows a card's CPU model in place, measures it again and records it in the card", async () => {
      dir = await mkdtemp(join(tmpdir(), 'requantize-'));
      const q8 = quantizeQdq(fp32, ranges, { flavour: 'qdq-cpu', weightBits: 8 });
      const shipped = parseModelCard(
        JSON.parse(await readFile(new URL('../models/device/card.json', import.meta.url), 'utf8')),
        'device card',
      );
      const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
      const card = {
        ...shipped,
        version: 'r1',
        files: [
          { file: 'm-int8.onnx', bytes: q8.model.length, sha256: sha(q8.model), form: 'qdq-cpu' as const },
        ],
        input: { ...shipped.input, quant: q8.inputQuant },
      };
      const cardPath = join(dir, 'card.json');
      const modelPath = join(dir, 'm-int8.onnx');
      await writeFile(modelPath, q8.model);
      await writeFile(cardPath, JSON.stringify(card));
      const sample = await loadBundledSample();
      const { train, val } = splitTrainVal(sample, 0.25, 1);
      const splits = { train, val, hash: 'sample' };

      const [r] = await requantizeCard(cardPath, 7, splits, sample, silentProgress);
      const written = new Uint8Array(await readFile(modelPath));
      assert.equal(r.tensors, weightRange(q8.model).tensors);
      assert.equal(weightRange(written).maxAbs, 63);
      const after = parseModelCard(JSON.parse(await readFile(cardPath, 'utf8')), cardPath);
      assert.deepEqual(after.files[0], {
        file: 'm-int8.onnx',
        bytes: written.length,
        sha256: sha(written),
        form: 'qdq-cpu',
      });
      assert.equal(after.metrics.testAccuracy, r.testAccuracy.after);
      assert.equal(after.metrics.valAccuracy, r.valAccuracy.after);
      // Narrowing keeps the model's behaviour (an untrained one: its accuracy is near chance).
      assert.ok(Math.abs(r.testAccuracy.after - r.testAccuracy.before) < 0.05, JSON.stringify(r));
      assert.equal((after.training.weightBits as { bits: number }).bits, 7);
      assert.equal(after.temperature, shipped.temperature);
      assert.equal(after.version, 'r1.w7');

      // Again: nothing to narrow, the file and the card stay as they are.
      const cardBytes = await readFile(cardPath, 'utf8');
      const [again] = await requantizeCard(cardPath, 7, splits, sample, silentProgress);
      assert.equal(again.tensors, 0);
      assert.deepEqual(new Uint8Array(await readFile(modelPath)), written);
      assert.equal(await readFile(cardPath, 'utf8'), cardBytes);

      // A card without a CPU INT8 file (the fp32 teacher) is refused, naming the card.
      const teacher = new URL('../models/cloud/card.json', import.meta.url).pathname;
      await assert.rejects(requantizeCard(teacher, 7, splits, sample, silentProgress), {
        code: ErrorCodes.MODEL_ERR_INVALID,
        message: /cloud\/card\.json: the card lists no qdq-cpu file/,
      });
    });
  });
});
