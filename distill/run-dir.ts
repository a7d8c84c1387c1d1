/**
 * A training run's working folder (default `runs/`, not committed): checkpoints, final weights,
 * cached teacher logits and the training history of each model, so the pipeline's steps
 * (teacher → students → quantize → calibrate) can run as separate commands.
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import { loadCheckpoint, saveCheckpoint } from './checkpoint.ts';

export interface TrainedMeta {
  name: string;
  arch: string;
  config: Record<string, unknown>;
  history: unknown[];
  bestEpoch: number;
  bestValAccuracy: number;
  imagesPerSecond: number;
  backend: string;
  dataHash: string;
  seconds: number;
}

export class RunDir {
  readonly root: string;

  constructor(root = 'runs') {
    this.root = root;
  }

  path(...parts: string[]): string {
    return join(this.root, ...parts);
  }

  async ensure(): Promise<void> {
    await mkdir(this.root, { recursive: true });
  }

  /** Stores a trained model's weights and metadata under `<root>/<name>.weights`. */
  async saveWeights(name: string, weights: Map<string, Float32Array>, meta: TrainedMeta): Promise<void> {
    await this.ensure();
    await saveCheckpoint(this.path(`${name}.weights`), { meta, tensors: weights });
  }

  /**
   * Loads weights stored by {@link saveWeights}.
   * @throws {CascadeError} TRAIN_ERR_CHECKPOINT naming the command that produces them when absent.
   */
  async loadWeights(
    name: string,
    producer: string,
  ): Promise<{ weights: Map<string, Float32Array>; meta: TrainedMeta }> {
    const ck = await loadCheckpoint<TrainedMeta>(this.path(`${name}.weights`));
    if (ck === null) {
      throw new CascadeError(
        ErrorCodes.TRAIN_ERR_CHECKPOINT,
        `${this.path(`${name}.weights`)}: not found; run \`${producer}\` first`,
      );
    }
    return { weights: ck.tensors, meta: ck.meta };
  }

  /** Writes JSON atomically (temporary file + rename), so concurrent readers see old or new, never half. */
  async writeJson(name: string, value: unknown): Promise<void> {
    await this.ensure();
    const tmp = this.path(`${name}.${process.pid}.tmp`);
    await writeFile(tmp, `${JSON.stringify(value, null, 2)}\n`);
    await rename(tmp, this.path(name));
  }

  async readJson<T>(name: string): Promise<T | null> {
    try {
      return JSON.parse(await readFile(this.path(name), 'utf8')) as T;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
  }
}
