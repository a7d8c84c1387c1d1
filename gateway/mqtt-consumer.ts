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
import { MqttConnection } from '../cascade/mqtt.ts';
import {
  type AnswerMessage,
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

/** Options of {@link OffloadConsumer}. */
export interface OffloadConsumerOptions {
  url: string;
  protocol: 4 | 5;
  shared: boolean;
  sharedGroup: string;
  clientId?: string;
  username?: string;
  password?: string;
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
  #accepting = true;
  #closed = false;
  #corked = false;

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

  /** Stops taking new frames: unsubscribes so the broker sends them to the other replicas. */
  async stopIntake(): Promise<void> {
    this.#accepting = false;
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
    this.#accepting = false;
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
   * Corks the broker socket until the end of this event-loop turn, so the PUBACKs and answers
   * of every frame handled in the turn (a whole batch of answers, a burst of offloads) leave in
   * one write instead of one syscall each: at thousands of frames per second the writes were
   * the gateway's largest cost.
   */
  #cork(): void {
    if (this.#corked) return;
    const stream = this.#conn.client.stream as Partial<Socket> | undefined;
    if (!stream || typeof stream.cork !== 'function' || typeof stream.uncork !== 'function') return;
    this.#corked = true;
    stream.cork();
    setImmediate(() => {
      this.#corked = false;
      stream.uncork?.();
    });
  }

  #reject(reason: string, detail: string): void {
    this.#opts.metrics.rejects.inc({ reason });
    this.#opts.logger.debug({ reason, detail }, 'offload rejected');
  }

  #onMessage(topic: string, payload: Buffer, _packet: IPublishPacket): void {
    const m = this.#opts.metrics;
    this.#cork();
    m.received.inc({ transport: 'mqtt' }, payload.length);
    const arrived = this.#sched.now();
    if (!this.#accepting) return;
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
    const end = this.#inflight.begin();
    void this.#serve(msg, arrived).finally(end);
  }

  async #serve(msg: OffloadMessage, arrived: number): Promise<void> {
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
    await this.#answer(msg, result, trace, arrived);
  }

  async #answer(
    msg: OffloadMessage,
    r: FrameResult,
    trace: OffloadMessage['trace'],
    arrived: number,
  ): Promise<void> {
    const answer: AnswerMessage = {
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
    };
    const bytes = encode(answer);
    const left = msg.budgetLeftMs - (this.#sched.now() - arrived);
    const properties =
      this.#opts.protocol === 5 ? { messageExpiryInterval: messageExpirySeconds(left) } : undefined;
    // An answer for a broker that is down is stale by the time it is back: count it failed
    // rather than queue it, and bound the wait for a PUBACK lost with a dropped connection.
    let timer: NodeJS.Timeout | undefined;
    try {
      if (!this.#conn.connected) throw new Error('not connected to the broker');
      this.#cork();
      const limit = Math.max(PUBACK_TIMEOUT_MS, left);
      await Promise.race([
        this.#conn.client.publishAsync(Topics.answer(msg.deviceId), bytes, { qos: 1, properties }),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no PUBACK within ${limit} ms`)), limit);
        }),
      ]);
      this.#opts.metrics.published.inc();
      this.#opts.metrics.sent.inc({ transport: 'mqtt', peer: 'device' }, bytes.length);
    } catch (err) {
      this.#opts.metrics.publishFailures.inc();
      this.#opts.logger.warn({ err: (err as Error).message, deviceId: msg.deviceId }, 'answer not published');
    } finally {
      clearTimeout(timer);
    }
  }
}
