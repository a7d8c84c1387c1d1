/**
 * The gateway's MQTT front end: consumes `cascade/v1/+/offload` through a shared subscription
 * (`$share/<group>/…`, so replicas split the load on Mosquitto, EMQX or HiveMQ) or a plain one
 * (the embedded aedes broker has no `$share`), validates every envelope (a malformed message is
 * counted under its reject reason and never crashes the process), serves the frame and publishes
 * the answer on `cascade/v1/<deviceId>/answer`, QoS 1, with MQTT 5 message expiry from the
 * frame's remaining budget. A message whose envelope names another device than its topic is
 * rejected (`topic`): a device may only speak for itself.
 */
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import type { IPublishPacket } from 'mqtt';
import { realScheduler, type Scheduler } from '../cascade/batcher.ts';
import { MqttConnection, type MqttTls } from '../cascade/mqtt.ts';
import {
  decodeAs,
  encode,
  isValidDeviceId,
  MAX_MESSAGE_BYTES,
  messageExpirySeconds,
  type OffloadMessage,
  ProtocolError,
  Topics,
} from '../cascade/protocol.ts';
import type { Logger } from '../cascade/service/log.ts';
import { InFlight } from '../cascade/service/shutdown.ts';
import { traceFromEnvelope } from '../cascade/service/trace.ts';
import type { ModelCard } from '../models/card.ts';
import type { FrameResult, FrameServer } from './frame-server.ts';
import type { GatewayMetrics } from './metrics.ts';
import { offloadPixels, PayloadError } from './payload.ts';

/** Longest wait for the broker's PUBACK of an answer (or the frame's budget, if longer). */
const PUBACK_TIMEOUT_MS = 2000;
/**
 * PUBACKs of offloads may wait this long in the corked socket for company (the answers of the
 * next batch, or more PUBACKs), so that at thousands of frames per second one write carries
 * many of them instead of one syscall each. It delays nothing a device waits for: the device
 * waits for its answer, and answers leave at the end of the event-loop turn that made them.
 */
const ACK_FLUSH_MS = 1;
/**
 * …and at most this many PUBACKs wait: well under any broker's in-flight window for QoS 1
 * (Mosquitto's `max_inflight_messages` is 20 by default), so the broker never holds back
 * offloads for want of our acknowledgements.
 */
const ACK_FLUSH_COUNT = 8;

/** An answer published with QoS 1 whose PUBACK has not come yet. */
interface AwaitingAck {
  /** Give up (count it failed) at this time, ms (`performance.now()`). */
  until: number;
  limitMs: number;
  /** Size of the answer, and its device (for the metrics and the log). */
  bytes: number;
  deviceId: string;
  /** Ends the frame's in-flight count. */
  end: () => void;
}

/** Options of {@link OffloadConsumer}. */
export interface OffloadConsumerOptions {
  url: string;
  protocol: 4 | 5;
  shared: boolean;
  sharedGroup: string;
  clientId?: string;
  username?: string;
  password?: string;
  /** TLS: CA, client certificate and key (PEM). */
  tls?: MqttTls;
  server: FrameServer;
  card: ModelCard;
  metrics: GatewayMetrics;
  logger: Logger;
  scheduler?: Scheduler;
}

export class OffloadConsumer {
  readonly #opts: OffloadConsumerOptions;
  readonly #conn: MqttConnection;
  readonly #topic: string;
  readonly #inflight = new InFlight();
  readonly #sched: Scheduler;
  #closed = false;
  /** The socket corked by {@link #cork}, until {@link #flush}. */
  #corked: Partial<Socket> | undefined;
  /** Offloads taken (PUBACKs written) since the socket was corked. */
  #acks = 0;
  #flushTimer: NodeJS.Timeout | undefined;
  #flushSoon = false;
  readonly #flushNow = (): void => this.#flush();
  /** Answers waiting for a PUBACK, by sequence number, and the one timer that bounds the wait. */
  readonly #awaiting = new Map<number, AwaitingAck>();
  #awaitSeq = 0;
  #ackTimer: NodeJS.Timeout | undefined;

  constructor(opts: OffloadConsumerOptions) {
    this.#opts = opts;
    this.#sched = opts.scheduler ?? realScheduler;
    this.#topic = opts.shared ? Topics.sharedOffloads(opts.sharedGroup) : Topics.allOffloads;
    this.#conn = new MqttConnection({
      url: opts.url,
      clientId: opts.clientId ?? `cascade-gateway-${process.pid}-${randomBytes(3).toString('hex')}`,
      protocolVersion: opts.protocol,
      username: opts.username,
      password: opts.password,
      ...opts.tls,
      // Per-packet debug calls of mqtt.js: garbage on the hot path, four packets per frame.
      debugLog: false,
    });
    this.#conn.on('error', (err) => opts.logger.warn({ err: err.message }, 'mqtt error'));
    this.#conn.on('offline', (attempt, delayMs) =>
      opts.logger.warn({ attempt, delayMs }, 'mqtt disconnected; reconnecting'),
    );
    this.#conn.on('connect', () => opts.logger.info({ url: opts.url, topic: this.#topic }, 'mqtt connected'));
    this.#conn.client.on('message', (topic, payload, packet) => this.#onMessage(topic, payload, packet));
  }

  /** The subscription topic in use. */
  get topic(): string {
    return this.#topic;
  }

  get connected(): boolean {
    return this.#conn.connected;
  }

  /** Frames being served now. */
  get inflight(): number {
    return this.#inflight.count;
  }

  /**
   * Subscribes (now and after every reconnect) and waits for the first connection.
   * @throws {Error} when not connected within `timeoutMs` or the broker refuses the subscription.
   */
  async start(timeoutMs = 10_000): Promise<void> {
    const subscribed = this.#conn.subscribe(this.#topic, 1);
    await this.#conn.waitConnected(timeoutMs);
    await subscribed;
    // subscribe() only records the topic when called before the connection: make sure it is live.
    const granted = await this.#conn.client.subscribeAsync(this.#topic, { qos: 1 });
    if (granted.some((g) => g.qos === 128)) throw new Error(`MQTT: subscription to ${this.#topic} refused`);
  }

  /**
   * Stops taking new frames: unsubscribes so the broker sends them to the other replicas. Frames
   * that arrive before the UNSUBACK were acknowledged to the broker, so they are served and
   * answered like any other (drain waits for them), never dropped.
   */
  async stopIntake(): Promise<void> {
    if (this.#conn.connected) {
      let timer: NodeJS.Timeout | undefined;
      try {
        await Promise.race([
          this.#conn.client.unsubscribeAsync(this.#topic),
          new Promise((_, reject) => {
            timer = setTimeout(() => reject(new Error('no UNSUBACK within 2 s')), 2000);
          }),
        ]);
      } catch (err) {
        this.#opts.logger.warn({ err: (err as Error).message }, 'unsubscribe failed');
      } finally {
        clearTimeout(timer);
      }
    }
  }

  /** Resolves when every frame taken has been answered (or its answer failed). */
  drain(): Promise<void> {
    return this.#inflight.idle();
  }

  /**
   * Disconnects: a clean DISCONNECT after in-flight PUBACKs, or a forced close after
   * `timeoutMs` (a broker that stopped answering must not hold the shutdown). Safe to call twice.
   */
  async close(timeoutMs = 2000): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#flush();
    let timer: NodeJS.Timeout | undefined;
    const clean = this.#conn.close().then(() => true);
    const late = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), timeoutMs);
    });
    const closed = await Promise.race([clean, late]);
    clearTimeout(timer);
    if (!closed) await this.#conn.client.endAsync(true);
  }

  /**
   * Corks the broker socket, so that the PUBACKs and answers of many frames leave in one write
   * instead of one syscall each: at thousands of frames per second the writes were the
   * gateway's largest cost. `answer`: flush at the end of this event-loop turn (a whole batch of
   * answers goes in one write, nothing waits longer); `ack`: a PUBACK may wait up to
   * {@link ACK_FLUSH_MS} or until {@link ACK_FLUSH_COUNT} of them are waiting.
   */
  #cork(why: 'ack' | 'answer'): void {
    if (this.#corked === undefined) {
      const stream = this.#conn.client.stream as Partial<Socket> | undefined;
      if (!stream || typeof stream.cork !== 'function' || typeof stream.uncork !== 'function') return;
      this.#corked = stream;
      stream.cork();
    }
    if (why === 'ack' && ++this.#acks < ACK_FLUSH_COUNT) {
      this.#flushTimer ??= setTimeout(this.#flushNow, ACK_FLUSH_MS);
      return;
    }
    if (!this.#flushSoon) {
      this.#flushSoon = true;
      setImmediate(this.#flushNow);
    }
  }

  #flush(): void {
    const stream = this.#corked;
    this.#corked = undefined;
    this.#acks = 0;
    this.#flushSoon = false;
    clearTimeout(this.#flushTimer);
    this.#flushTimer = undefined;
    // uncork() on a socket that was uncorked meanwhile (a reconnect) is a no-op.
    stream?.uncork?.();
  }

  #reject(reason: string, detail: string): void {
    this.#opts.metrics.rejects.inc({ reason });
    this.#opts.logger.debug({ reason, detail }, 'offload rejected');
  }

  #onMessage(topic: string, payload: Buffer, packet: IPublishPacket): void {
    const m = this.#opts.metrics;
    // QoS 1: mqtt.js writes this message's PUBACK when the handler returns.
    if (packet.qos > 0) this.#cork('ack');
    m.received.inc({ transport: 'mqtt' }, payload.length);
    const arrived = this.#sched.now();
    const device = Topics.deviceOf(topic, 'offload');
    if (device === undefined || !isValidDeviceId(device)) {
      this.#reject('topic', `topic ${topic}`);
      return;
    }
    let msg: OffloadMessage;
    try {
      msg = decodeAs(payload, 'offload', MAX_MESSAGE_BYTES);
    } catch (err) {
      if (err instanceof ProtocolError) this.#reject(err.reason, err.message);
      else this.#reject('field', String(err));
      return;
    }
    if (msg.deviceId !== device) {
      this.#reject('topic', `envelope device ${msg.deviceId} on topic of ${device}`);
      return;
    }
    // `end` is called once the answer is settled (published, or counted failed).
    void this.#serve(msg, arrived, this.#inflight.begin());
  }

  async #serve(msg: OffloadMessage, arrived: number, end: () => void): Promise<void> {
    const { server, card, metrics } = this.#opts;
    const trace = traceFromEnvelope(msg.trace);
    let result: FrameResult;
    try {
      const pixels = await offloadPixels(msg, card);
      result = await server.serve({
        pixels,
        budgetMs: msg.budgetLeftMs,
        arrivedAt: arrived,
        trace,
        privacy: msg.privacy,
        transport: 'mqtt',
        deviceId: msg.deviceId,
        frameId: msg.frameId,
        deviceTop1: msg.topk[0]?.label,
      });
    } catch (err) {
      const reason = err instanceof PayloadError ? err.reason : 'bad-payload';
      metrics.rejects.inc({ reason: 'payload' });
      metrics.requests.inc({ transport: 'mqtt', status: 'error' });
      result = {
        status: 'error',
        tier: 'gateway',
        modelVersion: card.version,
        probs: null,
        topk: [],
        queueMs: 0,
        serviceMs: 0,
        cloudMs: 0,
        retryAfterMs: 0,
        reason,
      };
    }
    this.#answer(msg, result, trace, arrived, end);
  }

  /**
   * Publishes the answer and calls `end` once the broker took it or it failed (counted either
   * way). No promise per answer: the PUBACK callback settles it, or the shared timer does.
   */
  #answer(
    msg: OffloadMessage,
    r: FrameResult,
    trace: OffloadMessage['trace'],
    arrived: number,
    end: () => void,
  ): void {
    let bytes: Buffer;
    try {
      bytes = encode({
        kind: 'answer',
        deviceId: msg.deviceId,
        frameId: msg.frameId,
        status: r.status,
        tier: r.tier,
        modelVersion: r.modelVersion.slice(0, 255),
        topk: r.topk,
        queueMs: Math.max(0, r.queueMs),
        serviceMs: Math.max(0, r.serviceMs),
        cloudMs: Math.max(0, r.cloudMs),
        retryAfterMs: Math.max(0, r.retryAfterMs),
        reason: r.reason.slice(0, 255),
        trace,
      });
    } catch (err) {
      end();
      throw err;
    }
    const left = msg.budgetLeftMs - (this.#sched.now() - arrived);
    // An answer for a broker that is down is stale by the time it is back: count it failed
    // rather than queue it, and bound the wait for a PUBACK lost with a dropped connection.
    if (!this.#conn.connected) {
      this.#failed(new Error('not connected to the broker'), msg.deviceId);
      end();
      return;
    }
    this.#cork('answer');
    const limit = Math.max(PUBACK_TIMEOUT_MS, left);
    const seq = this.#awaitSeq++;
    this.#awaiting.set(seq, {
      until: performance.now() + limit,
      limitMs: limit,
      bytes: bytes.length,
      deviceId: msg.deviceId,
      end,
    });
    this.#armAckTimer(limit);
    const properties =
      this.#opts.protocol === 5 ? { messageExpiryInterval: messageExpirySeconds(left) } : undefined;
    try {
      this.#conn.client.publish(Topics.answer(msg.deviceId), bytes, { qos: 1, properties }, (err) =>
        this.#settle(seq, err ?? undefined),
      );
    } catch (err) {
      this.#settle(seq, err instanceof Error ? err : new Error(String(err)));
    }
  }

  /** Settles answer `seq` once: a PUBACK after the timeout (or a timeout after it) changes nothing. */
  #settle(seq: number, err: Error | undefined): void {
    const a = this.#awaiting.get(seq);
    if (a === undefined) return;
    this.#awaiting.delete(seq);
    if (this.#awaiting.size === 0) {
      clearTimeout(this.#ackTimer);
      this.#ackTimer = undefined;
    }
    if (err === undefined) {
      this.#opts.metrics.published.inc();
      this.#opts.metrics.sent.inc({ transport: 'mqtt', peer: 'device' }, a.bytes);
    } else this.#failed(err, a.deviceId);
    a.end();
  }

  #failed(err: unknown, deviceId: string): void {
    this.#opts.metrics.publishFailures.inc();
    this.#opts.logger.warn({ err: (err as Error).message, deviceId }, 'answer not published');
  }

  /**
   * One timer for every answer awaiting its PUBACK (not one per answer): armed for the earliest
   * give-up time; on firing it fails what is overdue and re-arms for the rest.
   */
  #armAckTimer(ms: number): void {
    if (this.#ackTimer !== undefined) return;
    this.#ackTimer = setTimeout(() => {
      this.#ackTimer = undefined;
      const now = performance.now();
      let next = Number.POSITIVE_INFINITY;
      for (const [seq, a] of this.#awaiting) {
        if (a.until <= now) this.#settle(seq, new Error(`no PUBACK within ${a.limitMs} ms`));
        else next = Math.min(next, a.until);
      }
      if (Number.isFinite(next)) this.#armAckTimer(next - now);
    }, ms);
  }
}
