/**
 * `cascade bench <step>`: the benchmarks that measure speed and policy quality (never run by
 * `npm test`). One table of steps, each loaded lazily from its folder, like the top-level CLI.
 * Also runnable directly: `node --import tsx bench/cli.ts policy …` (the npm bench:* scripts).
 */
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { main as cascadeMain } from '../cascade/cli.ts';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';

interface Step {
  summary: string;
  run: (argv: string[]) => Promise<void>;
}

const STEPS: Record<string, Step> = {
  policy: {
    summary: 'trace-driven simulation of the offload policies on real traces and real predictions',
    run: async (argv) => (await import('./policy/cli.ts')).main(argv),
  },
};

function usage(): string {
  const width = Math.max(...Object.keys(STEPS).map((k) => k.length));
  return [
    'Usage: cascade bench <step> [options]',
    '',
    'Steps:',
    ...Object.entries(STEPS).map(([name, s]) => `  ${name.padEnd(width)}  ${s.summary}`),
    '',
    'Run `cascade bench <step> --help` for a step’s options.',
  ].join('\n');
}

/**
 * Runs `cascade bench` with its arguments.
 * @throws {CascadeError} CLI_ERR_ARGS for an unknown step.
 */
export async function main(argv: string[]): Promise<void> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(`${usage()}\n`);
    return;
  }
  const step = STEPS[name];
  if (step === undefined) {
    throw new CascadeError(
      ErrorCodes.CLI_ERR_ARGS,
      `unknown bench step "${name}"; one of ${Object.keys(STEPS).join(', ')}`,
    );
  }
  await step.run(rest);
}

function invokedDirectly(): boolean {
  const script = process.argv[1];
  if (script === undefined) return false;
  try {
    return realpathSync(script) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (invokedDirectly()) {
  // Through the top-level CLI, so errors print and exit the same way.
  cascadeMain(['bench', ...process.argv.slice(2)]).then((code) => {
    process.exitCode = code;
  });
}
