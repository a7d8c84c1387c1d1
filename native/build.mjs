#!/usr/bin/env node
// Builds the native addons with cmake-js (Node-API; no prebuilt download, no Node headers
// download). Run by `npm install` (postinstall) and `npm run build:native`.
//
//   node native/build.mjs            install mode: never fails; on failure prints one line and
//                                    the project uses the TypeScript preprocessor.
//   node native/build.mjs --strict   exit non-zero on failure, full build log (build:native).
//   node native/build.mjs --asan     AddressSanitizer + UBSan variant in native/build/asan.
//
// Environment: CASCADE_SKIP_NATIVE_BUILD=1 skips the build; TENSORRT_ROOT / CUDAToolkit_ROOT
// point CMake at TensorRT and CUDA for the TensorRT binding (built only when both are found).
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = dirname(here);
const args = new Set(process.argv.slice(2));
const strict = args.has('--strict');
const asan = args.has('--asan');
const tag = 'edge-cascade native';

function note(line) {
  process.stdout.write(`${tag}: ${line}\n`);
}

function bail(reason) {
  if (strict) {
    process.stderr.write(`${tag}: build failed: ${reason}\n`);
    process.exit(1);
  }
  note(
    `not built (${reason}); the TypeScript preprocessor is used. ` +
      '`npm run build:native` builds it and shows the full log.',
  );
  process.exit(0);
}

if (process.env.CASCADE_SKIP_NATIVE_BUILD === '1') {
  note('build skipped (CASCADE_SKIP_NATIVE_BUILD=1)');
  process.exit(0);
}

let cmakeJs;
try {
  cmakeJs = createRequire(import.meta.url).resolve('cmake-js/bin/cmake-js');
} catch {
  bail('cmake-js is not installed');
}

const out = join(here, 'build', asan ? 'asan' : '');
const config = asan ? 'RelWithDebInfo' : 'Release';
const cmd = [cmakeJs, 'compile', '--directory', here, '--out', out, '--config', config];
if (asan) cmd.push('--CDCASCADE_SANITIZE=ON', '--CDCASCADE_TENSORRT=OFF');
for (const v of ['TENSORRT_ROOT', 'CUDAToolkit_ROOT']) {
  if (process.env[v]) cmd.push(`--CD${v}=${process.env[v]}`);
}

const run = spawnSync(process.execPath, cmd, {
  cwd: root,
  encoding: 'utf8',
  stdio: strict ? ['ignore', 'pipe', 'inherit'] : ['ignore', 'pipe', 'pipe'],
  maxBuffer: 64 * 1024 * 1024,
});
const log = `${run.stdout ?? ''}${run.stderr ?? ''}`;
if (strict) process.stdout.write(run.stdout ?? '');

if (run.error) bail(run.error.message);
if (run.status !== 0) {
  const lines = log.split('\n');
  const why =
    lines.find((l) => /CMake (is )?not found|cmake: not found|ENOENT.*cmake/i.test(l)) ??
    lines.find((l) => /\berror\b/i.test(l)) ??
    `cmake-js exited with ${run.status}`;
  bail(
    why
      .replace(/^\s*(ERR!|ERROR)\s+OMG\s+/, '')
      .replace(/\s+/g, ' ')
      .trim()
      .slice(0, 200),
  );
}
// CMake's own status lines about the TensorRT binding, e.g. why it was not built.
for (const line of log.split('\n')) {
  const m = /-- (cascade_tensorrt: .*)/.exec(line);
  if (m) note(m[1]);
}
note(`built ${relative(root, join(out, config, 'cascade_native.node'))}${asan ? ' (ASan + UBSan)' : ''}`);
