#!/usr/bin/env node
/**
 * The `cascade` executable: one dispatcher, each subcommand's entry loaded lazily from its own
 * folder, so an image that ships only the runtime never loads (or needs) the training stack.
 * User errors print one line and exit 1 (2 for bad arguments); anything else is a bug and prints
 * its stack.
 */
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { CascadeError, ErrorCodes, isUserError } from './errors.ts';

interface Command {
  summary: string;
  run: (argv: string[]) => Promise<void>;
}

const COMMANDS: Record<string, Command> = {
  distill: {
    summary: 'train the teacher and students, quantize, calibrate (cascade distill --help)',
    run: async (argv) => (await import('../distill/cli.ts')).main(argv),
  },
  eval: {
    summary: 'evaluate every tier and the cascade on the bundled sample or a dataset (--data DIR, --json)',
    run: async (argv) => (await import('../distill/eval-cli.ts')).main(argv),
  },
  ota: {
    summary: 'signed model updates: keygen, init, add-target, sign, publish, verify, status (TUF)',
    run: async (argv) => (await import('../ota/cli.ts')).main(argv),
  },
  device: {
    summary: 'camera runtime: frames → INT8 student → policy → offload over MQTT (cascade device --help)',
    run: async (argv) => (await import('../device/main.ts')).main(argv),
  },
  demo: {
    summary: 'the whole cascade on this machine: broker, cloud, gateway, 4 replay cameras (start here)',
    run: async (argv) => (await import('./demo/cli.ts')).main(argv),
  },
  gateway: {
    summary: 'MEC gateway: MQTT offloads + KServe v2 HTTP, dynamic batching, forwards to the cloud',
    run: async (argv) => (await import('../gateway/cli.ts')).main(argv),
  },
  cloud: {
    summary: 'cloud teacher: KServe v2 HTTP with batching, bearer auth, hard-example log',
    run: async (argv) => (await import('../cloud/cli.ts')).main(argv),
  },
  bench: {
    summary: 'benchmarks: policy (trace-driven simulation of the offload policies) (cascade bench --help)',
    run: async (argv) => (await import('../bench/cli.ts')).main(argv),
  },
};

function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((k) => k.length));
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`);
  return [
    'Usage: cascade <command> [options]',
    '',
    'An edge–cloud inference cascade: an INT8 device student, a MEC gateway student, a cloud teacher.',
    '',
    'Commands:',
    ...lines,
    '',
    'Run `cascade <command> --help` for a command’s options.',
  ].join('\n');
}

/** Runs the CLI with the given arguments (without node and script). */
export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(`${usage()}\n`);
    return 0;
  }
  const cmd = COMMANDS[name];
  try {
    if (cmd === undefined) {
      throw new CascadeError(ErrorCodes.CLI_ERR_ARGS, `unknown command "${name}"; run \`cascade --help\``);
    }
    await cmd.run(rest);
    return 0;
  } catch (err) {
    if (isUserError(err)) {
      process.stderr.write(`cascade: ${err.message}\n`);
      return err.code === ErrorCodes.CLI_ERR_ARGS ? 2 : 1;
    }
    process.stderr.write(
      `cascade: internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
    );
    return 70;
  }
}

function invokedDirectly(): boolean {
  const script = process.argv[1];
  if (script === undefined) return false;
  try {
    // The npm bin is a symlink; compare real paths.
    return realpathSync(script) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (invokedDirectly()) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`cascade: internal error: ${String(err)}\n`);
      process.exitCode = 70;
    },
  );
}
