/**
 * A real Mosquitto broker as a child process on a free loopback port, for the load benchmark and
 * the security and fault tests: shared subscriptions, TLS, password files and ACLs are what the
 * embedded broker (aedes) lacks. The broker can be restarted on the same port (fault tests) and
 * keeps its recent log lines so a test can show why a client was refused.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const CANDIDATES = ['/usr/sbin/mosquitto', '/usr/local/sbin/mosquitto', '/usr/bin/mosquitto'];

/** Path of the mosquitto binary, or undefined when it is not installed (tests then skip). */
export function mosquittoPath(): string | undefined {
  const found = CANDIDATES.find((p) => existsSync(p));
  if (found) return found;
  const which = spawnSync('sh', ['-c', 'command -v mosquitto'], { encoding: 'utf8' });
  const path = which.stdout.trim();
  return which.status === 0 && path !== '' ? path : undefined;
}

/** A skip reason for tests when Mosquitto is not installed, else undefined. */
export const MOSQUITTO_SKIP: string | undefined =
  mosquittoPath() === undefined ? 'mosquitto is not installed (apt package mosquitto)' : undefined;

/** Path of a tool beside mosquitto (mosquitto_passwd), or undefined. */
export function toolPath(name: string): string | undefined {
  const which = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' });
  const path = which.stdout.trim();
  return which.status === 0 && path !== '' ? path : undefined;
}

/** A free TCP port on 127.0.0.1 (bound, read, released: fine for tests on one machine). */
export async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/**
 * One plain loopback listener, anonymous access. `set_tcp_nodelay`: Mosquitto leaves Nagle on by
 * default, which with delayed ACKs stalls small messages for tens of milliseconds.
 */
export const DEFAULT_CONFIG = 'listener {{port}} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n';

/**
 * {@link DEFAULT_CONFIG} with the queue limits of deploy/mosquitto/mosquitto.conf: a subscriber
 * that falls behind loses the oldest offloads at the broker (their devices count them as misses)
 * instead of receiving frames whose budget is long gone.
 */
export const PRODUCTION_QUEUES_CONFIG = `${DEFAULT_CONFIG}max_queued_messages 100\nmax_inflight_messages 64\n`;

/** Options of {@link startMosquitto}. */
export interface MosquittoOptions {
  /**
   * Config text; `{{port}}` (and `{{port2}}`, when `ports` is 2) are replaced by the chosen ports.
   * Default: one plain listener on 127.0.0.1 with anonymous access.
   */
  config?: string;
  /** Listener ports to allocate: 1 (default) or 2. */
  ports?: 1 | 2;
  /** Wait this long for the listener to accept connections. Default 5000 ms. */
  startTimeoutMs?: number;
  /** Called with the broker's folder before the first start, e.g. to write certificates there. */
  prepare?: (dir: string) => void | Promise<void>;
}

/** A running broker. */
export interface MosquittoBroker {
  /** mqtt://127.0.0.1:<port> of the first listener. */
  readonly url: string;
  readonly port: number;
  /** The second listener's port (0 when only one was allocated). */
  readonly port2: number;
  /** Folder holding the config (and anything the caller puts there); removed by close(). */
  readonly dir: string;
  /** The last 200 log lines of the current and previous broker processes. */
  readonly log: readonly string[];
  /** Pid of the broker process (undefined while stopped). */
  readonly pid: number | undefined;
  /** Stops the broker (SIGTERM, or SIGKILL with `hard`) and waits for it to exit. */
  stop(hard?: boolean): Promise<void>;
  /** Starts it again on the same ports with the same config. */
  start(): Promise<void>;
  /** Stops it and removes its folder. Safe to call twice. */
  close(): Promise<void>;
}

/**
 * Starts Mosquitto with `opts.config` on fresh loopback ports.
 * @throws {Error} when mosquitto is not installed, exits at start, or does not listen in time
 *   (the message carries its last log lines).
 */
export async function startMosquitto(opts: MosquittoOptions = {}): Promise<MosquittoBroker> {
  const bin = mosquittoPath();
  if (bin === undefined) throw new Error('mosquitto is not installed (apt-get install mosquitto)');
  const dir = mkdtempSync(join(tmpdir(), 'cascade-mosquitto-'));
  const port = await freePort();
  const port2 = opts.ports === 2 ? await freePort() : 0;
  const text = (opts.config ?? DEFAULT_CONFIG)
    .replaceAll('{{port}}', String(port))
    .replaceAll('{{port2}}', String(port2))
    .replaceAll('{{dir}}', dir);
  const confPath = join(dir, 'mosquitto.conf');
  writeFileSync(confPath, text);
  await opts.prepare?.(dir);
  handOver(dir);
  const log: string[] = [];
  let child: ChildProcess | undefined;
  let closed = false;

  const keep = (chunk: Buffer): void => {
    for (const line of chunk.toString('utf8').split('\n')) {
      if (line === '') continue;
      log.push(line);
      if (log.length > 200) log.shift();
    }
  };

  const start = async (): Promise<void> => {
    if (child) return;
    const p = spawn(bin, ['-c', confPath], { stdio: ['ignore', 'pipe', 'pipe'] });
    p.stdout?.on('data', keep);
    p.stderr?.on('data', keep);
    child = p;
    p.once('exit', () => {
      if (child === p) child = undefined;
    });
    const deadline = Date.now() + (opts.startTimeoutMs ?? 5000);
    while (!(await accepts(port))) {
      if (child !== p) throw new Error(`mosquitto exited at start:\n${log.slice(-10).join('\n')}`);
      if (Date.now() > deadline) {
        p.kill('SIGKILL');
        throw new Error(`mosquitto did not listen on ${port}:\n${log.slice(-10).join('\n')}`);
      }
      await new Promise((r) => setTimeout(r, 25));
    }
  };

  const stop = async (hard = false): Promise<void> => {
    const p = child;
    if (!p) return;
    const exited = once(p, 'exit');
    p.kill(hard ? 'SIGKILL' : 'SIGTERM');
    await exited;
  };

  await start();
  return {
    url: `mqtt://127.0.0.1:${port}`,
    port,
    port2,
    dir,
    log,
    get pid() {
      return child?.pid;
    },
    stop,
    start,
    async close() {
      if (closed) return;
      closed = true;
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Started as root, Mosquitto drops to the `mosquitto` user before it reads certificates, keys
 * and its persistence folder: hand the folder over to that user so it can.
 */
function handOver(dir: string): void {
  if (process.getuid?.() !== 0) return;
  const id = spawnSync('id', ['-u', 'mosquitto'], { encoding: 'utf8' });
  const uid = Number.parseInt(id.stdout, 10);
  if (id.status !== 0 || !Number.isInteger(uid)) return;
  const walk = (path: string): void => {
    chownSync(path, uid, -1);
    if (statSync(path).isDirectory()) for (const name of readdirSync(path)) walk(join(path, name));
  };
  walk(dir);
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createConnection({ port, host: '127.0.0.1' });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}
