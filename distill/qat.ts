/**
 * Quantization-aware training: fake-quantization ops with straight-through gradients, the
 * activation ranges they track, and where the exported QDQ graph quantizes, so a fine-tune with
 * them on sees the same rounding the INT8 model will apply.
 *
 * Weights: per-output-channel symmetric int8, exactly `quantizeWeight` of onnx/quantize.ts.
 * Training sees the unfolded kernel; the exporter folds BatchNorm by multiplying each output
 * channel by γ/√(σ²+ε), and per-channel symmetric quantization is invariant to a per-channel
 * scale (the channel's max scales with it), so fake-quantizing the unfolded kernel gives the
 * folded INT8 weights exactly (up to float rounding at ties).
 *
 * Activations: per-tensor uint8 asymmetric (the 'qdq-cpu' flavour), parameters from
 * `activationQuant` of a range tracked as an exponential moving average of batch min/max. They
 * sit where `planQdq` puts Q/DQ pairs in the exported graph: the network input, after every
 * ReLU, after global average pooling, and after a conv/dense (BatchNorm folded) whose output
 * is not read by a ReLU, the logits included. Max pooling and flatten share their input's
 * parameters there, so their outputs are already on the grid and need no op of their own.
 */
import type { ArchSpec, LayerSpec } from '../models/arch.ts';
import type { TensorRange } from './onnx/calibrate-ranges.ts';
import { type ActivationQuant, activationQuant, type WeightBits, weightQmax } from './onnx/quantize.ts';
import { tf } from './tf.ts';

/** Momentum of the activation-range moving averages (the BN statistics use the same). */
export const QAT_RANGE_MOMENTUM = 0.99;

/** Prefix of the range entries in a QAT model's weights: `qat/input`, `qat/<layer index>`. */
export const QAT_PREFIX = 'qat/';

/** The output-channel axis of a layer's kernel: the last one, except depthwise [kh, kw, C, 1]. */
export function weightChannelAxis(layer: LayerSpec): number {
  if (layer.kind === 'dwconv') return 2;
  return layer.kind === 'dense' ? 1 : 3;
}

/**
 * Per-output-channel symmetric int8 fake quantization, as the CPU export quantizes weights:
 * qmax = 2^(bits−1) − 1 (63 with the default 7 bits; onnx/quantize.ts says why), scale =
 * max|w|/qmax over every axis but `axis`, w → clip(round(w/scale), ±qmax)·scale. The gradient
 * passes straight through (the clip never binds: the scale comes from the channel's own maximum).
 * @param axis the output-channel axis; default the last.
 */
export function fakeQuantWeight(w: tf.Tensor, axis = w.rank - 1, bits: WeightBits = 7): tf.Tensor {
  const qmax = weightQmax(bits);
  const reduce = Array.from({ length: w.rank }, (_, i) => i).filter((i) => i !== axis);
  const f = tf.customGrad((...args) => {
    const [x] = args as [tf.Tensor, tf.GradSaveFunc];
    const amax = tf.max(tf.abs(x), reduce, true);
    // An all-zero channel gets scale 1, as in quantizeWeight (its values stay 0 either way).
    const scale = tf.where(tf.greater(amax, 0), tf.div(amax, qmax), tf.onesLike(amax));
    const value = tf.mul(tf.clipByValue(tf.round(tf.div(x, scale)), -qmax, qmax), scale);
    return { value, gradFunc: (dy: tf.Tensor) => dy };
  });
  return f(w);
}

/**
 * Per-tensor uint8 asymmetric fake quantization with the given parameters (ONNX QuantizeLinear
 * then DequantizeLinear: round half to even, saturate to 0…255). The gradient passes where the
 * saturation is inactive, i.e. where x rounds into the grid [−zp·s, (255−zp)·s] (within half a
 * step of its ends), and is zero outside.
 */
export function fakeQuantActivation(x: tf.Tensor, q: ActivationQuant): tf.Tensor {
  const { scale: s, zeroPoint: zp } = q;
  const lo = -zp * s - s / 2;
  const hi = (255 - zp) * s + s / 2;
  const f = tf.customGrad((...args) => {
    const [xx, save] = args as [tf.Tensor, tf.GradSaveFunc];
    save([xx]);
    const value = tf.mul(tf.sub(tf.clipByValue(tf.add(tf.round(tf.div(xx, s)), zp), 0, 255), zp), s);
    const gradFunc = (dy: tf.Tensor, saved: tf.Tensor[]): tf.Tensor => {
      // step(r − |x − c|) is 1 inside [c−r, c+r): unary and scalar ops only, which the wasm
      // backend runs several times faster than a comparison pair and a logical and.
      const inside = tf.step(tf.sub((hi - lo) / 2, tf.abs(tf.sub(saved[0], (hi + lo) / 2))));
      return tf.mul(dy, inside);
    };
    return { value, gradFunc };
  });
  return f(x);
}

/** Where an activation is quantized: its range key, and the ONNX tensor the exporter names it. */
export interface QatPoint {
  /** Key in the weights without the prefix: 'input' or the index of the layer whose output it is. */
  key: string;
  /** The layer after which the activation is quantized; −1 for the network input. */
  layer: number;
  /** The tensor's name in the graph of onnx/export.ts (the range `calibrateRanges` would fit). */
  onnx: string;
}

/**
 * The activations the exported QDQ graph quantizes with their own parameters (see the file
 * comment; the rules of `planQdq` applied to the exporter's layer-to-node mapping).
 */
export function qatPoints(arch: ArchSpec): QatPoint[] {
  const points: QatPoint[] = [{ key: 'input', layer: -1, onnx: 'input' }];
  const layers = arch.layers;
  // BatchNorm folds into the linear layer before it; dropout vanishes at export.
  const transparent = (k: LayerSpec['kind']): boolean => k === 'bn' || k === 'dropout';
  // The ONNX node name of each emitting layer (onnx/export.ts: `L<i>.<Op>`); the last node is 'logits'.
  const ops: Array<string | null> = layers.map((l) => {
    switch (l.kind) {
      case 'conv':
      case 'dwconv':
        return 'Conv';
      case 'dense':
        return 'Gemm';
      case 'relu':
        return 'Relu';
      case 'maxpool':
        return 'MaxPool';
      case 'gap':
        return 'GlobalAveragePool';
      default:
        return null;
    }
  });
  const lastEmitting = layers.reduce(
    (last, l, i) => (ops[i] !== null || l.kind === 'flatten' ? i : last),
    -1,
  );
  let linear = -1;
  layers.forEach((l, i) => {
    const name = (at: number): string =>
      at === lastEmitting && layers[at].kind !== 'gap' ? 'logits' : `L${at}.${ops[at]}`;
    if (!transparent(l.kind)) linear = -1;
    if (l.kind === 'conv' || l.kind === 'dwconv' || l.kind === 'dense') linear = i;
    if (l.kind === 'relu' || l.kind === 'gap') points.push({ key: `${i}`, layer: i, onnx: name(i) });
    // The end of a linear group (conv/dense and the BN folded into it): its output keeps its
    // own range unless a ReLU reads it (then the pair is quantized after the ReLU).
    const next = layers[i + 1];
    if (linear >= 0 && !(next && transparent(next.kind)) && next?.kind !== 'relu') {
      points.push({ key: `${i}`, layer: i, onnx: name(linear) });
    }
  });
  return points;
}

/**
 * The activation ranges of a QAT model, one per quantized activation. A range starts empty
 * (min > max): the first training batch sets it, later ones move it by the moving average.
 * Updates of a training forward pass are pending until {@link commit}, like the BN statistics,
 * so a forward pass that is not followed by an optimizer step leaves them as they were.
 */
export class QatRanges {
  readonly points: QatPoint[];
  readonly #byLayer = new Map<number, QatPoint>();
  readonly #ranges = new Map<string, Float32Array>();
  #pending = new Map<string, Float32Array>();

  constructor(arch: ArchSpec) {
    this.points = qatPoints(arch);
    for (const p of this.points) {
      this.#byLayer.set(p.layer, p);
      this.#ranges.set(p.key, Float32Array.of(Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY));
    }
  }

  /**
   * Fake-quantizes `x` when it is the output of layer `layer` (−1: the input) and that
   * activation is quantized; returns it unchanged otherwise. In training the range moves
   * toward the batch's min/max first (pending); in inference an empty range quantizes nothing.
   */
  apply(layer: number, x: tf.Tensor, training: boolean): tf.Tensor {
    const p = this.#byLayer.get(layer);
    if (p === undefined) return x;
    let r = this.#ranges.get(p.key)!;
    if (training) {
      const [bmin, bmax] = tf.tidy(() => tf.stack([tf.min(x), tf.max(x)]).dataSync());
      const m = QAT_RANGE_MOMENTUM;
      r =
        r[0] > r[1]
          ? Float32Array.of(bmin, bmax)
          : Float32Array.of(r[0] * m + bmin * (1 - m), r[1] * m + bmax * (1 - m));
      this.#pending.set(p.key, r);
    }
    if (r[0] > r[1]) return x;
    return fakeQuantActivation(x, activationQuant({ min: r[0], max: r[1] }, 'qdq-cpu'));
  }

  /** Applies the range updates of the last training forward pass. */
  commit(): void {
    for (const [k, r] of this.#pending) this.#ranges.set(k, r);
    this.#pending.clear();
  }

  /** Drops the range updates of a forward pass that was not followed by an optimizer step. */
  discard(): void {
    this.#pending.clear();
  }

  /** The ranges as weight entries: `qat/<key>` → [min, max]. */
  entries(): Array<[string, Float32Array]> {
    return [...this.#ranges].map(([k, r]) => [`${QAT_PREFIX}${k}`, Float32Array.from(r)]);
  }

  /**
   * Loads the `qat/…` entries of saved weights; a range they lack starts empty, so fp32
   * weights (no entries) start range tracking afresh.
   * @throws {RangeError} when an entry is not [min, max].
   */
  load(values: Map<string, Float32Array>): void {
    this.#pending.clear();
    for (const p of this.points) {
      const v = values.get(`${QAT_PREFIX}${p.key}`);
      if (v !== undefined && v.length !== 2) {
        throw new RangeError(`weights for ${QAT_PREFIX}${p.key}: expected 2 values, got ${v.length}`);
      }
      this.#ranges.set(
        p.key,
        v ? Float32Array.from(v) : Float32Array.of(Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY),
      );
    }
  }
}

/**
 * The QAT ranges saved in `weights`, keyed by the exported graph's tensor names, for the
 * quantizer: the model was trained against these ranges, so its INT8 form should use them.
 * Empty ranges and absent entries are left out (calibrate those instead).
 */
export function qatOnnxRanges(
  arch: ArchSpec,
  weights: Map<string, Float32Array>,
): Record<string, TensorRange> {
  const out: Record<string, TensorRange> = {};
  for (const p of qatPoints(arch)) {
    const r = weights.get(`${QAT_PREFIX}${p.key}`);
    if (r !== undefined && r.length === 2 && r[0] <= r[1]) out[p.onnx] = { min: r[0], max: r[1] };
  }
  return out;
}
