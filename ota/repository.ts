/**
 * The publisher's TUF repository workspace on disk, and the static repository it publishes.
 *
 * ```
 * <repo>/repo.json                    expiry policy
 * <repo>/staged/{root,targets}.json   the roles people edit and sign (offline keys)
 * <repo>/files/<target path>          model files and cards added as targets
 * <repo>/published/metadata/          N.root.json, N.targets.json, N.snapshot.json, timestamp.json
 * <repo>/published/targets/           <dir>/<sha256>.<name> (consistent snapshots)
 * ```
 * `published/` is what any static HTTP server serves; clients (tuf-js) fetch `metadata/` and
 * `targets/` under one base URL. Snapshot and timestamp are signed at publish time with online
 * keys; root and targets are signed beforehand, possibly by several people on offline machines.
 */
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { type Metadata, type Root, TargetFile, type Targets } from '@tufjs/models';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import { parseModelCard } from '../models/card.ts';
import { writeFileAtomic } from './atomic-fs.ts';
import type { Signer } from './keys.ts';
import { channelOf, listModelTargets, type ModelTarget, manifestFor, releasePaths } from './manifest.ts';
import {
  type AnyMetadata,
  buildRoot,
  buildTargets,
  DEFAULT_EXPIRY,
  type ExpiryPolicy,
  expiryString,
  mergeSignatures,
  metadataText,
  parseMetadata,
  ROLE_NAMES,
  type RoleKeys,
  type RoleName,
  type SignatureReport,
  secondsLeft,
  signatureReport,
  signRole,
  withVersion,
} from './metadata.ts';

/** Releases kept per channel in targets metadata when a new one is added. */
export const DEFAULT_KEEP_RELEASES = 3;

interface RepoConfig {
  schemaVersion: 1;
  expiry: ExpiryPolicy;
}

/** Roles that are edited and signed in the workspace (snapshot and timestamp are made at publish). */
export type StagedRole = 'root' | 'targets';

/** One role's state for {@link OtaRepository.status}. */
export interface RoleStatus {
  role: RoleName;
  staged?: { version: number; expires: string; signatures: SignatureReport };
  published?: { version: number; expires: string; secondsLeft: number };
}

/** Repository overview for `cascade ota status`. */
export interface RepoStatus {
  roles: RoleStatus[];
  targets: {
    path: string;
    length: number;
    release: number;
    hardwareClass: string;
    rollout: number;
    model: string;
    version: string;
  }[];
  warnings: string[];
}

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

async function readJson(path: string, what: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new CascadeError(ErrorCodes.OTA_ERR_REPO, `${path}: cannot read ${what}`, { cause: err });
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new CascadeError(ErrorCodes.OTA_ERR_METADATA_INVALID, `${path}: ${what} is not JSON`, {
      cause: err,
    });
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Path of a target file under published/targets/ with consistent snapshots: `<dir>/<sha256>.<name>`. */
export function consistentTargetPath(path: string, sha: string): string {
  const slash = path.lastIndexOf('/');
  return slash < 0 ? `${sha}.${path}` : `${path.slice(0, slash)}/${sha}.${path.slice(slash + 1)}`;
}

/** A repository workspace. Create with {@link OtaRepository.init} or {@link OtaRepository.open}. */
export class OtaRepository {
  readonly dir: string;
  readonly #config: RepoConfig;

  private constructor(dir: string, config: RepoConfig) {
    this.dir = dir;
    this.#config = config;
  }

  /**
   * Creates a workspace: root version 1 (unsigned) with the given keys and thresholds, and an
   * empty targets role. Sign root and targets, then publish.
   * @throws {CascadeError} OTA_ERR_REPO if the folder already holds a repository or a threshold is
   *   impossible.
   */
  static async init(
    dir: string,
    opts: { roles: Record<RoleName, RoleKeys>; expiry?: Partial<ExpiryPolicy>; now: Date },
  ): Promise<OtaRepository> {
    const abs = resolve(dir);
    if (await exists(join(abs, 'repo.json'))) {
      throw new CascadeError(ErrorCodes.OTA_ERR_REPO, `${abs}: already holds an OTA repository`);
    }
    const config: RepoConfig = { schemaVersion: 1, expiry: { ...DEFAULT_EXPIRY, ...opts.expiry } };
    const root = buildRoot(opts.roles, 1, expiryString(opts.now, config.expiry.root));
    const targets = buildTargets(1, expiryString(opts.now, config.expiry.targets));
    await mkdir(join(abs, 'staged'), { recursive: true });
    await writeFileAtomic(join(abs, 'staged', 'root.json'), metadataText(root));
    await writeFileAtomic(join(abs, 'staged', 'targets.json'), metadataText(targets));
    await writeFileAtomic(join(abs, 'repo.json'), `${JSON.stringify(config, null, 2)}\n`);
    return new OtaRepository(abs, config);
  }

  /** Opens an existing workspace. @throws {CascadeError} OTA_ERR_REPO if there is none. */
  static async open(dir: string): Promise<OtaRepository> {
    const abs = resolve(dir);
    const json = (await readJson(join(abs, 'repo.json'), 'repository config')) as Partial<RepoConfig>;
    if (json.schemaVersion !== 1 || typeof json.expiry !== 'object' || json.expiry === null) {
      throw new CascadeError(
        ErrorCodes.OTA_ERR_REPO,
        `${join(abs, 'repo.json')}: not an OTA repository config`,
      );
    }
    return new OtaRepository(abs, { schemaVersion: 1, expiry: { ...DEFAULT_EXPIRY, ...json.expiry } });
  }

  #staged(role: StagedRole): string {
    return join(this.dir, 'staged', `${role}.json`);
  }

  /** Path of a file under published/metadata/. */
  metadataPath(name: string): string {
    return join(this.dir, 'published', 'metadata', name);
  }

  /** Path of a file under published/. */
  publishedPath(rel: string): string {
    return join(this.dir, 'published', rel);
  }

  /** Path of a target's source file in the workspace. */
  filePath(targetPath: string): string {
    return join(this.dir, 'files', targetPath);
  }

  /** Validity period of a role, in seconds. */
  expiry(role: RoleName): number {
    return this.#config.expiry[role];
  }

  /** The staged root or targets metadata. */
  async staged(role: 'root'): Promise<Metadata<Root>>;
  async staged(role: 'targets'): Promise<Metadata<Targets>>;
  async staged(role: StagedRole): Promise<AnyMetadata> {
    const path = this.#staged(role);
    return parseMetadata(role, await readJson(path, `staged ${role}`), path);
  }

  async #writeStaged(role: StagedRole, md: AnyMetadata): Promise<void> {
    await writeFileAtomic(this.#staged(role), metadataText(md));
  }

  /** Highest published version of a role (0 when never published). */
  async publishedVersion(role: 'root' | 'targets' | 'snapshot'): Promise<number> {
    let names: string[];
    try {
      names = await readdir(join(this.dir, 'published', 'metadata'));
    } catch {
      return 0;
    }
    const re = new RegExp(`^(\\d+)\\.${role}\\.json$`);
    return names.reduce((max, n) => Math.max(max, Number(re.exec(n)?.[1] ?? 0)), 0);
  }

  /** The published metadata of a role at a version (the newest when omitted); undefined if none. */
  async published(role: 'root'): Promise<Metadata<Root> | undefined>;
  async published(role: 'targets' | 'snapshot' | 'timestamp'): Promise<AnyMetadata | undefined>;
  async published(role: RoleName): Promise<AnyMetadata | undefined>;
  async published(role: RoleName): Promise<AnyMetadata | undefined> {
    const name =
      role === 'timestamp' ? 'timestamp.json' : `${await this.publishedVersion(role)}.${role}.json`;
    const path = this.metadataPath(name);
    if (!(await exists(path))) return undefined;
    return parseMetadata(role, await readJson(path, `published ${role}`), path);
  }

  /** Roots whose keys may sign the staged root: itself and the published one (for rotations). */
  async #rootsFor(role: StagedRole): Promise<Root[]> {
    const staged = await this.staged('root');
    if (role !== 'root') return [staged.signed];
    const pub = await this.published('root');
    return pub ? [staged.signed, pub.signed] : [staged.signed];
  }

  /** New version and expiry for an edit of a staged role; signatures are dropped. */
  async #edited<T extends AnyMetadata>(role: StagedRole, md: T, now: Date): Promise<T> {
    const pub = await this.publishedVersion(role);
    const version = md.signed.version > pub ? md.signed.version : pub + 1;
    return withVersion(md, version, expiryString(now, this.#config.expiry[role]));
  }

  /**
   * Stages a new root: the same roles with the given ones replaced (new keys and thresholds).
   * It must then be signed by a threshold of the current root keys and of the new ones.
   */
  async rotateRoot(changes: Partial<Record<RoleName, RoleKeys>>, now: Date): Promise<Metadata<Root>> {
    const current = await this.staged('root');
    const roles = {} as Record<RoleName, RoleKeys>;
    for (const name of ROLE_NAMES) {
      const r = current.signed.roles[name];
      roles[name] = changes[name] ?? {
        threshold: r.threshold,
        keys: r.keyIDs.map((id) => ({ keyId: id, key: current.signed.keys[id] })),
      };
    }
    const pub = await this.publishedVersion('root');
    const version = current.signed.version > pub ? current.signed.version : pub + 1;
    const next = buildRoot(roles, version, expiryString(now, this.#config.expiry.root));
    await this.#writeStaged('root', next);
    return next;
  }

  /** Bumps a staged role's version and expiry (to re-sign it before it expires). */
  async renew(role: StagedRole, now: Date): Promise<AnyMetadata> {
    const md = await this.#edited(
      role,
      role === 'root' ? await this.staged('root') : await this.staged('targets'),
      now,
    );
    await this.#writeStaged(role, md);
    return md;
  }

  /**
   * Adds a model (its card and first file) as targets for one hardware class, or updates the
   * rollout of the release that already carries these exact bytes. Older releases beyond `keep`
   * per channel leave the targets metadata. Signatures on staged targets are dropped.
   * @param opts.release explicit release number; default: one above the channel's highest.
   * @throws {CascadeError} MODEL_ERR_INVALID for a bad card or a model file that does not match
   *   it; OTA_ERR_REPO for a release number that does not increase.
   */
  async addModel(opts: {
    cardPath: string;
    hardwareClass: string;
    rollout: number;
    release?: number;
    keep?: number;
    now: Date;
  }): Promise<{ release: number; card: string; model: string; updated: boolean }> {
    const cardBytes = await readFile(opts.cardPath).catch((err: unknown) => {
      throw new CascadeError(ErrorCodes.MODEL_ERR_INVALID, `${opts.cardPath}: cannot read model card`, {
        cause: err,
      });
    });
    let cardJson: unknown;
    try {
      cardJson = JSON.parse(cardBytes.toString('utf8'));
    } catch (err) {
      throw new CascadeError(ErrorCodes.MODEL_ERR_INVALID, `${opts.cardPath}: model card is not JSON`, {
        cause: err,
      });
    }
    const card = parseModelCard(cardJson, opts.cardPath);
    const file = card.files[0];
    const modelPath = resolve(dirname(opts.cardPath), file.file);
    const modelBytes = await readFile(modelPath).catch((err: unknown) => {
      throw new CascadeError(ErrorCodes.MODEL_ERR_INVALID, `${modelPath}: cannot read model file`, {
        cause: err,
      });
    });
    if (modelBytes.length !== file.bytes || sha256(modelBytes) !== file.sha256) {
      throw new CascadeError(
        ErrorCodes.MODEL_ERR_INVALID,
        `${modelPath}: does not match its card ${opts.cardPath}`,
      );
    }
    const staged = await this.staged('targets');
    const { models } = listModelTargets(staged.signed.targets);
    const channel = channelOf({ tier: card.tier, hardwareClass: opts.hardwareClass });
    const mine = models.filter((m) => channelOf(m.meta) === channel);
    const highest = mine.reduce((max, m) => Math.max(max, m.meta.release), 0);
    const cardSha = sha256(cardBytes);
    const same = mine.find((m) => m.sha256 === file.sha256 && m.meta.card.sha256 === cardSha);
    let release: number;
    if (same && (opts.release === undefined || opts.release === same.meta.release)) {
      release = same.meta.release;
    } else {
      release = opts.release ?? highest + 1;
      if (!Number.isInteger(release) || release <= highest) {
        throw new CascadeError(
          ErrorCodes.OTA_ERR_REPO,
          `release ${release} for ${channel}: releases must increase (highest is ${highest})`,
        );
      }
    }
    const paths = releasePaths(card.tier, opts.hardwareClass, release, file.file);
    const meta = manifestFor(card, {
      hardwareClass: opts.hardwareClass,
      release,
      rollout: opts.rollout,
      cardPath: paths.card,
      cardLength: cardBytes.length,
      cardSha256: cardSha,
    });
    for (const [path, bytes] of [
      [paths.card, cardBytes],
      [paths.model, modelBytes],
    ] as const) {
      const dest = join(this.dir, 'files', path);
      await mkdir(dirname(dest), { recursive: true });
      await writeFileAtomic(dest, bytes);
    }
    const md = await this.#edited('targets', staged, opts.now);
    const targets = md.signed.targets;
    targets[paths.card] = new TargetFile({
      path: paths.card,
      length: cardBytes.length,
      hashes: { sha256: cardSha },
      unrecognizedFields: { custom: { cascade: { kind: 'card', model: paths.model } } },
    });
    targets[paths.model] = new TargetFile({
      path: paths.model,
      length: modelBytes.length,
      hashes: { sha256: file.sha256 },
      unrecognizedFields: { custom: { cascade: meta } },
    });
    const keep = opts.keep ?? DEFAULT_KEEP_RELEASES;
    const releases = [...new Set([...mine.map((m) => m.meta.release), release])].sort((a, b) => b - a);
    for (const old of mine.filter((m) => !releases.slice(0, keep).includes(m.meta.release))) {
      delete targets[old.path];
      delete targets[old.meta.card.path];
    }
    await this.#writeStaged('targets', md);
    return { release, card: paths.card, model: paths.model, updated: same !== undefined };
  }

  /**
   * Signs a staged role with each signer.
   * @returns the role's signature report after signing.
   * @throws {CascadeError} OTA_ERR_KEY if a key may not sign the role.
   */
  async sign(role: StagedRole, signers: readonly Signer[]): Promise<SignatureReport> {
    const md = role === 'root' ? await this.staged('root') : await this.staged('targets');
    signRole(md, role, signers, await this.#rootsFor(role));
    await this.#writeStaged(role, md);
    return this.report(role, md);
  }

  /**
   * Merges signatures made on a copy of a staged role (offline signing by another key holder).
   * @returns key ids added.
   * @throws {CascadeError} OTA_ERR_MISMATCH if the copy's signed content differs from the staged one.
   */
  async merge(role: StagedRole, copy: unknown, where: string): Promise<string[]> {
    const md = role === 'root' ? await this.staged('root') : await this.staged('targets');
    const other = parseMetadata(role, copy, where);
    const added = mergeSignatures(md, other, role, await this.#rootsFor(role));
    await this.#writeStaged(role, md);
    return added;
  }

  /** Signature report of a staged role (root: against the staged root itself). */
  async report(role: StagedRole, md?: AnyMetadata): Promise<SignatureReport> {
    const root = await this.staged('root');
    return signatureReport(root.signed, role, md ?? (role === 'root' ? root : await this.staged('targets')));
  }

  /** Versions, expiry, signatures and targets, with warnings for what needs attention. */
  async status(now: Date): Promise<RepoStatus> {
    const warnings: string[] = [];
    const stagedRoot = await this.staged('root');
    const stagedTargets = await this.staged('targets');
    const roles: RoleStatus[] = [];
    for (const role of ROLE_NAMES) {
      const s: RoleStatus = { role };
      if (role === 'root' || role === 'targets') {
        const md = role === 'root' ? stagedRoot : stagedTargets;
        const sig = signatureReport(stagedRoot.signed, role, md);
        s.staged = { version: md.signed.version, expires: md.signed.expires, signatures: sig };
      }
      const pub = await this.published(role);
      if (pub) {
        const left = secondsLeft(pub, now);
        s.published = { version: pub.signed.version, expires: pub.signed.expires, secondsLeft: left };
        if (left <= 0) warnings.push(`published ${role} has expired: clients refuse the repository`);
        else if (left < this.#config.expiry[role] / 4)
          warnings.push(`published ${role} expires in ${Math.round(left / 3600)} h`);
      }
      if (s.staged && s.published && s.staged.version > s.published.version && !s.staged.signatures.ok) {
        warnings.push(
          `staged ${role} v${s.staged.version} needs ${s.staged.signatures.threshold - s.staged.signatures.valid.length} more signature(s)`,
        );
      }
      roles.push(s);
    }
    const { models, invalid } = listModelTargets(stagedTargets.signed.targets);
    for (const i of invalid) warnings.push(`${i.path}: ${i.reason}`);
    return {
      roles,
      targets: models.map((m: ModelTarget) => ({
        path: m.path,
        length: m.length,
        release: m.meta.release,
        hardwareClass: m.meta.hardwareClass,
        rollout: m.meta.rollout,
        model: m.meta.model,
        version: m.meta.version,
      })),
      warnings,
    };
  }
}
