/**
 * The serving engine's worker thread: loads the model on the best backend of models/engines.ts
 * and runs the batches the main thread sends, one at a time, returning logits (transferred).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { defaultEngineRegistry, type InferenceEngine } from '../../models/engines.ts';
import type { EngineWorkerData, FromWorker, ToWorker } from './engine.ts';

const port = parentPort;
if (port === null) throw new Error('engine-worker.ts runs only as a worker thread');
const data = workerData as EngineWorkerData;

function send(m: FromWorker, transfer: ArrayBuffer[] = []): void {
  port?.postMessage(m, transfer);
}

let engine: InferenceEngine;
try {
  const sel = await defaultEngineRegistry().select(data.cardPath, {
    only: data.engines,
    intraOpThreads: data.intraOpThreads,
    maxBatch: data.maxBatch,
  });
  engine = sel.engine;
  send({ type: 'ready', backend: engine.backend, file: engine.file, skipped: sel.skipped });
} catch (err) {
  send({
    type: 'fatal',
    message: err instanceof Error ? err.message : String(err),
    code: (err as { code?: string }).code,
  });
  process.exit(1);
}

port.on('message', async (m: ToWorker) => {
  if (m.type === 'dispose') {
    await engine.dispose();
    port.close();
    return;
  }
  try {
    const logits = await engine.logits(m.batch, m.n);
    const own =
      logits.byteOffset === 0 && logits.byteLength === logits.buffer.byteLength ? logits : logits.slice();
    send({ type: 'result', id: m.id, logits: own }, [own.buffer as ArrayBuffer]);
  } catch (err) {
    send({ type: 'error', id: m.id, message: err instanceof Error ? err.message : String(err) });
  }
});
