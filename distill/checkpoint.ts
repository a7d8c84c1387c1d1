/**
 * Training checkpoints: one file with a JSON header and the raw float32 tensors after it,
 * written to a temporary file, fsynced and renamed, so a kill at any moment leaves either the
 * previous checkpoint or the new one, never half of one.
 */
import { open, readFile, rename, rm } from 'node:fs/promises';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';

const MAGIC = 'CASCADE-CKPT-1';

export interface CheckpointState<Meta> {
  meta: Meta;
  /** Named float32 tensors: model variables, optimizer slots, best weights. */
  tensors: Map<string, Float32Array>;
}

/** Writes a checkpoint atomically (temp file, fsync, rename). */
export async function saveCheckpoint<Meta>(path: string, state: CheckpointState<Meta>): Promise<void> {
  const index: Array<{ name: string; length: number }> = [];
  for (const [name, data] of state.tensors) index.push({ name, length: data.length });
  const header = Buffer.from(JSON.stringify({ magic: MAGIC, meta: state.meta, index }), 'utf8');
  const len = Buffer.alloc(4);
  len.writeUInt32LE(header.length, 0);
  const tmp = `${path}.tmp-${process.pid}`;
  const fh = await open(tmp, 'w', 0o644);
  try {
    await fh.write(Buffer.from(MAGIC, 'ascii'));
    await fh.write(len);
    await fh.write(header);
    for (const data of state.tensors.values()) {
      await fh.write(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
}

/**
 * Reads a checkpoint written by {@link saveCheckpoint}; returns null when the file does not exist.
 * @throws {CascadeError} TRAIN_ERR_CHECKPOINT when the file is not a complete checkpoint.
 */
export async function loadCheckpoint<Meta>(path: string): Promise<CheckpointState<Meta> | null> {
  let buf: Buffer;
  try {
    buf = await readFile(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  const bad = (why: string): CascadeError =>
    new CascadeError(ErrorCodes.TRAIN_ERR_CHECKPOINT, `${path}: not a usable checkpoint: ${why}`);
  if (buf.length < MAGIC.length + 4 || buf.toString('ascii', 0, MAGIC.length) !== MAGIC)
    throw bad('wrong magic');
  const hlen = buf.readUInt32LE(MAGIC.length);
  const start = MAGIC.length + 4;
  if (start + hlen > buf.length) throw bad('truncated header');
  let header: { meta: Meta; index: Array<{ name: string; length: number }> };
  try {
    header = JSON.parse(buf.toString('utf8', start, start + hlen));
  } catch {
    throw bad('corrupt header');
  }
  const tensors = new Map<string, Float32Array>();
  let off = start + hlen;
  for (const { name, length } of header.index) {
    const bytes = length * 4;
    if (off + bytes > buf.length) throw bad(`truncated at tensor ${name}`);
    // Copy: the Buffer's offset need not be 4-byte aligned.
    tensors.set(name, new Float32Array(buf.buffer.slice(buf.byteOffset + off, buf.byteOffset + off + bytes)));
    off += bytes;
  }
  if (off !== buf.length) throw bad('trailing bytes');
  return { meta: header.meta, tensors };
}

/** Removes a checkpoint (after a run completes); missing files are fine. */
export async function removeCheckpoint(path: string): Promise<void> {
  await rm(path, { force: true });
}
