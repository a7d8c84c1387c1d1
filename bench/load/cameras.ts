/**
 * Simulated cameras: lightweight in-process MQTT publishers of real offload envelopes (pooled
 * device tensors and top-k from {@link loadFramePool}), one MQTT connection and device id each,
 * as a fleet of devices in the worst case where every frame is offloaded. Each camera publishes
 * at its fps with a random phase, subscribes to its own answer topic, and books every frame in
 * one shared {@link FrameLedger} with the device's own deadline (sent + budget, the camera's
 * clock): answered, refused, or missed when no answer came in time.
 */
import { randomBytes } from 'node:crypto';
import { MqttConnection } from '../../cascade/mqtt.ts';
import {
  type AnswerMessage,
  decodeAs,
  messageExpirySeconds,
  newTrace,
  Topics,
} from '../../cascade/protocol.ts';
import { type FramePool, offloadEnvelope } from './frames.ts';
import { FrameLedger } from './ledger.ts';

/** Options of {@link CameraFleet}. */
export interface FleetOptions {
  broker: string;
  pool: FramePool;
  cameras: number;
  fps: number;
  budgetMs: number;
  /** Device id prefix; camera i is `<prefix>-<i, 4 digits>`. Default 'cam'. */
  prefix?: string;
  /** MQTT protocol of the cameras. Default 5 (adds message expiry). */
  protocol?: 4 | 5;
  /** Privacy flag on every envelope. Default false. */
  privacy?: boolean;
  /**
   * The devices' wall clock, written into each envelope's capture time (default Date.now). The
   * fault tests skew it: deadlines never use it, so skew must change nothing.
   */
  wallClock?: () => number;
  /** Monotonic clock for deadlines and latencies. Default performance.now. */
  now?: () => number;
  /** Connection credentials per device id (TLS or password brokers). */
  credentials?: (deviceId: string) => { username?: string; password?: string };
  /** Sees every answer with its arrival time (after the ledger booked it). */
  onAnswer?: (answer: AnswerMessage, at: number) => void;
}

/** A fleet of simulated cameras sharing one ledger. */
export class CameraFleet {
  readonly ledger = new FrameLedger();
  readonly #o: Required<Omit<FleetOptions, 'credentials' | 'onAnswer'>> &
    Pick<FleetOptions, 'credentials' | 'onAnswer'>;
  readonly #conns: { id: string; conn: MqttConnection }[] = [];
  readonly #timers: NodeJS.Timeout[] = [];
  #sweep: NodeJS.Timeout | undefined;
  #frameId = 0;
  #publishErrors = 0;
  #running = false;
  #closed = false;

  constructor(opts: FleetOptions) {
    this.#o = {
      prefix: 'cam',
      protocol: 5,
      privacy: false,
      wallClock: Date.now,
      now: () => performance.now(),
      ...opts,
    };
  }

  /** Device id of camera i. */
  deviceId(i: number): string {
    return `${this.#o.prefix}-${String(i).padStart(4, '0')}`;
  }

  /** Publishes that failed locally (not connected, refused): their frames are still booked. */
  get publishErrors(): number {
    return this.#publishErrors;
  }

  /** Connects every camera and subscribes to its answer topic (QoS 1). */
  async connect(timeoutMs = 20_000): Promise<void> {
    const pending: Promise<void>[] = [];
    for (let i = 0; i < this.#o.cameras; i++) {
      const id = this.deviceId(i);
      const conn = new MqttConnection({
        url: this.#o.broker,
        clientId: id,
        protocolVersion: this.#o.protocol,
        backoffInitialMs: 100,
        backoffMaxMs: 1000,
        ...this.#o.credentials?.(id),
      });
      conn.on('error', () => {});
      conn.client.on('message', (_topic, payload) => this.#onAnswer(payload));
      this.#conns.push({ id, conn });
      pending.push(conn.waitConnected(timeoutMs).then(() => conn.subscribe(Topics.answer(id), 1)));
      // Connect in small waves: 200 simultaneous TLS/MQTT handshakes are a thundering herd.
      if (pending.length % 25 === 0) await Promise.all(pending.slice(-25));
    }
    await Promise.all(pending);
  }

  #onAnswer(payload: Buffer): void {
    const at = this.#o.now();
    try {
      const a = decodeAs(payload, 'answer');
      this.ledger.answer(a.deviceId, a.frameId, a.status, at);
      this.#o.onAnswer?.(a, at);
    } catch {
      // A malformed answer is not an answer: the frame ends as missed at its deadline.
    }
  }

  /**
   * Starts publishing: every camera at `fps`, each with a random phase. One clock drives the
   * fleet: each tick publishes every frame that is due by then, so timer jitter or a starved
   * process delays frames but never lowers the offered rate.
   */
  start(): void {
    if (this.#running || this.#closed) return;
    this.#running = true;
    const period = 1000 / this.#o.fps;
    const t0 = this.#o.now();
    const next = this.#conns.map(() => t0 + Math.random() * period);
    const tick = (): void => {
      const now = this.#o.now();
      for (const [i, cam] of this.#conns.entries()) {
        while (this.#running && next[i] <= now) {
          this.#publish(cam.id, cam.conn, i);
          next[i] += period;
        }
      }
    };
    this.#timers.push(setInterval(tick, 2));
    this.#sweep = setInterval(() => this.ledger.sweep(this.#o.now()), 10);
  }

  #publish(id: string, conn: MqttConnection, i: number): void {
    if (!this.#running) return;
    const { pool, budgetMs } = this.#o;
    const frameId = ++this.#frameId;
    const frame = pool.frames[(frameId + i) % pool.frames.length];
    const sentAt = this.#o.now();
    this.ledger.sent(id, frameId, sentAt, budgetMs);
    const envelope = offloadEnvelope(pool, frame, {
      deviceId: id,
      frameId,
      captureTime: this.#o.wallClock(),
      budgetLeftMs: budgetMs,
      trace: newTrace(randomBytes),
      privacy: this.#o.privacy,
    });
    if (!conn.connected) {
      // A real device does not queue offloads while offline: the local answer stands.
      this.#publishErrors++;
      return;
    }
    conn.client.publish(
      Topics.offload(id),
      envelope,
      {
        qos: 1,
        properties:
          this.#o.protocol === 5 ? { messageExpiryInterval: messageExpirySeconds(budgetMs) } : undefined,
      },
      (err) => {
        if (err) this.#publishErrors++;
      },
    );
  }

  /** Stops publishing (answers still arrive and are booked). */
  stop(): void {
    this.#running = false;
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.length = 0;
  }

  /** Waits until every frame's deadline has passed plus `graceMs`, sweeping the ledger. */
  async settle(graceMs = 500): Promise<void> {
    await new Promise((r) => setTimeout(r, this.#o.budgetMs + graceMs));
    this.ledger.sweep(this.#o.now());
  }

  /** Stops and disconnects every camera. Safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.stop();
    clearInterval(this.#sweep);
    await Promise.all(this.#conns.map((c) => c.conn.close(true)));
  }
}
