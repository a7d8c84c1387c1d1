/**
 * The device's offload client: publishes a frame to `cascade/v1/<id>/offload` (QoS 1; on MQTT 5
 * also message expiry from the budget and the `traceparent` user property), waits for the answer
 * on `cascade/v1/<id>/answer` with its own deadline, and reports the outcome exactly once: the
 * answer when a usable one arrives in time, else a miss (no answer by the deadline, or an
 * expired / overloaded / error answer), in which case the local answer stands. Answers after the
 * deadline are counted as late and otherwise ignored. Every outcome is fed back to the policy
 * engine (bytes, round trip, remote queue and service time; misses as censored samples).
 *
 * It never lets mqtt.js queue: `canOffload()` is false while disconnected (mqtt.js would hold
 * QoS 1 publishes in memory without bound until the broker returns), while `maxInFlight` offloads
 * await answers, and during a gateway's Retry-After.
 */

import type { MqttConnection } from '../cascade/mqtt.ts';
import type { PolicyEngine } from '../cascade/policy/index.ts';
import {
  type AnswerMessage,
  decodeAs,
  encode,
  messageExpirySeconds,
  type OffloadMessage,
  ProtocolError,
  Topics,
  traceparent,
} from '../cascade/protocol.ts';

/** How one offload ended. */
export type OffloadOutcome =
  | { kind: 'answer'; answer: AnswerMessage; rttMs: number }
  | {
      kind: 'miss';
      /** timeout: nothing in time; expired/overloaded/error: the remote's status; publish: not sent. */
      why: 'timeout' | 'expired' | 'overloaded' | 'error' | 'publish';
      answer?: AnswerMessage;
      rttMs?: number;
    };

/** Counters of the client (read by metrics and reports). */
export interface OffloadCounters {
  sent: number;
  answered: number;
  misses: number;
  late: number;
  /** Answers for frames this client never sent or already forgot. */
  stray: number;
  /** Answers that failed validation, by reason. */
  rejected: Record<string, number>;
  /** Envelope bytes published. */
  bytes: number;
}

/** Options of {@link OffloadClient}. */
export interface OffloadClientOptions {
  conn: MqttConnection;
  deviceId: string;
  engine: PolicyEngine;
  /** 5 adds message expiry and the traceparent user property. Default 4. */
  protocolVersion?: 4 | 5;
  /** Default 32. */
  maxInFlight?: number;
  /** Monotonic clock, ms; default performance.now. */
  now?: () => number;
}

interface Pending {
  sentAt: number;
  deadlineAt: number;
  bytes: number;
  timer: NodeJS.Timeout;
  done: (o: OffloadOutcome) => void;
}

const FORGET_AFTER = 1024;

export class OffloadClient {
  readonly counters: OffloadCounters = {
    sent: 0,
    answered: 0,
    misses: 0,
    late: 0,
    stray: 0,
    rejected: {},
    bytes: 0,
  };
  readonly #o: Required<Omit<OffloadClientOptions, 'conn' | 'engine'>> &
    Pick<OffloadClientOptions, 'conn' | 'engine'>;
  readonly #pending = new Map<number, Pending>();
  /** Frames given up on recently (for telling late answers from stray ones, and their timing). */
  readonly #missed = new Map<number, { sentAt: number; bytes: number }>();
  readonly #idle: (() => void)[] = [];
  #holdUntil = 0;
  #closed = false;
  readonly #onMessage: (topic: string, payload: Buffer) => void;

  constructor(opts: OffloadClientOptions) {
    this.#o = {
      protocolVersion: 4,
      maxInFlight: 32,
      now: () => performance.now(),
      ...opts,
    };
    const answerTopic = Topics.answer(opts.deviceId);
    this.#onMessage = (topic, payload) => {
      if (topic === answerTopic) this.#onAnswer(payload);
    };
    opts.conn.client.on('message', this.#onMessage);
  }

  /** Subscribes to this device's answer topic (kept across reconnects). */
  async start(): Promise<void> {
    await this.#o.conn.subscribe(Topics.answer(this.#o.deviceId), 1);
  }

  /** Offloads awaiting an outcome. */
  get inFlight(): number {
    return this.#pending.size;
  }

  /**
   * Whether an offload may be sent now, and if not why: 'offline' (no broker connection),
   * 'busy' (maxInFlight reached), 'overloaded' (the gateway asked to wait), or null when it may.
   */
  blocked(): 'offline' | 'busy' | 'overloaded' | null {
    if (this.#closed || !this.#o.conn.connected) return 'offline';
    if (this.#pending.size >= this.#o.maxInFlight) return 'busy';
    if (this.#o.now() < this.#holdUntil) return 'overloaded';
    return null;
  }

  /**
   * Publishes an offload and calls `done` exactly once with its outcome, at the latest when
   * `deadlineMs` (from now) has passed.
   * @returns the envelope's bytes.
   * @throws {RangeError} for an invalid message (a bug in the caller).
   */
  send(msg: OffloadMessage, deadlineMs: number, done: (o: OffloadOutcome) => void): number {
    const buf = encode(msg);
    const now = this.#o.now();
    const frameId = msg.frameId;
    const stale = this.#pending.get(frameId);
    if (stale) this.#settle(frameId, stale, { kind: 'miss', why: 'timeout' });
    const timer = setTimeout(() => this.#timeout(frameId), Math.max(0, deadlineMs));
    this.#pending.set(frameId, {
      sentAt: now,
      deadlineAt: now + Math.max(0, deadlineMs),
      bytes: msg.payload.length,
      timer,
      done,
    });
    const opts =
      this.#o.protocolVersion === 5
        ? {
            qos: 1 as const,
            properties: {
              messageExpiryInterval: messageExpirySeconds(msg.budgetLeftMs),
              userProperties: { traceparent: traceparent(msg.trace) },
            },
          }
        : { qos: 1 as const };
    this.counters.sent++;
    this.counters.bytes += buf.length;
    this.#o.conn.client.publish(Topics.offload(this.#o.deviceId), buf, opts, (err) => {
      if (!err) return;
      const p = this.#pending.get(frameId);
      if (p !== undefined && p.sentAt === now) {
        clearTimeout(p.timer);
        this.#settle(frameId, p, { kind: 'miss', why: 'publish' });
      }
    });
    return buf.length;
  }

  #timeout(frameId: number): void {
    const p = this.#pending.get(frameId);
    if (p === undefined) return;
    const at = this.#o.now();
    this.#o.engine.observeMiss(at, p.bytes, at - p.sentAt);
    this.#remember(frameId, p);
    this.#settle(frameId, p, { kind: 'miss', why: 'timeout' });
  }

  #remember(frameId: number, p: Pending): void {
    this.#missed.set(frameId, { sentAt: p.sentAt, bytes: p.bytes });
    if (this.#missed.size > FORGET_AFTER) this.#missed.delete(this.#missed.keys().next().value as number);
  }

  #settle(frameId: number, p: Pending, o: OffloadOutcome): void {
    this.#pending.delete(frameId);
    if (o.kind === 'answer') this.counters.answered++;
    else this.counters.misses++;
    try {
      p.done(o);
    } finally {
      if (this.#pending.size === 0) for (const w of this.#idle.splice(0)) w();
    }
  }

  #onAnswer(payload: Buffer): void {
    let a: AnswerMessage;
    try {
      a = decodeAs(payload, 'answer');
    } catch (err) {
      const reason = err instanceof ProtocolError ? err.reason : 'field';
      this.counters.rejected[reason] = (this.counters.rejected[reason] ?? 0) + 1;
      return;
    }
    const at = this.#o.now();
    const p = this.#pending.get(a.frameId);
    if (p === undefined || a.deviceId !== this.#o.deviceId) {
      const missed = this.#missed.get(a.frameId);
      if (missed !== undefined && a.deviceId === this.#o.deviceId) {
        // Late: information about the link, not a result.
        this.counters.late++;
        this.#missed.delete(a.frameId);
        this.#observe(at, missed.bytes, at - missed.sentAt, a);
      } else {
        this.counters.stray++;
      }
      return;
    }
    clearTimeout(p.timer);
    if (at > p.deadlineAt) {
      // The deadline passed while the event loop was busy: the answer is late, the miss stands.
      this.#timeout(a.frameId);
      this.counters.late++;
      this.#missed.delete(a.frameId);
      this.#observe(at, p.bytes, at - p.sentAt, a);
      return;
    }
    const rttMs = at - p.sentAt;
    this.#observe(at, p.bytes, rttMs, a);
    if (a.status === 'overloaded') this.#holdUntil = Math.max(this.#holdUntil, at + a.retryAfterMs);
    if (a.status === 'ok' && a.topk.length > 0)
      this.#settle(a.frameId, p, { kind: 'answer', answer: a, rttMs });
    else {
      const why = a.status === 'ok' ? 'error' : a.status;
      this.#settle(a.frameId, p, { kind: 'miss', why, answer: a, rttMs });
    }
  }

  #observe(at: number, bytes: number, rttMs: number, a: AnswerMessage): void {
    this.#o.engine.observe({
      at,
      bytes,
      rttMs,
      queueMs: a.queueMs,
      serviceMs: Math.max(0, a.serviceMs - a.cloudMs),
      forwardMs: a.cloudMs,
    });
  }

  /** Resolves when no offload awaits an outcome (each ends by its deadline at the latest). */
  idle(): Promise<void> {
    if (this.#pending.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  /** Stops listening; pending offloads still end by their deadlines. Safe to call twice. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#o.conn.client.off('message', this.#onMessage);
  }
}
