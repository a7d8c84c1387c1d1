/**
 * bench:train — training throughput of the project's trainer against PyTorch on one CPU thread,
 * side by side in one run, on the teacher architecture (or --arch).
 *
 *   npm run bench:train -- [--arch teacher|gateway|device] [--steps N] [--batch N] [--json]
 *
 * Our side runs the real training loop (augmentation, BN, SGD step, BN updates) over the bundled
 * Fashion-MNIST sample; PyTorch (Debian's python3-torch, when installed) trains the same
 * architecture with the same batch size and optimizer. Medians of per-step times, warm-up steps
 * excluded. Prints {"arch","backend","imagesPerSec","torchImagesPerSec","ratio"}.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { choiceOpt, numberOpt, parse } from '../cascade/args.ts';
import { FASHION_MNIST_MEAN, FASHION_MNIST_STD, ROLE_DEFAULTS } from '../distill/pipeline.ts';
import { silentProgress } from '../distill/progress.ts';
import { initTf } from '../distill/tf.ts';
import { train } from '../distill/train.ts';
import { ARCHS } from '../models/arch.ts';
import { splitTrainVal } from '../models/data/dataset.ts';
import { loadBundledSample } from '../models/data/load.ts';

const PYTHON_CANDIDATES = ['/usr/bin/python3', 'python3'];

function torchRate(
  arch: object,
  steps: number,
  batch: number,
): { imagesPerSec: number; version: string } | null {
  const script = fileURLToPath(new URL('./torch_train.py', import.meta.url));
  for (const py of PYTHON_CANDIDATES) {
    if (py.startsWith('/') && !existsSync(py)) continue;
    const r = spawnSync(py, [script, JSON.stringify({ steps, batch, warmup: 3, threads: 1 })], {
      input: JSON.stringify(arch),
      encoding: 'utf8',
      env: { ...process.env, OMP_NUM_THREADS: '1', PYTHONWARNINGS: 'ignore' },
    });
    if (r.status === 0) {
      const line = r.stdout.trim().split('\n').pop() ?? '{}';
      const parsed = JSON.parse(line) as { imagesPerSec: number; torch: string };
      return { imagesPerSec: parsed.imagesPerSec, version: parsed.torch };
    }
  }
  return null;
}

async function main(): Promise<void> {
  const { values: v } = parse(process.argv.slice(2), {
    arch: { type: 'string' },
    steps: { type: 'string' },
    batch: { type: 'string' },
    json: { type: 'boolean' },
  });
  const role = choiceOpt('--arch', v.arch, ['teacher', 'gateway', 'device'] as const) ?? 'teacher';
  const steps = numberOpt('--steps', v.steps, { integer: true, min: 8 }) ?? 30;
  const batch = numberOpt('--batch', v.batch, { integer: true, min: 2 }) ?? ROLE_DEFAULTS[role].batchSize;
  const arch = ARCHS[role];
  const backend = await initTf();
  const sample = await loadBundledSample();
  const { train: tr, val } = splitTrainVal(sample, 0.05, 1);
  // PyTorch runs before and after ours and the two rates are averaged, so a change in machine
  // load during the run does not favour either side.
  const torchBefore = torchRate(arch, steps, batch);
  const dir = mkdtempSync(join(tmpdir(), 'bench-train-'));
  let ours: number;
  try {
    // Enough images for `steps` batches: repeat the sample if needed.
    const result = await train(
      {
        ...ROLE_DEFAULTS[role],
        arch,
        // Whole epochs of the sample, at least `steps` optimizer steps in all.
        epochs: Math.ceil(steps / Math.floor(tr.n / batch)),
        batchSize: batch,
        patience: 1000,
        mean: FASHION_MNIST_MEAN,
        std: FASHION_MNIST_STD,
      },
      tr,
      val,
      { checkpoint: join(dir, 'bench.ckpt'), progress: silentProgress },
    );
    ours = result.imagesPerSecond;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const torchAfter = torchBefore ? torchRate(arch, steps, batch) : null;
  const torch =
    torchBefore && torchAfter
      ? {
          imagesPerSec: (torchBefore.imagesPerSec + torchAfter.imagesPerSec) / 2,
          version: torchBefore.version,
        }
      : null;
  const report = {
    arch: arch.name,
    backend,
    imagesPerSec: Math.round(ours * 10) / 10,
    torchImagesPerSec: torch ? Math.round(torch.imagesPerSec * 10) / 10 : null,
    ratio: torch ? Math.round((ours / torch.imagesPerSec) * 1000) / 1000 : null,
    batch,
    steps,
  };
  if (v.json) {
    process.stdout.write(`${JSON.stringify(report)}\n`);
  } else {
    process.stdout.write(
      `${arch.name}: ${report.imagesPerSec} images/s on tfjs '${backend}'` +
        (torch
          ? `, PyTorch ${torch.version} (1 thread) ${report.torchImagesPerSec} images/s, ratio ${report.ratio}\n`
          : ', PyTorch not installed (apt-get install python3-torch) so no comparison\n'),
    );
  }
}

await main();
