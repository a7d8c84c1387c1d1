#!/usr/bin/env node
// `npm run test:native-asan`: builds the kernel with AddressSanitizer + UBSan into
// native/build/asan and runs the native tests against it (CASCADE_NATIVE_PATH), with the ASan
// runtime preloaded into node (an instrumented addon cannot load into an uninstrumented process
// otherwise): the kernel's and the persistent preprocessing thread's tests, and the device
// pipeline's (the thread driven by the frame loop). Leak detection is off there: node itself
// keeps allocations alive until exit. First, the thread's stand-alone stress test runs under the
// same sanitizers with leak detection on (native/stress.mjs; `node native/stress.mjs --sanitize
// thread` runs it under ThreadSanitizer).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = dirname(here);

const stress = spawnSync(
  process.execPath,
  [join(here, 'stress.mjs'), '--sanitize', 'address', '--jobs', '5000'],
  {
    stdio: 'inherit',
  },
);
if (stress.status !== 0) process.exit(stress.status ?? 1);

const build = spawnSync(process.execPath, [join(here, 'build.mjs'), '--strict', '--asan'], {
  stdio: 'inherit',
});
if (build.status !== 0) process.exit(build.status ?? 1);

const addon = join(here, 'build', 'asan', 'RelWithDebInfo', 'cascade_native.node');
if (!existsSync(addon)) {
  process.stderr.write(`test:native-asan: ${addon} was not produced\n`);
  process.exit(1);
}
const cxx = process.env.CXX || 'c++';
const lib = spawnSync(cxx, ['-print-file-name=libasan.so'], { encoding: 'utf8' }).stdout?.trim();
if (!lib || !existsSync(lib)) {
  process.stderr.write(`test:native-asan: cannot locate libasan.so with ${cxx} -print-file-name\n`);
  process.exit(1);
}
const tests = process.argv.slice(2);
const env = {
  ...process.env,
  CASCADE_NATIVE_PATH: addon,
  LD_PRELOAD: lib,
  ASAN_OPTIONS: 'detect_leaks=0:halt_on_error=1:abort_on_error=1',
  UBSAN_OPTIONS: 'halt_on_error=1:print_stacktrace=1',
};
const run = spawnSync(
  process.execPath,
  [
    '--import',
    'tsx',
    '--test',
    ...(tests.length
      ? tests
      : ['test/native-preprocess.test.ts', 'test/preprocessor.test.ts', 'test/device-pipeline.test.ts']),
  ],
  { cwd: root, env, stdio: 'inherit' },
);
process.exit(run.status ?? 1);
