/**
 * The cloud teacher's configuration (TypeBox schema with defaults), loaded from a JSON file, the
 * `CASCADE_CLOUD_*` environment and flags. A bearer token is required unless `auth` is false:
 * `CASCADE_CLOUD_TOKEN` or `tokenFile` (never logged).
 */
import { type Static, Type } from '@sinclair/typebox';
import { type ConfigSources, loadConfig } from '../cascade/service/config.ts';
import { LOG_LEVELS } from '../cascade/service/log.ts';
import { ServingConfigProperties } from '../cascade/service/serving.ts';

/** Prefix of the cloud's environment variables. */
export const CLOUD_ENV_PREFIX = 'CASCADE_CLOUD_';

const HardExamples = Type.Object(
  {
    /** Folder of the log; unset: no hard-example log. */
    dir: Type.Optional(Type.String({ minLength: 1 })),
    /** Cap on the log's bytes on disk (all segments); the oldest segment goes first. */
    maxBytes: Type.Integer({ minimum: 4096, default: 64 * 1024 * 1024 }),
    /** Segments the cap is split into (rotation granularity). */
    segments: Type.Integer({ minimum: 2, maximum: 1000, default: 8 }),
    /** Log frames whose teacher confidence is below this. */
    confidenceBelow: Type.Number({ minimum: 0, maximum: 1, default: 0.6 }),
    /** Log frames where the gateway's (or device's) top-1 differs from the teacher's. */
    disagreement: Type.Boolean({ default: true }),
    /** Records waiting for the disk beyond this are dropped (counted). */
    maxPending: Type.Integer({ minimum: 1, default: 1024 }),
  },
  { additionalProperties: false, default: {} },
);

export const CloudConfigSchema = Type.Object(
  {
    httpHost: Type.String({ default: '0.0.0.0' }),
    httpPort: Type.Integer({ minimum: 0, maximum: 65535, default: 8081 }),
    bodyLimitBytes: Type.Integer({ minimum: 1024, default: 16 * 1024 * 1024 }),
    /**
     * HTTP requests per minute per client address (429 with Retry-After beyond); 0: no limit.
     * The clients are gateways, few and busy: the default bounds a runaway or hostile one.
     */
    rateLimitPerMinute: Type.Integer({ minimum: 0, default: 120_000 }),
    /** Require `Authorization: Bearer <token>` on inference and metadata. */
    auth: Type.Boolean({ default: true }),
    token: Type.Optional(Type.String({ minLength: 8 })),
    tokenFile: Type.Optional(Type.String({ minLength: 1 })),
    ...ServingConfigProperties,
    /** Budget of requests without `parameters.budget_ms`. */
    defaultBudgetMs: Type.Number({ exclusiveMinimum: 0, default: 1000 }),
    hardExamples: HardExamples,
    drainTimeoutMs: Type.Integer({ minimum: 0, default: 5000 }),
    logLevel: Type.Union(
      LOG_LEVELS.map((l) => Type.Literal(l)),
      { default: 'info' },
    ),
  },
  { additionalProperties: false },
);

export type CloudConfig = Static<typeof CloudConfigSchema>;

/**
 * Loads the cloud config (defaults < file < env < flags).
 * @throws {CascadeError} CFG_ERR_INVALID listing every problem.
 */
export function loadCloudConfig(sources: ConfigSources = {}): Readonly<CloudConfig> {
  return loadConfig(CloudConfigSchema, { envPrefix: CLOUD_ENV_PREFIX, ...sources }, 'cloud config');
}
