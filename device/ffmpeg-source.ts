/**
 * Video through an ffmpeg child process: a file, an RTSP/RTMP/HTTP stream or a V4L2 camera
 * (/dev/videoN), decoded, scaled to the frame size and written as raw RGB24 to a pipe
 * (`-f rawvideo -pix_fmt rgb24 pipe:1`), cut into frames in pooled buffers. Streams and cameras
 * are live (a slow pipeline drops frames); files are read as fast as the pipeline takes frames
 * (the pipe is paused, so nothing is dropped), or at their own rate with `realtime`.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import type { Rect } from '../models/preprocess.ts';
import { type CameraFrame, type FramePool, type FrameSource, wallClock } from './frames.ts';

/** Options of {@link FfmpegSource}. */
export interface FfmpegOptions {
  /** File path, rtsp://…, http(s)://…, or a V4L2 device /dev/videoN. */
  input: string;
  pool: FramePool;
  width: number;
  height: number;
  /** Output frame rate (ffmpeg fps filter); 0 keeps the input's. */
  fps?: number;
  /** Read a file at its own frame rate (-re) and treat it as live. Default false. */
  realtime?: boolean;
  /** Stop after this many frames; 0 = the input's end. */
  frames?: number;
  /** Loop a file input. Default false. */
  loop?: boolean;
  /** A fixed ROI for every frame; default the whole frame. */
  roi?: Rect | null;
  /** ffmpeg executable; default `ffmpeg` on the PATH. */
  ffmpeg?: string;
}

/** True for inputs that run on their own clock. */
export function isLiveInput(input: string): boolean {
  return /^(rtsp|rtmp|http|https|udp|tcp|srt):\/\//.test(input) || input.startsWith('/dev/video');
}

/** The ffmpeg arguments for an input (exported for tests and logs). */
export function ffmpegArgs(o: FfmpegOptions): string[] {
  const args = ['-hide_banner', '-loglevel', 'error', '-nostdin'];
  if (o.input.startsWith('/dev/video')) args.push('-f', 'v4l2');
  if (o.input.startsWith('rtsp://')) args.push('-rtsp_transport', 'tcp');
  if (o.realtime && !isLiveInput(o.input)) args.push('-re');
  if (o.loop && !isLiveInput(o.input)) args.push('-stream_loop', '-1');
  args.push('-i', o.input);
  const filters = [`scale=${o.width}:${o.height}`];
  if ((o.fps ?? 0) > 0) filters.push(`fps=${o.fps}`);
  args.push('-vf', filters.join(','), '-an', '-f', 'rawvideo', '-pix_fmt', 'rgb24');
  if ((o.frames ?? 0) > 0) args.push('-frames:v', String(o.frames));
  args.push('pipe:1');
  return args;
}

export class FfmpegSource implements FrameSource {
  readonly name: string;
  readonly live: boolean;
  readonly #o: FfmpegOptions;
  readonly #frameBytes: number;
  #child: ChildProcess | null = null;
  #current: (CameraFrame & { roiBox: Rect }) | null = null;
  /** Bytes of the current frame received so far (also while discarding a lost frame). */
  #filled = 0;
  #discarding = false;
  /** Input not yet cut into frames because every buffer was in use (files only). */
  #backlog: Buffer | null = null;
  readonly #ready: CameraFrame[] = [];
  #waiter: (() => void) | null = null;
  #ended = false;
  #error: Error | null = null;
  #lost = 0;
  #nextId = 0;
  #closed = false;
  #stderr = '';

  /** @throws {RangeError} when the pool's buffers are smaller than a frame. */
  constructor(opts: FfmpegOptions) {
    this.#o = opts;
    this.#frameBytes = opts.width * opts.height * 3;
    if (opts.pool.bytes < this.#frameBytes) {
      throw new RangeError(
        `ffmpeg source: pool buffers of ${opts.pool.bytes} bytes hold no ${opts.width}x${opts.height} frame`,
      );
    }
    this.live = isLiveInput(opts.input) || opts.realtime === true;
    this.name = `ffmpeg(${opts.input}, ${opts.width}x${opts.height}${this.live ? ', live' : ''})`;
  }

  get lost(): number {
    return this.#lost;
  }

  #start(): void {
    const o = this.#o;
    const child = spawn(o.ffmpeg ?? 'ffmpeg', ffmpegArgs(o), { stdio: ['ignore', 'pipe', 'pipe'] });
    this.#child = child;
    child.stderr?.on('data', (d: Buffer) => {
      this.#stderr = (this.#stderr + d.toString('utf8')).slice(-2000);
    });
    child.stdout?.on('data', (chunk: Buffer) => this.#onData(chunk));
    child.on('error', (err: NodeJS.ErrnoException) => {
      const why =
        err.code === 'ENOENT'
          ? `${o.ffmpeg ?? 'ffmpeg'} not found on the PATH (install ffmpeg)`
          : err.message;
      this.#finish(
        new CascadeError(ErrorCodes.DEV_ERR_SOURCE, `ffmpeg source ${o.input}: ${why}`, { cause: err }),
      );
    });
    child.on('close', (code, signal) => {
      if (this.#closed || code === 0) this.#finish(null);
      else {
        const tail = this.#stderr.trim().split('\n').slice(-2).join(' | ');
        this.#finish(
          new CascadeError(
            ErrorCodes.DEV_ERR_SOURCE,
            `ffmpeg source ${o.input}: ffmpeg exited with ${signal ?? `code ${code}`}${tail ? `: ${tail}` : ''}`,
          ),
        );
      }
    });
  }

  #onData(chunk: Buffer): void {
    if (this.#backlog !== null) {
      // Only reached if data arrives after pause(); keep the order.
      this.#backlog = Buffer.concat([this.#backlog, chunk]);
      return;
    }
    this.#consume(chunk);
  }

  /**
   * Cuts `chunk` into frames. A live source counts a frame lost when no buffer is free; a file
   * keeps the rest of the chunk as backlog and pauses the pipe until a buffer is released.
   */
  #consume(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.#current === null && !this.#discarding) {
        const f = this.#o.pool.acquire();
        if (f === null && !this.live) {
          this.#backlog = chunk.subarray(at);
          this.#child?.stdout?.pause();
          return;
        }
        if (f === null) {
          this.#lost++;
          this.#discarding = true;
        } else {
          this.#current = f;
        }
        this.#filled = 0;
      }
      const n = Math.min(chunk.length - at, this.#frameBytes - this.#filled);
      if (this.#current !== null) this.#current.data.set(chunk.subarray(at, at + n), this.#filled);
      this.#filled += n;
      at += n;
      if (this.#filled === this.#frameBytes) this.#completeFrame();
    }
    this.#backlog = null;
  }

  #completeFrame(): void {
    const id = this.#nextId++;
    if (this.#discarding) {
      this.#discarding = false;
      return;
    }
    const f = this.#current as CameraFrame & { roiBox: Rect };
    this.#current = null;
    f.width = this.#o.width;
    f.height = this.#o.height;
    f.frameId = id;
    f.captureTime = wallClock();
    const roi = this.#o.roi;
    if (roi) {
      Object.assign(f.roiBox, roi);
      f.roi = f.roiBox;
    }
    this.#ready.push(f);
    this.#wake();
  }

  #finish(err: Error | null): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#error = err;
    this.#current?.release();
    this.#current = null;
    this.#wake();
  }

  #wake(): void {
    const w = this.#waiter;
    this.#waiter = null;
    w?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<CameraFrame> {
    if (this.#child === null && !this.#closed) this.#start();
    for (;;) {
      const f = this.#ready.shift();
      if (f !== undefined) {
        yield f;
        continue;
      }
      if (this.#closed) break;
      const backlog = this.#backlog;
      if (backlog !== null) {
        // Files: every buffer was taken; go on once the consumer hands one back.
        await this.#o.pool.waitAvailable();
        this.#backlog = null;
        this.#consume(backlog);
        if (this.#backlog === null) this.#child?.stdout?.resume();
        continue;
      }
      if (this.#ended) break;
      await new Promise<void>((resolve) => {
        this.#waiter = resolve;
      });
    }
    if (this.#error && !this.#closed) throw this.#error;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const f of this.#ready.splice(0)) f.release();
    const child = this.#child;
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
      child.kill('SIGTERM');
      await exited;
    }
    this.#finish(null);
  }
}
