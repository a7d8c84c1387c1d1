/**
 * Malformed-metadata fuzz: 2,000 mutations (FUZZ_RUNS to change) (bit flips, truncations, inserted and deleted bytes,
 * and JSON-aware edits: values replaced by arbitrary JSON, keys removed or added, types changed)
 * of the four metadata files a client fetches (a rotated root, timestamp, snapshot, targets),
 * each served to a device that trusts the first root. Every outcome must be a clean rejection,
 * a CascadeError with an OTA_ERR_ code, or, for the rare mutation that changes nothing signed
 * (whitespace, an extra unknown signature), exactly the honest trusted state. Nothing else may
 * escape: no TypeError, no hang, no partially trusted state.
 *
 * The transport is an in-memory tuf-js Fetcher (with the same length caps and 404 semantics as
 * the HTTP one) so that thousands of cases stay fast; the attack tests cover HTTP.
 */
import assert from 'node:assert/strict';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, it } from 'node:test';
import fc from 'fast-check';
import type { Fetcher } from 'tuf-js';
import { DownloadHTTPError, DownloadLengthMismatchError } from 'tuf-js/dist/error.js';
import { CascadeError } from '../cascade/errors.ts';
import { OtaClient, type TrustedRepository } from '../ota/client.ts';
import { centroidModel, makeRepo, newSigner, probeSet, signAndPublish } from './fixtures/ota-fixtures.ts';

const RUNS = Number(process.env.FUZZ_RUNS ?? 2000);

class MemoryFetcher implements Fetcher {
  files = new Map<string, Buffer>();
  async downloadBytes(url: string, maxLength: number): Promise<Buffer> {
    const b = this.files.get(new URL(url).pathname);
    if (!b) throw new DownloadHTTPError('Failed to download', 404);
    if (b.length > maxLength) throw new DownloadLengthMismatchError('Max length reached');
    return b;
  }
  async downloadFile<T>(url: string, maxLength: number, handler: (f: string) => Promise<T>): Promise<T> {
    const b = await this.downloadBytes(url, maxLength);
    const f = join(dir, 'dl.tmp');
    writeFileSync(f, b);
    return handler(f);
  }
}

let dir: string;
let honest: Map<string, Buffer>;
let rootV1: Buffer;
let expected: TrustedRepository;

before(async () => {
  // tmpfs where there is one: thousands of metadata folders are written and removed.
  dir = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'ota-fuzz-'));
  const { repo, keys, now } = await makeRepo(join(dir, 'repo'));
  const probe = await probeSet(20);
  const { cardPath } = await centroidModel(join(dir, 'models'), probe, { variant: 3 });
  await repo.addModel({ cardPath, hardwareClass: 'cpu-x64', rollout: 100, now });
  await signAndPublish(repo, keys, now);
  rootV1 = readFileSync(repo.metadataPath('1.root.json'));
  // A rotated root v2, so the root chain is fuzzed too.
  const next = [newSigner()];
  await repo.rotateRoot({ root: { keys: next, threshold: 1 } }, now);
  await repo.sign('root', [...keys.root, ...next]);
  await signAndPublish(repo, keys, now);
  honest = new Map();
  for (const f of readdirSync(join(repo.dir, 'published', 'metadata'))) {
    honest.set(`/metadata/${f}`, readFileSync(repo.metadataPath(f)));
  }
  const fetcher = new MemoryFetcher();
  fetcher.files = honest;
  expected = await run(fetcher);
  assert.equal(expected.rootVersion, 2);
  assert.equal(expected.models.length, 1);
});
after(() => rmSync(dir, { recursive: true, force: true }));

/** A device that trusts root v1 and has nothing else cached. */
async function run(fetcher: Fetcher): Promise<TrustedRepository> {
  const md = join(dir, 'device');
  mkdirSync(md, { recursive: true });
  for (const f of ['timestamp.json', 'snapshot.json', 'targets.json', '.trusted-root.json']) {
    rmSync(join(md, f), { force: true });
  }
  writeFileSync(join(md, 'root.json'), rootV1);
  return new OtaClient({ metadataDir: md, repoUrl: 'http://repo.invalid', fetcher }).refresh();
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** Paths to every value of a JSON document. */
function paths(v: Json, at: (string | number)[] = []): (string | number)[][] {
  const out: (string | number)[][] = [at];
  if (Array.isArray(v)) {
    for (const [i, x] of v.entries()) out.push(...paths(x, [...at, i]));
  } else if (v !== null && typeof v === 'object')
    for (const [k, x] of Object.entries(v)) out.push(...paths(x, [...at, k]));
  return out;
}

function edit(
  doc: Json,
  path: (string | number)[],
  fn: (parent: Json[] | Record<string, Json>, key: string | number) => void,
): void {
  let cur = doc as Json[] | Record<string, Json>;
  for (const k of path.slice(0, -1)) cur = (cur as Record<string, Json>)[k] as Json[] | Record<string, Json>;
  fn(cur, path[path.length - 1]);
}

const byteMutation = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), pos: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant('truncate' as const), pos: fc.nat() }),
  fc.record({
    kind: fc.constant('insert' as const),
    pos: fc.nat(),
    bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }),
  }),
  fc.record({ kind: fc.constant('delete' as const), pos: fc.nat(), len: fc.integer({ min: 1, max: 16 }) }),
);

const jsonMutation = fc.oneof(
  fc.record({ kind: fc.constant('replace' as const), pick: fc.nat(), value: fc.jsonValue({ maxDepth: 2 }) }),
  fc.record({ kind: fc.constant('remove' as const), pick: fc.nat() }),
  fc.record({
    kind: fc.constant('add' as const),
    pick: fc.nat(),
    key: fc.string({ maxLength: 6 }),
    value: fc.jsonValue({ maxDepth: 1 }),
  }),
  fc.record({ kind: fc.constant('retype' as const), pick: fc.nat() }),
);

function mutate(bytes: Buffer, m: Mutation): Buffer {
  switch (m.kind) {
    case 'flip': {
      const b = Buffer.from(bytes);
      b[m.pos % b.length] ^= 1 << m.bit;
      return b;
    }
    case 'truncate':
      return bytes.subarray(0, m.pos % bytes.length);
    case 'insert': {
      const p = m.pos % bytes.length;
      return Buffer.concat([bytes.subarray(0, p), m.bytes, bytes.subarray(p)]);
    }
    case 'delete': {
      const p = m.pos % bytes.length;
      return Buffer.concat([bytes.subarray(0, p), bytes.subarray(p + m.len)]);
    }
    default: {
      const doc = JSON.parse(bytes.toString('utf8')) as Json;
      const all = paths(doc).filter((p) => p.length > 0);
      const path = all[m.pick % all.length];
      edit(doc, path, (parent, key) => {
        const obj = parent as Record<string | number, Json>;
        if (m.kind === 'replace') obj[key] = m.value as Json;
        else if (m.kind === 'remove') {
          if (Array.isArray(parent)) parent.splice(Number(key), 1);
          else delete obj[key];
        } else if (m.kind === 'add') {
          const target = obj[key];
          if (target !== null && typeof target === 'object' && !Array.isArray(target))
            target[m.key] = m.value as Json;
          else obj[key] = { [m.key]: m.value as Json };
        } else {
          const v = obj[key];
          obj[key] =
            typeof v === 'number'
              ? String(v)
              : typeof v === 'string'
                ? v.length
                : Array.isArray(v)
                  ? {}
                  : [v];
        }
      });
      return Buffer.from(JSON.stringify(doc, null, 2));
    }
  }
}

type Mutation =
  | { kind: 'flip'; pos: number; bit: number }
  | { kind: 'truncate'; pos: number }
  | { kind: 'insert'; pos: number; bytes: Uint8Array }
  | { kind: 'delete'; pos: number; len: number }
  | { kind: 'replace'; pick: number; value: unknown }
  | { kind: 'remove'; pick: number }
  | { kind: 'add'; pick: number; key: string; value: unknown }
  | { kind: 'retype'; pick: number };

it(`${RUNS} mutated metadata files: always a typed rejection or the honest state`, async () => {
  // The files the honest refresh fetches: the root chain, timestamp, its snapshot, their targets.
  const ts = JSON.parse((honest.get('/metadata/timestamp.json') as Buffer).toString('utf8'));
  const snapV = ts.signed.meta['snapshot.json'].version as number;
  const snap = JSON.parse((honest.get(`/metadata/${snapV}.snapshot.json`) as Buffer).toString('utf8'));
  const files = [
    '/metadata/2.root.json',
    '/metadata/timestamp.json',
    `/metadata/${snapV}.snapshot.json`,
    `/metadata/${snap.signed.meta['targets.json'].version}.targets.json`,
  ];
  for (const f of files) assert.ok(honest.has(f), f);
  const codes = new Map<string, number>();
  let accepted = 0;
  await fc.assert(
    fc.asyncProperty(
      fc.constantFrom(...files),
      fc.oneof(byteMutation, jsonMutation) as fc.Arbitrary<Mutation>,
      async (file, m) => {
        const fetcher = new MemoryFetcher();
        fetcher.files = new Map(honest);
        const original = honest.get(file) as Buffer;
        const bytes = mutate(original, m);
        fc.pre(!bytes.equals(original));
        fetcher.files.set(file, bytes);
        try {
          const got = await run(fetcher);
          accepted += 1;
          assert.deepEqual(got, expected, `accepted a mutation of ${file} that changed the trusted state`);
        } catch (err) {
          assert.ok(err instanceof CascadeError, `untyped ${String(err)}`);
          assert.match(err.code, /^OTA_ERR_/);
          assert.doesNotMatch(err.message, /\n/);
          codes.set(err.code, (codes.get(err.code) ?? 0) + 1);
        }
      },
    ),
    { numRuns: RUNS, seed: 20261122 },
  );
  const rejected = [...codes.values()].reduce((a, b) => a + b, 0);
  assert.ok(rejected >= RUNS * 0.9, `rejected ${rejected}, accepted ${accepted}`);
  // The fuzz reaches several defences, not one parser.
  for (const code of ['OTA_ERR_METADATA_INVALID', 'OTA_ERR_SIGNATURE_INVALID', 'OTA_ERR_MISMATCH']) {
    assert.ok((codes.get(code) ?? 0) > 0, `${code}: ${JSON.stringify(Object.fromEntries(codes))}`);
  }
});
