/**
 * Builds the configured camera: the dataset-replay camera (default: the bundled Fashion-MNIST
 * sample), an ffmpeg input, or an image folder.
 */
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import type { ImageDataset } from '../models/data/dataset.ts';
import { loadBundledSample, loadDataset } from '../models/data/load.ts';
import type { DeviceConfig } from './config.ts';
import { FfmpegSource } from './ffmpeg-source.ts';
import { FolderSource } from './folder-source.ts';
import type { FramePool, FrameSource } from './frames.ts';
import { ReplayCamera } from './replay-source.ts';

/**
 * The camera a config describes.
 * @param dataset the replay dataset, when already loaded.
 * @throws {CascadeError} DEV_ERR_SOURCE when ffmpeg or folder sources lack `source.input`, or the
 *   folder is unusable; the dataset loaders' errors for a bad replay dataset.
 * @throws {RangeError} when the replay images do not fit the frame size at the largest scale.
 */
export async function createSource(
  config: Readonly<DeviceConfig>,
  pool: FramePool,
  dataset?: ImageDataset,
): Promise<FrameSource> {
  const s = config.source;
  const frames = s.frames > 0 ? s.frames : undefined;
  if (s.kind === 'replay') {
    const ds =
      dataset ?? (s.data ? await loadDataset({ data: s.data, split: 'test' }) : await loadBundledSample());
    return new ReplayCamera({
      dataset: ds,
      pool,
      width: s.width,
      height: s.height,
      fps: s.fps,
      shard: s.shard,
      frames,
      loop: s.loop,
      seed: s.seed,
    });
  }
  if (s.input === undefined) {
    throw new CascadeError(ErrorCodes.DEV_ERR_SOURCE, `source ${s.kind} needs an input (--input)`);
  }
  if (s.kind === 'ffmpeg') {
    return new FfmpegSource({
      input: s.input,
      pool,
      width: s.width,
      height: s.height,
      fps: s.fps,
      frames,
      loop: s.loop,
      roi: s.roi,
    });
  }
  return FolderSource.open({
    dir: s.input,
    pool,
    width: s.width,
    height: s.height,
    fps: s.fps,
    frames,
    loop: s.loop,
    roi: s.roi,
  });
}
