/**
 * One optimisation step of the trainer: forward, loss (cross-entropy, plus Hinton's term when
 * distilling), backward, BN moving-average update, and SGD with Nesterov momentum and decoupled
 * L2 on kernels, on named tensors the checkpoint can store.
 */
import type { Rng } from '../models/data/rng.ts';
import type { TfModel } from './model.ts';
import { tf } from './tf.ts';
import type { Distillation, TrainConfig } from './train.ts';

/** One SGD step; returns the batch loss and the number of correct predictions. */
export function sgdStep(
  model: TfModel,
  params: Array<[string, tf.Variable]>,
  velocity: Map<string, tf.Variable>,
  decayed: Set<string>,
  cfg: TrainConfig,
  lr: number,
  batchX: Float32Array,
  batchY: Float32Array,
  batchT: Float32Array | null,
  rng: Rng,
): { loss: number; correct: number } {
  const [h, w, c] = cfg.arch.input;
  const b = cfg.batchSize;
  const k = cfg.arch.classes;
  let logitsData: Float32Array | undefined;
  const lossValue = tf.tidy(() => {
    const x = tf.tensor4d(batchX, [b, h, w, c]);
    const y = tf.tensor2d(batchY, [b, k]);
    const t = batchT && cfg.kd ? tf.tensor2d(batchT, [b, k]) : null;
    const { value, grads } = tf.variableGrads(
      () => {
        const logits = model.forward(x, true, rng);
        logitsData = logits.dataSync() as Float32Array;
        return lossOf(logits, y, t, cfg.kd);
      },
      params.map(([, v]) => v),
    );
    model.commitBnUpdates();
    for (const [name, v] of params) {
      let g = grads[v.name];
      if (decayed.has(name) && cfg.weightDecay > 0) g = tf.add(g, tf.mul(v, cfg.weightDecay));
      const vel = velocity.get(name)!;
      vel.assign(tf.add(tf.mul(vel, cfg.momentum), g));
      // Nesterov: step along the gradient plus the look-ahead velocity.
      v.assign(tf.sub(v, tf.mul(tf.add(g, tf.mul(vel, cfg.momentum)), lr)));
    }
    return value.dataSync()[0];
  });
  let correct = 0;
  const logits = logitsData!;
  for (let i = 0; i < b; i++) {
    let best = 0;
    for (let j = 1; j < k; j++) if (logits[i * k + j] > logits[i * k + best]) best = j;
    if (batchY[i * k + best] === 1) correct++;
  }
  return { loss: lossValue, correct };
}

/**
 * Hard-label cross-entropy, plus Hinton's term when distilling:
 * α·CE(y, s) + β·T²·KL(softmax(t/T) ‖ softmax(s/T)); the teacher's entropy is a constant and dropped.
 */
function lossOf(logits: tf.Tensor2D, y: tf.Tensor2D, t: tf.Tensor2D | null, kd?: Distillation): tf.Scalar {
  const ce = tf.neg(tf.mean(tf.sum(tf.mul(y, tf.logSoftmax(logits)), 1))) as tf.Scalar;
  if (t === null || kd === undefined) return ce;
  const T = kd.temperature;
  const pt = tf.softmax(tf.div(t, T));
  const soft = tf.neg(tf.mean(tf.sum(tf.mul(pt, tf.logSoftmax(tf.div(logits, T))), 1)));
  return tf.add(tf.mul(ce, kd.alpha), tf.mul(soft, kd.beta * T * T)) as tf.Scalar;
}
