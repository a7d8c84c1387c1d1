/**
 * `cascade eval`: argument parsing only; the work is in eval.ts.
 */
import { parse } from '../cascade/args.ts';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import { loadBundledSample, loadDataset } from '../models/data/load.ts';
import { evaluate, formatEvalTable } from './eval.ts';

const HELP = `Usage: cascade eval [--data DIR] [--registry FILE] [--json]

Evaluates every tier (device, gateway, cloud) and the cascade with ONNX Runtime.

  --data DIR       a dataset's test split (Fashion-MNIST IDX folder or ImageFolder);
                   default: the bundled sample (2,000 Fashion-MNIST test images)
  --registry FILE  model registry (default: models/registry.json)
  --json           print one JSON object instead of a table`;

/** Runs `cascade eval` with its arguments. */
export async function main(argv: string[]): Promise<void> {
  const { values: v, positionals } = parse(argv, {
    help: { type: 'boolean', short: 'h' },
    data: { type: 'string' },
    registry: { type: 'string' },
    json: { type: 'boolean' },
  });
  if (v.help) {
    process.stdout.write(`${HELP}\n`);
    return;
  }
  if (positionals.length > 0)
    throw new CascadeError(ErrorCodes.CLI_ERR_ARGS, `unexpected argument "${positionals[0]}"`);
  const data =
    v.data === undefined ? await loadBundledSample() : await loadDataset({ data: v.data, split: 'test' });
  const report = await evaluate({ registry: v.registry, data });
  process.stdout.write(v.json ? `${JSON.stringify(report)}\n` : `${formatEvalTable(report)}\n`);
}
