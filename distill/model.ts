/**
 * A functional TensorFlow.js model built from an {@link ArchSpec}: named variables and a forward
 * function, no tfjs-layers. Owning the forward pass lets training use a BatchNorm with a hand-
 * written gradient (a handful of kernels instead of the ~20 that autodiff emits) and keeps the
 * parameter names identical to the ONNX exporter's. With `qat` on, the forward pass
 * fake-quantizes weights and activations as the INT8 export will (distill/qat.ts).
 */
import { type ArchSpec, type LayerSpec, paramShapes } from '../models/arch.ts';
import type { Rng } from '../models/data/rng.ts';
import { fakeQuantWeight, QatRanges, weightChannelAxis } from './qat.ts';
import { tf } from './tf.ts';

/** TensorFlow's BatchNormalization default; the ONNX exporter folds with the same value. */
export const BN_EPSILON = 1e-3;
/** Moving-average momentum of the BN statistics (Keras default). */
export const BN_MOMENTUM = 0.99;

/** Options of {@link TfModel}. */
export interface TfModelOptions {
  /**
   * Quantization-aware mode: forward() fake-quantizes weights (per-channel int8) and the
   * activations the QDQ export quantizes (uint8, moving-average ranges). The ranges are state:
   * {@link TfModel.snapshot} writes them as `qat/…` entries and {@link TfModel.load} reads them.
   */
  qat?: boolean;
}

export class TfModel {
  readonly arch: ArchSpec;
  /** Every tensor by its `paramShapes` name, trainable or not. */
  readonly vars = new Map<string, tf.Variable>();
  static #nextId = 0;
  /** Makes variable names unique per model: tfjs refuses two variables of the same name. */
  readonly #id = TfModel.#nextId++;
  /** Activation ranges in QAT mode; null otherwise. */
  readonly #qat: QatRanges | null;

  /**
   * Creates variables with He-normal conv/dense kernels, unit gamma, zero beta/bias.
   * @param rng seeded generator so runs are repeatable.
   * @param opts.qat quantization-aware mode (see {@link TfModelOptions}); default off.
   */
  constructor(arch: ArchSpec, rng: Rng, opts: TfModelOptions = {}) {
    this.arch = arch;
    this.#qat = opts.qat ? new QatRanges(arch) : null;
    for (const p of paramShapes(arch)) {
      const size = p.shape.reduce((a, b) => a * b, 1);
      const data = new Float32Array(size);
      const leaf = p.name.slice(p.name.indexOf('/') + 1);
      if (leaf === 'kernel') {
        // He-normal: fan-in is everything but the output axis.
        const fanIn = size / p.shape[p.shape.length - 1];
        const layer = arch.layers[Number(p.name.split('/')[0])];
        const std = Math.sqrt((layer.kind === 'dense' ? 1 : 2) / fanIn);
        for (let i = 0; i < size; i++) data[i] = gaussian(rng) * std;
      } else if (leaf === 'gamma' || leaf === 'variance') {
        data.fill(1);
      }
      this.vars.set(p.name, tf.variable(tf.tensor(data, p.shape), p.trainable, `model${this.#id}/${p.name}`));
    }
  }

  /** Whether forward() fake-quantizes (see {@link TfModelOptions.qat}). */
  get qat(): boolean {
    return this.#qat !== null;
  }

  /** The trainable variables, in a stable order. */
  trainable(): tf.Variable[] {
    return [...this.vars.values()].filter((v) => v.trainable);
  }

  /** The trainable variables with their parameter names (`paramShapes` names), in a stable order. */
  trainableParams(): Array<[string, tf.Variable]> {
    return [...this.vars.entries()].filter(([, v]) => v.trainable);
  }

  /**
   * Forward pass on NHWC float input. In training mode BN uses batch statistics and schedules
   * a moving-average update, applied by {@link commitBnUpdates} after the optimizer step; in
   * QAT mode so do the activation ranges.
   */
  forward(x: tf.Tensor4D, training: boolean, rng?: Rng): tf.Tensor2D {
    const qat = this.#qat;
    let h: tf.Tensor = qat ? qat.apply(-1, x, training) : x;
    this.arch.layers.forEach((l, i) => {
      h = this.#layer(l, i, h, training, rng);
      if (qat) h = qat.apply(i, h, training);
    });
    return h as tf.Tensor2D;
  }

  #pendingBn: Array<{ name: string; mean: tf.Tensor; variance: tf.Tensor }> = [];

  #layer(l: LayerSpec, i: number, h: tf.Tensor, training: boolean, rng?: Rng): tf.Tensor {
    const v = (leaf: string): tf.Variable => this.vars.get(`${i}/${leaf}`)!;
    // In QAT mode the kernel goes through the int8 rounding its exported form will have.
    const kernel = (): tf.Tensor =>
      this.#qat ? fakeQuantWeight(v('kernel'), weightChannelAxis(l)) : v('kernel');
    switch (l.kind) {
      case 'conv':
        return tf.conv2d(h as tf.Tensor4D, kernel() as tf.Tensor4D, l.stride ?? 1, 'same');
      case 'dwconv':
        return tf.depthwiseConv2d(h as tf.Tensor4D, kernel() as tf.Tensor4D, l.stride ?? 1, 'same');
      case 'bn': {
        if (!training) {
          return tf.batchNorm(h, v('mean'), v('variance'), v('beta'), v('gamma'), BN_EPSILON);
        }
        const { y, mean, variance } = batchNormTrain(h, v('gamma'), v('beta'));
        this.#pendingBn.push({ name: `${i}`, mean, variance });
        return y;
      }
      case 'relu':
        return tf.relu(h);
      case 'maxpool':
        return training
          ? maxPoolTrain(h as tf.Tensor4D, l.size)
          : tf.maxPool(h as tf.Tensor4D, l.size, l.size, 'valid');
      case 'gap':
        return tf.mean(h, [1, 2]);
      case 'flatten':
        return tf.reshape(h, [h.shape[0], -1]);
      case 'dropout': {
        if (!training || l.rate <= 0) return h;
        // Inverted dropout with a mask from our own seeded generator, so runs repeat exactly.
        const size = h.size;
        const mask = new Float32Array(size);
        const keep = 1 - l.rate;
        for (let k = 0; k < size; k++) mask[k] = (rng ? rng() : Math.random()) < keep ? 1 / keep : 0;
        return tf.mul(h, tf.tensor(mask, h.shape));
      }
      case 'dense':
        return tf.add(tf.matMul(h as tf.Tensor2D, kernel() as tf.Tensor2D), v('bias'));
    }
  }

  /**
   * Applies the BN moving-average updates collected during the last training forward pass (and
   * in QAT mode its activation-range updates).
   */
  commitBnUpdates(): void {
    this.#qat?.commit();
    for (const { name, mean, variance } of this.#pendingBn) {
      const m = this.vars.get(`${name}/mean`)!;
      const s = this.vars.get(`${name}/variance`)!;
      tf.tidy(() => {
        m.assign(tf.add(tf.mul(m, BN_MOMENTUM), tf.mul(mean, 1 - BN_MOMENTUM)));
        s.assign(tf.add(tf.mul(s, BN_MOMENTUM), tf.mul(variance, 1 - BN_MOMENTUM)));
      });
      tf.dispose([mean, variance]);
    }
    this.#pendingBn = [];
  }

  /**
   * "Precise BN": replaces the moving statistics by the mean of batch statistics over `batches`
   * clean training batches. Moving averages lag the weights (badly in short runs, where they
   * barely leave their initial values); re-estimating them before evaluation removes that lag.
   * @param x normalised NHWC images; uses the first `batches × batchSize` of them.
   */
  recalibrateBn(x: Float32Array, n: number, batchSize = 128, batches = 20): void {
    const [h, w, c] = this.arch.input;
    const per = h * w * c;
    const sums = new Map<string, { mean: Float32Array; variance: Float32Array }>();
    let count = 0;
    for (let b = 0; b < batches && (b + 1) * batchSize <= n; b++) {
      tf.tidy(() => {
        this.forward(
          tf.tensor4d(x.subarray(b * batchSize * per, (b + 1) * batchSize * per), [batchSize, h, w, c]),
          true,
        );
      });
      for (const { name, mean, variance } of this.#pendingBn) {
        const m = mean.dataSync() as Float32Array;
        const v = variance.dataSync() as Float32Array;
        const acc = sums.get(name) ?? {
          mean: new Float32Array(m.length),
          variance: new Float32Array(v.length),
        };
        for (let i = 0; i < m.length; i++) {
          acc.mean[i] += m[i];
          acc.variance[i] += v[i];
        }
        sums.set(name, acc);
      }
      this.discardBnUpdates();
      count++;
    }
    if (count === 0) return;
    for (const [name, acc] of sums) {
      this.vars.get(`${name}/mean`)!.assign(tf.tensor(acc.mean.map((s) => s / count)));
      this.vars.get(`${name}/variance`)!.assign(tf.tensor(acc.variance.map((s) => s / count)));
    }
  }

  /** Drops BN (and QAT range) updates of a forward pass that was not followed by an optimizer step. */
  discardBnUpdates(): void {
    this.#qat?.discard();
    for (const { mean, variance } of this.#pendingBn) tf.dispose([mean, variance]);
    this.#pendingBn = [];
  }

  /** Copies every variable out, keyed by name; in QAT mode the activation ranges too (`qat/…`). */
  snapshot(): Map<string, Float32Array> {
    const out = new Map<string, Float32Array>();
    for (const [name, v] of this.vars) out.set(name, v.dataSync() as Float32Array);
    if (this.#qat) for (const [name, r] of this.#qat.entries()) out.set(name, r);
    return out;
  }

  /**
   * Loads values saved by {@link snapshot}. Entries this model has no use for are ignored. In
   * QAT mode, activation ranges the values lack start empty (fp32 weights start a fine-tune).
   * @throws {RangeError} when a name is missing or a size differs.
   */
  load(values: Map<string, Float32Array>): void {
    this.#qat?.load(values);
    for (const [name, v] of this.vars) {
      const data = values.get(name);
      if (data === undefined || data.length !== v.size) {
        throw new RangeError(`weights for ${name}: expected ${v.size} values, got ${data?.length ?? 'none'}`);
      }
      v.assign(tf.tensor(data, v.shape));
    }
  }

  /** Logits for NHWC float input, in inference mode, batched to bound memory. */
  predict(x: Float32Array, n: number, batch = 500): Float32Array {
    const [h, w, c] = this.arch.input;
    const out = new Float32Array(n * this.arch.classes);
    for (let s = 0; s < n; s += batch) {
      const m = Math.min(batch, n - s);
      const logits = tf.tidy(() =>
        this.forward(tf.tensor4d(x.subarray(s * h * w * c, (s + m) * h * w * c), [m, h, w, c]), false),
      );
      out.set(logits.dataSync(), s * this.arch.classes);
      logits.dispose();
    }
    return out;
  }

  dispose(): void {
    this.discardBnUpdates();
    for (const v of this.vars.values()) v.dispose();
    this.vars.clear();
  }
}

/**
 * Per-channel means of a channels-last tensor ([n, …, c]) as two average pools: over each image's
 * pixels, then over the batch. On the wasm backend average pooling runs on XNNPACK (~0.5 ms for
 * 128×28×28×32), where a column sum as a transposed GEMM takes the scalar fallback (~5 ms) and Sum
 * over a leading axis transposes first (~30 ms). Two levels also round less than one long sum.
 */
function channelMean(x: tf.Tensor): tf.Tensor1D {
  const c = x.shape[x.shape.length - 1];
  const n = x.shape[0];
  const per = x.size / (n * c);
  let h = tf.reshape(x, [n, per, 1, c]) as tf.Tensor4D;
  if (per > 1) h = tf.avgPool(h, [per, 1], [per, 1], 'valid');
  h = tf.reshape(h, [1, n, 1, c]);
  if (n > 1) h = tf.avgPool(h, [n, 1], [n, 1], 'valid');
  return tf.reshape(h, [c]);
}

/**
 * Training-mode BatchNorm with a closed-form gradient, written for the wasm backend's fast paths:
 * same-shape and per-channel broadcast binary ops (XNNPACK, ~1 ms per 10M values) and per-channel
 * means as average pools; never its FusedBatchNorm kernel (a scalar loop, 10–20x slower). With
 * s = 1/√(σ²+ε), M values per channel and means m(·) over them:
 *   y  = A·x + B,           A = γs, B = β − μA
 *   dβ = M·m(dy),  dγ = M·s·(m(dy·x) − μ·m(dy))
 *   dx = A·dy + D·x + E,    D = −A·s²·(m(dy·x) − μ·m(dy)) = −A·s·dγ/M, E = −A·m(dy) − D·μ
 * Batch statistics are computed inside the custom op and returned for the moving averages.
 */
function batchNormTrain(
  x: tf.Tensor,
  gamma: tf.Tensor,
  beta: tf.Tensor,
): { y: tf.Tensor; mean: tf.Tensor; variance: tf.Tensor } {
  const c = x.shape[x.shape.length - 1];
  const m = x.size / c;
  let mean: tf.Tensor | undefined;
  let variance: tf.Tensor | undefined;
  const f = tf.customGrad((...args) => {
    const [xx, g, b, save] = args as [tf.Tensor, tf.Tensor, tf.Tensor, tf.GradSaveFunc];
    const mu = channelMean(xx);
    const v = tf.relu(tf.sub(channelMean(tf.mul(xx, xx)), tf.square(mu)));
    mean = tf.keep(mu);
    variance = tf.keep(v);
    const s = tf.rsqrt(tf.add(v, BN_EPSILON));
    const a = tf.mul(g, s);
    save([xx, mu, s, a]);
    const x2 = tf.reshape(xx, [m, c]);
    const value = tf.reshape(tf.add(tf.mul(x2, a), tf.sub(b, tf.mul(mu, a))), xx.shape);
    const gradFunc = (dy: tf.Tensor, saved: tf.Tensor[]): tf.Tensor[] => {
      const [sx, smu, ss, sa] = saved as [tf.Tensor, tf.Tensor1D, tf.Tensor1D, tf.Tensor1D];
      const dy2 = tf.reshape(dy, [m, c]);
      const sx2 = tf.reshape(sx, [m, c]);
      const meanDy = channelMean(dy);
      // m(dy·x) − μ·m(dy): the covariance of dy and x per channel.
      const cov = tf.sub(channelMean(tf.mul(dy2, sx2)), tf.mul(smu, meanDy));
      const dgamma = tf.mul(tf.mul(ss, cov), m);
      const d = tf.neg(tf.mul(tf.mul(sa, tf.square(ss)), cov));
      const e = tf.sub(tf.neg(tf.mul(sa, meanDy)), tf.mul(d, smu));
      const dx = tf.add(tf.add(tf.mul(dy2, sa), tf.mul(sx2, d)), e);
      return [tf.reshape(dx, dy.shape), dgamma, tf.mul(meanDy, m)];
    };
    return { value, gradFunc };
  });
  const y = f(x, gamma, beta);
  return { y, mean: mean!, variance: variance! };
}

/**
 * Max pooling whose gradient scatters dy to the argmax positions recorded in the forward pass
 * (MaxPoolWithArgmax + ScatterNd), instead of the wasm backend's slow MaxPoolGrad.
 */
function maxPoolTrain(x: tf.Tensor4D, s: number): tf.Tensor4D {
  const f = tf.customGrad((...args) => {
    const [xx, save] = args as [tf.Tensor4D, tf.GradSaveFunc];
    const { result, indexes } = tf.maxPoolWithArgmax(xx, s, s, 'valid', true);
    save([indexes]);
    const gradFunc = (dy: tf.Tensor, saved: tf.Tensor[]): tf.Tensor => {
      const idx = tf.reshape(saved[0], [dy.size, 1]);
      return tf.reshape(tf.scatterND(idx, tf.reshape(dy, [dy.size]), [x.size]), x.shape);
    };
    return { value: result, gradFunc };
  });
  return f(x) as tf.Tensor4D;
}

/** Standard normal by Box–Muller. */
export function gaussian(rng: Rng): number {
  const u = Math.max(rng(), 1e-12);
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng());
}
