import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { describe, it } from 'node:test';
import type { MqttClient } from 'mqtt';
import { startEmbeddedBroker } from '../cascade/broker.ts';
import { backoffDelay, MqttConnection } from '../cascade/mqtt.ts';

function nextMessage(client: MqttClient): Promise<[string, Buffer]> {
  return new Promise((resolve) => client.once('message', (topic, payload) => resolve([topic, payload])));
}

/** Node keeps the TCP_NODELAY state of a socket under an internal symbol (no public getter). */
function noDelayOf(socket: Socket): boolean | undefined {
  const key = Object.getOwnPropertySymbols(socket).find((s) => String(s) === 'Symbol(kSetNoDelay)');
  return key === undefined ? undefined : Boolean((socket as unknown as Record<symbol, unknown>)[key]);
}

describe('backoffDelay', () => {
  it('grows exponentially, is capped and jittered', () => {
    assert.equal(
      backoffDelay(0, 100, 5000, () => 0),
      50,
    );
    assert.equal(
      backoffDelay(0, 100, 5000, () => 1),
      100,
    );
    assert.equal(
      backoffDelay(3, 100, 5000, () => 1),
      800,
    );
    assert.equal(
      backoffDelay(40, 100, 5000, () => 1),
      5000,
    );
    const spread = new Set(Array.from({ length: 50 }, () => backoffDelay(5, 100, 5000, Math.random)));
    assert.ok(spread.size > 10, 'delays are jittered');
  });
});

describe('MqttConnection on the embedded broker', () => {
  it('sets TCP_NODELAY and round-trips a message', async () => {
    const broker = await startEmbeddedBroker();
    const a = new MqttConnection({ url: broker.url, clientId: 'a' });
    const b = new MqttConnection({ url: broker.url, clientId: 'b' });
    try {
      await Promise.all([a.waitConnected(), b.waitConnected()]);
      assert.equal(noDelayOf(a.client.stream as Socket), true, 'client socket has TCP_NODELAY');
      await b.client.subscribeAsync('t/x', { qos: 1 });
      const got = nextMessage(b.client);
      await a.client.publishAsync('t/x', Buffer.from('hello'), { qos: 1 });
      const [topic, payload] = await got;
      assert.equal(topic, 't/x');
      assert.equal(payload.toString(), 'hello');
    } finally {
      await a.close();
      await b.close();
      await broker.close();
    }
  });

  it('reconnects with backoff after the broker restarts on the same port, keeping subscriptions', async () => {
    let broker = await startEmbeddedBroker();
    const port = broker.port;
    const c = new MqttConnection({ url: broker.url, clientId: 'r', backoffInitialMs: 20, backoffMaxMs: 200 });
    const offline: number[] = [];
    c.on('offline', (attempt) => offline.push(attempt));
    try {
      await c.waitConnected();
      await c.subscribe('t/y');
      const wentOffline = once(c, 'offline');
      await broker.close();
      await wentOffline;
      assert.equal(c.connected, false);
      await new Promise((r) => setTimeout(r, 150));
      broker = await startEmbeddedBroker({ port });
      await c.waitConnected(5000);
      assert.ok(offline.length >= 1);
      const pub = new MqttConnection({ url: broker.url, clientId: 'p' });
      await pub.waitConnected();
      // Resubscription happens right after CONNACK; give it one broker round trip.
      await new Promise((r) => setTimeout(r, 50));
      const got = nextMessage(c.client);
      await pub.client.publishAsync('t/y', 'again', { qos: 1 });
      const [, payload] = await got;
      assert.equal(payload.toString(), 'again');
      await pub.close();
    } finally {
      await c.close();
      await broker.close();
    }
  });

  it('close() is idempotent', async () => {
    const broker = await startEmbeddedBroker();
    const c = new MqttConnection({ url: broker.url, clientId: 'i' });
    await c.waitConnected();
    await c.close();
    await c.close();
    await broker.close();
    await broker.close();
  });
});
