/**
 * `cascade distill quantize` and `cascade distill calibrate` on any fp32 ONNX classifier built
 * from the supported op set, so models trained elsewhere (PyTorch, Keras) use the same INT8 and
 * calibration pipeline as ours. Both measure on the validation split carved from the dataset's
 * training split, never on its test split.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { ece, fitTemperature, predictions, reliability, softmaxT } from '../cascade/calibration.ts';
import type { ReliabilityBin } from '../models/card.ts';
import { type CalibrationMethod, calibrateRanges } from './onnx/calibrate-ranges.ts';
import { parseOnnx } from './onnx/graph.ts';
import { type QdqFlavour, quantizeQdq } from './onnx/quantize.ts';
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
