/**
 * The hard-example log: frames the teacher was unsure of, or on which a lower tier disagreed with
 * it, appended as JSON lines (the input bytes base64-encoded in the record) for the next round of
 * distillation. Bounded on disk: the log is a ring of segment files
 * (`hard-examples-<seq>.jsonl`); when the newest reaches its share of `maxBytes` a new one starts
 * and the oldest are deleted until the total fits, the records lost counted. Disk errors (full,
 * read-only, gone) are counted and the record dropped: the service never fails a request or
 * crashes because of its log.
 */
import { appendFile, mkdir, readdir, readFile, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';

/** One hard example. */
export interface HardExample {
  time: string;
  reason: 'low-confidence' | 'disagreement';
  traceId: string;
  deviceId?: string;
  frameId?: number;
  modelVersion: string;
  teacherTop1: number;
  teacherConfidence: number;
  gatewayTop1?: number;
  deviceTop1?: number;
  /** Teacher probabilities (soft labels for distillation). */
  probs: number[];
  /** Input tensor: datatype, shape and base64 bytes (UINT8 pixels or FP32 little-endian). */
  input: { datatype: 'UINT8' | 'FP32'; shape: number[]; base64: string };
}

/** Counters the log reports (the service turns them into metrics). */
export interface HardExampleStats {
  written: number;
  /** Records deleted with the oldest segments to respect the byte cap. */
  rotatedOut: number;
  /** Records dropped because too many were waiting for the disk. */
  backlogDropped: number;
  /** Records lost to disk errors, by errno code. */
  errors: Record<string, number>;
  bytesOnDisk: number;
  segments: number;
}

/** Options of {@link HardExampleLog}. */
export interface HardExampleLogOptions {
  dir: string;
  maxBytes: number;
  /** Number of segments the cap is split into. Default 8. */
  segments?: number;
  /** Records waiting beyond this are dropped. Default 1024. */
  maxPending?: number;
  /** Called on each lost record (for logs). */
  onError?: (err: NodeJS.ErrnoException) => void;
}

const NAME = /^hard-examples-(\d{10})\.jsonl$/;

function segmentName(seq: number): string {
  return `hard-examples-${String(seq).padStart(10, '0')}.jsonl`;
}

interface Segment {
  seq: number;
  bytes: number;
  records: number;
}

export class HardExampleLog {
  readonly #dir: string;
  readonly #maxBytes: number;
  readonly #segmentBytes: number;
  readonly #maxPending: number;
  readonly #onError: ((err: NodeJS.ErrnoException) => void) | undefined;
  readonly #segments: Segment[] = [];
  #chain: Promise<void> = Promise.resolve();
  #pending = 0;
  #opened: Promise<void> | undefined;
  #closed = false;
  readonly #stats: HardExampleStats = {
    written: 0,
    rotatedOut: 0,
    backlogDropped: 0,
    errors: {},
    bytesOnDisk: 0,
    segments: 0,
  };

  constructor(opts: HardExampleLogOptions) {
    this.#dir = opts.dir;
    this.#maxBytes = opts.maxBytes;
    this.#segmentBytes = Math.max(1024, Math.floor(opts.maxBytes / (opts.segments ?? 8)));
    this.#maxPending = opts.maxPending ?? 1024;
    this.#onError = opts.onError;
  }

  /** Counters so far (a copy). */
  get stats(): HardExampleStats {
    return {
      ...this.#stats,
      errors: { ...this.#stats.errors },
      bytesOnDisk: this.#segments.reduce((s, g) => s + g.bytes, 0),
      segments: this.#segments.length,
    };
  }

  /** Creates the folder and picks up the segments already there (count of lines per file). */
  open(): Promise<void> {
    this.#opened ??= (async () => {
      try {
        await mkdir(this.#dir, { recursive: true });
        const names = (await readdir(this.#dir)).filter((n) => NAME.test(n)).sort();
        for (const n of names) {
          const path = join(this.#dir, n);
          const st = await stat(path);
          const text = st.isFile() ? await readFile(path, 'utf8') : '';
          let records = 0;
          for (let i = text.indexOf('\n'); i >= 0; i = text.indexOf('\n', i + 1)) records++;
          this.#segments.push({ seq: Number(NAME.exec(n)?.[1]), bytes: st.isFile() ? st.size : 0, records });
        }
      } catch (err) {
        this.#count(err as NodeJS.ErrnoException);
      }
    })();
    return this.#opened;
  }

  /**
   * Queues one record for the disk. Never throws; resolves when it was written or dropped.
   * @returns false when the record was dropped at once (backlog full or log closed).
   */
  append(example: HardExample): boolean {
    if (this.#closed) return false;
    if (this.#pending >= this.#maxPending) {
      this.#stats.backlogDropped++;
      return false;
    }
    this.#pending++;
    const line = `${JSON.stringify(example)}\n`;
    this.#chain = this.#chain.then(() => this.#write(line)).finally(() => this.#pending--);
    return true;
  }

  /** Resolves when every queued record has been written or dropped. */
  flush(): Promise<void> {
    return this.#chain;
  }

  /** Flushes and stops accepting records. Safe to call twice. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#chain;
  }

  #count(err: NodeJS.ErrnoException): void {
    const code = err.code ?? 'EUNKNOWN';
    this.#stats.errors[code] = (this.#stats.errors[code] ?? 0) + 1;
    this.#onError?.(err);
  }

  async #write(line: string): Promise<void> {
    await this.open();
    const bytes = Buffer.byteLength(line);
    try {
      let cur = this.#segments.at(-1);
      if (cur === undefined || (cur.bytes > 0 && cur.bytes + bytes > this.#segmentBytes)) {
        cur = { seq: (cur?.seq ?? 0) + 1, bytes: 0, records: 0 };
        this.#segments.push(cur);
      }
      await this.#evict(bytes);
      await appendFile(join(this.#dir, segmentName(cur.seq)), line);
      cur.bytes += bytes;
      cur.records++;
      this.#stats.written++;
    } catch (err) {
      this.#count(err as NodeJS.ErrnoException);
    }
  }

  /** Deletes the oldest segments (never the newest) until `incoming` more bytes fit the cap. */
  async #evict(incoming: number): Promise<void> {
    let total = this.#segments.reduce((s, g) => s + g.bytes, 0);
    while (total + incoming > this.#maxBytes && this.#segments.length > 1) {
      const old = this.#segments[0];
      try {
        await unlink(join(this.#dir, segmentName(old.seq)));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
      this.#segments.shift();
      this.#stats.rotatedOut += old.records;
      total -= old.bytes;
    }
  }
}
