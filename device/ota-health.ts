/**
 * Health check of a newly installed model: it must run, give finite outputs, and classify a few
 * bundled probe images (real Fashion-MNIST test images shipped with the runtime) with an accuracy
 * not below the accuracy its card claims by more than a margin. A model that passes its hashes
 * but was trained wrongly, quantized badly or paired with the wrong card fails here.
 */
import { loadBundledSample } from '../models/data/load.ts';
import type { OnnxClassifier } from '../models/runtime.ts';

/** Labelled probe images, HWC uint8, back to back. */
export interface ProbeSet {
  n: number;
  height: number;
  width: number;
  channels: number;
  images: Uint8Array;
  labels: Uint8Array;
}

/** Probe images used by default. */
export const DEFAULT_PROBES = 200;
/** Accuracy a model may lose against its card's figure before it is rolled back; default 0.05. */
export const DEFAULT_MARGIN = 0.05;

/** The first `n` images of the bundled sample (shuffled across classes when it was made). */
export async function loadProbeSet(n: number = DEFAULT_PROBES): Promise<ProbeSet> {
  const ds = await loadBundledSample();
  const m = Math.min(n, ds.n);
  const size = ds.height * ds.width * ds.channels;
  return {
    n: m,
    height: ds.height,
    width: ds.width,
    channels: ds.channels,
    images: ds.images.slice(0, m * size),
    labels: ds.labels.slice(0, m),
  };
}

/** Outcome of {@link healthCheck}. */
export interface HealthResult {
  ok: boolean;
  /** Probe accuracy; undefined when the probes do not fit the model's input size. */
  accuracy?: number;
  /** The card's test accuracy (validation accuracy when it has none). */
  expected: number;
  margin: number;
  n: number;
  /** Why it failed, one line. */
  reason?: string;
}

/**
 * Runs `model` on the probe set.
 * @param opts.margin allowed accuracy loss; default {@link DEFAULT_MARGIN}.
 */
export async function healthCheck(
  model: OnnxClassifier,
  probe: ProbeSet,
  opts: { margin?: number } = {},
): Promise<HealthResult> {
  const margin = opts.margin ?? DEFAULT_MARGIN;
  const expected = model.card.metrics.testAccuracy ?? model.card.metrics.valAccuracy;
  const base = { expected, margin, n: probe.n };
  const { height, width } = model.input;
  const fits = height === probe.height && width === probe.width;
  // Probes of another size cannot be scored; the model must still run on a blank frame.
  const n = fits ? probe.n : 1;
  const pixels = fits ? probe.images : new Uint8Array(height * width * probe.channels);
  let pred: Uint8Array;
  let logits: Float32Array;
  try {
    ({ pred, logits } = await model.classify(pixels, n));
  } catch (err) {
    return { ...base, ok: false, reason: `inference failed: ${(err as Error).message.split('\n')[0]}` };
  }
  if (logits.some((x) => !Number.isFinite(x))) return { ...base, ok: false, reason: 'non-finite outputs' };
  if (!fits) return { ...base, ok: true, n: 0 };
  let correct = 0;
  for (let i = 0; i < n; i++) if (pred[i] === probe.labels[i]) correct += 1;
  const accuracy = correct / n;
  if (accuracy < expected - margin) {
    return {
      ...base,
      ok: false,
      accuracy,
      reason: `probe accuracy ${accuracy.toFixed(3)} is below the card's ${expected.toFixed(3)} − ${margin}`,
    };
  }
  return { ...base, ok: true, accuracy };
}
