import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { isNativeAvailable, loadPreprocessBinding } from '../native/binding.ts';

/** Loader behaviour in a fresh process (the binary is chosen once, at first use). */
function probe(env: Record<string, string>): {
  available: boolean;
  failures: string[];
  error: { code?: string; message: string } | null;
  backend: string;
  same: boolean;
} {
  const script = `
    import { isNativeAvailable, loadPreprocessBinding, preprocessBinding } from './native/binding.ts';
    import { preprocessAsync, preprocessBackend } from './native/preprocess.ts';
    import { preprocess } from './models/preprocess.ts';
    let error = null;
    try { preprocessBinding(); } catch (e) { error = { code: e.code, message: e.message }; }
    const spec = { name: 'x', layout: 'NHWC', height: 3, width: 5, colour: 'rgb', mean: [0.5], std: [0.25] };
    const frame = { data: new Uint8Array(12 * 10 * 3).map((_, i) => i * 7), width: 12, height: 10, format: 'rgb' };
    const a = new Float32Array(45), b = new Float32Array(45);
    preprocess(frame, spec, a);
    await preprocessAsync(frame, spec, b);
    console.log(JSON.stringify({ available: isNativeAvailable(), failures: loadPreprocessBinding().failures,
      error, backend: preprocessBackend(), same: a.every((v, i) => v === b[i]) }));`;
  const out = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    env: { ...process.env, ...env },
    encoding: 'utf8',
  });
  return JSON.parse(out.trim().split('\n').pop() ?? '{}');
}

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cascade-binding-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('native loader', () => {
  it('reports a missing CASCADE_NATIVE_PATH binary, says how to fix it, and falls back to TypeScript', () => {
    const missing = join(dir, 'nope.node');
    const r = probe({ CASCADE_NATIVE_PATH: missing });
    assert.equal(r.available, false);
    assert.deepEqual(r.failures, [`${missing}: not found (from CASCADE_NATIVE_PATH)`]);
    assert.equal(r.error?.code, 'NATIVE_ERR_UNAVAILABLE');
    assert.match(r.error?.message ?? '', /npm run build:native/);
    assert.equal(r.backend, 'typescript');
    assert.equal(r.same, true);
  });

  it('gathers the load error of a file that is not an addon', async () => {
    const bogus = join(dir, 'bogus.node');
    await writeFile(bogus, 'not a shared object');
    const r = probe({ CASCADE_NATIVE_PATH: bogus });
    assert.equal(r.available, false);
    assert.equal(r.failures.length, 1);
    assert.ok(r.failures[0].startsWith(`${bogus}: `));
    assert.match(r.failures[0], /ELF|invalid|too short/i);
    assert.equal(r.same, true);
  });

  it('uses the built kernel by default, with the same outputs', {
    skip: isNativeAvailable() ? false : 'native kernel not built (npm run build:native)',
  }, () => {
    const r = probe({ CASCADE_NATIVE_PATH: '' });
    assert.equal(r.available, true);
    assert.equal(r.backend, 'native');
    assert.equal(r.same, true);
    assert.match(loadPreprocessBinding().path ?? '', /cascade_native\.node$/);
  });
});
