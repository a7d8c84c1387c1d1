/**
 * `cascade ota` as a user runs it (a separate process): help, argument errors (exit 2) and user
 * errors (exit 1) as one `cascade:` line without a stack trace, and the external-signature path
 * (`sign --payload` for an HSM or openssl, `sign --public --signature` to attach the result).
 * The full publishing flow through the CLI runs in test/ota-e2e.test.ts.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, it } from 'node:test';
import { main } from '../ota/cli.ts';

const ROOT = new URL('..', import.meta.url).pathname;
let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'ota-cli-'));
});
after(() => rmSync(dir, { recursive: true, force: true }));

function cascade(...args: string[]) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'cascade/cli.ts', 'ota', ...args], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

async function quiet(...argv: string[]): Promise<string> {
  const lines: string[] = [];
  await main(argv, (l) => lines.push(l));
  return lines.join('\n');
}

it('prints help, and reports user and argument errors in one line', async () => {
  const help = cascade('--help');
  assert.equal(help.status, 0);
  assert.match(help.stdout, /keygen → init → sign root → add-target/);
  await quiet('keygen', '--out', join(dir, 'k'));
  chmodSync(join(dir, 'k.key'), 0o644);
  const r = cascade('sign', '--file', join(dir, 'nothing.json'), '--key', join(dir, 'k.key'));
  assert.equal(r.status, 1);
  assert.deepEqual(r.stderr.trim().split('\n').length, 1, r.stderr);
  assert.match(r.stderr, /^cascade: .*nothing\.json: cannot read JSON metadata/);
  const bad = cascade(
    'add-target',
    '--repo',
    dir,
    '--card',
    'x',
    '--hardware-class',
    'h',
    '--rollout',
    '150',
  );
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /^cascade: --rollout: expected an integer >= 0 <= 100, received "150"\n$/);
  assert.doesNotMatch(`${r.stderr}${bad.stderr}`, / {4}at /);
});

it('exports the signing payload and attaches a verified external signature', async () => {
  const { createPrivateKey, sign } = await import('node:crypto');
  for (const name of ['r', 't', 's', 'ts']) await quiet('keygen', '--out', join(dir, name));
  const repo = join(dir, 'repo');
  await quiet(
    'init',
    '--repo',
    repo,
    '--root-key',
    join(dir, 'r.pub'),
    '--targets-key',
    join(dir, 't.pub'),
    '--snapshot-key',
    join(dir, 's.pub'),
    '--timestamp-key',
    join(dir, 'ts.pub'),
  );
  const file = join(repo, 'staged', 'root.json');
  const payload = join(dir, 'root.payload');
  await quiet('sign', '--file', file, '--payload', payload);
  // The holder of the root key signs the payload elsewhere (an HSM, or openssl pkeyutl -rawin).
  const sig = sign(null, readFileSync(payload), createPrivateKey(readFileSync(join(dir, 'r.key'))));
  const sigFile = join(dir, 'root.sig');
  (await import('node:fs')).writeFileSync(sigFile, sig);
  const wrongKey = join(dir, 't.pub');
  await assert.rejects(quiet('sign', '--file', file, '--public', wrongKey, '--signature', sigFile), {
    message: /does not verify/,
  });
  await quiet('sign', '--file', file, '--public', join(dir, 'r.pub'), '--signature', sigFile);
  assert.match(
    await quiet('status', '--repo', repo),
    /root\s+not published; staged v1 \(root: 1\/1 signatures \(threshold met\)\)/,
  );
});
