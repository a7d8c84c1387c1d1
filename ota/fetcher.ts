/**
 * The HTTP transport under tuf-js: every download is capped at the length the caller allows
 * (the signed length of a target, a fixed cap for metadata) so an endless response is cut off
 * at cap + 1 bytes, stalled connections time out, network errors and 5xx are retried with
 * capped, jittered backoff, and target downloads resume with an HTTP Range request after a
 * dropped link, or restart cleanly from byte 0 when the server ignores the range, sends another
 * slice, or the resumed file fails its hash.
 */
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, open, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Fetcher } from 'tuf-js';
// Deep import: tuf-js's root-rotation loop stops on *its* DownloadHTTPError with status 404, and
// the class is not re-exported from the package index.
import { DownloadHTTPError, DownloadLengthMismatchError } from 'tuf-js/dist/error.js';

/** Options of {@link HttpFetcher}. */
export interface HttpFetcherOptions {
  /**
   * Folder for partial target downloads, kept across attempts and restarts so a download resumes
   * where the link dropped; default: a private temporary folder per fetcher.
   */
  partialDir?: string;
  /** Attempts per file on network errors, timeouts and 5xx answers; default 4. */
  attempts?: number;
  /** An attempt fails when no byte arrives for this long; default 15000 ms. */
  idleTimeoutMs?: number;
  /** First retry delay; doubles per attempt up to 5 s, with full jitter; default 200 ms. */
  backoffMs?: number;
  /** User-Agent header; default 'edge-cascade-ota'. */
  userAgent?: string;
  /** Called with the size of every received chunk (metrics). */
  onBytes?: (n: number) => void;
  /** Random source for jitter; default Math.random. */
  random?: () => number;
}

/** A network failure, stall or 5xx answer that outlasted every attempt (the partial file is kept). */
export class NetworkError extends Error {}

/** A tuf-js {@link Fetcher} over node's fetch with caps, retries and resumable target downloads. */
export class HttpFetcher implements Fetcher {
  readonly #opts: Required<Omit<HttpFetcherOptions, 'partialDir' | 'onBytes'>> &
    Pick<HttpFetcherOptions, 'partialDir' | 'onBytes'>;
  #partialDir: Promise<string> | undefined;

  constructor(opts: HttpFetcherOptions = {}) {
    this.#opts = {
      attempts: opts.attempts ?? 4,
      idleTimeoutMs: opts.idleTimeoutMs ?? 15_000,
      backoffMs: opts.backoffMs ?? 200,
      userAgent: opts.userAgent ?? 'edge-cascade-ota',
      random: opts.random ?? Math.random,
      partialDir: opts.partialDir,
      onBytes: opts.onBytes,
    };
  }

  async #dir(): Promise<string> {
    this.#partialDir ??= (async () => {
      const dir = this.#opts.partialDir ?? (await mkdtemp(join(tmpdir(), 'cascade-ota-')));
      await mkdir(dir, { recursive: true, mode: 0o700 });
      return dir;
    })();
    return this.#partialDir;
  }

  async #sleep(attempt: number): Promise<void> {
    const cap = Math.min(5000, this.#opts.backoffMs * 2 ** (attempt - 1));
    await new Promise((r) => setTimeout(r, this.#opts.random() * cap));
  }

  /**
   * Runs one GET and feeds the body to `sink` chunk by chunk, aborting when no byte arrives for
   * the idle timeout. Network failures become {@link NetworkError}; HTTP errors become
   * tuf-js's DownloadHTTPError (5xx transient).
   */
  async #get(
    url: string,
    headers: Record<string, string>,
    sink: (res: Response) => { onChunk(chunk: Uint8Array): Promise<void> | void },
  ): Promise<Response> {
    const ac = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const arm = (): void => {
      clearTimeout(timer);
      timer = setTimeout(
        () => ac.abort(new NetworkError(`no data from ${url} for ${this.#opts.idleTimeoutMs} ms`)),
        this.#opts.idleTimeoutMs,
      );
      timer.unref?.();
    };
    arm();
    try {
      let res: Response;
      try {
        res = await fetch(url, {
          headers: { 'user-agent': this.#opts.userAgent, ...headers },
          signal: ac.signal,
        });
      } catch (err) {
        throw new NetworkError(`GET ${url}: ${(err as Error).message}`, { cause: err });
      }
      if (res.status >= 500) {
        await res.body?.cancel().catch(() => {});
        throw new NetworkError(`GET ${url}: HTTP ${res.status}`, {
          cause: new DownloadHTTPError('Failed to download', res.status),
        });
      }
      if (!res.ok && res.status !== 416) {
        await res.body?.cancel().catch(() => {});
        throw new DownloadHTTPError(`GET ${url}: HTTP ${res.status}`, res.status);
      }
      let onChunk: (chunk: Uint8Array) => Promise<void> | void;
      try {
        ({ onChunk } = sink(res));
      } catch (err) {
        await res.body?.cancel().catch(() => {});
        throw err;
      }
      if (res.body) {
        const reader = res.body.getReader();
        try {
          for (;;) {
            let step: Awaited<ReturnType<typeof reader.read>>;
            try {
              step = await reader.read();
            } catch (err) {
              throw new NetworkError(`GET ${url}: connection lost (${(err as Error).message})`, {
                cause: err,
              });
            }
            if (step.done) break;
            arm();
            this.#opts.onBytes?.(step.value.length);
            await onChunk(step.value);
          }
        } finally {
          await reader.cancel().catch(() => {});
        }
      }
      return res;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Downloads a small file (metadata) into memory, at most `maxLength` bytes.
   * @throws DownloadLengthMismatchError past `maxLength`; DownloadHTTPError for HTTP errors (a
   *   404 ends tuf-js's search for newer roots); the last network error after all attempts.
   */
  async downloadBytes(url: string, maxLength: number): Promise<Buffer> {
    for (let attempt = 1; ; attempt++) {
      const chunks: Uint8Array[] = [];
      let total = 0;
      try {
        await this.#get(url, {}, (res) => {
          tooLong(res, 0, maxLength);
          return {
            onChunk: (c) => {
              total += c.length;
              if (total > maxLength)
                throw new DownloadLengthMismatchError(`${url}: more than ${maxLength} bytes`);
              chunks.push(c);
            },
          };
        });
        return Buffer.concat(chunks);
      } catch (err) {
        if (!(err instanceof NetworkError) || attempt >= this.#opts.attempts) throw unwrap(err);
        await this.#sleep(attempt);
      }
    }
  }

  /**
   * Downloads a file of at most `maxLength` bytes to a partial file, resuming after dropped
   * links, then calls `handler` with its path (tuf-js verifies length and hashes there). When a
   * resumed file fails the handler, it is deleted and downloaded once more from byte 0. The
   * partial file is removed afterwards either way.
   */
  async downloadFile<T>(url: string, maxLength: number, handler: (file: string) => Promise<T>): Promise<T> {
    const part = join(
      await this.#dir(),
      `${createHash('sha256').update(url).digest('hex').slice(0, 32)}.part`,
    );
    try {
      const resumed = await this.#fetchToFile(url, part, maxLength);
      let result: T;
      try {
        result = await handler(part);
      } catch (err) {
        if (!resumed) throw err;
        // A stale or corrupt prefix from an earlier attempt: start over once from byte 0.
        await rm(part, { force: true });
        await this.#fetchToFile(url, part, maxLength);
        result = await handler(part);
      }
      await rm(part, { force: true });
      return result;
    } catch (err) {
      // Keep what arrived only when the link failed: the next attempt resumes from there.
      if (!(err instanceof NetworkError)) await rm(part, { force: true });
      throw err;
    }
  }

  /** Fills `part` with the whole resource; returns whether any bytes came from a resumed range. */
  async #fetchToFile(url: string, part: string, maxLength: number): Promise<boolean> {
    let resumed = false;
    for (let attempt = 1; ; attempt++) {
      let have = await sizeOf(part);
      if (have > maxLength) {
        await rm(part, { force: true });
        have = 0;
      }
      const fh = await open(part, have > 0 ? 'r+' : 'w', 0o600);
      let offset = have;
      try {
        const res = await this.#get(url, have > 0 ? { range: `bytes=${have}-` } : {}, (r) => {
          if (r.status === 206) {
            const start = Number(/^bytes (\d+)-/.exec(r.headers.get('content-range') ?? '')?.[1] ?? -1);
            if (start !== have) offset = -1;
            else resumed = resumed || have > 0;
          } else if (r.status === 200) {
            offset = 0; // the server ignored the range: restart cleanly
          }
          if (offset >= 0) tooLong(r, offset, maxLength);
          return {
            onChunk: async (c) => {
              if (offset < 0) throw new NetworkError(`${url}: unexpected Content-Range`);
              if (offset + c.length > maxLength) {
                throw new DownloadLengthMismatchError(`${url}: more than ${maxLength} bytes`);
              }
              await fh.write(c, 0, c.length, offset);
              offset += c.length;
            },
          };
        });
        if (res.status === 200) await fh.truncate(offset);
        if (res.status === 416 && have === 0) throw new DownloadHTTPError(`GET ${url}: HTTP 416`, 416);
        return resumed;
      } catch (err) {
        if (err instanceof DownloadLengthMismatchError || offset < 0) await rm(part, { force: true });
        if (!(err instanceof NetworkError) || attempt >= this.#opts.attempts) throw unwrap(err);
        await this.#sleep(attempt);
      } finally {
        await fh.close();
      }
    }
  }
}

function tooLong(res: Response, offset: number, maxLength: number): void {
  const declared = Number(res.headers.get('content-length') ?? Number.NaN);
  if (Number.isFinite(declared) && offset + declared > maxLength) {
    throw new DownloadLengthMismatchError(
      `${res.url}: ${offset + declared} bytes announced, at most ${maxLength} allowed`,
    );
  }
}

async function sizeOf(path: string): Promise<number> {
  try {
    return (await stat(path)).size;
  } catch {
    return 0;
  }
}

/** The error to surface after retries: the HTTP error inside a transient 5xx, else itself. */
function unwrap(err: unknown): unknown {
  if (err instanceof NetworkError && err.cause instanceof DownloadHTTPError) return err.cause;
  return err;
}
