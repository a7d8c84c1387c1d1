/**
 * ota/fetcher.ts against real HTTP servers on loopback that misbehave on purpose: a link that
 * drops mid-download (resumed with a Range request), a server that ignores ranges (clean restart
 * from byte 0), a stale partial file (detected by the hash, restarted), a download that fails
 * for good (partial kept, resumed by the next call), 5xx retried but 404 not, stalled responses
 * timed out, and lengths beyond the cap refused. Plus ota/serve.ts's range answers.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DownloadHTTPError, DownloadLengthMismatchError } from 'tuf-js/dist/error.js';
import { HttpFetcher, NetworkError } from '../ota/fetcher.ts';
import { serveStatic } from '../ota/serve.ts';

const BODY = randomBytes(300 * 1024);
const SHA = createHash('sha256').update(BODY).digest('hex');
let dir: string;
const servers: Server[] = [];

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'ota-fetch-'));
});
after(async () => {
  for (const s of servers) {
    s.closeAllConnections();
    await new Promise((ok) => s.close(ok));
  }
  rmSync(dir, { recursive: true, force: true });
});

type Handler = (req: IncomingMessage, res: ServerResponse, n: number) => void;

/** A server whose n-th request (from 1) is answered by `handler`; records Range headers. */
async function server(handler: Handler): Promise<{ url: string; ranges: (string | undefined)[] }> {
  const ranges: (string | undefined)[] = [];
  const s = createServer((req, res) => {
    ranges.push(req.headers.range);
    handler(req, res, ranges.length);
  });
  servers.push(s);
  await new Promise<void>((ok) => s.listen(0, '127.0.0.1', ok));
  return { url: `http://127.0.0.1:${(s.address() as AddressInfo).port}/model.onnx`, ranges };
}

/** Serves BODY honouring `bytes=N-` ranges. */
function full(req: IncomingMessage, res: ServerResponse): void {
  const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
  if (m) {
    const start = Number(m[1]);
    res.writeHead(206, {
      'content-range': `bytes ${start}-${BODY.length - 1}/${BODY.length}`,
      'content-length': BODY.length - start,
    });
    res.end(BODY.subarray(start));
  } else {
    res.writeHead(200, { 'content-length': BODY.length });
    res.end(BODY);
  }
}

/** Sends the first `bytes` bytes of a full answer, then cuts the connection. */
function drop(res: ServerResponse, bytes: number): void {
  res.writeHead(200, { 'content-length': BODY.length });
  res.write(BODY.subarray(0, bytes), () => setTimeout(() => res.socket?.destroy(), 20));
}

/** What tuf-js's handler does: check length and hash of the finished file. */
async function verify(file: string): Promise<Buffer> {
  const b = readFileSync(file);
  if (b.length !== BODY.length || createHash('sha256').update(b).digest('hex') !== SHA)
    throw new Error('Expected hash');
  return b;
}

function fetcher(name: string, opts: { attempts?: number; idleTimeoutMs?: number } = {}): HttpFetcher {
  return new HttpFetcher({ partialDir: join(dir, name), backoffMs: 1, ...opts });
}

describe('resumable downloads', () => {
  it('resumes after a dropped link with a Range request from the last byte received', async () => {
    const s = await server((req, res, n) => (n === 1 ? drop(res, 100 * 1024) : full(req, res)));
    const got = await fetcher('resume').downloadFile(s.url, BODY.length, verify);
    assert.ok(got.equals(BODY));
    assert.equal(s.ranges.length, 2);
    assert.equal(s.ranges[0], undefined);
    const resumedAt = Number(/^bytes=(\d+)-$/.exec(s.ranges[1] ?? '')?.[1]);
    assert.ok(resumedAt > 0 && resumedAt <= 100 * 1024, String(s.ranges[1]));
    assert.deepEqual(readdirSync(join(dir, 'resume')), [], 'partial file removed');
  });

  it('restarts cleanly from byte 0 when the server ignores the range', async () => {
    const s = await server((_req, res, n) => {
      if (n === 1) drop(res, 50 * 1024);
      else {
        res.writeHead(200, { 'content-length': BODY.length });
        res.end(BODY);
      }
    });
    const got = await fetcher('norange').downloadFile(s.url, BODY.length, verify);
    assert.ok(got.equals(BODY));
    assert.match(s.ranges[1] ?? '', /^bytes=\d+-$/);
  });

  it('a stale partial file fails the hash and is downloaded again from byte 0', async () => {
    const s = await server((req, res) => full(req, res));
    const f = fetcher('stale');
    // Partial file of the same URL with wrong bytes (e.g. written by a dying flash sector).
    const url = s.url;
    const name = `${createHash('sha256').update(url).digest('hex').slice(0, 32)}.part`;
    (await import('node:fs')).mkdirSync(join(dir, 'stale'), { recursive: true });
    writeFileSync(join(dir, 'stale', name), randomBytes(10_000));
    const got = await f.downloadFile(url, BODY.length, verify);
    assert.ok(got.equals(BODY));
    assert.deepEqual(s.ranges, ['bytes=10000-', undefined]);
  });

  it('keeps what arrived when every attempt fails, and the next download resumes from it', async () => {
    let failing = true;
    const s = await server((req, res) => (failing ? drop(res, 80 * 1024) : full(req, res)));
    const f = fetcher('keep', { attempts: 1 });
    await assert.rejects(f.downloadFile(s.url, BODY.length, verify), NetworkError);
    const parts = readdirSync(join(dir, 'keep'));
    assert.equal(parts.length, 1);
    const kept = readFileSync(join(dir, 'keep', parts[0])).length;
    assert.ok(kept > 0);
    failing = false;
    const got = await f.downloadFile(s.url, BODY.length, verify);
    assert.ok(got.equals(BODY));
    assert.equal(s.ranges.at(-1), `bytes=${kept}-`);
  });

  it('times out a stalled response and retries', async () => {
    const s = await server((req, res, n) => {
      if (n === 1) {
        res.writeHead(200, { 'content-length': BODY.length });
        res.write(BODY.subarray(0, 1000)); // then nothing, connection left open
      } else full(req, res);
    });
    const got = await fetcher('stall', { idleTimeoutMs: 300 }).downloadFile(s.url, BODY.length, verify);
    assert.ok(got.equals(BODY));
    assert.equal(s.ranges.length, 2);
  });
});

describe('errors and caps', () => {
  it('retries 5xx, but answers 404 at once with tuf-js’s DownloadHTTPError', async () => {
    const s = await server((req, res, n) => (n === 1 ? res.writeHead(503).end() : full(req, res)));
    assert.equal((await fetcher('5xx').downloadBytes(s.url, BODY.length)).length, BODY.length);
    const nf = await server((_req, res) => res.writeHead(404).end());
    await assert.rejects(fetcher('404').downloadBytes(nf.url, 100), (e: unknown) => {
      assert.ok(e instanceof DownloadHTTPError);
      assert.equal(e.statusCode, 404);
      return true;
    });
    assert.equal(nf.ranges.length, 1, 'no retry on 404');
  });

  it('refuses more bytes than allowed, announced or not, and removes the partial file', async () => {
    const s = await server((req, res) => full(req, res));
    await assert.rejects(fetcher('cap').downloadBytes(s.url, 1000), DownloadLengthMismatchError);
    const chunked = await server((_req, res) => {
      res.writeHead(200); // no content-length: the cap is enforced while reading
      res.end(BODY);
    });
    await assert.rejects(
      fetcher('cap2').downloadFile(chunked.url, 1000, verify),
      DownloadLengthMismatchError,
    );
    assert.deepEqual(readdirSync(join(dir, 'cap2')), []);
  });
});

describe('static server', () => {
  it('answers ranges, refuses paths outside its folder and unknown methods', async () => {
    const root = join(dir, 'www');
    (await import('node:fs')).mkdirSync(join(root, 'metadata'), { recursive: true });
    writeFileSync(join(root, 'metadata', 'timestamp.json'), '0123456789');
    writeFileSync(join(dir, 'secret'), 'no');
    const srv = await serveStatic(root);
    try {
      const r = await fetch(`${srv.url}/metadata/timestamp.json`, { headers: { range: 'bytes=4-' } });
      assert.equal(r.status, 206);
      assert.equal(r.headers.get('content-range'), 'bytes 4-9/10');
      assert.equal(r.headers.get('cache-control'), 'no-cache');
      assert.equal(await r.text(), '456789');
      assert.equal(
        (await fetch(`${srv.url}/metadata/timestamp.json`, { headers: { range: 'bytes=99-' } })).status,
        416,
      );
      assert.equal((await fetch(`${srv.url}/..%2fsecret`)).status, 404);
      assert.equal((await fetch(`${srv.url}/metadata/timestamp.json`, { method: 'POST' })).status, 405);
      assert.equal(existsSync(join(root, 'secret')), false);
    } finally {
      await srv.close();
      await srv.close();
    }
  });
});
