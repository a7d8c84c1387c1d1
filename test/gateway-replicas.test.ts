import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { MOSQUITTO_SKIP, type MosquittoBroker, startMosquitto } from '../bench/load/mosquitto.ts';
import { MqttConnection } from '../cascade/mqtt.ts';
import { decodeAs, Topics } from '../cascade/protocol.ts';
import { loadBundledSample } from '../models/data/load.ts';
import { tensorOffloadBytes } from './fixtures/offloads.ts';

const BIN = fileURLToPath(new URL('../cascade/bin.mjs', import.meta.url));

interface Replica {
  child: ChildProcess;
  httpUrl: string;
}

/** Starts `cascade gateway` as a child process; resolves on its `gateway ready` log line. */
async function startGateway(args: string[]): Promise<Replica> {
  const child = spawn(process.execPath, [BIN, 'gateway', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d) => {
    stderr += String(d);
  });
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`gateway not ready after 30 s: ${stderr}`)), 30_000);
    child.once('exit', (code) => reject(new Error(`gateway exited with ${code}: ${stderr}`)));
    child.stdout?.on('data', (d) => {
      buf += String(d);
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (!line.includes('"gateway ready"')) continue;
        clearTimeout(timer);
        resolve({ child, httpUrl: JSON.parse(line).httpUrl });
      }
    });
  });
}

async function servedBy(r: Replica): Promise<number> {
  const text = await (await fetch(`${r.httpUrl}/metrics`)).text();
  const m = /cascade_gateway_requests_total\{transport="mqtt",status="ok"[^}]*\} (\d+)/.exec(text);
  return m ? Number(m[1]) : 0;
}

describe('two gateway processes on one shared subscription', { skip: MOSQUITTO_SKIP }, () => {
  let mosq: MosquittoBroker;
  const replicas: Replica[] = [];
  before(async () => {
    mosq = await startMosquitto();
  });
  after(async () => {
    for (const r of replicas) if (r.child.exitCode === null) r.child.kill('SIGKILL');
    await mosq?.close();
  });

  it('split the offloads between them, answer every one, and drain on SIGTERM', async () => {
    const args = [
      '--broker',
      mosq.url,
      '--http-port',
      '0',
      '--http-host',
      '127.0.0.1',
      '--shared-group',
      'g1',
    ];
    replicas.push(...(await Promise.all([startGateway(args), startGateway(args)])));
    const data = await loadBundledSample();
    const dev = new MqttConnection({ url: mosq.url, clientId: `dev-${randomBytes(2).toString('hex')}` });
    const answers = new Set<number>();
    dev.client.on('message', (_t, payload) => answers.add(decodeAs(payload, 'answer').frameId));
    try {
      await dev.waitConnected();
      await dev.client.subscribeAsync(Topics.answer('cam-s'), { qos: 1 });
      const n = 200;
      for (let i = 0; i < n; i++) {
        const px = data.images.subarray(i * 784, (i + 1) * 784);
        await dev.client.publishAsync(Topics.offload('cam-s'), tensorOffloadBytes('cam-s', i, px, 2000), {
          qos: 1,
        });
      }
      const end = Date.now() + 30_000;
      while (answers.size < n && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
      assert.equal(answers.size, n, 'every offload answered exactly by one replica');
      const counts = await Promise.all(replicas.map(servedBy));
      assert.equal(counts[0] + counts[1], n, `served ${counts}`);
      assert.ok(counts[0] > n * 0.2 && counts[1] > n * 0.2, `the broker balances the load: ${counts}`);
    } finally {
      await dev.close();
    }
    for (const r of replicas) r.child.kill('SIGTERM');
    const codes = await Promise.all(replicas.map(async (r) => (await once(r.child, 'exit'))[0]));
    assert.deepEqual(codes, [0, 0], 'graceful shutdown exits 0');
  });
});
