import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { Type } from '@sinclair/typebox';
import { CascadeError } from '../cascade/errors.ts';
import { envName, loadConfig } from '../cascade/service/config.ts';

const Schema = Type.Object(
  {
    httpPort: Type.Integer({ minimum: 0, maximum: 65535, default: 8080 }),
    broker: Type.Optional(Type.String()),
    shared: Type.Boolean({ default: true }),
    tags: Type.Array(Type.String(), { default: [] }),
    cloud: Type.Object(
      { url: Type.Optional(Type.String()), timeoutMs: Type.Number({ minimum: 1, default: 30 }) },
      { additionalProperties: false, default: {} },
    ),
  },
  { additionalProperties: false },
);

function fails(fn: () => unknown): CascadeError {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof CascadeError);
    assert.equal(err.code, 'CFG_ERR_INVALID');
    return err;
  }
  assert.fail('expected CFG_ERR_INVALID');
}

describe('loadConfig', () => {
  it('applies defaults and deep-freezes the result', () => {
    const c = loadConfig(Schema);
    assert.deepEqual(c, { httpPort: 8080, shared: true, tags: [], cloud: { timeoutMs: 30 } });
    assert.ok(Object.isFrozen(c) && Object.isFrozen(c.cloud) && Object.isFrozen(c.tags));
  });

  it('layers file < env < flags and converts environment strings by schema type', () => {
    const dir = mkdtempSync(join(tmpdir(), 'cfg-'));
    try {
      const file = join(dir, 'c.json');
      writeFileSync(
        file,
        JSON.stringify({ httpPort: 1, broker: 'mqtt://file', cloud: { url: 'http://file' } }),
      );
      const c = loadConfig(Schema, {
        file,
        envPrefix: 'CASCADE_GATEWAY_',
        env: {
          CASCADE_GATEWAY_HTTP_PORT: '2',
          CASCADE_GATEWAY_SHARED: 'false',
          CASCADE_GATEWAY_TAGS: '["a","b"]',
          CASCADE_GATEWAY_CLOUD_TIMEOUT_MS: '12.5',
          OTHER: 'ignored',
        },
        flags: { httpPort: 3, broker: undefined },
      });
      assert.equal(c.httpPort, 3, 'flag beats env and file');
      assert.equal(c.broker, 'mqtt://file', 'an undefined flag leaves the file value');
      assert.equal(c.shared, false);
      assert.deepEqual(c.tags, ['a', 'b']);
      assert.deepEqual(c.cloud, { url: 'http://file', timeoutMs: 12.5 }, 'nested objects merge');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('lists every error at once, naming where each bad value came from', () => {
    const err = fails(() =>
      loadConfig(
        Schema,
        {
          envPrefix: 'CASCADE_GATEWAY_',
          env: {
            CASCADE_GATEWAY_HTTP_PORT: 'abc',
            CASCADE_GATEWAY_TYPO: '1',
            CASCADE_GATEWAY_CLOUD_TIMEOUT_MS: '0',
          },
          flags: { bogus: true, cloud: { url: 5 } },
        },
        'gateway config',
      ),
    );
    const m = err.message;
    assert.match(m, /^gateway config: /);
    assert.match(m, /env CASCADE_GATEWAY_TYPO: unknown setting/);
    assert.match(m, /\/httpPort: .*"abc" \(from env CASCADE_GATEWAY_HTTP_PORT\)/);
    assert.match(m, /\/cloud\/timeoutMs: .*0 \(from env CASCADE_GATEWAY_CLOUD_TIMEOUT_MS\)/);
    assert.match(m, /\/bogus: .*\(from flag\)/);
    assert.match(m, /\/cloud\/url: .*5 \(from flag\)/);
    assert.ok(!m.includes('\n'), 'one line');
  });

  it('reports an unreadable or non-JSON file by name', () => {
    const dir = mkdtempSync(join(tmpdir(), 'cfg-'));
    try {
      const bad = join(dir, 'bad.json');
      writeFileSync(bad, '{ nope');
      assert.match(fails(() => loadConfig(Schema, { file: bad })).message, /bad\.json not valid JSON/);
      assert.match(
        fails(() => loadConfig(Schema, { file: join(dir, 'missing.json') })).message,
        /cannot be read/,
      );
      const arr = join(dir, 'arr.json');
      writeFileSync(arr, '[1]');
      assert.match(fails(() => loadConfig(Schema, { file: arr })).message, /expected a JSON object/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('derives environment names from key paths', () => {
    assert.equal(envName(['cloud', 'timeoutMs'], 'P_'), 'P_CLOUD_TIMEOUT_MS');
    assert.equal(envName(['maxBatch'], 'P_'), 'P_MAX_BATCH');
  });
});
