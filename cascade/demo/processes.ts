/**
 * Child processes of `cascade demo`: each tier runs as its own `cascade <command>` process, as in
 * a deployment. Lines of stdout are handed to a callback (the services log JSON lines, the
 * cameras print their report); the last lines of stderr are kept for error messages.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { CascadeError, ErrorCodes } from '../errors.ts';

const BIN = fileURLToPath(new URL('../bin.mjs', import.meta.url));

/** A running `cascade <command>` process. */
export class CascadeProcess {
  readonly name: string;
  readonly child: ChildProcess;
  /** Resolves with the exit code (or the signal's name) when the process has exited. */
  readonly exited: Promise<number | string>;
  #stderr: string[] = [];
  #stdoutRest = '';
  #lineListeners: ((line: string) => void)[] = [];

  /**
   * Starts `cascade <args>` with the same Node.js.
   * @param env extra environment variables.
   */
  constructor(name: string, args: string[], env: Record<string, string> = {}) {
    this.name = name;
    this.child = spawn(process.execPath, [BIN, ...args], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    });
    this.child.stdout?.setEncoding('utf8');
    this.child.stdout?.on('data', (d: string) => {
      const lines = (this.#stdoutRest + d).split('\n');
      this.#stdoutRest = lines.pop() ?? '';
      for (const l of lines) for (const f of this.#lineListeners) f(l);
    });
    this.child.stderr?.setEncoding('utf8');
    this.child.stderr?.on('data', (d: string) => {
      this.#stderr.push(...d.split('\n').filter((l) => l.trim() !== ''));
      if (this.#stderr.length > 20) this.#stderr.splice(0, this.#stderr.length - 20);
    });
    this.exited = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        if (this.#stdoutRest !== '') for (const f of this.#lineListeners) f(this.#stdoutRest);
        this.#stdoutRest = '';
        resolve(code ?? signal ?? 'unknown');
      });
      this.child.once('error', () => resolve('spawn error'));
    });
  }

  /** Writes one line to the process's stdin (ignored once it has exited). */
  send(line: string): void {
    const stdin = this.child.stdin;
    if (stdin && !stdin.destroyed) {
      stdin.on('error', () => {});
      stdin.write(`${line}\n`);
    }
  }

  /** Calls `f` with every complete stdout line. */
  onLine(f: (line: string) => void): void {
    this.#lineListeners.push(f);
  }

  /** The last lines the process wrote to stderr (its error, usually). */
  stderrTail(n = 3): string {
    return this.#stderr.slice(-n).join(' | ');
  }

  /**
   * Resolves with the first JSON stdout line whose `msg` is `msg` (a service's ready line).
   * @throws {CascadeError} DEMO_ERR_PROCESS when the process exits first or after `timeoutMs`.
   */
  waitForLog(msg: string, timeoutMs: number): Promise<Record<string, unknown>> {
    return this.waitForLine((json) => json.msg === msg, timeoutMs);
  }

  /**
   * Resolves with the first JSON stdout line `match` accepts.
   * @throws {CascadeError} DEMO_ERR_PROCESS when the process exits first or after `timeoutMs`.
   */
  waitForLine(
    match: (json: Record<string, unknown>) => boolean,
    timeoutMs: number,
  ): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      let done = false;
      const finish = (err: Error | null, value?: Record<string, unknown>) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (err) reject(err);
        else resolve(value as Record<string, unknown>);
      };
      const timer = setTimeout(
        () => finish(this.#failure(`not ready after ${Math.round(timeoutMs / 1000)} s`)),
        timeoutMs,
      );
      this.onLine((line) => {
        const json = parseJsonLine(line);
        if (json && match(json)) finish(null, json);
      });
      void this.exited.then((code) => finish(this.#failure(`exited (${code}) before it was ready`)));
    });
  }

  #failure(what: string): CascadeError {
    const tail = this.stderrTail();
    return new CascadeError(ErrorCodes.DEMO_ERR_PROCESS, `${this.name} ${what}${tail ? `: ${tail}` : ''}`);
  }

  /** Sends SIGTERM, then SIGKILL after `graceMs`; resolves when it has exited. Safe to call twice. */
  async stop(graceMs = 10_000): Promise<number | string> {
    const c = this.child;
    if (c.exitCode === null && c.signalCode === null) {
      c.kill('SIGTERM');
      const timer = setTimeout(() => c.kill('SIGKILL'), graceMs);
      timer.unref();
      const code = await this.exited;
      clearTimeout(timer);
      return code;
    }
    return this.exited;
  }
}

/** A stdout line parsed as a JSON object, or null. */
export function parseJsonLine(line: string): Record<string, unknown> | null {
  const t = line.trim();
  if (!t.startsWith('{')) return null;
  try {
    const v: unknown = JSON.parse(t);
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}
