/**
 * MQTT connections the way every tier needs them: TCP_NODELAY on every socket (mqtt.js leaves
 * Nagle on, and Nagle plus the broker's delayed ACK stalls each round trip at ~44–88 ms; with it
 * off a loopback round trip takes ~0.25 ms) and reconnection with capped exponential backoff and
 * full jitter (mqtt.js alone retries at a fixed period, so a fleet reconnects in lock-step after
 * a broker restart).
 */
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { CascadeError, ErrorCodes } from './errors.ts';

/** Options of {@link MqttConnection}. */
export interface MqttConnectionOptions {
  /** Broker URL: mqtt://host:port or mqtts://host:port. */
  url: string;
  clientId: string;
  /** 4 = MQTT 3.1.1, 5 = MQTT 5. Default 4 (what the embedded broker speaks). */
  protocolVersion?: 4 | 5;
  username?: string;
  password?: string;
  /** TLS: CA, client certificate and key (PEM). */
  ca?: MqttTls['ca'];
  cert?: MqttTls['cert'];
  key?: MqttTls['key'];
  /** First reconnect delay; doubles per failed attempt. Default 100 ms. */
  backoffInitialMs?: number;
  /** Cap of the reconnect delay. Default 5000 ms. */
  backoffMaxMs?: number;
  /** Keepalive in seconds. Default 10. */
  keepalive?: number;
  /** Connect timeout. Default 5000 ms. */
  connectTimeoutMs?: number;
  /** Last will, e.g. a retained "offline" status. */
  will?: IClientOptions['will'];
  /**
   * mqtt.js's own debug output (`DEBUG=mqttjs*`). Default true. False silences it for good: even
   * when its namespace is off, mqtt.js makes ~25 calls per packet, each allocating its argument
   * array (~4 KiB of garbage per offload at a gateway, which sees four packets per frame).
   */
  debugLog?: boolean;
  /** Injected for tests; default Math.random. */
  random?: () => number;
}

/** TLS material of an MQTT connection (PEM). */
export interface MqttTls {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

/**
 * Reads the TLS files a service's config names (each optional). A client certificate needs its
 * key and the other way round.
 * @param keys the config keys naming the files, for the error messages.
 * @throws {CascadeError} CFG_ERR_INVALID naming the key and file that cannot be read.
 */
export function readMqttTls(
  files: { ca?: string; cert?: string; key?: string },
  keys: { ca: string; cert: string; key: string },
): MqttTls {
  if ((files.cert === undefined) !== (files.key === undefined)) {
    const [have, lack] = files.cert === undefined ? [keys.key, keys.cert] : [keys.cert, keys.key];
    throw new CascadeError(
      ErrorCodes.CFG_ERR_INVALID,
      `${have} is set but ${lack} is not: a client certificate needs both`,
    );
  }
  const read = (key: string, path: string | undefined): Buffer | undefined => {
    if (path === undefined) return undefined;
    try {
      return readFileSync(path);
    } catch (err) {
      const why = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
      throw new CascadeError(ErrorCodes.CFG_ERR_INVALID, `${key} ${path}: cannot read it (${why})`, {
        cause: err,
      });
    }
  };
  return { ca: read(keys.ca, files.ca), cert: read(keys.cert, files.cert), key: read(keys.key, files.key) };
}

/** The mqtt.js `log` option that drops everything. */
function silent(): void {}

interface ConnectionEvents {
  connect: [];
  /** The connection dropped; `attempt` is the reconnect about to be scheduled after `delayMs`. */
  offline: [attempt: number, delayMs: number];
  error: [err: Error];
}

/** Delay before reconnect attempt `attempt` (0-based): full jitter over a capped exponential. */
export function backoffDelay(
  attempt: number,
  initialMs: number,
  maxMs: number,
  random: () => number,
): number {
  const ceiling = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 30));
  return Math.round(initialMs / 2 + random() * (ceiling - initialMs / 2));
}

/**
 * One MQTT client with TCP_NODELAY and backoff. Publish on `client`; subscribe through
 * {@link MqttConnection.subscribe}, which restores subscriptions after every reconnect that did
 * not resume a session (mqtt.js only does that when it drives reconnection itself, which we
 * replace). `close()` is safe to call twice.
 */
export class MqttConnection extends EventEmitter<ConnectionEvents> {
  readonly client: MqttClient;
  #attempt = 0;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  readonly #subscriptions = new Map<string, 0 | 1 | 2>();
  readonly #opts: Required<Pick<MqttConnectionOptions, 'backoffInitialMs' | 'backoffMaxMs' | 'random'>>;

  constructor(opts: MqttConnectionOptions) {
    super();
    this.#opts = {
      backoffInitialMs: opts.backoffInitialMs ?? 100,
      backoffMaxMs: opts.backoffMaxMs ?? 5000,
      random: opts.random ?? Math.random,
    };
    this.client = mqtt.connect(opts.url, {
      clientId: opts.clientId,
      protocolVersion: opts.protocolVersion ?? 4,
      username: opts.username,
      password: opts.password,
      ca: opts.ca,
      cert: opts.cert,
      key: opts.key,
      keepalive: opts.keepalive ?? 10,
      connectTimeout: opts.connectTimeoutMs ?? 5000,
      // Our own backoff below replaces mqtt.js's fixed-period retry.
      reconnectPeriod: 0,
      // By default mqtt.js re-arms its keepalive timer on every acknowledgement it receives (a
      // clearInterval + setInterval per QoS 1 message, thousands per second at a gateway); a
      // PINGREQ every keepalive period on a busy connection is far cheaper.
      reschedulePings: false,
      log: opts.debugLog === false ? silent : undefined,
      resubscribe: true,
      will: opts.will,
    });
    // Set on the socket as soon as it exists, before CONNECT is written.
    this.client.on('packetsend', () => noDelay(this.client));
    this.client.on('connect', (connack) => {
      noDelay(this.client);
      this.#attempt = 0;
      if (!connack.sessionPresent && this.#subscriptions.size > 0) {
        const topics = Object.fromEntries([...this.#subscriptions].map(([t, qos]) => [t, { qos }]));
        this.client.subscribe(topics, (err) => {
          if (err && this.listenerCount('error') > 0) this.emit('error', err);
        });
      }
      this.emit('connect');
    });
    this.client.on('close', () => this.#scheduleReconnect());
    this.client.on('error', (err) => {
      if (this.listenerCount('error') > 0) this.emit('error', err);
    });
  }

  /**
   * Subscribes now (when connected) and after every reconnect.
   * @throws the broker's refusal (e.g. an ACL) as an Error.
   */
  async subscribe(topic: string, qos: 0 | 1 | 2 = 1): Promise<void> {
    this.#subscriptions.set(topic, qos);
    if (!this.client.connected) return;
    const granted = await this.client.subscribeAsync(topic, { qos });
    const refused = granted.find((g) => g.qos === 128);
    if (refused) throw new Error(`MQTT: subscription to ${topic} refused by the broker`);
  }

  /** True while connected to the broker. */
  get connected(): boolean {
    return this.client.connected;
  }

  /** Resolves on the next (or current) successful connection; rejects after `timeoutMs`. */
  waitConnected(timeoutMs = 10_000): Promise<void> {
    if (this.client.connected) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.off('connect', onConnect);
        reject(new Error(`MQTT: not connected after ${timeoutMs} ms`));
      }, timeoutMs);
      const onConnect = (): void => {
        clearTimeout(timer);
        resolve();
      };
      this.once('connect', onConnect);
    });
  }

  #scheduleReconnect(): void {
    if (this.#closed || this.#timer !== undefined) return;
    const { backoffInitialMs, backoffMaxMs, random } = this.#opts;
    const delay = backoffDelay(this.#attempt, backoffInitialMs, backoffMaxMs, random);
    this.emit('offline', this.#attempt, delay);
    this.#attempt++;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      if (!this.#closed && !this.client.connected) this.client.reconnect();
    }, delay);
    this.#timer.unref();
  }

  /** Disconnects (sending DISCONNECT when connected) and stops reconnecting. */
  async close(force = false): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.client.endAsync(force);
  }
}

function noDelay(client: MqttClient): void {
  const s = client.stream as Partial<Socket> | undefined;
  if (s && typeof s.setNoDelay === 'function') s.setNoDelay(true);
}
