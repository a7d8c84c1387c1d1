/**
 * The Triton / KServe model repository (deploy/triton/make-model-repository.ts): the teacher
 * wrapped to take exactly what the gateway sends (`input`, UINT8 pixels) and return exactly what
 * it reads (`probabilities`), checked with onnxruntime against `cascade cloud`'s own answers on
 * real images — the same probabilities, so swapping the service is a URL change. (Triton itself
 * does not run here; its ONNX Runtime backend serves this file as it is.)
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import * as ort from 'onnxruntime-node';
import { buildCloudApp, type CloudApp } from '../cloud/app.ts';
import { loadCloudConfig } from '../cloud/config.ts';
import {
  SERVING_INPUT,
  SERVING_OUTPUT,
  servingModel,
  tritonConfig,
} from '../deploy/triton/make-model-repository.ts';
import type { ImageDataset } from '../models/data/dataset.ts';
import { loadBundledSample } from '../models/data/load.ts';

const N = 64;
const PX = 28 * 28;

describe('Triton model repository for the teacher', () => {
  let data: ImageDataset;
  let cloud: CloudApp;
  let session: ort.InferenceSession;
  const keepAlive = setInterval(() => {}, 1000);

  before(async () => {
    data = await loadBundledSample();
    cloud = await buildCloudApp(
      loadCloudConfig({ flags: { httpPort: 0, auth: false, logLevel: 'silent' } }),
      {
        defaultMetrics: false,
      },
    );
    session = await ort.InferenceSession.create(servingModel().bytes);
  });
  after(async () => {
    clearInterval(keepAlive);
    await session?.release();
    await cloud?.close();
  });

  it('takes UINT8 pixels as `input` and returns calibrated `probabilities` equal to cascade cloud’s', async () => {
    assert.deepEqual(session.inputNames, [SERVING_INPUT]);
    assert.deepEqual(session.outputNames, [SERVING_OUTPUT]);
    const pixels = data.images.subarray(0, N * PX);
    const out = await session.run({
      [SERVING_INPUT]: new ort.Tensor('uint8', Uint8Array.from(pixels), [N, 28, 28]),
    });
    const probs = out[SERVING_OUTPUT].data as Float32Array;
    assert.deepEqual(out[SERVING_OUTPUT].dims, [N, 10]);
    let worst = 0;
    for (let i = 0; i < N; i++) {
      const r = await cloud.http.inject({
        method: 'POST',
        url: `/v2/models/${cloud.card.name}/infer`,
        payload: {
          inputs: [
            {
              name: 'input',
              shape: [1, 28, 28],
              datatype: 'UINT8',
              data: Array.from(pixels.subarray(i * PX, (i + 1) * PX)),
            },
          ],
        },
      });
      assert.equal(r.statusCode, 200, r.body);
      const json = r.json() as { outputs: { name: string; data: number[] }[] };
      const expected = json.outputs.find((o) => o.name === 'probabilities')?.data ?? [];
      assert.equal(expected.length, 10);
      for (let k = 0; k < 10; k++) worst = Math.max(worst, Math.abs(expected[k] - probs[i * 10 + k]));
    }
    assert.ok(worst < 1e-4, `largest probability difference ${worst}`);
    assert.ok(worst > 0 || probs.some((p) => p > 0 && p < 1), 'real probabilities were compared');
  });

  it('config.pbtxt names the same tensors, shapes and a dynamic batcher', () => {
    const text = tritonConfig('teacher', [28, 28], 10);
    assert.match(text, /name: "teacher"/);
    assert.match(text, /backend: "onnxruntime"/);
    assert.match(text, /name: "input", data_type: TYPE_UINT8, dims: \[ 28, 28 \]/);
    assert.match(text, /name: "probabilities", data_type: TYPE_FP32, dims: \[ 10 \]/);
    assert.match(text, /dynamic_batching/);
  });
});
