/**
 * The real inputs of the policy simulator: every tier's prediction on every test image, for each
 * payload the next tiers may receive (the int8 tensor, which carries the pixels exactly, and
 * JPEG at three qualities, decoded again as a server would), the payload sizes, and service
 * times measured on this machine (device at batch 1, gateway at batch 1…32, teacher at batch 1).
 *
 * Running three models over 10,000 images and 30,000 JPEG round trips takes a minute on two
 * cores, so the result is cached in one binary file whose name is a hash of the models' sha256,
 * the dataset's hash and this file's format version: replacing a model invalidates it.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import type { ModelCard } from '../../models/card.ts';
import { datasetHash, type ImageDataset } from '../../models/data/dataset.ts';
import { loadBundledSample, loadDataset } from '../../models/data/load.ts';
import { loadRegistry, modelForTier } from '../../models/registry.ts';
import { OnnxClassifier } from '../../models/runtime.ts';

/** Payloads the simulator models (features need a split model the cascade does not have). */
export const SIM_PAYLOADS = ['tensor', 'jpeg-q90', 'jpeg-q75', 'jpeg-q50'] as const;
export type SimPayload = (typeof SIM_PAYLOADS)[number];
const JPEG_QUALITY: Record<Exclude<SimPayload, 'tensor'>, number> = {
  'jpeg-q90': 90,
  'jpeg-q75': 75,
  'jpeg-q50': 50,
};
/** Gateway batch sizes whose service time is measured (others are interpolated). */
export const BATCH_SIZES = [1, 2, 4, 8, 16, 32] as const;
const FORMAT_VERSION = 1;

/** Predictions of one tier on one payload variant of every image. */
export interface TierRun {
  pred: Uint8Array;
  conf: Float32Array;
}

/** Everything the simulator needs from the models, measured once and cached. */
export interface SimData {
  dataset: string;
  /** Set when the full test set was missing and the bundled sample was used. */
  note: string | null;
  n: number;
  labels: Uint8Array;
  device: TierRun;
  /** Per payload: gateway and cloud predictions on what that payload decodes to. */
  gateway: Record<SimPayload, TierRun>;
  cloud: Record<SimPayload, TierRun>;
  /** Per payload: bytes of each image's payload. */
  payloadBytes: Record<SimPayload, Uint16Array>;
  /** Median ms: device at batch 1, gateway per batch size in {@link BATCH_SIZES}, teacher at 1. */
  deviceMs: number;
  gatewayBatchMs: number[];
  cloudMs: number;
  cards: { device: ModelCard; gateway: ModelCard; cloud: ModelCard };
  cachePath: string;
  cached: boolean;
}

async function dataset(): Promise<{ ds: ImageDataset; note: string | null }> {
  try {
    return { ds: await loadDataset({ split: 'test' }), note: null };
  } catch {
    const ds = await loadBundledSample();
    return {
      ds,
      note: `the Fashion-MNIST test set was not found; using the bundled sample of ${ds.n} test images`,
    };
  }
}

async function jpegRoundTrip(
  ds: ImageDataset,
  quality: number,
): Promise<{ pixels: Uint8Array; bytes: Uint16Array }> {
  const size = ds.height * ds.width * ds.channels;
  const pixels = new Uint8Array(ds.n * size);
  const bytes = new Uint16Array(ds.n);
  const raw = { width: ds.width, height: ds.height, channels: ds.channels as 1 | 3 };
  const one = async (i: number) => {
    const jpeg = await sharp(ds.images.subarray(i * size, (i + 1) * size), { raw })
      .jpeg({ quality })
      .toBuffer();
    bytes[i] = jpeg.length;
    let decoded = sharp(jpeg);
    decoded = ds.channels === 1 ? decoded.extractChannel(0) : decoded.removeAlpha();
    const out = await decoded.raw().toBuffer();
    pixels.set(out.subarray(0, size), i * size);
  };
  // sharp works on libuv's pool: keep a few images in flight.
  const inflight = 16;
  for (let start = 0; start < ds.n; start += inflight) {
    const jobs: Promise<void>[] = [];
    for (let i = start; i < Math.min(ds.n, start + inflight); i++) jobs.push(one(i));
    await Promise.all(jobs);
  }
  return { pixels, bytes };
}

async function medianMs(fn: () => Promise<unknown>, reps: number): Promise<number> {
  for (let i = 0; i < 3; i++) await fn(); // warm-up
  const times: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t = performance.now();
    await fn();
    times.push(performance.now() - t);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}

// Cache file: a JSON header line, then the typed arrays back to back.
interface Header {
  version: number;
  dataset: string;
  note: string | null;
  n: number;
  deviceMs: number;
  gatewayBatchMs: number[];
  cloudMs: number;
}

function arraysOf(d: Omit<SimData, 'cards' | 'cachePath' | 'cached'>): ArrayBufferView[] {
  const out: ArrayBufferView[] = [d.labels, d.device.pred, d.device.conf];
  for (const p of SIM_PAYLOADS)
    out.push(d.gateway[p].pred, d.gateway[p].conf, d.cloud[p].pred, d.cloud[p].conf, d.payloadBytes[p]);
  return out;
}

async function readCache(path: string): Promise<Omit<SimData, 'cards' | 'cachePath' | 'cached'> | null> {
  let buf: Buffer;
  try {
    buf = await readFile(path);
  } catch {
    return null;
  }
  const nl = buf.indexOf(10);
  const h = JSON.parse(buf.subarray(0, nl).toString('utf8')) as Header;
  if (h.version !== FORMAT_VERSION) return null;
  const n = h.n;
  let off = nl + 1;
  const take = <T>(ctor: { new (b: ArrayBuffer): T; BYTES_PER_ELEMENT: number }): T => {
    const len = n * ctor.BYTES_PER_ELEMENT;
    const copy = new ArrayBuffer(len);
    new Uint8Array(copy).set(buf.subarray(off, off + len));
    off += len;
    return new ctor(copy);
  };
  const labels = take(Uint8Array);
  const device = { pred: take(Uint8Array), conf: take(Float32Array) };
  const gateway = {} as Record<SimPayload, TierRun>;
  const cloud = {} as Record<SimPayload, TierRun>;
  const payloadBytes = {} as Record<SimPayload, Uint16Array>;
  for (const p of SIM_PAYLOADS) {
    gateway[p] = { pred: take(Uint8Array), conf: take(Float32Array) };
    cloud[p] = { pred: take(Uint8Array), conf: take(Float32Array) };
    payloadBytes[p] = take(Uint16Array);
  }
  if (off !== buf.length) return null;
  return { ...h, labels, device, gateway, cloud, payloadBytes };
}

async function writeCache(path: string, d: Omit<SimData, 'cards' | 'cachePath' | 'cached'>): Promise<void> {
  const header: Header = {
    version: FORMAT_VERSION,
    dataset: d.dataset,
    note: d.note,
    n: d.n,
    deviceMs: d.deviceMs,
    gatewayBatchMs: d.gatewayBatchMs,
    cloudMs: d.cloudMs,
  };
  const parts = [
    Buffer.from(`${JSON.stringify(header)}\n`),
    ...arraysOf(d).map((a) => Buffer.from(a.buffer, a.byteOffset, a.byteLength)),
  ];
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, Buffer.concat(parts));
  await rename(tmp, path);
}

/** Default cache folder: the OS temp folder, so nothing lands in the repository. */
export function defaultCacheDir(): string {
  return join(tmpdir(), 'edge-cascade-bench');
}

/**
 * Loads the models from the registry, the test set (or the bundled sample), and returns every
 * prediction and timing, from the cache when the models and data are unchanged.
 * @param opts.cacheDir default {@link defaultCacheDir}; opts.log receives progress lines.
 * @throws {CascadeError} from the registry, model and dataset loaders.
 */
export async function loadSimData(
  opts: { cacheDir?: string; registry?: string; log?: (line: string) => void } = {},
): Promise<SimData> {
  const log = opts.log ?? (() => {});
  const reg = await loadRegistry(opts.registry);
  const paths = {
    device: modelForTier(reg, 'device').card,
    gateway: modelForTier(reg, 'gateway').card,
    cloud: modelForTier(reg, 'cloud').card,
  };
  const models = {
    device: await OnnxClassifier.load(paths.device, { intraOpThreads: 1 }),
    gateway: await OnnxClassifier.load(paths.gateway, { intraOpThreads: 1 }),
    cloud: await OnnxClassifier.load(paths.cloud, { intraOpThreads: 1 }),
  };
  try {
    const cards = { device: models.device.card, gateway: models.gateway.card, cloud: models.cloud.card };
    const { ds, note } = await dataset();
    const key = createHash('sha256')
      .update(`v${FORMAT_VERSION}`)
      .update(models.device.artifact.sha256)
      .update(models.gateway.artifact.sha256)
      .update(models.cloud.artifact.sha256)
      .update(JSON.stringify([cards.device.temperature, cards.gateway.temperature, cards.cloud.temperature]))
      .update(datasetHash(ds))
      .digest('hex')
      .slice(0, 16);
    const dir = opts.cacheDir ?? defaultCacheDir();
    const cachePath = join(dir, `policy-sim-${key}.bin`);
    const hit = await readCache(cachePath);
    if (hit) return { ...hit, cards, cachePath, cached: true };

    log(`running the three models on ${ds.name} (${ds.n} images) and measuring service times…`);
    const size = ds.height * ds.width * ds.channels;
    const device = await models.device.classify(ds.images, ds.n);
    const gateway = {} as Record<SimPayload, TierRun>;
    const cloud = {} as Record<SimPayload, TierRun>;
    const payloadBytes = {} as Record<SimPayload, Uint16Array>;
    for (const p of SIM_PAYLOADS) {
      let pixels = ds.images;
      if (p === 'tensor') {
        // The int8 tensor's step is about one grey level (the card's input scale), so the
        // next tier sees the pixels the device saw.
        payloadBytes[p] = new Uint16Array(ds.n).fill(size);
      } else {
        log(`  JPEG q${JPEG_QUALITY[p]} round trip…`);
        const rt = await jpegRoundTrip(ds, JPEG_QUALITY[p]);
        pixels = rt.pixels;
        payloadBytes[p] = rt.bytes;
      }
      const g = await models.gateway.classify(pixels, ds.n);
      const c = await models.cloud.classify(pixels, ds.n);
      gateway[p] = { pred: g.pred, conf: g.conf };
      cloud[p] = { pred: c.pred, conf: c.conf };
    }
    const one = (m: OnnxClassifier, b: number) => {
      const x = m.preprocess(ds.images.subarray(0, b * size), b);
      return () => m.logits(x, b);
    };
    const deviceMs = await medianMs(one(models.device, 1), 200);
    const gatewayBatchMs: number[] = [];
    for (const b of BATCH_SIZES)
      gatewayBatchMs.push(await medianMs(one(models.gateway, b), b > 8 ? 60 : 150));
    const cloudMs = await medianMs(one(models.cloud, 1), 150);
    const data = {
      dataset: ds.name,
      note,
      n: ds.n,
      labels: ds.labels,
      device: { pred: device.pred, conf: device.conf },
      gateway,
      cloud,
      payloadBytes,
      deviceMs,
      gatewayBatchMs,
      cloudMs,
    };
    await mkdir(dir, { recursive: true });
    await writeCache(cachePath, data);
    return { ...data, cards, cachePath, cached: false };
  } finally {
    await Promise.all([models.device.dispose(), models.gateway.dispose(), models.cloud.dispose()]);
  }
}

/** Gateway service time of a batch of `b`, ms: measured sizes, linear in between and beyond. */
export function gatewayServiceMs(data: Pick<SimData, 'gatewayBatchMs'>, b: number): number {
  const xs = BATCH_SIZES;
  const ys = data.gatewayBatchMs;
  if (b <= xs[0]) return ys[0];
  for (let i = 1; i < xs.length; i++) {
    if (b <= xs[i]) return ys[i - 1] + ((b - xs[i - 1]) * (ys[i] - ys[i - 1])) / (xs[i] - xs[i - 1]);
  }
  const last = xs.length - 1;
  return ys[last] * (b / xs[last]);
}
