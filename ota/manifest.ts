/**
 * The model manifest: what a TUF target says about a model beyond its length and hashes (in the
 * target's `custom.cascade`), how targets are named, and how a device picks the one it should
 * run: its tier and hardware class, the highest release it has not already rejected, and a
 * canary rollout that selects devices by a stable hash of their id. Pure: no I/O, no clock.
 */
import { createHash } from 'node:crypto';
import { type Static, Type } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import { type InputSpec, type ModelCard, Tier } from '../models/card.ts';
import { canonicalize } from './canonical.ts';

/** MQTT topic on which publishers announce a new repository state (a hint: devices then refresh). */
export const ANNOUNCE_TOPIC = 'cascade/v1/ota/announce';

/** MQTT topic of a device's OTA status (retained). */
export function statusTopic(deviceId: string): string {
  return `cascade/v1/${deviceId}/ota/status`;
}

const Sha256 = Type.String({ pattern: '^[0-9a-f]{64}$' });
/**
 * A finite number as its shortest round-trip decimal string. TUF signs canonical JSON in the
 * OLPC form, which has no floating-point numbers, so manifest fields that are real numbers (input
 * mean/std, quantization scale, thresholds, accuracy) travel as strings that parse back exactly.
 */
const Decimal = Type.String({ pattern: '^-?(0|[1-9][0-9]*)(\\.[0-9]+)?(e[-+]?[0-9]+)?$' });

/** The card's input spec with its real numbers as {@link Decimal} strings. */
const ManifestInput = Type.Object(
  {
    name: Type.String(),
    layout: Type.Union([Type.Literal('NCHW'), Type.Literal('NHWC')]),
    height: Type.Integer({ minimum: 1 }),
    width: Type.Integer({ minimum: 1 }),
    colour: Type.Union([Type.Literal('gray'), Type.Literal('rgb'), Type.Literal('bgr')]),
    mean: Type.Array(Decimal),
    std: Type.Array(Decimal, { minItems: 1 }),
    quant: Type.Optional(
      Type.Object(
        {
          scale: Decimal,
          zeroPoint: Type.Integer(),
          dtype: Type.Union([Type.Literal('uint8'), Type.Literal('int8')]),
        },
        { additionalProperties: false },
      ),
    ),
  },
  { additionalProperties: false },
);
export type ManifestInput = Static<typeof ManifestInput>;

const dec = (x: number): string => {
  if (!Number.isFinite(x)) throw new RangeError(`${x} is not a finite number`);
  return String(x);
};

/** The manifest form of an input spec (real numbers as exact decimal strings). */
export function encodeInput(spec: InputSpec): ManifestInput {
  const out: ManifestInput = {
    name: spec.name,
    layout: spec.layout,
    height: spec.height,
    width: spec.width,
    colour: spec.colour,
    mean: spec.mean.map(dec),
    std: spec.std.map(dec),
  };
  if (spec.quant)
    out.quant = { scale: dec(spec.quant.scale), zeroPoint: spec.quant.zeroPoint, dtype: spec.quant.dtype };
  return out;
}

/** The input spec a manifest describes. */
export function decodeInput(m: ManifestInput): InputSpec {
  const out: InputSpec = { ...m, mean: m.mean.map(Number), std: m.std.map(Number), quant: undefined };
  if (m.quant)
    out.quant = { scale: Number(m.quant.scale), zeroPoint: m.quant.zeroPoint, dtype: m.quant.dtype };
  else delete out.quant;
  return out;
}
/** Hardware class names: lower-case words, digits, '-', '_', '.' (they become path segments). */
const HardwareClass = Type.String({ pattern: '^[a-z0-9][a-z0-9._-]{0,63}$' });

/** `custom.cascade` of a model file target. */
export const ModelTargetMeta = Type.Object(
  {
    kind: Type.Literal('model'),
    tier: Tier,
    hardwareClass: HardwareClass,
    /** Monotonic release number per tier and hardware class: devices never go below it. */
    release: Type.Integer({ minimum: 1 }),
    /** Model card name and version. */
    model: Type.String({ minLength: 1 }),
    version: Type.String({ minLength: 1 }),
    input: ManifestInput,
    /** The card's cascade thresholds (decimal strings). */
    thresholds: Type.Object({ accept: Decimal }, { additionalProperties: false }),
    /** Test accuracy the card claims (decimal string); the health check compares against it. */
    testAccuracy: Type.Optional(Decimal),
    /** Whole percentage of devices (by stable hash of their id) that should take this release. */
    rollout: Type.Integer({ minimum: 0, maximum: 100 }),
    /** The model card target that travels with the model. */
    card: Type.Object(
      { path: Type.String({ minLength: 1 }), length: Type.Integer({ minimum: 1 }), sha256: Sha256 },
      { additionalProperties: false },
    ),
  },
  { additionalProperties: false },
);
export type ModelTargetMeta = Static<typeof ModelTargetMeta>;

const checkMeta = TypeCompiler.Compile(ModelTargetMeta);

/** A model target as listed in trusted targets metadata. */
export interface ModelTarget {
  path: string;
  length: number;
  sha256: string;
  meta: ModelTargetMeta;
}

/** The part of a TUF target file the manifest reads (matches @tufjs/models' TargetFile). */
export interface TargetLike {
  length: number;
  hashes: Record<string, string>;
  custom: Record<string, unknown>;
}

/** Target paths of one release: `<tier>/<hardwareClass>/r<release>/{card.json,<model file>}`. */
export function releasePaths(
  tier: Tier,
  hardwareClass: string,
  release: number,
  modelFile: string,
): { dir: string; card: string; model: string } {
  const dir = `${tier}/${hardwareClass}/r${release}`;
  const base = modelFile.split('/').pop() ?? modelFile;
  return { dir, card: `${dir}/card.json`, model: `${dir}/${base}` };
}

/** The rollout channel of a target: releases are ordered, and canaries chosen, per channel. */
export function channelOf(meta: Pick<ModelTargetMeta, 'tier' | 'hardwareClass'>): string {
  return `${meta.tier}/${meta.hardwareClass}`;
}

/**
 * A device's stable rollout bucket in [0, 100): the first 32 bits of sha256(channel NUL deviceId)
 * scaled to 100. Salting with the channel (not the release) keeps the same devices as canaries
 * release after release, so a fleet's early adopters are known and monitored.
 */
export function rolloutBucket(deviceId: string, channel: string): number {
  const h = createHash('sha256').update(`${channel}\0${deviceId}`).digest();
  return (h.readUInt32BE(0) / 2 ** 32) * 100;
}

/** True when a target with `percent` rollout includes the device. 0 includes none, 100 all. */
export function inRollout(deviceId: string, channel: string, percent: number): boolean {
  return rolloutBucket(deviceId, channel) < percent;
}

/**
 * Splits trusted targets into model targets (valid `custom.cascade.kind = "model"` with a sha256)
 * and reports the malformed ones. Card targets and foreign targets are ignored.
 */
export function listModelTargets(targets: Record<string, TargetLike>): {
  models: ModelTarget[];
  invalid: { path: string; reason: string }[];
} {
  const models: ModelTarget[] = [];
  const invalid: { path: string; reason: string }[] = [];
  for (const [path, t] of Object.entries(targets)) {
    const c = t.custom.cascade;
    if (typeof c !== 'object' || c === null || (c as { kind?: unknown }).kind !== 'model') continue;
    if (!checkMeta.Check(c)) {
      const e = [...checkMeta.Errors(c)][0];
      invalid.push({ path, reason: `custom.cascade${e?.path ?? ''} ${e?.message ?? 'invalid'}` });
      continue;
    }
    const sha256 = t.hashes.sha256;
    if (typeof sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(sha256)) {
      invalid.push({ path, reason: 'no sha256 hash' });
      continue;
    }
    models.push({ path, length: t.length, sha256, meta: c });
  }
  return { models, invalid };
}

/** What the device runs now, and what it has given up on. */
export interface DeviceState {
  deviceId: string;
  tier: Tier;
  hardwareClass: string;
  /** Installed release number and model sha256; undefined when running the factory model. */
  current?: { release: number; sha256: string };
  /** sha256 of model files that failed install or health check here: never retried. */
  failed: ReadonlySet<string>;
}

export type UpdateDecision =
  | { action: 'install'; target: ModelTarget }
  | {
      action: 'none';
      reason: 'up-to-date' | 'no-target-for-hardware' | 'not-in-rollout' | 'previously-failed';
      /** The newest release for this device's channel, when there is one. */
      newest?: ModelTarget;
    };

/**
 * Chooses the release a device should install: among targets of its tier and hardware class,
 * the highest release above the current one whose rollout includes the device and that has not
 * failed here. A device is never moved to a lower release (a publisher that wants the old model
 * back publishes it again under a new release number).
 */
export function selectUpdate(models: readonly ModelTarget[], device: DeviceState): UpdateDecision {
  const mine = models
    .filter((m) => m.meta.tier === device.tier && m.meta.hardwareClass === device.hardwareClass)
    .sort((a, b) => b.meta.release - a.meta.release);
  const newest = mine[0];
  if (!newest) return { action: 'none', reason: 'no-target-for-hardware' };
  const floor = device.current?.release ?? 0;
  let reason: 'up-to-date' | 'not-in-rollout' | 'previously-failed' = 'up-to-date';
  for (const m of mine) {
    if (m.meta.release <= floor) break;
    if (!inRollout(device.deviceId, channelOf(m.meta), m.meta.rollout)) {
      if (reason === 'up-to-date') reason = 'not-in-rollout';
      continue;
    }
    if (device.failed.has(m.sha256)) {
      reason = 'previously-failed';
      continue;
    }
    return { action: 'install', target: m };
  }
  return { action: 'none', reason, newest };
}

/**
 * Checks a downloaded (already hash-verified) model card against the signed manifest, so that a
 * card cannot describe another model, tier or input than the one the publisher signed for.
 * @throws {CascadeError} OTA_ERR_HARDWARE_MISMATCH naming the first disagreement.
 */
export function checkCardMatchesManifest(card: ModelCard, target: ModelTarget, hardwareClass: string): void {
  const m = target.meta;
  const problems: string[] = [];
  if (m.hardwareClass !== hardwareClass)
    problems.push(`hardware class ${m.hardwareClass}, device is ${hardwareClass}`);
  if (card.tier !== m.tier) problems.push(`card tier ${card.tier}, manifest ${m.tier}`);
  if (card.name !== m.model || card.version !== m.version) {
    problems.push(`card ${card.name}@${card.version}, manifest ${m.model}@${m.version}`);
  }
  if (canonicalize(encodeInput(card.input)) !== canonicalize(m.input)) problems.push('input spec differs');
  const file = card.files[0];
  if (file.sha256 !== target.sha256 || file.bytes !== target.length) {
    problems.push(
      `card's model file ${file.sha256.slice(0, 12)}… is not the target ${target.sha256.slice(0, 12)}…`,
    );
  }
  if (problems.length > 0) {
    throw new CascadeError(ErrorCodes.OTA_ERR_HARDWARE_MISMATCH, `${target.path}: ${problems.join('; ')}`);
  }
}

/** The manifest entry the publisher signs for a card and its (first) model file. */
export function manifestFor(
  card: ModelCard,
  opts: {
    hardwareClass: string;
    release: number;
    rollout: number;
    cardPath: string;
    cardLength: number;
    cardSha256: string;
  },
): ModelTargetMeta {
  const meta: ModelTargetMeta = {
    kind: 'model',
    tier: card.tier,
    hardwareClass: opts.hardwareClass,
    release: opts.release,
    model: card.name,
    version: card.version,
    input: encodeInput(card.input),
    thresholds: { accept: dec(card.thresholds.accept) },
    rollout: opts.rollout,
    card: { path: opts.cardPath, length: opts.cardLength, sha256: opts.cardSha256 },
  };
  if (card.metrics.testAccuracy !== undefined) meta.testAccuracy = dec(card.metrics.testAccuracy);
  if (!checkMeta.Check(meta)) {
    const e = [...checkMeta.Errors(meta)][0];
    throw new CascadeError(ErrorCodes.OTA_ERR_REPO, `manifest${e?.path ?? ''}: ${e?.message ?? 'invalid'}`);
  }
  return meta;
}
