import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { describe, it } from 'node:test';
import { GracefulShutdown, InFlight } from '../cascade/service/shutdown.ts';

describe('GracefulShutdown', () => {
  it('stops intake, drains, then closes in order, once', async () => {
    const order: string[] = [];
    const work = new InFlight();
    const end = work.begin();
    const s = new GracefulShutdown()
      .stopIntake('mqtt', () => {
        order.push('intake');
      })
      .drain('queue', async () => {
        await work.idle();
        order.push('drained');
      })
      .close('engine', () => {
        order.push('engine');
      })
      .close('http', async () => {
        order.push('http');
      });
    const first = s.shutdown('test');
    const second = s.shutdown('again');
    assert.equal(first, second, 'idempotent: the same promise');
    assert.ok(s.stopping);
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(order, ['intake'], 'waits for in-flight work');
    end();
    const report = await first;
    assert.deepEqual(order, ['intake', 'drained', 'engine', 'http']);
    assert.deepEqual(report, { reason: 'test', drained: true, failed: [] });
  });

  it('bounds the drain by the (injected) timeout and runs every close step even when one fails', async () => {
    let fire: (() => void) | undefined;
    const closed: string[] = [];
    const s = new GracefulShutdown({
      drainTimeoutMs: 5,
      setTimeout: (fn) => {
        fire = fn;
        return 1;
      },
      clearTimeout: () => {},
    })
      .drain('never', () => new Promise(() => {}))
      .close('a', () => {
        throw new Error('boom');
      })
      .close('b', () => {
        closed.push('b');
      });
    const p = s.shutdown();
    await new Promise((r) => setImmediate(r));
    assert.ok(fire, 'timer armed');
    fire();
    const report = await p;
    assert.equal(report.drained, false);
    assert.deepEqual(report.failed, ['a']);
    assert.deepEqual(closed, ['b']);
  });

  it('shuts down on SIGTERM/SIGINT and forces on the third signal', async () => {
    const target = new EventEmitter();
    let closes = 0;
    let forced = 0;
    const s = new GracefulShutdown().close('x', () => {
      closes++;
    });
    const done = new Promise((resolve) => {
      s.installSignals(target, resolve, () => forced++);
    });
    target.emit('SIGTERM');
    target.emit('SIGINT');
    const report = (await done) as { reason: string };
    assert.equal(report.reason, 'SIGTERM');
    assert.equal(closes, 1);
    target.emit('SIGINT');
    assert.equal(forced, 1);
  });
});

describe('InFlight', () => {
  it('resolves idle when the count returns to zero; end is idempotent', async () => {
    const f = new InFlight();
    await f.idle();
    const a = f.begin();
    const b = f.begin();
    let idle = false;
    const p = f.idle().then(() => {
      idle = true;
    });
    a();
    a();
    await new Promise((r) => setImmediate(r));
    assert.equal(f.count, 1);
    assert.equal(idle, false);
    b();
    await p;
    assert.equal(f.count, 0);
  });
});
