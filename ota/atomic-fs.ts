/**
 * Crash-safe file writes: a file is written under a temporary name in the same folder, flushed
 * to disk (fsync), renamed over the target (atomic on POSIX file systems) and the folder is
 * flushed too, so that after a power cut a reader finds the old file or the new one, complete.
 * Only node built-ins: the model installer's power-cut test runs this in a bare child process.
 */
import { randomBytes } from 'node:crypto';
import { open, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/** Optional hook called between the steps of a write (for fault-injection tests). */
export type StepHook = (step: string) => void;

/**
 * Flushes a folder's entries (new names, renames, removals) to disk. Folders cannot be opened for
 * fsync on every platform; where that fails the rename is still atomic, just not yet durable.
 */
export async function fsyncDir(dir: string): Promise<void> {
  let fh: Awaited<ReturnType<typeof open>> | undefined;
  try {
    fh = await open(dir, 'r');
    await fh.sync();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EISDIR' && code !== 'EINVAL' && code !== 'EPERM') throw err;
  } finally {
    await fh?.close();
  }
}

/**
 * Writes `data` to a file and flushes it (content and metadata) before returning.
 * @param mode file mode for a new file; default 0o644.
 */
export async function writeFileSynced(
  path: string,
  data: Uint8Array | string,
  opts: { mode?: number; flag?: string; hook?: StepHook; chunk?: number } = {},
): Promise<void> {
  const fh = await open(path, opts.flag ?? 'w', opts.mode ?? 0o644);
  try {
    const bytes = typeof data === 'string' ? Buffer.from(data) : data;
    const chunk = opts.chunk ?? bytes.length;
    for (let off = 0; off < bytes.length || off === 0; off += Math.max(1, chunk)) {
      const end = Math.min(bytes.length, off + Math.max(1, chunk));
      if (end > off) await fh.write(bytes, off, end - off, off);
      opts.hook?.(`write:${basename(path)}:${end}`);
      if (end >= bytes.length) break;
    }
    await fh.sync();
    opts.hook?.(`fsync:${basename(path)}`);
  } finally {
    await fh.close();
  }
}

/**
 * Replaces `path` atomically with `data`: temporary file, fsync, rename, fsync of the folder.
 * @throws the underlying fs error; the temporary file is removed on failure.
 */
export async function writeFileAtomic(
  path: string,
  data: Uint8Array | string,
  opts: { mode?: number; hook?: StepHook } = {},
): Promise<void> {
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${randomBytes(4).toString('hex')}.tmp`);
  try {
    await writeFileSynced(tmp, data, { mode: opts.mode, flag: 'wx', hook: opts.hook });
    await rename(tmp, path);
    opts.hook?.(`rename:${basename(path)}`);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  await fsyncDir(dir);
  opts.hook?.(`fsync-dir:${basename(dir)}`);
}
