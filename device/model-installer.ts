/**
 * The device's model store, crash-safe at every instruction:
 *
 * ```
 * <modelsDir>/active.json                 pointer: active and previous release, trial/confirmed
 * <modelsDir>/releases/<id>/card.json     one folder per installed release
 * <modelsDir>/releases/<id>/<model file>
 * <modelsDir>/releases/.staging-<random>/ a release being written
 * ```
 * A release is written into a staging folder next to the active ones (same file system), each
 * file fsync'ed, the folder fsync'ed and renamed into place, the releases folder fsync'ed; then the
 * pointer is replaced atomically (temporary file, fsync, rename, fsync). A power cut therefore
 * leaves the old pointer (old model) or the new one (new, complete model), never a torn file.
 *
 * A new release is first activated on *trial*; the agent confirms it after its health check. A
 * restart that finds a trial (the device died between swap and confirmation) goes back to the
 * previous release, as a boot loader's A/B slots do; a release that is never confirmed twice is
 * blocked. Only node built-ins are imported, so the power-cut test runs this file in a bare child.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import { fsyncDir, type StepHook, writeFileAtomic, writeFileSynced } from '../ota/atomic-fs.ts';

/** An installed release, as the pointer records it. */
export interface ReleaseRef {
  /** Folder name under releases/: `r<release>-<first 12 hex of the model sha256>`. */
  id: string;
  release: number;
  model: string;
  version: string;
  modelFile: string;
  modelSha256: string;
  modelBytes: number;
  cardSha256: string;
  cardBytes: number;
}

/** A release given up on here: install or health check failed, or never confirmed. */
export interface FailedRelease {
  release: number;
  modelSha256: string;
  reason: string;
  at: string;
  /** How many times it failed. */
  count: number;
}

interface Pointer {
  schemaVersion: 1;
  /** Incremented on every write. */
  seq: number;
  active: ReleaseRef | null;
  previous: ReleaseRef | null;
  state: 'confirmed' | 'trial';
  failed: FailedRelease[];
}

/** What {@link ModelInstaller.recover} found and did. */
export interface RecoverResult {
  /** The release to run, or null for the factory model. */
  active: ReleaseRef | null;
  /** A trial release that was reverted because it was never confirmed. */
  revertedTrial?: ReleaseRef;
  /** A damaged release that was abandoned, with why. */
  repaired?: { release: ReleaseRef; reason: string };
}

/** Reason recorded for a trial found at start-up. */
export const UNCONFIRMED = 'unconfirmed after restart';
/** Failed-release entries kept in the pointer. */
const MAX_FAILED = 32;

const EMPTY: Pointer = {
  schemaVersion: 1,
  seq: 0,
  active: null,
  previous: null,
  state: 'confirmed',
  failed: [],
};

function sha256(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

function isRef(v: unknown): v is ReleaseRef {
  const r = v as ReleaseRef;
  return (
    typeof r === 'object' &&
    r !== null &&
    /^r\d+-[0-9a-f]{12}$/.test(r.id) &&
    Number.isInteger(r.release) &&
    typeof r.modelFile === 'string' &&
    /^[^/\\]+$/.test(r.modelFile) &&
    r.modelFile !== 'card.json' &&
    /^[0-9a-f]{64}$/.test(r.modelSha256) &&
    /^[0-9a-f]{64}$/.test(r.cardSha256)
  );
}

/** The model store of one device. All methods must be called one at a time. */
export class ModelInstaller {
  readonly dir: string;
  readonly #hook: StepHook | undefined;
  readonly #now: () => Date;
  #chunk: number;

  /**
   * @param opts.hook called between every write step (fault injection in tests).
   * @param opts.chunk bytes per write call; default 64 KiB.
   * @param opts.now clock for failure records; default `() => new Date()`.
   */
  constructor(dir: string, opts: { hook?: StepHook; chunk?: number; now?: () => Date } = {}) {
    this.dir = dir;
    this.#hook = opts.hook;
    this.#chunk = opts.chunk ?? 64 * 1024;
    this.#now = opts.now ?? (() => new Date());
  }

  get #releases(): string {
    return join(this.dir, 'releases');
  }

  /** Absolute path of a release's card. */
  cardPath(ref: ReleaseRef): string {
    return join(this.#releases, ref.id, 'card.json');
  }

  async #read(): Promise<Pointer> {
    let text: string;
    try {
      text = await readFile(join(this.dir, 'active.json'), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return structuredClone(EMPTY);
      throw new CascadeError(ErrorCodes.OTA_ERR_INSTALL, `${this.dir}/active.json: unreadable`, {
        cause: err,
      });
    }
    let p: Pointer;
    try {
      p = JSON.parse(text) as Pointer;
    } catch (err) {
      // Cannot happen through this class (the pointer is replaced atomically); a foreign edit.
      throw new CascadeError(ErrorCodes.OTA_ERR_INSTALL, `${this.dir}/active.json: not JSON`, { cause: err });
    }
    if (
      p?.schemaVersion !== 1 ||
      (p.active !== null && !isRef(p.active)) ||
      (p.previous !== null && !isRef(p.previous)) ||
      !Array.isArray(p.failed)
    ) {
      throw new CascadeError(ErrorCodes.OTA_ERR_INSTALL, `${this.dir}/active.json: not a model pointer`);
    }
    return p;
  }

  async #write(p: Pointer): Promise<void> {
    p.seq += 1;
    p.failed = p.failed.slice(-MAX_FAILED);
    await writeFileAtomic(join(this.dir, 'active.json'), `${JSON.stringify(p, null, 2)}\n`, {
      hook: this.#hook,
    });
  }

  /** Checks a release's files against the pointer's sizes and hashes; returns the problem, if any. */
  async #verify(ref: ReleaseRef): Promise<string | undefined> {
    for (const [file, sha, bytes] of [
      ['card.json', ref.cardSha256, ref.cardBytes],
      [ref.modelFile, ref.modelSha256, ref.modelBytes],
    ] as const) {
      const data = await readFile(join(this.#releases, ref.id, file)).catch(() => undefined);
      if (!data) return `${ref.id}/${file} is missing`;
      if (data.length !== bytes || sha256(data) !== sha) return `${ref.id}/${file} does not match its hash`;
    }
    return undefined;
  }

  #fail(p: Pointer, ref: ReleaseRef, reason: string): void {
    const hit = p.failed.find((f) => f.modelSha256 === ref.modelSha256);
    if (hit) {
      hit.count += 1;
      hit.reason = reason;
      hit.at = this.#now().toISOString();
    } else {
      p.failed.push({
        release: ref.release,
        modelSha256: ref.modelSha256,
        reason,
        at: this.#now().toISOString(),
        count: 1,
      });
    }
  }

  /**
   * Brings the store to a consistent state at start-up: removes half-written staging folders and
   * temporary files, reverts an unconfirmed trial to the previous release, abandons an active
   * release whose files no longer verify (falling back to the previous one, else the factory
   * model), and deletes releases nothing points to.
   * @throws {CascadeError} OTA_ERR_INSTALL if the pointer itself is unreadable or foreign.
   */
  async recover(): Promise<RecoverResult> {
    await mkdir(this.#releases, { recursive: true });
    const p = await this.#read();
    const result: RecoverResult = { active: p.active };
    let dirty = false;
    if (p.state === 'trial' && p.active) {
      result.revertedTrial = p.active;
      this.#fail(p, p.active, UNCONFIRMED);
      p.active = p.previous;
      p.previous = null;
      p.state = 'confirmed';
      dirty = true;
    }
    for (const which of ['active', 'previous'] as const) {
      const ref = p[which];
      const problem = ref ? await this.#verify(ref) : undefined;
      if (!ref || !problem) continue;
      this.#fail(p, ref, problem);
      if (which === 'active') {
        result.repaired = { release: ref, reason: problem };
        const prev = p.previous && !(await this.#verify(p.previous)) ? p.previous : null;
        p.active = prev;
      }
      p.previous = null;
      dirty = true;
    }
    if (dirty) await this.#write(p);
    result.active = p.active;
    await this.#collect(p);
    return result;
  }

  /** Removes staging folders, temporary files and releases the pointer does not name. */
  async #collect(p: Pointer): Promise<void> {
    const keep = new Set([p.active?.id, p.previous?.id].filter(Boolean));
    for (const name of await readdir(this.#releases)) {
      if (!keep.has(name)) await rm(join(this.#releases, name), { recursive: true, force: true });
    }
    for (const name of await readdir(this.dir)) {
      if (name.endsWith('.tmp')) await rm(join(this.dir, name), { force: true });
    }
  }

  /**
   * Writes a release into its own folder (staging folder, fsync, rename, fsync), verifying the
   * bytes against the given hashes first. An existing complete folder of the same release is reused.
   * @throws {CascadeError} OTA_ERR_INSTALL on a hash mismatch or an unsafe model file name.
   */
  async stage(r: {
    release: number;
    model: string;
    version: string;
    modelFile: string;
    card: Uint8Array;
    modelBytes: Uint8Array;
    modelSha256: string;
    cardSha256: string;
  }): Promise<ReleaseRef> {
    if (!/^[^/\\]+$/.test(r.modelFile) || r.modelFile === 'card.json' || r.modelFile.startsWith('.')) {
      throw new CascadeError(ErrorCodes.OTA_ERR_INSTALL, `model file name "${r.modelFile}" is not allowed`);
    }
    if (sha256(r.modelBytes) !== r.modelSha256 || sha256(r.card) !== r.cardSha256) {
      throw new CascadeError(
        ErrorCodes.OTA_ERR_INSTALL,
        `release ${r.release}: bytes do not match their hashes`,
      );
    }
    const ref: ReleaseRef = {
      id: `r${r.release}-${r.modelSha256.slice(0, 12)}`,
      release: r.release,
      model: r.model,
      version: r.version,
      modelFile: r.modelFile,
      modelSha256: r.modelSha256,
      modelBytes: r.modelBytes.length,
      cardSha256: r.cardSha256,
      cardBytes: r.card.length,
    };
    await mkdir(this.#releases, { recursive: true });
    const final = join(this.#releases, ref.id);
    if (!(await this.#verify(ref))) return ref;
    await rm(final, { recursive: true, force: true });
    const staging = join(this.#releases, `.staging-${randomBytes(6).toString('hex')}`);
    await mkdir(staging);
    this.#hook?.('mkdir:staging');
    const o = { hook: this.#hook, chunk: this.#chunk, flag: 'wx' };
    await writeFileSynced(join(staging, 'card.json'), r.card, o);
    await writeFileSynced(join(staging, r.modelFile), r.modelBytes, o);
    await fsyncDir(staging);
    this.#hook?.('fsync-dir:staging');
    await rename(staging, final);
    this.#hook?.('rename:release');
    await fsyncDir(this.#releases);
    this.#hook?.('fsync-dir:releases');
    return ref;
  }

  /**
   * Makes a staged release the active one, on trial: until {@link confirm}, a restart goes back
   * to the release active now.
   */
  async activate(ref: ReleaseRef): Promise<void> {
    const p = await this.#read();
    if (p.active?.id === ref.id) return;
    p.previous = p.state === 'trial' ? p.previous : p.active;
    p.active = ref;
    p.state = 'trial';
    await this.#write(p);
  }

  /** Confirms the trial release (its health check passed) and deletes releases no longer needed. */
  async confirm(): Promise<void> {
    const p = await this.#read();
    if (p.state !== 'trial') return;
    p.state = 'confirmed';
    p.failed = p.failed.filter((f) => f.modelSha256 !== p.active?.modelSha256);
    await this.#write(p);
    await this.#collect(p);
  }

  /**
   * Returns to the previous release (or the factory model) and records the active one as failed.
   * @returns the release now active.
   */
  async rollback(reason: string): Promise<ReleaseRef | null> {
    const p = await this.#read();
    if (p.active) this.#fail(p, p.active, reason);
    p.active = p.previous;
    p.previous = null;
    p.state = 'confirmed';
    await this.#write(p);
    await this.#collect(p);
    return p.active;
  }

  /** The pointer as it is now: active and previous release, trial state and failures. */
  async state(): Promise<Readonly<Pointer>> {
    return this.#read();
  }

  /**
   * sha256 of model files not to install again: failed once for a reason other than a restart
   * during trial, or unconfirmed twice.
   */
  async blocked(): Promise<Set<string>> {
    const p = await this.#read();
    return new Set(
      p.failed.filter((f) => f.reason !== UNCONFIRMED || f.count >= 2).map((f) => f.modelSha256),
    );
  }
}
