#!/usr/bin/env node
// Builds and runs the stress test of the persistent preprocessing thread
// (native/test/preprocess-thread-stress.cc, plain C++ without Node) under a sanitizer:
//
//   node native/stress.mjs --sanitize thread    ThreadSanitizer: data races, lock misuse
//   node native/stress.mjs --sanitize address   AddressSanitizer + UBSan (npm run test:native-asan)
//   node native/stress.mjs ... --jobs N          hand-offs per spin setting (default 20000)
//
// A lost wake-up would hang: the run is killed after 300 s and counts as a failure. Output goes
// to native/build/stress-<sanitizer>/.
import { spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = dirname(fileURLToPath(import.meta.url));
const { values } = parseArgs({
  options: { sanitize: { type: 'string', default: 'thread' }, jobs: { type: 'string', default: '20000' } },
});
const flags = {
  thread: ['-fsanitize=thread'],
  address: ['-fsanitize=address,undefined', '-fno-sanitize-recover=all'],
};
const san = values.sanitize;
if (!Object.hasOwn(flags, san)) {
  process.stderr.write(`stress: --sanitize must be thread or address, received ${san}\n`);
  process.exit(2);
}
const out = join(here, 'build', `stress-${san}`);
mkdirSync(out, { recursive: true });
const exe = join(out, 'preprocess-thread-stress');
const cxx = process.env.CXX || 'c++';
const compile = spawnSync(
  cxx,
  [
    '-std=c++17',
    '-O1',
    '-g',
    '-fno-omit-frame-pointer',
    '-ffp-contract=off',
    '-pthread',
    // No target_clones: their ifunc resolvers run before the sanitizer runtime is up.
    '-DCASCADE_SANITIZE',
    ...flags[san],
    join(here, 'src', 'preprocess.cc'),
    join(here, 'src', 'preprocess-thread.cc'),
    join(here, 'test', 'preprocess-thread-stress.cc'),
    '-o',
    exe,
  ],
  { stdio: 'inherit' },
);
if (compile.status !== 0) {
  process.stderr.write(`stress: ${cxx} failed (${compile.error?.message ?? `exit ${compile.status}`})\n`);
  process.exit(1);
}
const run = spawnSync(exe, [values.jobs], {
  stdio: 'inherit',
  timeout: 300_000,
  env: {
    ...process.env,
    TSAN_OPTIONS: 'halt_on_error=1:second_deadlock_stack=1',
    ASAN_OPTIONS: 'halt_on_error=1:detect_leaks=1',
    UBSAN_OPTIONS: 'halt_on_error=1:print_stacktrace=1',
  },
});
if (run.signal === 'SIGTERM') process.stderr.write('stress: timed out after 300 s (a lost wake-up?)\n');
process.exit(run.status ?? 1);
