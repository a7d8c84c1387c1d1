/**
 * `cascade device` configuration: one TypeBox schema with every default, loaded from a JSON file,
 * `CASCADE_DEVICE_*` environment variables and flags (cascade/service/config.ts), every error
 * listed at once, then frozen.
 */
import { type Static, Type } from '@sinclair/typebox';
import { type ConfigSources, loadConfig } from '../cascade/service/config.ts';
import { LOG_LEVELS } from '../cascade/service/log.ts';

const Int = (min: number, dflt: number, max?: number) =>
  Type.Integer({ minimum: min, ...(max === undefined ? {} : { maximum: max }), default: dflt });

const RectSchema = Type.Object(
  {
    x: Type.Integer({ minimum: 0 }),
    y: Type.Integer({ minimum: 0 }),
    width: Type.Integer({ minimum: 1 }),
    height: Type.Integer({ minimum: 1 }),
  },
  { additionalProperties: false },
);

export const DeviceConfigSchema = Type.Object(
  {
    /** Device id: the `<id>` of its MQTT topics. */
    deviceId: Type.String({ pattern: '^[A-Za-z0-9._-]{1,64}$', default: 'cam-1' }),
    /** Latency budget of a frame, capture to result, ms. */
    budgetMs: Type.Number({ exclusiveMinimum: 0, default: 50 }),
    broker: Type.Object(
      {
        /** mqtt://host:port or mqtts://host:port; null: classify locally only. */
        url: Type.Union([Type.String({ pattern: '^mqtts?://' }), Type.Null()], { default: null }),
        /** 4 = MQTT 3.1.1 (the embedded broker), 5 = MQTT 5 (message expiry from the budget). */
        protocolVersion: Type.Union([Type.Literal(4), Type.Literal(5)], { default: 4 }),
        username: Type.Optional(Type.String()),
        password: Type.Optional(Type.String()),
        /** TLS: CA, client certificate and key files (PEM). */
        caFile: Type.Optional(Type.String()),
        certFile: Type.Optional(Type.String()),
        keyFile: Type.Optional(Type.String()),
        backoffInitialMs: Int(1, 100),
        backoffMaxMs: Int(1, 5000),
      },
      { additionalProperties: false, default: {} },
    ),
    source: Type.Object(
      {
        /** replay: dataset-replay camera; ffmpeg: file, RTSP or V4L2 via ffmpeg; folder: images. */
        kind: Type.Union([Type.Literal('replay'), Type.Literal('ffmpeg'), Type.Literal('folder')], {
          default: 'replay',
        }),
        /** ffmpeg input (file, rtsp://…, /dev/videoN) or image folder. */
        input: Type.Optional(Type.String()),
        /** Replay dataset folder (IDX or ImageFolder test split); default the bundled sample. */
        data: Type.Optional(Type.String()),
        /** Frames per second (replay, folder; ffmpeg: output rate); 0 = as fast as processed. */
        fps: Type.Number({ minimum: 0, default: 25 }),
        width: Int(1, 640, 8192),
        height: Int(1, 480, 8192),
        /** Frames to capture; 0 = the source's own end (replay: one pass over its shard). */
        frames: Int(0, 0),
        /** Replay and folder: start over at the end. */
        loop: Type.Boolean({ default: false }),
        seed: Int(0, 1),
        /** Replay: this camera's share of the dataset (images index, index + count, …). */
        shard: Type.Object(
          { index: Int(0, 0), count: Int(1, 1) },
          { additionalProperties: false, default: {} },
        ),
        /** A fixed region of interest for ffmpeg and folder frames; default the whole frame. */
        roi: Type.Union([RectSchema, Type.Null()], { default: null }),
      },
      { additionalProperties: false, default: {} },
    ),
    model: Type.Object(
      {
        /** Model registry (default models/registry.json); its device-tier model is used. */
        registry: Type.Optional(Type.String()),
        /** A model card to load instead of the registry's. */
        card: Type.Optional(Type.String()),
      },
      { additionalProperties: false, default: {} },
    ),
    pipeline: Type.Object(
      {
        mode: Type.Union([Type.Literal('pipelined'), Type.Literal('sequential')], { default: 'pipelined' }),
        preprocess: Type.Union(
          [Type.Literal('auto'), Type.Literal('native'), Type.Literal('worker'), Type.Literal('inline')],
          { default: 'auto' },
        ),
        /** Frames waiting before the oldest is dropped. */
        slotCapacity: Int(1, 1, 64),
        resize: Type.Union([Type.Literal('area'), Type.Literal('bilinear')], { default: 'area' }),
      },
      { additionalProperties: false, default: {} },
    ),
    offload: Type.Object(
      {
        /** Offloads awaiting an answer before new frames stay local (`local:busy`). */
        maxInFlight: Int(1, 32, 4096),
        /** Kept back from the budget for publishing the result, ms. */
        marginMs: Type.Number({ minimum: 0, default: 2 }),
        /** Results kept while the broker is unreachable (oldest dropped beyond). */
        outboxSize: Int(0, 1024, 1_000_000),
        /** Payload candidates offered to the policy: the tensor, and JPEG crops unless private. */
        jpeg: Type.Boolean({ default: true }),
      },
      { additionalProperties: false, default: {} },
    ),
    policy: Type.Object(
      {
        /** Policy file (JSON, watched: edits apply without a restart). */
        file: Type.Optional(Type.String()),
        /** No raw pixels leave the device: never a JPEG payload. */
        privacy: Type.Boolean({ default: false }),
      },
      { additionalProperties: false, default: {} },
    ),
    http: Type.Object(
      {
        /** Port of /metrics, /healthz, /readyz; null: no HTTP server; 0: any free port. */
        port: Type.Union([Type.Integer({ minimum: 0, maximum: 65535 }), Type.Null()], { default: null }),
        host: Type.String({ default: '127.0.0.1' }),
      },
      { additionalProperties: false, default: {} },
    ),
    ota: Type.Object(
      {
        /** TUF repository URL; null: no over-the-air updates. */
        url: Type.Union([Type.String({ pattern: '^https?://' }), Type.Null()], { default: null }),
        /** Trusted root.json to provision on first boot. */
        trustedRoot: Type.Optional(Type.String()),
        /** Folder of TUF metadata and of the model store. */
        dir: Type.String({ default: '.cascade-device' }),
        hardwareClass: Type.String({ default: 'generic' }),
        pollIntervalMs: Int(1000, 900_000),
      },
      { additionalProperties: false, default: {} },
    ),
    log: Type.Object(
      {
        level: Type.Union(
          LOG_LEVELS.map((l) => Type.Literal(l)),
          { default: 'info' },
        ),
      },
      { additionalProperties: false, default: {} },
    ),
    /** Longest wait for in-flight frames and offloads at shutdown, ms. */
    drainTimeoutMs: Int(0, 10_000),
  },
  { additionalProperties: false },
);

export type DeviceConfig = Static<typeof DeviceConfigSchema>;

/**
 * Loads the device config: defaults < file < `CASCADE_DEVICE_*` environment < flags.
 * @throws {CascadeError} CFG_ERR_INVALID listing every problem.
 */
export function loadDeviceConfig(sources: ConfigSources): Readonly<DeviceConfig> {
  return loadConfig(DeviceConfigSchema, { envPrefix: 'CASCADE_DEVICE_', ...sources }, 'device config');
}
