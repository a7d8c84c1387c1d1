/**
 * `cascade distill quantize` and `cascade distill calibrate` on any fp32 ONNX classifier built
 * from the supported op set, so models trained elsewhere (PyTorch, Keras) use the same INT8 and
 * calibration pipeline as ours. Both measure on the validation split carved from the dataset's
 * training split, never on its test split. `cascade distill requantize` narrows the weights of
 * a card's shipped INT8 model and measures it again.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ece, fitTemperature, predictions, reliability, softmaxT } from '../cascade/calibration.ts';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import { parseModelCard, type ReliabilityBin } from '../models/card.ts';
import type { ImageDataset } from '../models/data/dataset.ts';
import { type CalibrationMethod, calibrateRanges } from './onnx/calibrate-ranges.ts';
import { parseOnnx } from './onnx/graph.ts';
import { narrowWeights } from './onnx/narrow-weights.ts';
import { type QdqFlavour, quantizeQdq, type WeightBits } from './onnx/quantize.ts';
import { onnxLogits, toNchw, top1 } from './onnx-infer.ts';
import { FASHION_MNIST_MEAN, FASHION_MNIST_STD, type Splits } from './pipeline.ts';
import type { Progress } from './progress.ts';

export interface QuantizeFileOptions {
  model: string;
  outDir: string;
  splits: Splits;
  flavours: QdqFlavour[];
  method: CalibrationMethod;
  samples: number;
  progress: Progress;
  mean?: number[];
  std?: number[];
}

export interface QuantizeFileResult {
  files: Array<{ file: string; form: QdqFlavour; bytes: number; valAccuracy: number }>;
  fp32ValAccuracy: number;
  inputQuant: { scale: number; zeroPoint: number; dtype: 'uint8' | 'int8' };
}

function shapeOf(s: Splits): [number, number, number] {
  return [s.val.channels, s.val.height, s.val.width];
}

/**
 * Calibrates and quantizes an fp32 ONNX classifier to the requested QDQ flavours.
 * @throws {CascadeError} MODEL_ERR_INVALID / MODEL_ERR_UNSUPPORTED for models outside the op set.
 */
export async function quantizeFile(o: QuantizeFileOptions): Promise<QuantizeFileResult> {
  const mean = o.mean ?? FASHION_MNIST_MEAN;
  const std = o.std ?? FASHION_MNIST_STD;
  const fp32 = new Uint8Array(await readFile(o.model));
  parseOnnx(fp32, o.model); // fail early, with the file named, on anything unsupported
  const take = Math.min(o.samples, o.splits.train.n);
  const per = o.splits.train.height * o.splits.train.width * o.splits.train.channels;
  const x = toNchw(
    { ...o.splits.train, n: take, images: o.splits.train.images.subarray(0, take * per) },
    mean,
    std,
  );
  const batches: Float32Array[] = [];
  for (let s = 0; s < take; s += 256) batches.push(x.subarray(s * per, Math.min(take, s + 256) * per));
  o.progress.log(`calibrating ${basename(o.model)} (${o.method}, ${take} images)`);
  const ranges = await calibrateRanges(fp32, batches, { method: o.method, intraOpThreads: 1 });
  const xVal = toNchw(o.splits.val, mean, std);
  const k = o.splits.val.classes.length;
  const fp32Val = top1(
    (await onnxLogits(fp32, xVal, o.splits.val.n, shapeOf(o.splits))).logits,
    o.splits.val.labels,
    k,
  );
  await mkdir(o.outDir, { recursive: true });
  const stem = basename(o.model).replace(/\.onnx$/i, '');
  const files: QuantizeFileResult['files'] = [];
  let inputQuant: QuantizeFileResult['inputQuant'] | undefined;
  for (const flavour of o.flavours) {
    const q = quantizeQdq(fp32, ranges, { flavour });
    inputQuant ??= q.inputQuant;
    const file = join(o.outDir, `${stem}-${flavour === 'qdq-cpu' ? 'int8' : 'int8-trt'}.onnx`);
    await writeFile(file, q.model);
    const acc = top1(
      (await onnxLogits(q.model, xVal, o.splits.val.n, shapeOf(o.splits))).logits,
      o.splits.val.labels,
      k,
    );
    files.push({ file, form: flavour, bytes: q.model.length, valAccuracy: acc });
    o.progress.log(
      `${file}: ${q.model.length} bytes, validation accuracy ${acc.toFixed(4)} (fp32 ${fp32Val.toFixed(4)}, ` +
        `${((acc - fp32Val) * 100).toFixed(2)} pp)`,
    );
  }
  return { files, fp32ValAccuracy: fp32Val, inputQuant: inputQuant! };
}

export interface CalibrationReport {
  model: string;
  valAccuracy: number;
  temperature: number;
  eceBefore: number;
  eceAfter: number;
  reliability: ReliabilityBin[];
}

/** Fits a temperature on the validation split and reports ECE and the reliability table. */
export async function calibrateFile(
  model: string,
  splits: Splits,
  opts: { mean?: number[]; std?: number[] } = {},
): Promise<CalibrationReport> {
  const bytes = new Uint8Array(await readFile(model));
  const k = splits.val.classes.length;
  const x = toNchw(splits.val, opts.mean ?? FASHION_MNIST_MEAN, opts.std ?? FASHION_MNIST_STD);
  const { logits } = await onnxLogits(bytes, x, splits.val.n, shapeOf(splits));
  const T = fitTemperature(logits, splits.val.labels, k);
  const probs = softmaxT(logits, k, T);
  const p = predictions(probs, k);
  const correct = Uint8Array.from(splits.val.labels, (y, i) => (p.pred[i] === y ? 1 : 0));
  return {
    model,
    valAccuracy: top1(logits, splits.val.labels, k),
    temperature: T,
    eceBefore: ece(softmaxT(logits, k, 1), splits.val.labels, k),
    eceAfter: ece(probs, splits.val.labels, k),
    reliability: reliability(p.conf, correct, 10),
  };
}

/** Whether this x86 CPU has VNNI (no saturation in u8×s8 products); undefined where unknown. */
async function cpuHasVnni(): Promise<boolean | undefined> {
  try {
    const flags = (await readFile('/proc/cpuinfo', 'utf8')).match(/^flags\s*:(.*)$/m)?.[1];
    return flags === undefined ? undefined : /\b(avx512_vnni|avx_vnni)\b/.test(flags);
  } catch {
    return undefined;
  }
}

/** One narrowed file of {@link requantizeCard}, with its accuracy before and after. */
export interface RequantizedFile {
  file: string;
  /** Weight tensors narrowed (0: already within the bits; the file is left as it was). */
  tensors: number;
  bytes: number;
  valAccuracy: { before: number; after: number };
  testAccuracy: { before: number; after: number };
}

/**
 * Narrows the weights of a card's 'qdq-cpu' files to `bits` in place (see onnx/narrow-weights.ts)
 * and updates the card: the file's size and digest, validation and test accuracy, and test ECE
 * before and after its temperature; the version gets `.w<bits>` so that devices holding the old
 * file see a new one. The temperature, thresholds and reliability tables stay those of the
 * calibration that made the card (the logits move by a rounding step), and `training.weightBits`
 * records the change.
 */
export async function requantizeCard(
  cardPath: string,
  bits: WeightBits,
  splits: Splits,
  test: ImageDataset,
  progress: Progress,
): Promise<RequantizedFile[]> {
  const card = parseModelCard(JSON.parse(await readFile(cardPath, 'utf8')), cardPath);
  const { mean, std } = card.input;
  const k = card.output.classes;
  const shape = shapeOf(splits);
  const xVal = toNchw(splits.val, mean, std);
  const xTest = toNchw(test, mean, std);
  const logitsOf = async (bytes: Uint8Array) => ({
    val: (await onnxLogits(bytes, xVal, splits.val.n, shape)).logits,
    test: (await onnxLogits(bytes, xTest, test.n, shape)).logits,
  });
  const out: RequantizedFile[] = [];
  for (const entry of card.files) {
    if (entry.form !== 'qdq-cpu') continue;
    const path = join(dirname(cardPath), entry.file);
    const before = new Uint8Array(await readFile(path));
    const narrowed = narrowWeights(before, bits, path);
    const old = await logitsOf(before);
    const now = narrowed.tensors > 0 ? await logitsOf(narrowed.model) : old;
    const r: RequantizedFile = {
      file: path,
      tensors: narrowed.tensors,
      bytes: narrowed.tensors > 0 ? narrowed.model.length : before.length,
      valAccuracy: {
        before: top1(old.val, splits.val.labels, k),
        after: top1(now.val, splits.val.labels, k),
      },
      testAccuracy: { before: top1(old.test, test.labels, k), after: top1(now.test, test.labels, k) },
    };
    out.push(r);
    if (narrowed.tensors === 0) {
      progress.log(`${path}: weights already within ${bits} bits; unchanged`);
      continue;
    }
    await writeFile(path, narrowed.model);
    entry.bytes = narrowed.model.length;
    entry.sha256 = createHash('sha256').update(narrowed.model).digest('hex');
    card.metrics.valAccuracy = r.valAccuracy.after;
    card.metrics.testAccuracy = r.testAccuracy.after;
    card.metrics.eceBefore = ece(softmaxT(now.test, k, 1), test.labels, k);
    card.metrics.eceAfter = ece(softmaxT(now.test, k, card.temperature), test.labels, k);
    // A new artifact needs a new version: devices that hold the old one must see the update.
    const suffix = `.w${bits}`;
    if (!card.version.endsWith(suffix)) card.version = `${card.version}${suffix}`;
    card.training.weightBits = {
      bits,
      narrowed: `${narrowed.tensors} weight tensors, from 8 bits by \`cascade distill requantize\``,
      // 'before' ran on this CPU: without VNNI its 8-bit products saturated.
      before: {
        testAccuracy: r.testAccuracy.before,
        valAccuracy: r.valAccuracy.before,
        vnni: await cpuHasVnni(),
      },
    };
    progress.log(
      `${path}: ${narrowed.tensors} weight tensors narrowed to ${bits} bits; validation accuracy ` +
        `${r.valAccuracy.before.toFixed(4)} → ${r.valAccuracy.after.toFixed(4)}, test ` +
        `${r.testAccuracy.before.toFixed(4)} → ${r.testAccuracy.after.toFixed(4)} (on this CPU)`,
    );
  }
  if (out.length === 0)
    throw new CascadeError(
      ErrorCodes.MODEL_ERR_INVALID,
      `${cardPath}: the card lists no qdq-cpu file to requantize`,
    );
  if (out.some((f) => f.tensors > 0)) await writeFile(cardPath, `${JSON.stringify(card, null, 2)}\n`);
  return out;
}
