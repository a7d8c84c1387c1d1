import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import { loadBundledSample } from '../models/data/load.ts';
import {
  defaultEngineRegistry,
  type EngineBackend,
  EngineRegistry,
  type InferenceEngine,
  ortBackend,
} from '../models/engines.ts';
import { type Frame, inputLength, preprocess } from '../models/preprocess.ts';

const GATEWAY = 'models/gateway/card.json';
const N = 256;

/** Records what the registry logs. */
function recorder() {
  const lines: { level: string; obj: Record<string, unknown>; msg: string }[] = [];
  return {
    lines,
    logger: {
      info: (obj: object, msg: string) =>
        lines.push({ level: 'info', obj: obj as Record<string, unknown>, msg }),
      warn: (obj: object, msg: string) =>
        lines.push({ level: 'warn', obj: obj as Record<string, unknown>, msg }),
    },
  };
}

/** A backend that delegates to the CPU EP under another name, counting probes and loads. */
function counted(name: string, behaviour: { probe?: string; loadError?: string } = {}) {
  const cpu = ortBackend('cpu');
  const counts = { probe: 0, load: 0 };
  const backend: EngineBackend = {
    name,
    async probe() {
      counts.probe++;
      return behaviour.probe ?? null;
    },
    async load(cardPath, opts) {
      counts.load++;
      if (behaviour.loadError) throw new Error(behaviour.loadError);
      return cpu.load(cardPath, opts);
    },
  };
  return { backend, counts };
}

/** The bundled sample, preprocessed for a card's input through the reference preprocessor. */
async function batchFor(engine: InferenceEngine): Promise<{ batch: Float32Array; labels: Uint8Array }> {
  const ds = await loadBundledSample();
  const per = inputLength(engine.input);
  const batch = new Float32Array(N * per);
  const hw = ds.height * ds.width;
  for (let i = 0; i < N; i++) {
    const frame: Frame = {
      data: ds.images.subarray(i * hw, (i + 1) * hw),
      width: ds.width,
      height: ds.height,
      format: 'gray',
    };
    preprocess(frame, engine.input, batch.subarray(i * per, (i + 1) * per));
  }
  return { batch, labels: ds.labels.subarray(0, N) };
}

function argmax(logits: Float32Array, classes: number, i: number): number {
  let best = 0;
  for (let k = 1; k < classes; k++) if (logits[i * classes + k] > logits[i * classes + best]) best = k;
  return best;
}

describe('EngineRegistry', () => {
  it('tries backends by priority, probing each once, and logs every skip and the choice', async () => {
    const broken = counted('broken', { probe: 'no such device' });
    const failing = counted('failing', { loadError: 'engine build failed: out of memory\nstack' });
    const good = counted('good');
    const low = counted('low');
    const reg = new EngineRegistry()
      .register(low.backend, 1)
      .register(good.backend, 5)
      .register(failing.backend, 7)
      .register(broken.backend, 9);
    assert.deepEqual(reg.names, ['broken', 'failing', 'good', 'low']);
    const log = recorder();
    const { engine, skipped } = await reg.select(GATEWAY, { logger: log.logger });
    try {
      assert.equal(engine.card.name, 'gateway-kd');
      assert.deepEqual(skipped, [
        { backend: 'broken', reason: 'no such device' },
        { backend: 'failing', reason: 'load failed: engine build failed: out of memory' },
      ]);
      assert.deepEqual(
        log.lines.map((l) => [l.level, l.obj.backend]),
        [
          ['warn', 'broken'],
          ['warn', 'failing'],
          ['info', 'good'],
        ],
      );
      assert.match(log.lines[2].msg, /inference engine: good \(gateway-int8\.onnx\)/);
      assert.equal(low.counts.load, 0);
    } finally {
      await engine.dispose();
    }
    // A second selection reuses the probes (lazily started once) but loads again.
    const again = await reg.select(GATEWAY);
    await again.engine.dispose();
    assert.deepEqual([broken.counts.probe, failing.counts.probe, good.counts.probe], [1, 1, 1]);
    assert.deepEqual([failing.counts.load, good.counts.load], [2, 2]);
  });

  it('honours `only` and its order, and lists every failure when nothing loads', async () => {
    const a = counted('a', { probe: 'driver missing' });
    const b = counted('b', { loadError: 'parser rejected the model' });
    const c = counted('c');
    const reg = new EngineRegistry().register(a.backend, 3).register(b.backend, 2).register(c.backend, 1);
    await assert.rejects(reg.select(GATEWAY, { only: ['b', 'a', 'nope'] }), (err: unknown) => {
      assert.ok(err instanceof CascadeError);
      assert.equal(err.code, ErrorCodes.ENGINE_ERR_UNAVAILABLE);
      assert.match(
        err.message,
        /b: load failed: parser rejected the model; a: driver missing; nope: no backend named nope/,
      );
      return true;
    });
    assert.equal(c.counts.probe, 0, 'backends outside `only` are never probed');
    // Re-registering a name replaces the backend.
    reg.register(counted('a').backend, 3);
    const { engine } = await reg.select(GATEWAY, { only: ['a'] });
    await engine.dispose();
    assert.throws(() => reg.register(c.backend, Number.NaN), TypeError);
  });
});

describe('default engines', async () => {
  const reg = defaultEngineRegistry();
  const available = new Map<string, string | null>();
  for (const name of reg.names) available.set(name, await reg.availability(name));

  it('registers native TensorRT, ORT TensorRT EP, CUDA EP, CPU EP in that order; CPU is always available', () => {
    assert.deepEqual(reg.names, ['tensorrt-native', 'ort-tensorrt', 'ort-cuda', 'ort-cpu']);
    assert.equal(available.get('ort-cpu'), null);
    for (const [name, why] of available) if (why) assert.ok(why.length > 10, `${name} gives a reason`);
  });

  it('selects the best available engine and reports why better ones were skipped', async () => {
    const log = recorder();
    const { engine, skipped } = await reg.select(GATEWAY, { logger: log.logger });
    try {
      const first = reg.names.find((n) => available.get(n) === null);
      // A backend that probes fine may still fail to load; otherwise the first available wins.
      assert.ok(reg.names.indexOf(engine.backend) >= reg.names.indexOf(first ?? 'ort-cpu'));
      assert.deepEqual(
        skipped.map((s) => s.backend),
        reg.names.slice(0, reg.names.indexOf(engine.backend)),
      );
      assert.equal(log.lines.at(-1)?.level, 'info');
    } finally {
      await engine.dispose();
    }
  });

  // The shared parity suite: every engine against the CPU EP on the same model file.
  for (const name of ['tensorrt-native', 'ort-tensorrt', 'ort-cuda', 'ort-cpu']) {
    const why = available.get(name) ?? null;
    it(`${name}: logits match the CPU EP on ${N} real images`, { skip: why ?? false }, async () => {
      const { engine } = await reg.select(GATEWAY, { only: [name] });
      // The CPU EP on the very file the engine loaded (GPU engines load the 'qdq-trt' flavour).
      const form = engine.card.files.find((f) => f.file === engine.file)?.form;
      const cpu = await ortBackend('cpu', form).load(GATEWAY, {});
      try {
        assert.equal(cpu.file, engine.file);
        const { batch, labels } = await batchFor(engine);
        const got = await engine.logits(batch, N);
        const want = await cpu.logits(batch, N);
        const k = engine.classes;
        let agree = 0;
        let correct = 0;
        let maxDiff = 0;
        for (let i = 0; i < N; i++) {
          if (argmax(got, k, i) === argmax(want, k, i)) agree++;
          if (argmax(got, k, i) === labels[i]) correct++;
        }
        for (let j = 0; j < got.length; j++) maxDiff = Math.max(maxDiff, Math.abs(got[j] - want[j]));
        if (name === 'ort-cpu') assert.equal(maxDiff, 0);
        // INT8 kernels differ between providers (rounding, accumulation order): same top-1 on
        // at least 99% of images, logits within 0.5.
        assert.ok(agree >= 0.99 * N, `top-1 agreement ${agree}/${N}`);
        assert.ok(maxDiff <= 0.5, `max |logit difference| ${maxDiff}`);
        assert.ok(correct >= 0.8 * N, `accuracy ${correct}/${N}`);
        await assert.rejects(engine.logits(batch.subarray(1), N), RangeError);
      } finally {
        await Promise.all([engine.dispose(), cpu.dispose()]);
      }
    });
  }
});
