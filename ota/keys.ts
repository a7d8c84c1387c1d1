/**
 * Ed25519 signing keys for the OTA repository, from node:crypto.
 *
 * On disk a key is a pair of standard PEM files, so that openssl, an HSM's tooling or a YubiKey's
 * import can use them directly: `<name>.key` (PKCS#8 private key, optionally encrypted with a
 * passphrase, mode 0600, refused when group or others can read it) and `<name>.pub` (SPKI public
 * key). In TUF metadata a key is `{keytype: "ed25519", scheme: "ed25519", keyval: {public: hex}}`
 * and its key id the sha256 of that object's canonical JSON, as the TUF specification defines.
 * Private key material is never returned as text, logged or put in an error message.
 */
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  sign as cryptoSign,
  verify as cryptoVerify,
  generateKeyPairSync,
  type KeyObject,
} from 'node:crypto';
import { open, readFile, stat, writeFile } from 'node:fs/promises';
import { Key, Signature } from '@tufjs/models';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import { canonicalize } from './canonical.ts';

/** A public key as TUF metadata lists it, with its key id. */
export interface PublicKeyInfo {
  keyId: string;
  /** The @tufjs/models key, ready for a root's `keys`. */
  key: Key;
  /** SPKI PEM of the same key (openssl-readable). */
  pem: string;
}

/** A loaded private key: signs TUF metadata; the key material stays inside the KeyObject. */
export interface Signer extends PublicKeyInfo {
  /** Signs `data` (Ed25519, pure: no pre-hash) and returns the TUF signature. */
  sign(data: Buffer): Signature;
}

/** Raw 32-byte Ed25519 public key, hex. */
function rawPublicHex(pub: KeyObject): string {
  const jwk = pub.export({ format: 'jwk' });
  if (jwk.crv !== 'Ed25519' || typeof jwk.x !== 'string') throw new TypeError('not an Ed25519 key');
  return Buffer.from(jwk.x, 'base64url').toString('hex');
}

/** TUF key id: sha256 over the canonical JSON of the public key object. */
export function keyIdOf(publicHex: string): string {
  const obj = { keytype: 'ed25519', scheme: 'ed25519', keyval: { public: publicHex } };
  return createHash('sha256').update(canonicalize(obj)).digest('hex');
}

/** Public key info from a node:crypto Ed25519 public key. @throws {TypeError} for other key types. */
export function publicKeyInfo(pub: KeyObject): PublicKeyInfo {
  if (pub.asymmetricKeyType !== 'ed25519') {
    throw new TypeError(`expected an Ed25519 key, got ${pub.asymmetricKeyType ?? 'a symmetric key'}`);
  }
  const hex = rawPublicHex(pub);
  const keyId = keyIdOf(hex);
  const key = new Key({ keyID: keyId, keyType: 'ed25519', scheme: 'ed25519', keyVal: { public: hex } });
  return { keyId, key, pem: pub.export({ format: 'pem', type: 'spki' }).toString() };
}

/** A signer over a node:crypto Ed25519 private key. @throws {TypeError} for other key types. */
export function signerFromKeyObject(priv: KeyObject): Signer {
  const info = publicKeyInfo(createPublicKey(priv));
  return {
    ...info,
    sign: (data: Buffer) =>
      new Signature({ keyID: info.keyId, sig: cryptoSign(null, data, priv).toString('hex') }),
  };
}

/** Verifies a raw Ed25519 signature (as openssl `pkeyutl -sign -rawin` makes it) over `data`. */
export function verifyRaw(info: PublicKeyInfo, data: Buffer, signature: Buffer): boolean {
  return cryptoVerify(null, data, createPublicKey(info.pem), signature);
}

/** Options of {@link generateKeyFiles}. */
export interface KeygenOptions {
  /** Encrypts the private key (PKCS#8, AES-256-CBC); default: unencrypted. */
  passphrase?: string;
  /** Overwrite existing files; default false (an existing key is never clobbered by mistake). */
  force?: boolean;
}

/**
 * Generates an Ed25519 key pair and writes `<base>.key` (private, mode 0600, created exclusively)
 * and `<base>.pub` (public).
 * @param base path without extension.
 * @returns the public key info and both paths.
 * @throws {CascadeError} OTA_ERR_KEY if a file exists (without `force`) or cannot be written.
 */
export async function generateKeyFiles(
  base: string,
  opts: KeygenOptions = {},
): Promise<PublicKeyInfo & { privatePath: string; publicPath: string }> {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const pem = privateKey
    .export(
      opts.passphrase === undefined
        ? { format: 'pem', type: 'pkcs8' }
        : { format: 'pem', type: 'pkcs8', cipher: 'aes-256-cbc', passphrase: opts.passphrase },
    )
    .toString();
  const info = publicKeyInfo(publicKey);
  const privatePath = `${base}.key`;
  const publicPath = `${base}.pub`;
  try {
    // Created with 0600 from the first byte (no window in which the umask's mode applies), and
    // chmod'ed again in case the file pre-existed under --force.
    const fh = await open(privatePath, opts.force ? 'w' : 'wx', 0o600);
    try {
      await fh.chmod(0o600);
      await fh.writeFile(pem);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await writeFile(publicPath, info.pem, { flag: opts.force ? 'w' : 'wx', mode: 0o644 });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why =
      code === 'EEXIST' ? 'already exists (use --force to replace it)' : `cannot be written (${code})`;
    throw new CascadeError(ErrorCodes.OTA_ERR_KEY, `${privatePath}: key file ${why}`, { cause: err });
  }
  return { ...info, privatePath, publicPath };
}

/**
 * Loads a private key file.
 * @param passphrase for an encrypted key.
 * @throws {CascadeError} OTA_ERR_KEY if the file is missing, readable by group or others, not an
 *   Ed25519 private key, encrypted without a passphrase, or the passphrase is wrong. The message
 *   never contains key material.
 */
export async function loadSigner(path: string, passphrase?: string): Promise<Signer> {
  let text: string;
  try {
    const st = await stat(path);
    if ((st.mode & 0o077) !== 0) {
      throw new CascadeError(
        ErrorCodes.OTA_ERR_KEY,
        `${path}: private key is accessible by group or others (mode ${(st.mode & 0o777).toString(8)}); run chmod 600`,
      );
    }
    text = await readFile(path, 'utf8');
  } catch (err) {
    if (err instanceof CascadeError) throw err;
    throw new CascadeError(ErrorCodes.OTA_ERR_KEY, `${path}: cannot read private key`, { cause: err });
  }
  let priv: KeyObject;
  try {
    priv = createPrivateKey(passphrase === undefined ? text : { key: text, passphrase });
  } catch {
    // No cause attached: OpenSSL's error can quote parts of the input.
    const hint = text.includes('ENCRYPTED')
      ? passphrase === undefined
        ? 'is encrypted: give its passphrase'
        : 'cannot be decrypted with that passphrase'
      : 'is not a PEM private key';
    throw new CascadeError(ErrorCodes.OTA_ERR_KEY, `${path}: private key ${hint}`);
  }
  if (priv.asymmetricKeyType !== 'ed25519') {
    throw new CascadeError(
      ErrorCodes.OTA_ERR_KEY,
      `${path}: expected an Ed25519 private key, got ${priv.asymmetricKeyType}`,
    );
  }
  return signerFromKeyObject(priv);
}

/**
 * Loads a public key file (SPKI PEM). A private key file is refused, so that secrets are never
 * copied where public keys go.
 * @throws {CascadeError} OTA_ERR_KEY if the file is missing, private, or not an Ed25519 public key.
 */
export async function loadPublicKey(path: string): Promise<PublicKeyInfo> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new CascadeError(ErrorCodes.OTA_ERR_KEY, `${path}: cannot read public key`, { cause: err });
  }
  if (text.includes('PRIVATE KEY')) {
    throw new CascadeError(ErrorCodes.OTA_ERR_KEY, `${path}: is a private key; give the .pub file`);
  }
  let pub: KeyObject;
  try {
    pub = createPublicKey(text);
  } catch (err) {
    throw new CascadeError(ErrorCodes.OTA_ERR_KEY, `${path}: not a PEM public key`, { cause: err });
  }
  if (pub.asymmetricKeyType !== 'ed25519') {
    throw new CascadeError(
      ErrorCodes.OTA_ERR_KEY,
      `${path}: expected an Ed25519 public key, got ${pub.asymmetricKeyType}`,
    );
  }
  return publicKeyInfo(pub);
}
