/**
 * Canonical JSON (the OLPC form TUF signs): the very implementation @tufjs/models uses when it
 * signs and verifies, resolved through @tufjs/models itself so that the bytes the project signs,
 * exports for an external signer, or verifies are byte-for-byte the bytes tuf-js checks.
 */
import { createRequire } from 'node:module';
import type { Metadata, Root, Snapshot, Targets, Timestamp } from '@tufjs/models';

type Canonicalize = (value: unknown) => string;

// @tufjs/canonical-json is a dependency of @tufjs/models, not of this project: resolve it from
// there, so a different hoisting layout cannot hand us another copy.
const fromHere = createRequire(import.meta.url);
const fromModels = createRequire(fromHere.resolve('@tufjs/models'));
const { canonicalize: impl } = fromModels('@tufjs/canonical-json') as { canonicalize: Canonicalize };

/**
 * Serialises a JSON value canonically: sorted keys, no insignificant whitespace, only `"` and `\`
 * escaped in strings.
 * @throws {TypeError} for values JSON cannot represent canonically (e.g. non-finite numbers).
 */
export function canonicalize(value: unknown): string {
  return impl(value);
}

/** The bytes every signature over `md` is made on: the canonical JSON of its `signed` part. */
export function signedBytes(md: Metadata<Root | Targets | Snapshot | Timestamp>): Buffer {
  return Buffer.from(canonicalize(md.signed.toJSON()));
}
