/**
 * Publishes each frame's final result on `cascade/v1/<id>/results` (QoS 1). While the broker is
 * unreachable, results wait in a bounded outbox (the oldest are dropped, counted, beyond its
 * size) and are sent when the connection returns: mqtt.js itself would queue every publish
 * without bound.
 */
import type { MqttConnection } from '../cascade/mqtt.ts';
import { encode, type ResultMessage, Topics } from '../cascade/protocol.ts';

/** Counters of the publisher. */
export interface PublisherCounters {
  /** Results handed to the broker connection. */
  published: number;
  /** Results acknowledged by the broker (PUBACK). */
  acked: number;
  /** Results dropped from a full outbox. */
  dropped: number;
  /** Publishes that failed (connection lost before PUBACK; mqtt.js retries those on reconnect). */
  failed: number;
  bytes: number;
}

export class ResultPublisher {
  readonly counters: PublisherCounters = { published: 0, acked: 0, dropped: 0, failed: 0, bytes: 0 };
  readonly #conn: MqttConnection | null;
  readonly #topic: string;
  readonly #outbox: Buffer[] = [];
  readonly #capacity: number;
  #unacked = 0;
  #settled: (() => void)[] = [];
  readonly #onConnect = () => this.flush();
  readonly #onAck = (err?: Error) => {
    this.#unacked--;
    if (err) this.counters.failed++;
    else this.counters.acked++;
    if (this.#unacked === 0) for (const w of this.#settled.splice(0)) w();
  };

  /**
   * @param conn null: results are only counted (no broker configured).
   * @param capacity outbox size while disconnected; default 1024.
   */
  constructor(conn: MqttConnection | null, deviceId: string, capacity = 1024) {
    this.#conn = conn;
    this.#topic = Topics.results(deviceId);
    this.#capacity = capacity;
    conn?.on('connect', this.#onConnect);
  }

  /** Results waiting in the outbox. */
  get queued(): number {
    return this.#outbox.length;
  }

  /** Publishes (or queues) one result; returns the envelope's bytes. */
  publish(r: ResultMessage): number {
    const buf = encode(r);
    const conn = this.#conn;
    if (conn === null) return buf.length;
    if (conn.connected && this.#outbox.length === 0) this.#send(buf);
    else {
      this.#outbox.push(buf);
      if (this.#outbox.length > this.#capacity) {
        this.#outbox.shift();
        this.counters.dropped++;
      }
      if (conn.connected) this.flush();
    }
    return buf.length;
  }

  #send(buf: Buffer): void {
    this.counters.published++;
    this.counters.bytes += buf.length;
    this.#unacked++;
    (this.#conn as MqttConnection).client.publish(this.#topic, buf, { qos: 1 }, this.#onAck);
  }

  /** Sends what the outbox holds, if connected. */
  flush(): void {
    const conn = this.#conn;
    while (conn?.connected && this.#outbox.length > 0) this.#send(this.#outbox.shift() as Buffer);
  }

  /**
   * Resolves when every published result is acknowledged, or after `timeoutMs`.
   * @returns true when all were acknowledged and the outbox is empty.
   */
  async settle(timeoutMs: number): Promise<boolean> {
    this.flush();
    if (this.#unacked > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        new Promise<void>((resolve) => this.#settled.push(resolve)),
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, timeoutMs);
        }),
      ]);
      clearTimeout(timer);
    }
    return this.#unacked === 0 && this.#outbox.length === 0;
  }

  /** Stops flushing on reconnect. Safe to call twice. */
  close(): void {
    this.#conn?.off('connect', this.#onConnect);
  }
}
