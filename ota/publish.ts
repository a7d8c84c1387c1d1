/**
 * Publishing: turns the signed staged roles of an {@link OtaRepository} into the static TUF
 * repository under published/, adding a new snapshot and timestamp signed with the online keys.
 * Every check a client will make (root chain, thresholds, expiry, version order) is made first,
 * then files are written in the order that keeps the served repository consistent at every
 * moment: target files, root, targets, snapshot and, last and atomically, timestamp.json.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Metadata, MetaFile, type Root, Snapshot, type Targets, Timestamp } from '@tufjs/models';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import { writeFileAtomic } from './atomic-fs.ts';
import type { Signer } from './keys.ts';
import {
  type AnyMetadata,
  expiryString,
  metadataText,
  SPEC_VERSION,
  signatureReport,
  signRole,
  verifyRootUpdate,
} from './metadata.ts';
import { consistentTargetPath, type OtaRepository } from './repository.ts';

/** Options of {@link publish}. */
export interface PublishOptions {
  /** Snapshot role keys (online); needed unless `timestampOnly`. */
  snapshotSigners?: readonly Signer[];
  /** Timestamp role keys (online). */
  timestampSigners: readonly Signer[];
  now: Date;
  /** Only re-sign the timestamp (the daily job that keeps it fresh); default false. */
  timestampOnly?: boolean;
}

/** Result of {@link publish}: the version of each role now published. */
export interface PublishResult {
  root: number;
  targets: number;
  snapshot: number;
  timestamp: number;
  /** Files written under published/, relative to it. */
  written: string[];
}

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Publishes the static repository: a new root if one is staged (checked as clients will check
 * it), the staged targets if newer, their files, and a new snapshot and timestamp signed with
 * the online keys. Everything is checked and signed before the first file is written, and
 * `timestamp.json` is written last, atomically: until then clients see the previous state.
 * @param opts.timestampOnly only re-sign the timestamp (the daily job that keeps it fresh).
 * @throws {CascadeError} OTA_ERR_SIGNATURE_INVALID when a role lacks its threshold;
 *   OTA_ERR_ROLLBACK / OTA_ERR_REPO for a staged role that cannot follow the published one;
 *   OTA_ERR_EXPIRED for expired staged roles.
 */
export async function publish(repo: OtaRepository, opts: PublishOptions): Promise<PublishResult> {
  const root = await publishableRoot(repo, opts.now);
  const newRoot = (await repo.publishedVersion('root')) < root.signed.version;
  const targets = await publishableTargets(repo, root.signed, opts.now);
  const targetsVersion = targets.md.signed.version;
  const targetsText = targets.isNew ? metadataText(targets.md) : undefined;
  const pubSnapshot = await repo.publishedVersion('snapshot');
  let snapshotMd: Metadata<Snapshot>;
  let snapshotBytes: Buffer;
  if (opts.timestampOnly) {
    if (pubSnapshot === 0 || newRoot || targets.isNew) {
      throw new CascadeError(
        ErrorCodes.OTA_ERR_REPO,
        'timestamp-only publish needs a published snapshot and no staged root or targets changes',
      );
    }
    snapshotBytes = await readFile(repo.metadataPath(`${pubSnapshot}.snapshot.json`));
    snapshotMd = (await repo.published('snapshot')) as Metadata<Snapshot>;
  } else {
    const targetsBytes =
      targetsText !== undefined
        ? Buffer.from(targetsText)
        : await readFile(repo.metadataPath(`${targetsVersion}.targets.json`));
    snapshotMd = new Metadata(
      new Snapshot({
        version: pubSnapshot + 1,
        specVersion: SPEC_VERSION,
        expires: expiryString(opts.now, repo.expiry('snapshot')),
        meta: {
          'targets.json': new MetaFile({
            version: targetsVersion,
            length: targetsBytes.length,
            hashes: { sha256: sha256(targetsBytes) },
          }),
        },
      }),
    );
    signOnline(snapshotMd, 'snapshot', opts.snapshotSigners ?? [], root.signed);
    snapshotBytes = Buffer.from(metadataText(snapshotMd));
  }
  const prevTs = (await repo.published('timestamp')) as Metadata<Timestamp> | undefined;
  const ts = new Metadata(
    new Timestamp({
      version: (prevTs?.signed.version ?? 0) + 1,
      specVersion: SPEC_VERSION,
      expires: expiryString(opts.now, repo.expiry('timestamp')),
      snapshotMeta: new MetaFile({
        version: snapshotMd.signed.version,
        length: snapshotBytes.length,
        hashes: { sha256: sha256(snapshotBytes) },
      }),
    }),
  );
  signOnline(ts, 'timestamp', opts.timestampSigners, root.signed);

  const written: string[] = [];
  const write = async (rel: string, data: string | Uint8Array): Promise<void> => {
    const path = repo.publishedPath(rel);
    await mkdir(dirname(path), { recursive: true });
    await writeFileAtomic(path, data);
    written.push(rel);
  };
  for (const [rel, bytes] of targets.files) await write(rel, bytes);
  if (newRoot) {
    await write(`metadata/${root.signed.version}.root.json`, metadataText(root));
    await write('metadata/root.json', metadataText(root));
  }
  if (targetsText !== undefined) await write(`metadata/${targetsVersion}.targets.json`, targetsText);
  if (!opts.timestampOnly) await write(`metadata/${snapshotMd.signed.version}.snapshot.json`, snapshotBytes);
  await write('metadata/timestamp.json', metadataText(ts));
  return {
    root: root.signed.version,
    targets: targetsVersion,
    snapshot: snapshotMd.signed.version,
    timestamp: ts.signed.version,
    written,
  };
}

function signOnline(
  md: AnyMetadata,
  role: 'snapshot' | 'timestamp',
  signers: readonly Signer[],
  root: Root,
): void {
  signRole(md, role, signers, [root]);
  const r = signatureReport(root, role, md);
  if (!r.ok) {
    throw new CascadeError(
      ErrorCodes.OTA_ERR_SIGNATURE_INVALID,
      `${role}: ${r.valid.length} of ${r.threshold} required signatures; give more --${role}-key`,
    );
  }
}

/** The staged root, checked to be publishable after the published one. */
async function publishableRoot(repo: OtaRepository, now: Date): Promise<Metadata<Root>> {
  const staged = await repo.staged('root');
  const pub = await repo.published('root');
  if (staged.signed.isExpired(now)) {
    throw new CascadeError(
      ErrorCodes.OTA_ERR_EXPIRED,
      'staged root has expired: run `cascade ota sign --role root --renew`',
    );
  }
  if (!pub) {
    const r = signatureReport(staged.signed, 'root', staged);
    if (staged.signed.version !== 1 || !r.ok) {
      throw new CascadeError(
        ErrorCodes.OTA_ERR_SIGNATURE_INVALID,
        `root v${staged.signed.version}: ${r.valid.length} of ${r.threshold} required signatures`,
      );
    }
    return staged;
  }
  if (staged.signed.version === pub.signed.version) {
    if (!staged.signed.equals(pub.signed)) {
      throw new CascadeError(
        ErrorCodes.OTA_ERR_REPO,
        'staged root differs from the published one at the same version',
      );
    }
    return pub;
  }
  verifyRootUpdate(pub.signed, staged);
  return staged;
}

/**
 * The targets to snapshot: the staged ones when newer than the published (with the target
 * files to copy), else the published ones, which must still satisfy `root` (after a rotation).
 */
async function publishableTargets(
  repo: OtaRepository,
  root: Root,
  now: Date,
): Promise<{ md: AnyMetadata; isNew: boolean; files: [string, Uint8Array][] }> {
  const staged = await repo.staged('targets');
  const pubVersion = await repo.publishedVersion('targets');
  if (staged.signed.version < pubVersion) {
    throw new CascadeError(
      ErrorCodes.OTA_ERR_ROLLBACK,
      `staged targets v${staged.signed.version} is older than published v${pubVersion}`,
    );
  }
  const isNew = staged.signed.version > pubVersion;
  const md = isNew ? staged : ((await repo.published('targets')) as Metadata<Targets>);
  if (!isNew && !staged.signed.equals(md.signed as Targets)) {
    throw new CascadeError(
      ErrorCodes.OTA_ERR_REPO,
      'staged targets changed without a version bump: run `cascade ota sign --role targets --renew`',
    );
  }
  const r = signatureReport(root, 'targets', md);
  if (!r.ok) {
    throw new CascadeError(
      ErrorCodes.OTA_ERR_SIGNATURE_INVALID,
      `targets v${md.signed.version}: ${r.valid.length} of ${r.threshold} required signatures`,
    );
  }
  if (md.signed.isExpired(now)) {
    throw new CascadeError(
      ErrorCodes.OTA_ERR_EXPIRED,
      'targets have expired: run `cascade ota sign --role targets --renew`',
    );
  }
  const files: [string, Uint8Array][] = [];
  if (isNew) {
    for (const t of Object.values(staged.signed.targets)) {
      const sha = t.hashes.sha256;
      const rel = `targets/${consistentTargetPath(t.path, sha)}`;
      if (await exists(repo.publishedPath(rel))) continue;
      const src = repo.filePath(t.path);
      const bytes = await readFile(src).catch((err: unknown) => {
        throw new CascadeError(ErrorCodes.OTA_ERR_REPO, `${src}: target file missing`, { cause: err });
      });
      if (bytes.length !== t.length || sha256(bytes) !== sha) {
        throw new CascadeError(ErrorCodes.OTA_ERR_REPO, `${src}: does not match its target entry`);
      }
      files.push([rel, bytes]);
    }
  }
  return { md, isNew, files };
}
