/**
 * The one place that loads TensorFlow.js for training and picks its backend.
 *
 * Order: @tensorflow/tfjs-node when it is installed (an optional peer dependency: its install
 * downloads libtensorflow, which offline machines cannot do), else the wasm backend with the
 * project's fast gradient kernels. The chosen backend is reported in every training log and
 * written into the model cards.
 */
// The union package registers every op gradient (tfjs-core alone registers none).
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { installWasmGradKernels } from './wasm-kernels.ts';

export { tf };

export type TrainingBackend = 'tensorflow' | 'wasm' | 'cpu';

let chosen: TrainingBackend | undefined;

/**
 * Initialises TensorFlow.js once and returns the backend name.
 * @param prefer force a backend ('cpu' is only sensible in tests); default: best available.
 */
export async function initTf(prefer?: TrainingBackend): Promise<TrainingBackend> {
  if (chosen !== undefined && (prefer === undefined || prefer === chosen)) return chosen;
  if (prefer === undefined || prefer === 'tensorflow') {
    try {
      // A computed specifier keeps bundlers and the type checker from requiring the package.
      const name = '@tensorflow/tfjs-node';
      await import(name);
      if (await tf.setBackend('tensorflow')) {
        chosen = 'tensorflow';
        return chosen;
      }
    } catch {
      if (prefer === 'tensorflow') throw new Error('@tensorflow/tfjs-node is not installed');
    }
  }
  const backend = prefer === 'cpu' ? 'cpu' : 'wasm';
  if (backend === 'wasm') installWasmGradKernels();
  await tf.setBackend(backend);
  await tf.ready();
  chosen = backend;
  return chosen;
}
