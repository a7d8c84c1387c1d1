/**
 * TUF role metadata for the model repository, built and checked with @tufjs/models: creation of
 * the four top-level roles, expiry, signing, signature reports against a role's keys and
 * threshold, root rotation checks, and merging signatures made elsewhere (threshold signing by
 * several key holders). Pure: no file or network I/O; the clock is a parameter.
 */
import { Metadata, MetadataKind, Root, type Snapshot, Targets, type Timestamp } from '@tufjs/models';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import { canonicalize } from './canonical.ts';
import type { PublicKeyInfo, Signer } from './keys.ts';

/** The TUF specification version the metadata declares. */
export const SPEC_VERSION = '1.0.31';

/** Top-level role names, in the order a client trusts them. */
export const ROLE_NAMES = ['root', 'timestamp', 'snapshot', 'targets'] as const;
export type RoleName = (typeof ROLE_NAMES)[number];

/** Any top-level role's metadata. */
export type AnyMetadata = Metadata<Root> | Metadata<Targets> | Metadata<Snapshot> | Metadata<Timestamp>;

/** Validity period of each role, in seconds. */
export type ExpiryPolicy = Record<RoleName, number>;

const DAY = 86_400;

/**
 * Default validity: root a year (re-signed offline, rarely), targets 90 days, snapshot a week and
 * timestamp a day, short so a frozen mirror or a replayed snapshot goes stale quickly.
 */
export const DEFAULT_EXPIRY: Readonly<ExpiryPolicy> = Object.freeze({
  root: 365 * DAY,
  targets: 90 * DAY,
  snapshot: 7 * DAY,
  timestamp: 1 * DAY,
});

/** TUF's expiry format: UTC, whole seconds, `Z`. */
export function expiryString(now: Date, seconds: number): string {
  return `${new Date(Math.floor(now.getTime() / 1000) * 1000 + seconds * 1000).toISOString().slice(0, 19)}Z`;
}

/** Keys and threshold of one role. */
export interface RoleKeys {
  keys: readonly Pick<PublicKeyInfo, 'keyId' | 'key'>[];
  threshold: number;
}

/**
 * A new root: every role's keys and threshold, consistent snapshots on.
 * @throws {CascadeError} OTA_ERR_REPO if a threshold is not an integer in [1, number of keys].
 */
export function buildRoot(
  roles: Record<RoleName, RoleKeys>,
  version: number,
  expires: string,
): Metadata<Root> {
  const keys: Record<string, unknown> = {};
  const roleJson: Record<string, unknown> = {};
  for (const name of ROLE_NAMES) {
    const { keys: roleKeys, threshold } = roles[name];
    const ids = [...new Set(roleKeys.map((k) => k.keyId))];
    if (!Number.isInteger(threshold) || threshold < 1 || threshold > ids.length) {
      throw new CascadeError(
        ErrorCodes.OTA_ERR_REPO,
        `${name}: threshold ${threshold} needs 1 to ${ids.length} distinct keys`,
      );
    }
    roleJson[name] = { keyids: ids, threshold };
    for (const k of roleKeys) keys[k.keyId] = k.key.toJSON();
  }
  // Through fromJSON: @tufjs/models does not export Role, and this way the root is exactly what a
  // client will parse.
  const root = Root.fromJSON({
    _type: 'root',
    spec_version: SPEC_VERSION,
    version,
    expires,
    consistent_snapshot: true,
    keys,
    roles: roleJson,
  } as Parameters<typeof Root.fromJSON>[0]);
  return new Metadata(root);
}

/** An empty (or given) targets role. */
export function buildTargets(version: number, expires: string, from?: Targets): Metadata<Targets> {
  return new Metadata(
    new Targets({ version, specVersion: SPEC_VERSION, expires, targets: from ? { ...from.targets } : {} }),
  );
}

/** The same signed content with a new version and expiry and no signatures (any edit needs re-signing). */
export function withVersion<T extends AnyMetadata>(md: T, version: number, expires: string): T {
  const json = md.signed.toJSON();
  json.version = version;
  json.expires = expires;
  return parseMetadata(md.signed.type, { signed: json, signatures: [] }, 'edit') as T;
}

/** The role definition a root holds for `role`. */
function roleOf(root: Root, role: RoleName): Root['roles'][string] {
  const r = root.roles[role];
  if (!r) throw new CascadeError(ErrorCodes.OTA_ERR_METADATA_INVALID, `root defines no ${role} role`);
  return r;
}

/** Who signed a role's metadata, checked against the keys a root lists for it. */
export interface SignatureReport {
  role: RoleName;
  threshold: number;
  /** Key ids of the role whose signature verifies. */
  valid: string[];
  /** Key ids of the role with a signature that does not verify. */
  invalid: string[];
  /** Key ids of signatures from keys the role does not list (ignored by clients). */
  unknown: string[];
  /** Key ids of the role that have not signed yet. */
  missing: string[];
  ok: boolean;
}

/** Checks each signature of `md` against `root`'s keys for `role`. */
export function signatureReport(root: Root, role: RoleName, md: AnyMetadata): SignatureReport {
  const def = roleOf(root, role);
  const valid: string[] = [];
  const invalid: string[] = [];
  const missing: string[] = [];
  for (const id of def.keyIDs) {
    const key = root.keys[id];
    if (!md.signatures[id] || !key) {
      missing.push(id);
      continue;
    }
    try {
      key.verifySignature(md);
      valid.push(id);
    } catch {
      invalid.push(id);
    }
  }
  const unknown = Object.keys(md.signatures).filter((id) => !def.keyIDs.includes(id));
  return {
    role,
    threshold: def.threshold,
    valid,
    invalid,
    unknown,
    missing,
    ok: valid.length >= def.threshold,
  };
}

/**
 * Signs `md` with each signer, which must be a key the root lists for `role`.
 * @throws {CascadeError} OTA_ERR_KEY naming a key the role does not list.
 */
export function signRole(md: AnyMetadata, role: RoleName, signers: readonly Signer[], allowed: Root[]): void {
  for (const s of signers) {
    if (!allowed.some((r) => r.roles[role]?.keyIDs.includes(s.keyId))) {
      throw new CascadeError(ErrorCodes.OTA_ERR_KEY, `key ${s.keyId.slice(0, 12)}… is not a ${role} key`);
    }
    md.sign((data) => s.sign(data), true);
  }
}

/**
 * Checks that `next` may follow the trusted root `prev`, as a client will: version exactly one
 * higher, signed by a threshold of `prev`'s root keys *and* by a threshold of its own.
 * @throws {CascadeError} OTA_ERR_ROLLBACK for a wrong version; OTA_ERR_SIGNATURE_INVALID naming
 *   the threshold that is not met.
 */
export function verifyRootUpdate(prev: Root, next: Metadata<Root>): void {
  if (next.signed.version !== prev.version + 1) {
    throw new CascadeError(
      ErrorCodes.OTA_ERR_ROLLBACK,
      `root version ${next.signed.version} cannot follow version ${prev.version}`,
    );
  }
  for (const [which, by] of [
    ['previous', prev],
    ['new', next.signed],
  ] as const) {
    const r = signatureReport(by, 'root', next);
    if (!r.ok) {
      throw new CascadeError(
        ErrorCodes.OTA_ERR_SIGNATURE_INVALID,
        `root v${next.signed.version}: ${r.valid.length} of the ${which} root's ${r.threshold} required signatures`,
      );
    }
  }
}

/**
 * Adds the signatures of `other` to `md` when both carry the same signed content (compared as
 * canonical JSON), keeping only signatures that verify with a key `allowed` roots list for `role`.
 * @returns the key ids added.
 * @throws {CascadeError} OTA_ERR_MISMATCH if the signed content differs; OTA_ERR_SIGNATURE_INVALID
 *   if a signature from a listed key does not verify.
 */
export function mergeSignatures(
  md: AnyMetadata,
  other: AnyMetadata,
  role: RoleName,
  allowed: Root[],
): string[] {
  if (canonicalize(md.signed.toJSON()) !== canonicalize(other.signed.toJSON())) {
    throw new CascadeError(
      ErrorCodes.OTA_ERR_MISMATCH,
      `${role}: the signed content differs (version ${other.signed.version} vs ${md.signed.version}); sign the current file`,
    );
  }
  const added: string[] = [];
  for (const [id, sig] of Object.entries(other.signatures)) {
    const key = allowed
      .map((r) => (r.roles[role]?.keyIDs.includes(id) ? r.keys[id] : undefined))
      .find(Boolean);
    if (!key) continue;
    try {
      key.verifySignature(other);
    } catch {
      throw new CascadeError(
        ErrorCodes.OTA_ERR_SIGNATURE_INVALID,
        `${role}: signature by key ${id.slice(0, 12)}… does not verify`,
      );
    }
    if (!md.signatures[id]) added.push(id);
    md.signatures[id] = sig;
  }
  return added;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Parses metadata JSON of a known role type.
 * @param where names the source in errors.
 * @throws {CascadeError} OTA_ERR_METADATA_INVALID for anything @tufjs/models rejects.
 */
export function parseMetadata(kind: MetadataKind.Root | 'root', json: unknown, where: string): Metadata<Root>;
export function parseMetadata(kind: 'targets', json: unknown, where: string): Metadata<Targets>;
export function parseMetadata(kind: 'snapshot', json: unknown, where: string): Metadata<Snapshot>;
export function parseMetadata(kind: 'timestamp', json: unknown, where: string): Metadata<Timestamp>;
export function parseMetadata(kind: string, json: unknown, where: string): AnyMetadata;
export function parseMetadata(kind: string, json: unknown, where: string): AnyMetadata {
  try {
    if (!isObject(json)) throw new TypeError('not a JSON object');
    switch (kind) {
      case MetadataKind.Root:
        return Metadata.fromJSON(MetadataKind.Root, json as Parameters<typeof Metadata.fromJSON>[1]);
      case MetadataKind.Targets:
        return Metadata.fromJSON(MetadataKind.Targets, json as Parameters<typeof Metadata.fromJSON>[1]);
      case MetadataKind.Snapshot:
        return Metadata.fromJSON(MetadataKind.Snapshot, json as Parameters<typeof Metadata.fromJSON>[1]);
      case MetadataKind.Timestamp:
        return Metadata.fromJSON(MetadataKind.Timestamp, json as Parameters<typeof Metadata.fromJSON>[1]);
      default:
        throw new TypeError(`unknown role type "${kind}"`);
    }
  } catch (err) {
    throw new CascadeError(
      ErrorCodes.OTA_ERR_METADATA_INVALID,
      `${where}: not valid ${kind} metadata: ${(err as Error).message}`,
      { cause: err },
    );
  }
}

/** Parses metadata whose role is read from its own `signed._type`. */
export function parseAnyMetadata(json: unknown, where: string): AnyMetadata {
  const type = isObject(json) && isObject(json.signed) ? json.signed._type : undefined;
  if (typeof type !== 'string' || !(ROLE_NAMES as readonly string[]).includes(type)) {
    throw new CascadeError(
      ErrorCodes.OTA_ERR_METADATA_INVALID,
      `${where}: not TUF metadata (no signed._type)`,
    );
  }
  return parseMetadata(type, json, where);
}

/** Pretty JSON for files people diff and review (signatures are over the canonical form anyway). */
export function metadataText(md: AnyMetadata): string {
  return `${JSON.stringify(md.toJSON(), null, 2)}\n`;
}

/** Seconds until `md` expires (negative when expired). */
export function secondsLeft(md: AnyMetadata, now: Date): number {
  return (new Date(md.signed.expires).getTime() - now.getTime()) / 1000;
}
