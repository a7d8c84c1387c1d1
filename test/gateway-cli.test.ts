import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CascadeError } from '../cascade/errors.ts';
import { main as cloudMain } from '../cloud/cli.ts';
import { main as gatewayMain } from '../gateway/cli.ts';
import { loadGatewayConfig } from '../gateway/config.ts';

async function stdoutOf(fn: () => Promise<void>): Promise<string> {
  const write = process.stdout.write;
  let out = '';
  process.stdout.write = ((chunk: string | Uint8Array) => {
    out += String(chunk);
    return true;
  }) as typeof process.stdout.write;
  try {
    await fn();
  } finally {
    process.stdout.write = write;
  }
  return out;
}

async function rejectsWith(fn: () => Promise<unknown>, code: string, message: RegExp): Promise<void> {
  await assert.rejects(fn, (err: unknown) => {
    assert.ok(err instanceof CascadeError, String(err));
    assert.equal(err.code, code);
    assert.match(err.message, message);
    return true;
  });
}

describe('cascade gateway / cascade cloud arguments and config', () => {
  it('prints help', async () => {
    assert.match(await stdoutOf(() => gatewayMain(['--help'])), /--shared-group NAME[\s\S]*--no-shared/);
    assert.match(await stdoutOf(() => cloudMain(['--help'])), /--hard-examples DIR/);
  });

  it('reports bad flags as argument errors, naming what was expected', async () => {
    await rejectsWith(
      () => gatewayMain(['--max-batch', '0']),
      'CLI_ERR_ARGS',
      /--max-batch: expected an integer >= 1, received "0"/,
    );
    await rejectsWith(
      () => gatewayMain(['--protocol', '3']),
      'CLI_ERR_ARGS',
      /--protocol: expected one of 4, 5/,
    );
    await rejectsWith(() => gatewayMain(['--bogus']), 'CLI_ERR_ARGS', /bogus/);
    await rejectsWith(() => cloudMain(['--http-port', '70000']), 'CLI_ERR_ARGS', /--http-port/);
  });

  it('lists every config error at once, with its source', async () => {
    await rejectsWith(
      () => gatewayMain(['--broker', 'http://not-mqtt', '--config', '/nonexistent/gateway.json']),
      'CFG_ERR_INVALID',
      /gateway\.json cannot be read/,
    );
    assert.throws(
      () =>
        loadGatewayConfig({
          env: {
            CASCADE_GATEWAY_BROKER: 'http://x',
            CASCADE_GATEWAY_MAX_DELAY_MS: '-1',
            CASCADE_GATEWAY_CLOUD_URL: 'ftp://c',
          },
        }),
      (err: unknown) =>
        err instanceof CascadeError &&
        /\/broker: .*from env CASCADE_GATEWAY_BROKER/.test(err.message) &&
        /\/maxDelayMs: .*from env CASCADE_GATEWAY_MAX_DELAY_MS/.test(err.message) &&
        /\/cloud\/url: .*from env CASCADE_GATEWAY_CLOUD_URL/.test(err.message),
    );
    const c = loadGatewayConfig({
      env: { CASCADE_GATEWAY_CLOUD_TOKEN: 'sekrit', CASCADE_GATEWAY_SHARED: 'false' },
    });
    assert.equal(c.cloud.token, 'sekrit');
    assert.equal(c.shared, false);
    assert.equal(c.maxBatch, 32);
    assert.ok(Object.isFrozen(c.cloud));
  });
});
