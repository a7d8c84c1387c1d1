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
    const layers = this.arch.layers;
    for (let i = 0; i < layers.length; i++) {
      if (training && !qat && layers[i].kind === 'bn' && layers[i + 1]?.kind === 'relu') {
        // BatchNorm and its ReLU in one pass, with one gradient (see batchNormTrain).
        h = this.#bnTrain(i, h, true);
        i++;
        continue;
      }
      h = this.#layer(layers[i], i, h, training, rng);
      if (qat) h = qat.apply(i, h, training);
    }
    return h as tf.Tensor2D;
  }

  /** Training-mode BatchNorm of layer i (fused with the following ReLU when `relu`). */
  #bnTrain(i: number, h: tf.Tensor, relu: boolean): tf.Tensor {
    const v = (leaf: string): tf.Variable => this.vars.get(`${i}/${leaf}`)!;
    const { y, mean, variance } = batchNormTrain(h, v('gamma'), v('beta'), relu);
    this.#pendingBn.push({ name: `${i}`, mean, variance });
    return y;
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
        return this.#bnTrain(i, h, false);
      }
      case 'relu':
        return tf.relu(h);
      case 'maxpool':
        return training
          ? maxPoolTrain(h as tf.Tensor4D, l.size)
          : tf.maxPool(h as tf.Tensor4D, l.size, l.size, 'valid');
      case 'gap':
        return globalAvgPool(h as tf.Tensor4D);
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
 * y = x·a + b per channel (last axis), optionally followed by a ReLU, in one pass: a 1×1 depthwise
 * conv with bias, which XNNPACK runs as a single multiply-add-clamp sweep (~2.5x faster than the
 * broadcast Multiply, Add and Relu it replaces, and the same two roundings, so the same values).
 * Call it only where no gradient flows through it (inside a custom gradient's functions).
 */
function channelAffine(x: tf.Tensor, a: tf.Tensor1D, b: tf.Tensor1D | undefined, relu: boolean): tf.Tensor {
  const c = x.shape[x.shape.length - 1];
  // The kernel itself: the tf.fused op splits into depthwise + Add + Relu while a gradient is taped.
  const y = tf.engine().runKernel(
    'FusedDepthwiseConv2D',
    {
      x: tf.reshape(x, [1, x.size / c, 1, c]),
      filter: tf.reshape(a, [1, 1, c, 1]),
      ...(b === undefined ? {} : { bias: b }),
    },
    {
      strides: [1, 1],
      pad: 'valid',
      dataFormat: 'NHWC',
      dilations: [1, 1],
      activation: relu ? 'relu' : 'linear',
    },
  ) as tf.Tensor;
  return tf.reshape(y, x.shape);
}

/**
 * Training-mode BatchNorm with a closed-form gradient, optionally fused with the ReLU after it,
 * written for the wasm backend's fast paths: per-channel multiply-adds as 1×1 depthwise convs
 * (see {@link channelAffine}), same-shape binary ops and per-channel means as average pools; never
 * its FusedBatchNorm kernel (a scalar loop, 10–20x slower). With s = 1/√(σ²+ε), M values per
 * channel, means m(·) over them and dz the gradient at the BN output (dy masked by y > 0 when fused):
 *   y  = A·x + B,           A = γs, B = β − μA
 *   dβ = M·m(dz),  dγ = M·s·(m(dz·x) − μ·m(dz))
 *   dx = A·dz + (D·x + E),  D = −A·s²·(m(dz·x) − μ·m(dz)) = −A·s·dγ/M, E = −A·m(dz) − D·μ
 * Batch statistics are computed inside the custom op and returned for the moving averages.
 */
function batchNormTrain(
  x: tf.Tensor,
  gamma: tf.Tensor,
  beta: tf.Tensor,
  relu: boolean,
): { y: tf.Tensor; mean: tf.Tensor; variance: tf.Tensor } {
  const m = x.size / x.shape[x.shape.length - 1];
  let mean: tf.Tensor | undefined;
  let variance: tf.Tensor | undefined;
  const f = tf.customGrad((...args) => {
    const [xx, g, b, save] = args as [tf.Tensor, tf.Tensor, tf.Tensor, tf.GradSaveFunc];
    const mu = channelMean(xx);
    const v = tf.relu(tf.sub(channelMean(tf.mul(xx, xx)), tf.square(mu)));
    mean = tf.keep(mu);
    variance = tf.keep(v);
    const s = tf.rsqrt(tf.add(v, BN_EPSILON));
    const a = tf.mul(g, s) as tf.Tensor1D;
    const value = channelAffine(xx, a, tf.sub(b, tf.mul(mu, a)) as tf.Tensor1D, relu);
    // The output is kept only for the ReLU's mask (y > 0 exactly where the BN output is > 0).
    save(relu ? [xx, mu, s, a, value] : [xx, mu, s, a]);
    const gradFunc = (dy: tf.Tensor, saved: tf.Tensor[]): tf.Tensor[] => {
      const [sx, smu, ss, sa, sy] = saved as [tf.Tensor, tf.Tensor1D, tf.Tensor1D, tf.Tensor1D, tf.Tensor?];
      const dz = sy === undefined ? dy : tf.mul(dy, tf.step(sy));
      const meanDz = channelMean(dz);
      // m(dz·x) − μ·m(dz): the covariance of dz and x per channel.
      const cov = tf.sub(channelMean(tf.mul(dz, sx)), tf.mul(smu, meanDz));
      const dgamma = tf.mul(tf.mul(ss, cov), m);
      const d = tf.neg(tf.mul(tf.mul(sa, tf.square(ss)), cov)) as tf.Tensor1D;
      const e = tf.sub(tf.neg(tf.mul(sa, meanDz)), tf.mul(d, smu)) as tf.Tensor1D;
      const dx = tf.add(channelAffine(dz, sa, undefined, false), channelAffine(sx, d, e, false));
      return [dx, dgamma, tf.mul(meanDz, m)];
    };
    return { value, gradFunc };
  });
  const y = f(x, gamma, beta);
  return { y, mean: mean!, variance: variance! };
}

const onesCache = new Map<string, tf.Tensor4D>();

/** A kept [1, h, w, 1] tensor of ones, to broadcast per-channel values over an image. */
function onesImage(h: number, w: number): tf.Tensor4D {
  const key = `${h}x${w}`;
  const cached = onesCache.get(key);
  if (cached !== undefined && !cached.isDisposed) return cached;
  const ones = tf.keep(tf.ones([1, h, w, 1]) as tf.Tensor4D);
  onesCache.set(key, ones);
  return ones;
}

/**
 * Global average pooling (NHWC → [n, c]) as one average pool, with its gradient as one broadcast
 * multiply. tf.mean's gradient builds a ones tensor of the input's size in JavaScript every step,
 * and the wasm backend's AvgPoolGrad is a scalar loop (~18 ms for 128×7×7×128).
 */
function globalAvgPool(x: tf.Tensor4D): tf.Tensor2D {
  const [n, h, w, c] = x.shape;
  const f = tf.customGrad((...args) => {
    const [xx] = args as [tf.Tensor4D, tf.GradSaveFunc];
    const value = tf.reshape(tf.avgPool(xx, [h, w], [h, w], 'valid'), [n, c]);
    const gradFunc = (dy: tf.Tensor): tf.Tensor =>
      tf.mul(tf.reshape(tf.div(dy, h * w), [n, 1, 1, c]), onesImage(h, w));
    return { value, gradFunc };
  });
  return f(x) as tf.Tensor2D;
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
