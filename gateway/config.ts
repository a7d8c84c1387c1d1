/**
 * The gateway's configuration: one TypeBox schema with defaults, loaded from a JSON file, the
 * `CASCADE_GATEWAY_*` environment and flags by {@link loadConfig} (every error listed at once,
 * the result frozen). `cloud.token` is a secret: take it from the environment
 * (`CASCADE_GATEWAY_CLOUD_TOKEN`) or a file (`cloud.tokenFile`), never from a flag in production.
 */
import { type Static, Type } from '@sinclair/typebox';
import { type ConfigSources, loadConfig } from '../cascade/service/config.ts';
import { LOG_LEVELS } from '../cascade/service/log.ts';
import { ServingConfigProperties } from '../cascade/service/serving.ts';

/** Prefix of the gateway's environment variables. */
export const GATEWAY_ENV_PREFIX = 'CASCADE_GATEWAY_';

const CloudConfig = Type.Object(
  {
    /** Base URL of the cloud teacher (KServe v2); unset: the gateway always answers itself. */
    url: Type.Optional(Type.String({ pattern: '^https?://' })),
    /** Bearer token for the cloud. */
    token: Type.Optional(Type.String({ minLength: 1 })),
    /** File holding the bearer token (first line), read at start. */
    tokenFile: Type.Optional(Type.String({ minLength: 1 })),
    /** Model name on the cloud server. */
    model: Type.String({ minLength: 1, default: 'teacher' }),
    /** The cloud call ends this long before the frame's deadline, leaving time to answer. */
    marginMs: Type.Number({ minimum: 0, default: 3 }),
    /** Keep-alive connections in the pool. */
    connections: Type.Integer({ minimum: 1, maximum: 1024, default: 16 }),
  },
  { additionalProperties: false, default: {} },
);

export const GatewayConfigSchema = Type.Object(
  {
    /** MQTT broker URL (mqtt://, mqtts://); unset: HTTP only. */
    broker: Type.Optional(Type.String({ pattern: '^mqtts?://' })),
    /** MQTT protocol: 4 = 3.1.1, 5 = MQTT 5 (adds message expiry on answers). */
    protocol: Type.Union([Type.Literal(4), Type.Literal(5)], { default: 4 }),
    /** Consume through `$share/<sharedGroup>/…` (Mosquitto, EMQX, HiveMQ); false for aedes. */
    shared: Type.Boolean({ default: true }),
    sharedGroup: Type.String({ pattern: '^[A-Za-z0-9._-]{1,64}$', default: 'cascade-gateways' }),
    /** MQTT client id; default `cascade-gateway-<pid>-<random>`. */
    clientId: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
    mqttUsername: Type.Optional(Type.String()),
    mqttPassword: Type.Optional(Type.String()),
    /** TLS (mqtts://): CA file to trust for the broker's certificate (PEM); default Node's store. */
    mqttCaFile: Type.Optional(Type.String({ minLength: 1 })),
    /** Mutual TLS: the gateway's client certificate and key (PEM); its CN is the MQTT identity. */
    mqttCertFile: Type.Optional(Type.String({ minLength: 1 })),
    mqttKeyFile: Type.Optional(Type.String({ minLength: 1 })),
    httpHost: Type.String({ default: '0.0.0.0' }),
    /** HTTP port for KServe v2, /metrics, /healthz, /readyz; 0 picks a free one. */
    httpPort: Type.Integer({ minimum: 0, maximum: 65535, default: 8080 }),
    /** Largest HTTP request body. */
    bodyLimitBytes: Type.Integer({ minimum: 1024, default: 4 * 1024 * 1024 }),
    /** HTTP requests per minute per client address (429 with Retry-After beyond); 0: no limit. */
    rateLimitPerMinute: Type.Integer({ minimum: 0, default: 12_000 }),
    ...ServingConfigProperties,
    /** Budget of HTTP requests that do not set `parameters.budget_ms`. */
    defaultBudgetMs: Type.Number({ exclusiveMinimum: 0, default: 50 }),
    /** Top-k classes in each answer. */
    topk: Type.Integer({ minimum: 1, maximum: 10, default: 3 }),
    /** Policy overrides (see cascade/policy config); validated by the policy engine. */
    policy: Type.Record(Type.String(), Type.Unknown(), { default: {} }),
    cloud: CloudConfig,
    drainTimeoutMs: Type.Integer({ minimum: 0, default: 5000 }),
    logLevel: Type.Union(
      LOG_LEVELS.map((l) => Type.Literal(l)),
      { default: 'info' },
    ),
  },
  { additionalProperties: false },
);

export type GatewayConfig = Static<typeof GatewayConfigSchema>;

/**
 * Loads the gateway config (defaults < file < env < flags).
 * @throws {CascadeError} CFG_ERR_INVALID listing every problem.
 */
export function loadGatewayConfig(sources: ConfigSources = {}): Readonly<GatewayConfig> {
  return loadConfig(GatewayConfigSchema, { envPrefix: GATEWAY_ENV_PREFIX, ...sources }, 'gateway config');
}
