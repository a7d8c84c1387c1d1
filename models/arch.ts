/**
 * Model architectures as plain data. One description drives the TensorFlow.js trainer
 * (distill/), the ONNX exporter and the parameter count in the model cards, so the three can
 * never disagree about a shape.
 *
 * Conventions: inputs are NHWC float images; every convolution uses 'same' padding and has no
 * bias (a BatchNorm follows it and is folded into the convolution at export); weight layouts are
 * TensorFlow's: conv kernel [kh, kw, inC, outC], depthwise kernel [kh, kw, inC, 1], dense [in, out].
 */

export type LayerSpec =
  | { kind: 'conv'; filters: number; kernel: number; stride?: number }
  | { kind: 'dwconv'; kernel: number; stride?: number }
  | { kind: 'bn' }
  | { kind: 'relu' }
  | { kind: 'maxpool'; size: number }
  | { kind: 'gap' }
  | { kind: 'flatten' }
  | { kind: 'dropout'; rate: number }
  | { kind: 'dense'; units: number };

export interface ArchSpec {
  /** Registry name, e.g. 'teacher'. */
  name: string;
  /** Input [height, width, channels]. */
  input: [number, number, number];
  classes: number;
  layers: LayerSpec[];
}

/** conv → BN → ReLU, the unit every architecture here is built from. */
function cbr(filters: number, kernel = 3, stride = 1): LayerSpec[] {
  return [{ kind: 'conv', filters, kernel, stride }, { kind: 'bn' }, { kind: 'relu' }];
}

/** Teacher: 141k parameters (conv 32-32-pool-64-64-pool-128-GAP-dense). */
export const TEACHER: ArchSpec = {
  name: 'teacher',
  input: [28, 28, 1],
  classes: 10,
  layers: [
    ...cbr(32),
    ...cbr(32),
    { kind: 'maxpool', size: 2 },
    ...cbr(64),
    ...cbr(64),
    { kind: 'maxpool', size: 2 },
    ...cbr(128),
    { kind: 'gap' },
    { kind: 'dropout', rate: 0.2 },
    { kind: 'dense', units: 10 },
  ],
};

/**
 * Gateway student: the teacher's architecture, distilled from the teacher ("born-again"). The
 * gateway must be nearly teacher-accurate for the cascade to send <= 3 % of frames to the cloud
 * without losing accuracy; a narrower student could not (see distill/README.md). What it gains over
 * the teacher is INT8: the shipped gateway is the QDQ model, the teacher stays fp32 in the cloud.
 */
export const GATEWAY: ArchSpec = { ...TEACHER, name: 'gateway' };

/** Device student: tiny, under 50k parameters and 100 KB as INT8 ONNX. */
export const DEVICE: ArchSpec = {
  name: 'device',
  input: [28, 28, 1],
  classes: 10,
  layers: [
    ...cbr(16),
    { kind: 'maxpool', size: 2 },
    ...cbr(32),
    ...cbr(48),
    { kind: 'maxpool', size: 2 },
    ...cbr(64),
    { kind: 'gap' },
    { kind: 'dense', units: 10 },
  ],
};

export const ARCHS: Readonly<Record<string, ArchSpec>> = {
  teacher: TEACHER,
  gateway: GATEWAY,
  device: DEVICE,
};

/** Shape of one named parameter tensor. */
export interface ParamShape {
  name: string;
  shape: number[];
  /** BN moving statistics are state, not trained parameters. */
  trainable: boolean;
}

/**
 * Lists every parameter tensor of an architecture with its shape, in layer order.
 * Names are `<layerIndex>/<param>`: kernel, gamma, beta, mean, variance, bias.
 * @throws {RangeError} if a layer's input shape is invalid for it (e.g. dense after conv without GAP/flatten).
 */
export function paramShapes(arch: ArchSpec): ParamShape[] {
  const out: ParamShape[] = [];
  let [h, w, c] = arch.input;
  let flat: number | null = null;
  arch.layers.forEach((l, i) => {
    switch (l.kind) {
      case 'conv': {
        const s = l.stride ?? 1;
        out.push({ name: `${i}/kernel`, shape: [l.kernel, l.kernel, c, l.filters], trainable: true });
        c = l.filters;
        h = Math.ceil(h / s);
        w = Math.ceil(w / s);
        break;
      }
      case 'dwconv': {
        const s = l.stride ?? 1;
        out.push({ name: `${i}/kernel`, shape: [l.kernel, l.kernel, c, 1], trainable: true });
        h = Math.ceil(h / s);
        w = Math.ceil(w / s);
        break;
      }
      case 'bn': {
        const n = flat ?? c;
        out.push({ name: `${i}/gamma`, shape: [n], trainable: true });
        out.push({ name: `${i}/beta`, shape: [n], trainable: true });
        out.push({ name: `${i}/mean`, shape: [n], trainable: false });
        out.push({ name: `${i}/variance`, shape: [n], trainable: false });
        break;
      }
      case 'maxpool':
        h = Math.floor(h / l.size);
        w = Math.floor(w / l.size);
        break;
      case 'gap':
        flat = c;
        break;
      case 'flatten':
        flat = h * w * c;
        break;
      case 'dense': {
        if (flat === null) throw new RangeError(`layer ${i} (dense) needs a gap or flatten layer before it`);
        out.push({ name: `${i}/kernel`, shape: [flat, l.units], trainable: true });
        out.push({ name: `${i}/bias`, shape: [l.units], trainable: true });
        flat = l.units;
        break;
      }
      case 'relu':
      case 'dropout':
        break;
    }
  });
  return out;
}

/** Number of trainable parameters (BN moving statistics excluded). */
export function countParams(arch: ArchSpec): number {
  return paramShapes(arch)
    .filter((p) => p.trainable)
    .reduce((n, p) => n + p.shape.reduce((a, b) => a * b, 1), 0);
}
