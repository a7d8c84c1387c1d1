/**
 * The TUF client side, on tuf-js: one refresh runs the specification's client workflow (root
 * rotation chain → timestamp → snapshot → targets, with signatures, thresholds, expiry, version
 * rollback and length checks) through a fresh tuf-js Updater, and target downloads are checked
 * for length and sha256 by tuf-js and once more here before a caller may use them. Every failure
 * becomes a {@link CascadeError} with a stable OTA_ERR_* code naming the attack or fault.
 *
 * tuf-js persists metadata with plain writes; a power cut during one could leave a torn root.json
 * and a device that can no longer update. So after every successful refresh the trusted root is
 * also copied atomically to `.trusted-root.json`, and a root.json that no longer parses is
 * restored from that copy before the next refresh.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type Fetcher, type TargetFile, Updater } from 'tuf-js';
import { DownloadHTTPError, DownloadLengthMismatchError } from 'tuf-js/dist/error.js';
import { CascadeError, type ErrorCode, ErrorCodes } from '../cascade/errors.ts';
import { writeFileAtomic } from './atomic-fs.ts';
import { HttpFetcher, NetworkError } from './fetcher.ts';
import { listModelTargets, type ModelTarget } from './manifest.ts';
import { parseMetadata } from './metadata.ts';

/** Byte caps for metadata downloads (tuf-js config); targets are capped at their signed length. */
export interface MetadataLimits {
  root: number;
  timestamp: number;
  snapshot: number;
  targets: number;
}

/** Defaults: generous for a model repository, small enough for a camera's memory. */
export const DEFAULT_LIMITS: Readonly<MetadataLimits> = Object.freeze({
  root: 512 * 1024,
  timestamp: 16 * 1024,
  snapshot: 1024 * 1024,
  targets: 4 * 1024 * 1024,
});

/** Options of {@link OtaClient}. */
export interface OtaClientOptions {
  /** Folder with the provisioned trusted `root.json`; tuf-js caches the other roles there. */
  metadataDir: string;
  /** Repository base URL; metadata under `<url>/metadata/`, targets under `<url>/targets/`. */
  repoUrl: string;
  /** Transport; default a new {@link HttpFetcher}. */
  fetcher?: Fetcher;
  /** Metadata byte caps; default {@link DEFAULT_LIMITS}. */
  limits?: Partial<MetadataLimits>;
}

/** The verified state of the repository after a refresh. */
export interface TrustedRepository {
  rootVersion: number;
  targetsVersion: number;
  /** Expiry of the timestamp: when the device stops trusting this state without a new one. */
  timestampExpires: string;
  /** Model targets with valid manifests. */
  models: ModelTarget[];
  /** Targets whose manifest is malformed (ignored). */
  invalid: { path: string; reason: string }[];
}

const PATTERNS: [RegExp, ErrorCode][] = [
  [/Max length reached|more than \d+ bytes|bytes announced/, ErrorCodes.OTA_ERR_TOO_LARGE],
  [/was signed by \d+\/\d+ keys|failed to verify|no signature for key/, ErrorCodes.OTA_ERR_SIGNATURE_INVALID],
  [/is expired/, ErrorCodes.OTA_ERR_EXPIRED],
  [/less than current version|Expected version \d+, got/, ErrorCodes.OTA_ERR_ROLLBACK],
  [
    /doesn't match timestamp|does not match snapshot version|Missing file .* in new snapshot|Expected (hash|length)/,
    ErrorCodes.OTA_ERR_MISMATCH,
  ],
];

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Maps an error from tuf-js or the transport to a stable code. tuf-js wraps snapshot and targets
 * failures into a RuntimeError whose message carries the original one, so messages are matched.
 */
export function classifyError(err: unknown, where: string): CascadeError {
  if (err instanceof CascadeError) return err;
  const text = describe(err);
  let code: ErrorCode = ErrorCodes.OTA_ERR_METADATA_INVALID;
  if (err instanceof DownloadLengthMismatchError) code = ErrorCodes.OTA_ERR_TOO_LARGE;
  else if (err instanceof DownloadHTTPError || err instanceof NetworkError)
    code = ErrorCodes.OTA_ERR_DOWNLOAD;
  else {
    const hit = PATTERNS.find(([re]) => re.test(text));
    if (hit) code = hit[1];
    else if (/Failed to download|HTTP \d{3}|fetch failed|ECONNREFUSED|connection lost/.test(text)) {
      code = ErrorCodes.OTA_ERR_DOWNLOAD;
    }
  }
  return new CascadeError(code, `${where}: ${text.split('\n')[0]}`, { cause: err });
}

async function sha256File(path: string): Promise<{ sha256: string; length: number }> {
  const h = createHash('sha256');
  let length = 0;
  for await (const chunk of createReadStream(path)) {
    h.update(chunk as Buffer);
    length += (chunk as Buffer).length;
  }
  return { sha256: h.digest('hex'), length };
}

/** A TUF client for one repository. Each {@link refresh} starts from the persisted trusted state. */
export class OtaClient {
  readonly #opts: OtaClientOptions;
  readonly #fetcher: Fetcher;
  #updater: Updater | undefined;

  constructor(opts: OtaClientOptions) {
    this.#opts = opts;
    this.#fetcher = opts.fetcher ?? new HttpFetcher();
  }

  get #base(): string {
    return this.#opts.repoUrl.replace(/\/+$/, '');
  }

  async #restoreRoot(): Promise<void> {
    const dir = this.#opts.metadataDir;
    try {
      parseMetadata('root', JSON.parse(await readFile(join(dir, 'root.json'), 'utf8')), 'root.json');
    } catch (err) {
      const backup = await readFile(join(dir, '.trusted-root.json')).catch(() => undefined);
      if (!backup) {
        throw new CascadeError(
          ErrorCodes.OTA_ERR_METADATA_INVALID,
          `${join(dir, 'root.json')}: no valid trusted root (provision the repository's root.json)`,
          { cause: err },
        );
      }
      await writeFileAtomic(join(dir, 'root.json'), backup);
    }
  }

  /**
   * Runs the TUF client workflow against the repository and returns the verified model targets.
   * @throws {CascadeError} OTA_ERR_SIGNATURE_INVALID, OTA_ERR_ROLLBACK, OTA_ERR_EXPIRED,
   *   OTA_ERR_MISMATCH, OTA_ERR_TOO_LARGE, OTA_ERR_METADATA_INVALID or OTA_ERR_DOWNLOAD.
   */
  async refresh(): Promise<TrustedRepository> {
    const dir = this.#opts.metadataDir;
    await this.#restoreRoot();
    const limits = { ...DEFAULT_LIMITS, ...this.#opts.limits };
    let updater: Updater;
    try {
      updater = new Updater({
        metadataDir: dir,
        metadataBaseUrl: `${this.#base}/metadata/`,
        targetBaseUrl: `${this.#base}/targets/`,
        fetcher: this.#fetcher,
        config: {
          rootMaxLength: limits.root,
          timestampMaxLength: limits.timestamp,
          snapshotMaxLength: limits.snapshot,
          targetsMaxLength: limits.targets,
          prefixTargetsWithHash: true,
        },
      });
      await updater.refresh();
    } catch (err) {
      this.#updater = undefined;
      throw classifyError(err, 'ota refresh');
    }
    this.#updater = updater;
    const rootText = await readFile(join(dir, 'root.json'));
    const backup = await readFile(join(dir, '.trusted-root.json')).catch(() => undefined);
    if (!backup?.equals(rootText)) await writeFileAtomic(join(dir, '.trusted-root.json'), rootText);
    // The persisted files only tell which paths exist; every entry used comes from tuf-js's
    // in-memory trusted set through getTargetInfo.
    const targetsJson = JSON.parse(await readFile(join(dir, 'targets.json'), 'utf8')) as {
      signed?: { targets?: Record<string, unknown>; version?: number };
    };
    const trusted: Record<string, TargetFile> = {};
    for (const path of Object.keys(targetsJson.signed?.targets ?? {})) {
      const info = await updater.getTargetInfo(path);
      if (info) trusted[path] = info;
    }
    const { models, invalid } = listModelTargets(trusted);
    const root = parseMetadata('root', JSON.parse(rootText.toString('utf8')), 'root.json');
    const ts = parseMetadata(
      'timestamp',
      JSON.parse(await readFile(join(dir, 'timestamp.json'), 'utf8')),
      'ts',
    );
    return {
      rootVersion: root.signed.version,
      targetsVersion: Number(targetsJson.signed?.version ?? 0),
      timestampExpires: ts.signed.expires,
      models,
      invalid,
    };
  }

  /**
   * Downloads a target of the last refresh to `dest`, verified by tuf-js (length cap and hashes)
   * and checked again here against its signed length and sha256.
   * @throws {CascadeError} OTA_ERR_TARGET_HASH for tampered bytes, OTA_ERR_TOO_LARGE for a
   *   download longer than signed, OTA_ERR_DOWNLOAD for network failures, OTA_ERR_METADATA_INVALID
   *   if the path is not a trusted target (or no refresh succeeded).
   */
  async download(path: string, dest: string): Promise<{ length: number; sha256: string }> {
    const updater = this.#updater;
    const info = updater ? await updater.getTargetInfo(path) : undefined;
    if (!updater || !info) {
      throw new CascadeError(
        ErrorCodes.OTA_ERR_METADATA_INVALID,
        `${path}: not a trusted target (refresh first)`,
      );
    }
    const want = info.hashes.sha256;
    if (typeof want !== 'string') {
      throw new CascadeError(ErrorCodes.OTA_ERR_METADATA_INVALID, `${path}: target has no sha256`);
    }
    try {
      await updater.downloadTarget(info, dest);
    } catch (err) {
      const e = classifyError(err, `download ${path}`);
      if (e.code === ErrorCodes.OTA_ERR_MISMATCH) {
        throw new CascadeError(ErrorCodes.OTA_ERR_TARGET_HASH, e.message, { cause: err });
      }
      throw e;
    }
    const got = await sha256File(dest);
    if (got.length !== info.length || got.sha256 !== want) {
      throw new CascadeError(
        ErrorCodes.OTA_ERR_TARGET_HASH,
        `${path}: ${got.length} bytes sha256 ${got.sha256.slice(0, 12)}…, signed ${info.length} bytes ${want.slice(0, 12)}…`,
      );
    }
    return got;
  }
}
