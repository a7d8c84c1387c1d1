/**
 * A static file server for a published repository (`cascade ota serve`, tests and demos): GET
 * and HEAD, single byte ranges (so devices can resume), no directory listings, nothing outside
 * the served folder. Any static HTTP server (nginx, a CDN, the gateway's fastify) serves the same
 * files equally well: a TUF repository needs no server-side logic.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { resolve, sep } from 'node:path';

/** A running server; `close()` is idempotent and drops open connections. */
export interface StaticServer {
  server: Server;
  /** Base URL, e.g. http://127.0.0.1:41234 (no trailing slash). */
  url: string;
  close(): Promise<void>;
}

function parseRange(
  header: string | undefined,
  size: number,
): { start: number; end: number } | 'bad' | undefined {
  if (header === undefined) return undefined;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return 'bad';
  let start: number;
  let end: number;
  if (m[1] === '') {
    start = Math.max(0, size - Number(m[2]));
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === '' ? size - 1 : Math.min(size - 1, Number(m[2]));
  }
  return start > end || start >= size ? 'bad' : { start, end };
}

async function handle(root: string, req: IncomingMessage, res: ServerResponse): Promise<void> {
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { allow: 'GET, HEAD' }).end();
    return;
  }
  let path: string;
  try {
    path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
  } catch {
    res.writeHead(400).end();
    return;
  }
  const file = resolve(root, `.${path}`);
  if (file !== root && !file.startsWith(root + sep)) {
    res.writeHead(404).end();
    return;
  }
  const st = await stat(file).catch(() => undefined);
  if (!st?.isFile()) {
    res.writeHead(404).end();
    return;
  }
  const headers: Record<string, string | number> = {
    'content-type': file.endsWith('.json') ? 'application/json' : 'application/octet-stream',
    'accept-ranges': 'bytes',
    // timestamp.json (and the unversioned root.json) change in place; everything else is immutable.
    'cache-control': /(^|\/)(timestamp|root)\.json$/.test(path)
      ? 'no-cache'
      : 'public, max-age=31536000, immutable',
  };
  const range = parseRange(req.headers.range, st.size);
  if (range === 'bad') {
    res.writeHead(416, { 'content-range': `bytes */${st.size}` }).end();
    return;
  }
  const { start, end } = range ?? { start: 0, end: st.size - 1 };
  if (range) headers['content-range'] = `bytes ${start}-${end}/${st.size}`;
  headers['content-length'] = Math.max(0, end - start + 1);
  res.writeHead(range ? 206 : 200, headers);
  if (req.method === 'HEAD' || st.size === 0) {
    res.end();
    return;
  }
  createReadStream(file, { start, end }).pipe(res);
}

/**
 * Serves `dir` over HTTP.
 * @param opts.port default 0 (any free port); opts.host default 127.0.0.1.
 */
export async function serveStatic(
  dir: string,
  opts: { port?: number; host?: string } = {},
): Promise<StaticServer> {
  const root = resolve(dir);
  const sockets = new Set<Socket>();
  const server = createServer((req, res) => {
    handle(root, req, res).catch(() => {
      if (!res.headersSent) res.writeHead(500);
      res.end();
    });
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  const host = opts.host ?? '127.0.0.1';
  await new Promise<void>((ok, fail) => {
    server.once('error', fail);
    server.listen(opts.port ?? 0, host, () => ok());
  });
  const { port } = server.address() as AddressInfo;
  let closing: Promise<void> | undefined;
  return {
    server,
    url: `http://${host.includes(':') ? `[${host}]` : host}:${port}`,
    close: () => {
      closing ??= new Promise<void>((ok) => {
        server.close(() => ok());
        for (const s of sockets) s.destroy();
      });
      return closing;
    },
  };
}
