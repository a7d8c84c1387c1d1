/**
 * `cascade distill sample`: builds the small evaluation sample that ships in models/sample/, a
 * stratified, seeded subset of the Fashion-MNIST test split written as gzipped IDX. Stratified so
 * per-class accuracy on it means something; seeded so rebuilding it gives the same images.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { datasetHash, stratifiedSample } from '../models/data/dataset.ts';
import { writeIdx } from '../models/data/idx.ts';
import { BUNDLED_SAMPLE_IMAGES, BUNDLED_SAMPLE_LABELS, loadDataset } from '../models/data/load.ts';

/** Images per class in the bundled sample. */
export const DEFAULT_SAMPLE_PER_CLASS = 200;
/** Seed of the bundled sample. */
export const DEFAULT_SAMPLE_SEED = 0;

export interface MakeSampleOptions {
  /** Dataset folder (see loadDataset); default Debian's Fashion-MNIST. Its test split is used. */
  data?: string;
  /** Images per class; default {@link DEFAULT_SAMPLE_PER_CLASS}. */
  perClass?: number;
  /** PRNG seed; default {@link DEFAULT_SAMPLE_SEED}. */
  seed?: number;
  /** Output folder, created if missing; existing sample files in it are replaced. */
  out: string;
}

export interface MakeSampleResult {
  /** Images written. */
  n: number;
  /** Paths of the images and labels files. */
  files: string[];
  /** Total bytes of the files. */
  bytes: number;
  /** {@link datasetHash} of the sample, for its README and model cards. */
  hash: string;
}

/**
 * Writes `perClass` test images of every class to `out` as gzipped IDX files named
 * fashion-mnist-test-sample-{images-idx3,labels-idx1}-ubyte.gz (what loadBundledSample reads).
 * Only grey IDX-style images are meaningful here: class names are not stored, so an ImageFolder
 * dataset's sample would be read back with Fashion-MNIST's class names.
 * @throws {CascadeError} from loadDataset (missing/broken dataset) and CLI_ERR_ARGS if a class
 *   has fewer than perClass images.
 */
export async function makeSample(opts: MakeSampleOptions): Promise<MakeSampleResult> {
  const ds = await loadDataset({ data: opts.data, split: 'test' });
  const sample = stratifiedSample(
    ds,
    opts.perClass ?? DEFAULT_SAMPLE_PER_CLASS,
    opts.seed ?? DEFAULT_SAMPLE_SEED,
  );
  await mkdir(opts.out, { recursive: true });
  const images = join(opts.out, BUNDLED_SAMPLE_IMAGES);
  const labels = join(opts.out, BUNDLED_SAMPLE_LABELS);
  // loadDataset gives grey images unless asked otherwise, so [n, h, w] describes the pixels.
  const dims = [sample.n, sample.height, sample.width];
  const bytes =
    (await writeIdx(images, dims, sample.images)) + (await writeIdx(labels, [sample.n], sample.labels));
  return { n: sample.n, files: [images, labels], bytes, hash: datasetHash(sample) };
}
