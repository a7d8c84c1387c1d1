/**
 * Real gateway replicas as child processes (`cascade gateway`), the way a cluster runs them: each
 * its own process, consuming through the broker's shared subscription. Waits for each one's
 * `gateway ready` log line, samples its resident memory from /proc, scrapes its /metrics, and can
 * SIGTERM (graceful drain) or SIGKILL it (fault tests).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const BIN = fileURLToPath(new URL('../../cascade/bin.mjs', import.meta.url));

/** Options of {@link startService}. */
export interface ServiceProcessOptions {
  /** Extra flags after `cascade <service> --http-host 127.0.0.1 --http-port 0`. */
  args?: string[];
  /** Extra environment (CASCADE_GATEWAY_*). */
  env?: Record<string, string>;
  /** V8 old-space cap (MB) — the memory bound the replica must live within. Default 256. */
  maxOldSpaceMb?: number;
  /** Give up waiting for readiness after this long. Default 60 000 ms. */
  readyTimeoutMs?: number;
  /** Name in messages. */
  name?: string;
}

/** A running service process (a gateway replica or the cloud teacher). */
export interface GatewayProcess {
  readonly name: string;
  readonly pid: number;
  readonly httpUrl: string;
  readonly child: ChildProcess;
  /** Highest resident set size seen by {@link sampleRss}, bytes. */
  readonly maxRssBytes: number;
  /** Reads VmRSS now (bytes; 0 when the process is gone or /proc is unavailable). */
  sampleRss(): number;
  /** CPU seconds (user + system) used so far; last value seen once the process is gone. */
  cpuSeconds(): number;
  /** The /metrics text (throws when the replica is down). */
  metrics(): Promise<string>;
  /** SIGTERM and wait for exit; resolves the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL and wait for exit. */
  kill(): Promise<void>;
  /** True until the process exits. */
  readonly alive: boolean;
  /** The last log lines (stdout and stderr). */
  readonly log: readonly string[];
}

/** Options of {@link startGateway}. */
export interface GatewayProcessOptions extends ServiceProcessOptions {
  broker: string;
}

/**
 * Starts one gateway replica and waits until it is ready (HTTP up, subscribed).
 * @throws {Error} when it exits or is not ready in time, with its last log lines.
 */
export function startGateway(opts: GatewayProcessOptions): Promise<GatewayProcess> {
  return startService('gateway', { ...opts, args: ['--broker', opts.broker, ...(opts.args ?? [])] });
}

/**
 * Starts `cascade <service>` (gateway or cloud) and waits for its `<service> ready` log line.
 * @throws {Error} when it exits or is not ready in time, with its last log lines.
 */
export async function startService(
  service: 'gateway' | 'cloud',
  opts: ServiceProcessOptions,
): Promise<GatewayProcess> {
  const name = opts.name ?? service;
  const args = [
    `--max-old-space-size=${opts.maxOldSpaceMb ?? 256}`,
    BIN,
    service,
    '--http-host',
    '127.0.0.1',
    '--http-port',
    '0',
    ...(opts.args ?? []),
  ];
  const child = spawn(process.execPath, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...opts.env },
  });
  const log: string[] = [];
  let alive = true;
  let maxRss = 0;
  let resolveReady: (url: string) => void = () => {};
  const ready = new Promise<string>((resolve) => {
    resolveReady = resolve;
  });
  let buffered = '';
  const onData = (chunk: Buffer): void => {
    buffered += chunk.toString('utf8');
    let nl = buffered.indexOf('\n');
    while (nl >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      log.push(line);
      if (log.length > 100) log.shift();
      if (line.includes(`"${service} ready"`)) {
        try {
          const url = (JSON.parse(line) as { httpUrl?: string }).httpUrl;
          if (url) resolveReady(url);
        } catch {
          // not JSON: keep waiting
        }
      }
      nl = buffered.indexOf('\n');
    }
  };
  child.stdout?.on('data', onData);
  child.stderr?.on('data', onData);
  const exited = once(child, 'exit').then(([code]) => {
    alive = false;
    return code as number | null;
  });
  const timeoutMs = opts.readyTimeoutMs ?? 60_000;
  let timer: NodeJS.Timeout | undefined;
  const httpUrl = await Promise.race([
    ready,
    exited.then((code) => {
      throw new Error(`${name} exited (${code}) before it was ready:\n${log.slice(-15).join('\n')}`);
    }),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`${name} not ready after ${timeoutMs} ms:\n${log.slice(-15).join('\n')}`));
      }, timeoutMs);
    }),
  ]).finally(() => clearTimeout(timer));

  const sampleRss = (): number => {
    try {
      const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
      const bytes = m ? Number(m[1]) * 1024 : 0;
      maxRss = Math.max(maxRss, bytes);
      return bytes;
    } catch {
      return 0;
    }
  };
  sampleRss();
  let cpu = 0;
  const cpuSeconds = (): number => {
    cpu = processCpuSeconds(child.pid ?? 0) ?? cpu;
    return cpu;
  };

  return {
    cpuSeconds,
    name,
    pid: child.pid ?? 0,
    httpUrl,
    child,
    get maxRssBytes() {
      return maxRss;
    },
    sampleRss,
    async metrics() {
      const res = await fetch(`${httpUrl}/metrics`);
      if (!res.ok) throw new Error(`${name} /metrics: HTTP ${res.status}`);
      return res.text();
    },
    async stop() {
      if (!alive) return exited;
      child.kill('SIGTERM');
      return exited;
    },
    async kill() {
      if (!alive) return;
      child.kill('SIGKILL');
      await exited;
    },
    get alive() {
      return alive;
    },
    log,
  };
}

/** CPU seconds (utime + stime) of a process from /proc, or undefined when unavailable. */
export function processCpuSeconds(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return undefined;
  }
}

/**
 * Sums the samples of one metric in Prometheus text, over the series whose labels include
 * `match` (e.g. `transport="mqtt"`).
 */
export function sumMetric(text: string, name: string, match: string[] = []): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== '{' && rest[0] !== ' ') continue;
    if (!match.every((m) => rest.includes(m))) continue;
    const v = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (Number.isFinite(v)) sum += v;
  }
  return sum;
}
