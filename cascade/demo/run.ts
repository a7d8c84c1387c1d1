/**
 * `cascade demo`: the whole cascade on one machine. An MQTT broker (the embedded aedes, in this
 * process, unless `broker` names an external one), a cloud teacher, a gateway and N
 * dataset-replay cameras, each tier its own `cascade <command>` process as in a deployment. The
 * cameras split the dataset between them (camera k replays images k, k+N, …), so by default the
 * demo classifies every image of the bundled sample once: the same frames `cascade eval` scores.
 * Progress comes from the results topics; the cameras' own reports account for dropped frames.
 */
import { randomBytes } from 'node:crypto';
import { startEmbeddedBroker } from '../broker.ts';
import { CascadeError, ErrorCodes } from '../errors.ts';
import { MqttConnection } from '../mqtt.ts';
import { decodeAs, Topics } from '../protocol.ts';
import { CascadeProcess, parseJsonLine } from './processes.ts';
import { type CameraReport, type DemoReport, type Progress, ResultTally } from './tally.ts';

/** Options of {@link runDemo}. */
export interface DemoOptions {
  /** Cameras (device processes); default 4. */
  cameras?: number;
  /** Frames per camera; default: each camera's share of the dataset, once. */
  frames?: number;
  /** Run for this long instead (cameras loop over their share); seconds. */
  durationS?: number;
  /** Frames per second per camera; default 25. */
  fps?: number;
  /** Replay dataset folder; default the bundled sample. */
  data?: string;
  /** External broker URL; default the embedded broker. */
  broker?: string;
  /** External broker supports shared subscriptions (Mosquitto, EMQX, HiveMQ); default true. */
  brokerShared?: boolean;
  /** Latency budget per frame; default 50 ms. */
  budgetMs?: number;
  /** Preprocessing backend of the cameras; default auto. */
  preprocess?: string;
  /** Called about once a second. */
  onProgress?: (p: Progress, elapsedS: number) => void;
  /** Called with one line per milestone (services ready, cameras started, …). */
  onStatus?: (line: string) => void;
  /** Seconds to wait for each service to be ready; default 90. */
  startTimeoutS?: number;
  /** Ends the run early (e.g. on SIGINT): cameras stop gracefully and the report covers what ran. */
  signal?: AbortSignal;
}

/**
 * Runs the demo and returns its report. Every child process is stopped before it returns or
 * throws.
 * @throws {CascadeError} DEMO_ERR_PROCESS when a service or camera fails to start or a camera
 *   fails (the message names it and quotes its error).
 */
export async function runDemo(opts: DemoOptions = {}): Promise<DemoReport> {
  const cameras = opts.cameras ?? 4;
  const fps = opts.fps ?? 25;
  const budgetMs = opts.budgetMs ?? 50;
  const startMs = (opts.startTimeoutS ?? 90) * 1000;
  const status = opts.onStatus ?? (() => {});
  const procs: CascadeProcess[] = [];
  const broker = opts.broker === undefined ? await startEmbeddedBroker() : null;
  const brokerUrl = opts.broker ?? (broker?.url as string);
  let results: MqttConnection | null = null;
  let ticker: NodeJS.Timeout | undefined;
  try {
    status(`broker ${brokerUrl}${broker ? ' (embedded aedes)' : ''}`);
    // A fresh bearer token per run, handed to both sides through the environment.
    const token = randomBytes(16).toString('hex');
    const cloud = new CascadeProcess(
      'cloud',
      ['cloud', '--http-host', '127.0.0.1', '--http-port', '0', '--log-level', 'info'],
      { CASCADE_CLOUD_TOKEN: token },
    );
    procs.push(cloud);
    const cloudReady = await cloud.waitForLog('cloud ready', startMs);
    const cloudUrl = String(cloudReady.httpUrl);
    status(`cloud teacher ${cloudUrl} (${String(cloudReady.model)})`);
    const shared = opts.broker !== undefined && (opts.brokerShared ?? true);
    const gateway = new CascadeProcess(
      'gateway',
      [
        'gateway',
        '--broker',
        brokerUrl,
        ...(shared ? [] : ['--no-shared']),
        '--http-host',
        '127.0.0.1',
        '--http-port',
        '0',
        '--cloud',
        cloudUrl,
        '--log-level',
        'info',
      ],
      { CASCADE_GATEWAY_CLOUD_TOKEN: token },
    );
    procs.push(gateway);
    const gwReady = await gateway.waitForLog('gateway ready', startMs);
    status(`gateway ${String(gwReady.httpUrl)} (${String(gwReady.model)}, ${String(gwReady.topic)})`);

    const tally = new ResultTally(budgetMs);
    const conn = new MqttConnection({ url: brokerUrl, clientId: `cascade-demo-${process.pid}` });
    results = conn;
    conn.client.on('message', (topic, payload) => {
      if (Topics.deviceOf(topic, 'results') === undefined) return;
      try {
        tally.add(decodeAs(payload, 'result'), performance.now());
      } catch {
        // A malformed result is not ours to count; the devices count their own.
      }
    });
    await conn.waitConnected(10_000);
    await conn.subscribe(Topics.allResults, 1);

    const reports: CameraReport[] = [];
    const cams: CascadeProcess[] = [];
    for (let k = 0; k < cameras; k++) {
      const args = [
        'device',
        '--id',
        `cam-${k + 1}`,
        '--broker',
        brokerUrl,
        '--shard',
        `${k}/${cameras}`,
        '--fps',
        String(fps),
        '--budget-ms',
        String(budgetMs),
        '--seed',
        String(k + 1),
        '--json',
        '--wait-start',
        '--log-level',
        'warn',
      ];
      if (opts.frames !== undefined) args.push('--frames', String(opts.frames));
      if (opts.durationS !== undefined) args.push('--loop');
      if (opts.data !== undefined) args.push('--data', opts.data);
      if (opts.preprocess !== undefined) args.push('--preprocess', opts.preprocess);
      const cam = new CascadeProcess(`camera cam-${k + 1}`, args);
      cam.onLine((line) => {
        const json = parseJsonLine(line);
        if (json && typeof json.deviceId === 'string' && typeof json.frames === 'number') {
          reports.push(json as unknown as CameraReport);
        }
      });
      procs.push(cam);
      cams.push(cam);
    }
    // Cameras load and connect in parallel, then start together: none captures frames while the
    // others still load (which would only measure start-up contention).
    await Promise.all(cams.map((c) => c.waitForLine((j) => j.event === 'ready', startMs)));
    for (const c of cams) c.send('start');
    status(`${cameras} cameras at ${fps} fps, ${budgetMs} ms budget`);
    const t0 = performance.now();
    ticker = setInterval(() => {
      opts.onProgress?.(tally.progress(performance.now()), (performance.now() - t0) / 1000);
    }, 1000);
    const stopCameras = () => {
      for (const c of cams) void c.stop();
    };
    const stopAt = opts.durationS === undefined ? undefined : setTimeout(stopCameras, opts.durationS * 1000);
    opts.signal?.addEventListener('abort', stopCameras, { once: true });
    await Promise.all(cams.map((c) => c.exited));
    clearTimeout(stopAt);
    opts.signal?.removeEventListener('abort', stopCameras);
    clearInterval(ticker);
    ticker = undefined;
    const missing = cams.find((c) => !reports.some((r) => `camera ${r.deviceId}` === c.name));
    if (missing !== undefined) {
      throw new CascadeError(
        ErrorCodes.DEMO_ERR_PROCESS,
        `${missing.name} exited without its report: ${missing.stderrTail() || 'no error output'}`,
      );
    }
    // Results are acknowledged by the broker before a camera exits; give the broker a moment to
    // hand the last ones to this subscriber.
    const waitUntil = performance.now() + 3000;
    while (
      performance.now() < waitUntil &&
      reports.some((r) => tally.resultsOf(r.deviceId) < r.processed - r.unpublished)
    ) {
      await new Promise((r) => setTimeout(r, 50));
    }
    return tally.report(reports, tally.spanMs() / 1000);
  } finally {
    if (ticker) clearInterval(ticker);
    await Promise.all(procs.map((p) => p.stop()));
    await results?.close();
    await broker?.close();
  }
}
