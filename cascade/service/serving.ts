/**
 * What the gateway and the cloud teacher share in their configs and at start: which model card
 * to serve, on which engine, and how the deadline batcher runs it.
 */
import { type Static, Type } from '@sinclair/typebox';
import { loadRegistry, modelForTier } from '../../models/registry.ts';
import { loadServingEngine, type ServingEngine } from './engine.ts';
import type { Logger } from './log.ts';

/** Schema properties of {@link ServingConfig}, spread into each service's config schema. */
export const ServingConfigProperties = {
  /** Model card path; default the registry's model for the service's tier. */
  model: Type.Optional(Type.String({ minLength: 1 })),
  /** Registry file; default models/registry.json. */
  registry: Type.Optional(Type.String({ minLength: 1 })),
  /** Inference backends to try, in order (models/engines.ts names: 'tensorrt-native', 'ort-tensorrt', 'ort-cuda', 'ort-cpu'); default all by priority. */
  engines: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { minItems: 1 })),
  /** Run the model in a worker thread (I/O and inference overlap) or on the main thread. */
  engineThread: Type.Union([Type.Literal('worker'), Type.Literal('main')], { default: 'worker' }),
  intraOpThreads: Type.Integer({ minimum: 1, maximum: 64, default: 1 }),
  /** Engine sessions running batches at the same time. */
  concurrency: Type.Integer({ minimum: 1, maximum: 64, default: 1 }),
  maxBatch: Type.Integer({ minimum: 1, maximum: 256, default: 32 }),
  maxDelayMs: Type.Number({ minimum: 0, maximum: 1000, default: 2 }),
  maxQueue: Type.Integer({ minimum: 1, default: 4096 }),
};

const ServingConfigSchema = Type.Object(ServingConfigProperties);
export type ServingConfig = Static<typeof ServingConfigSchema>;

/**
 * Loads the engine a service's config names: its `model` card, else the registry's model for
 * `tier`.
 * @throws {CascadeError} MODEL_ERR_* for a missing or invalid card or registry;
 *   ENGINE_ERR_UNAVAILABLE when no backend can run the model.
 */
export async function loadConfiguredEngine(
  config: Readonly<ServingConfig>,
  tier: 'gateway' | 'cloud',
  logger: Logger,
): Promise<ServingEngine> {
  const cardPath = config.model ?? modelForTier(await loadRegistry(config.registry), tier).card;
  return loadServingEngine(cardPath, {
    thread: config.engineThread,
    engines: config.engines ? [...config.engines] : undefined,
    intraOpThreads: config.intraOpThreads,
    workers: config.concurrency,
    maxBatch: config.maxBatch,
    logger,
  });
}
