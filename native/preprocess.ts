/**
 * Native preprocessing: the same validated plan as the TypeScript reference (models/preprocess.ts),
 * executed by the C++ kernel (native/src/preprocess.cc) on the libuv thread pool, so that the
 * device pipeline overlaps preprocessing of one buffer with inference on the other. Outputs are
 * bit-identical to the reference.
 *
 * {@link preprocessAsync} is what runtimes call: native when the addon is built, the reference
 * otherwise (see {@link preprocessBackend}).
 */
import type { InputSpec } from '../models/card.ts';
import {
  type Frame,
  type InputBuffer,
  type PreprocessOptions,
  prepare,
  preprocess,
} from '../models/preprocess.ts';
import { FormatCode } from '../models/preprocess-plan.ts';
import { isNativeAvailable, type PreprocessBinding, preprocessBinding } from './binding.ts';

// Parameter layout shared with native/src/preprocess.h (IntParam, FloatParam).
const ints = new Int32Array(22);
const floats = new Float64Array(11);

function pack(frame: Frame, spec: InputSpec, out: InputBuffer, opts: PreprocessOptions | undefined) {
  const call = prepare(frame, spec, out, opts);
  const { plan, consts: k } = call;
  ints[0] = FormatCode[frame.format];
  ints[1] = frame.width;
  ints[2] = frame.height;
  ints[3] = call.stride;
  ints[4] = call.outKind;
  ints[5] = spec.width;
  ints[6] = spec.height;
  ints[7] = k.outChannels;
  ints[8] = spec.layout === 'NCHW' ? 1 : 0;
  ints[9] = plan.boxX;
  ints[10] = plan.boxY;
  ints[11] = plan.boxW;
  ints[12] = plan.boxH;
  ints[13] = plan.kx;
  ints[14] = plan.ky;
  ints[15] = k.srcChannels;
  ints.set(k.perm, 16);
  ints[19] = k.qZero;
  ints[20] = k.qMin;
  ints[21] = k.qMax;
  floats.set(k.A, 0);
  floats.set(k.B, 3);
  floats.set(k.luma, 6);
  floats[9] = k.padR;
  floats[10] = k.qScale;
  return plan;
}

/**
 * Preprocesses on the libuv thread pool with the native kernel. `frame.data` and `out` must not
 * be transferred or resized until the promise settles.
 * @throws {CascadeError} NATIVE_ERR_UNAVAILABLE when the addon is not built (synchronously).
 * @throws {TypeError|RangeError} as models/preprocess.ts `preprocess` (synchronously).
 */
export function preprocessNative(
  frame: Frame,
  spec: InputSpec,
  out: InputBuffer,
  opts?: PreprocessOptions,
): Promise<void> {
  const b: PreprocessBinding = preprocessBinding();
  const p = pack(frame, spec, out, opts);
  return b.preprocess(frame.data, out, p.xIdx, p.xW, p.yIdx, p.yW, ints, floats);
}

/**
 * The native kernel on the calling thread (benchmarks, batch tools).
 * @throws as {@link preprocessNative}.
 */
export function preprocessNativeSync(
  frame: Frame,
  spec: InputSpec,
  out: InputBuffer,
  opts?: PreprocessOptions,
): void {
  const b = preprocessBinding();
  const p = pack(frame, spec, out, opts);
  b.preprocessSync(frame.data, out, p.xIdx, p.xW, p.yIdx, p.yW, ints, floats);
}

/** 'native' when the addon is loaded, else 'typescript'. */
export function preprocessBackend(): 'native' | 'typescript' {
  return isNativeAvailable() ? 'native' : 'typescript';
}

/**
 * Preprocesses with the native kernel off the main thread when it is built, else with the
 * TypeScript reference (on the calling thread); both give identical outputs. Argument errors
 * reject the promise.
 * @throws {TypeError|RangeError} (as a rejection) for bad arguments; see models/preprocess.ts.
 */
export async function preprocessAsync(
  frame: Frame,
  spec: InputSpec,
  out: InputBuffer,
  opts?: PreprocessOptions,
): Promise<void> {
  if (isNativeAvailable()) await preprocessNative(frame, spec, out, opts);
  else preprocess(frame, spec, out, opts);
}
