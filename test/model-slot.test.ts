/**
 * device/model-slot.ts with real ONNX Runtime sessions (the trained INT8 device student and a
 * tiny test model): a swap in the middle of a stream of overlapping frames loses none, frames
 * that started before the swap finish on the old session and every later one runs on the new,
 * and the old session is handed back only when nothing runs on it, so disposing it at once never
 * breaks a frame. Also device/ota-health.ts on the same real models.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ModelSlot } from '../device/model-slot.ts';
import { healthCheck, type ProbeSet } from '../device/ota-health.ts';
import { OnnxClassifier } from '../models/runtime.ts';
import { centroidModel, probeSet } from './fixtures/ota-fixtures.ts';

const DEVICE_CARD = new URL('../models/device/card.json', import.meta.url).pathname;
let dir: string;
let probe: ProbeSet;
let tinyCard: string;
let brokenCard: string;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ota-slot-'));
  probe = await probeSet(200);
  tinyCard = (await centroidModel(dir, probe, { variant: 5 })).cardPath;
  brokenCard = (await centroidModel(dir, probe, { variant: 6, broken: true })).cardPath;
});
after(() => rmSync(dir, { recursive: true, force: true }));

const size = (p: ProbeSet): number => p.height * p.width * p.channels;

describe('ModelSlot', () => {
  it('swaps between frames: none lost, none on a disposed session, old before and new after', async () => {
    const oldModel = await OnnxClassifier.load(DEVICE_CARD, { intraOpThreads: 1 });
    const newModel = await OnnxClassifier.load(tinyCard, { intraOpThreads: 1 });
    const slot = new ModelSlot(oldModel);
    const answers: { frame: number; model: string; pred: number }[] = [];
    const errors: unknown[] = [];
    let started = 0;
    let swapAt = -1;
    let disposedAt = -1;
    const FRAMES = 120;
    const frame = async (i: number): Promise<void> => {
      const px = probe.images.subarray((i % probe.n) * size(probe), ((i % probe.n) + 1) * size(probe));
      try {
        const r = await slot.run(async (m) => ({ model: m.card.name, r: await m.classify(px, 1) }));
        answers.push({ frame: i, model: r.model, pred: r.r.pred[0] });
      } catch (err) {
        errors.push(err);
      }
    };
    // Two frames in flight at any time (double buffering), as the device pipeline runs them.
    const inFlight = new Set<Promise<void>>();
    while (started < FRAMES) {
      if (started === 40) {
        swapAt = started;
        void slot.swap(newModel).then(async (old) => {
          disposedAt = started;
          await old.dispose(); // at once: safe only because the slot waited for its frames
        });
      }
      const p = frame(started++);
      inFlight.add(p);
      void p.finally(() => inFlight.delete(p));
      if (inFlight.size >= 2) await Promise.race(inFlight);
    }
    await Promise.all(inFlight);
    assert.deepEqual(errors, []);
    assert.equal(answers.length, FRAMES);
    assert.deepEqual(
      answers.map((a) => a.frame).sort((a, b) => a - b),
      Array.from({ length: FRAMES }, (_, i) => i),
    );
    for (const a of answers) {
      assert.equal(a.model, a.frame < swapAt ? oldModel.card.name : newModel.card.name, `frame ${a.frame}`);
    }
    assert.ok(disposedAt >= swapAt, 'old session released after the swap');
    assert.equal(slot.current, newModel);
    assert.equal(slot.swaps, 1);
    await assert.rejects(oldModel.classify(probe.images.subarray(0, size(probe)), 1), /after dispose/);
    await newModel.dispose();
  });

  it('resolves a swap only after the frames running on the old model finish', async () => {
    const a = await OnnxClassifier.load(tinyCard);
    const b = await OnnxClassifier.load(tinyCard);
    const slot = new ModelSlot(a);
    let release: () => void = () => {};
    const gate = new Promise<void>((ok) => {
      release = ok;
    });
    const running = slot.run(async (m) => {
      await gate;
      return m;
    });
    let swapped = false;
    const swap = slot.swap(b).then((old) => {
      swapped = true;
      return old;
    });
    await new Promise((r) => setImmediate(r));
    assert.equal(swapped, false, 'still waiting for the frame on the old model');
    assert.equal(slot.current, b, 'but new frames already use the new one');
    assert.equal(await slot.run(async (m) => m), b);
    release();
    assert.equal(await running, a);
    assert.equal(await swap, a);
    await a.dispose();
    await b.dispose();
  });
});

describe('health check', () => {
  it('passes the trained device student and a correct test model on real probe images', async () => {
    for (const card of [DEVICE_CARD, tinyCard]) {
      const m = await OnnxClassifier.load(card);
      const h = await healthCheck(m, probe);
      await m.dispose();
      assert.ok(h.ok, `${card}: ${h.reason}`);
      assert.ok((h.accuracy ?? 0) >= h.expected - h.margin);
      assert.equal(h.n, 200);
    }
  });

  it('fails a model whose accuracy is far below its card, naming the numbers', async () => {
    const m = await OnnxClassifier.load(brokenCard);
    const h = await healthCheck(m, probe);
    await m.dispose();
    assert.equal(h.ok, false);
    assert.ok((h.accuracy ?? 1) < 0.3);
    assert.match(h.reason ?? '', /probe accuracy 0\.\d+ is below the card's 0\.600/);
  });
});
