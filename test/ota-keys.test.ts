/**
 * ota/keys.ts and ota/canonical.ts: Ed25519 key files (0600, exclusive creation, passphrases,
 * refusal of readable private keys), TUF key ids as the specification defines them, canonical
 * JSON identical to what @tufjs/models signs, and an independent verifier: signatures made by
 * the project verify with the openssl command line, and signatures made by openssl verify here
 * (through @tufjs/models' own signature check).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Metadata, Signature } from '@tufjs/models';
import { ErrorCodes } from '../cascade/errors.ts';
import { canonicalize, signedBytes } from '../ota/canonical.ts';
import { generateKeyFiles, keyIdOf, loadPublicKey, loadSigner, verifyRaw } from '../ota/keys.ts';
import { buildRoot, expiryString, type RoleKeys, signatureReport } from '../ota/metadata.ts';

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'ota-keys-'));
});
after(() => rmSync(dir, { recursive: true, force: true }));

const hasOpenssl = spawnSync('openssl', ['version']).status === 0;

function openssl(...args: string[]): { status: number | null; out: string } {
  const r = spawnSync('openssl', args, { encoding: 'utf8' });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

/** A root whose four roles all use `keys` with threshold 1. */
function rootFor(keys: RoleKeys['keys']): Metadata<import('@tufjs/models').Root> {
  const r: RoleKeys = { keys, threshold: 1 };
  return buildRoot({ root: r, targets: r, snapshot: r, timestamp: r }, 1, expiryString(new Date(), 3600));
}

describe('key files', () => {
  it('writes the private key with mode 0600 and the public key as SPKI PEM', async () => {
    const k = await generateKeyFiles(join(dir, 'a'));
    assert.equal(statSync(k.privatePath).mode & 0o777, 0o600);
    assert.match(readFileSync(k.privatePath, 'utf8'), /^-----BEGIN PRIVATE KEY-----/);
    assert.match(readFileSync(k.publicPath, 'utf8'), /^-----BEGIN PUBLIC KEY-----/);
    const signer = await loadSigner(k.privatePath);
    const pub = await loadPublicKey(k.publicPath);
    assert.equal(signer.keyId, k.keyId);
    assert.equal(pub.keyId, k.keyId);
  });

  it('never overwrites an existing key unless forced', async () => {
    const k = await generateKeyFiles(join(dir, 'b'));
    const before = readFileSync(k.privatePath);
    await assert.rejects(generateKeyFiles(join(dir, 'b')), {
      code: ErrorCodes.OTA_ERR_KEY,
      message: /already exists/,
    });
    assert.deepEqual(readFileSync(k.privatePath), before);
    const k2 = await generateKeyFiles(join(dir, 'b'), { force: true });
    assert.notEqual(k2.keyId, k.keyId);
  });

  it('refuses a private key that group or others can read', async () => {
    const k = await generateKeyFiles(join(dir, 'c'));
    chmodSync(k.privatePath, 0o640);
    await assert.rejects(loadSigner(k.privatePath), { code: ErrorCodes.OTA_ERR_KEY, message: /chmod 600/ });
  });

  it('encrypts with a passphrase and names the problem without leaking key material', async () => {
    const k = await generateKeyFiles(join(dir, 'd'), { passphrase: 'correct horse' });
    assert.match(readFileSync(k.privatePath, 'utf8'), /ENCRYPTED PRIVATE KEY/);
    await assert.rejects(loadSigner(k.privatePath), (e: Error & { code?: string }) => {
      assert.equal(e.code, ErrorCodes.OTA_ERR_KEY);
      assert.match(e.message, /is encrypted/);
      assert.doesNotMatch(e.message, /BEGIN|MII/);
      return true;
    });
    await assert.rejects(loadSigner(k.privatePath, 'wrong'), { message: /cannot be decrypted/ });
    assert.equal((await loadSigner(k.privatePath, 'correct horse')).keyId, k.keyId);
  });

  it('refuses a private key where a public key is expected', async () => {
    const k = await generateKeyFiles(join(dir, 'e'));
    await assert.rejects(loadPublicKey(k.privatePath), {
      code: ErrorCodes.OTA_ERR_KEY,
      message: /private key/,
    });
  });

  it('computes key ids as sha256 of the canonical public key object', async () => {
    const k = await loadPublicKey((await generateKeyFiles(join(dir, 'f'))).publicPath);
    const hex = k.key.keyVal.public;
    assert.match(hex, /^[0-9a-f]{64}$/);
    const expected = createHash('sha256')
      .update(`{"keytype":"ed25519","keyval":{"public":"${hex}"},"scheme":"ed25519"}`)
      .digest('hex');
    assert.equal(keyIdOf(hex), expected);
    assert.equal(k.keyId, expected);
  });
});

describe('canonical JSON', () => {
  it('sorts keys, drops whitespace and rejects floats (OLPC)', () => {
    assert.equal(canonicalize({ b: 1, a: [true, null, 'x"y'] }), '{"a":[true,null,"x\\"y"],"b":1}');
    assert.throws(() => canonicalize({ x: 0.5 }));
  });

  it('is exactly what @tufjs/models signs', async () => {
    const signer = await loadSigner((await generateKeyFiles(join(dir, 'g'))).privatePath);
    const md = rootFor([signer]);
    let seen: Buffer | undefined;
    md.sign((data) => {
      seen = data;
      return signer.sign(data);
    });
    assert.ok(seen);
    assert.deepEqual(seen, signedBytes(md));
  });
});

describe('openssl interoperability', { skip: hasOpenssl ? false : 'openssl is not installed' }, () => {
  it('openssl pkeyutl verifies a signature the project made on TUF metadata', async () => {
    const k = await generateKeyFiles(join(dir, 'proj'));
    const signer = await loadSigner(k.privatePath);
    const md = rootFor([signer]);
    md.sign((d) => signer.sign(d));
    const msg = join(dir, 'root.payload');
    const sig = join(dir, 'root.sig');
    writeFileSync(msg, signedBytes(md));
    writeFileSync(sig, Buffer.from(md.signatures[signer.keyId].sig, 'hex'));
    const ok = openssl(
      'pkeyutl',
      '-verify',
      '-pubin',
      '-inkey',
      k.publicPath,
      '-rawin',
      '-in',
      msg,
      '-sigfile',
      sig,
    );
    assert.equal(ok.status, 0, ok.out);
    assert.match(ok.out, /Signature Verified Successfully/);
    // The same check fails on a changed payload: openssl really verifies what was signed.
    const tampered = Buffer.from(signedBytes(md));
    tampered[tampered.length - 2] ^= 1;
    writeFileSync(msg, tampered);
    const bad = openssl(
      'pkeyutl',
      '-verify',
      '-pubin',
      '-inkey',
      k.publicPath,
      '-rawin',
      '-in',
      msg,
      '-sigfile',
      sig,
    );
    assert.notEqual(bad.status, 0);
  });

  it('a signature and key made by openssl verify in the project and in @tufjs/models', async () => {
    const priv = join(dir, 'ossl.pem');
    const pubPath = join(dir, 'ossl.pub');
    assert.equal(openssl('genpkey', '-algorithm', 'ed25519', '-out', priv).status, 0);
    assert.equal(openssl('pkey', '-in', priv, '-pubout', '-out', pubPath).status, 0);
    chmodSync(priv, 0o600);
    const pub = await loadPublicKey(pubPath);
    const md = rootFor([pub]);
    const msg = join(dir, 'ossl.payload');
    const sig = join(dir, 'ossl.sig');
    writeFileSync(msg, signedBytes(md));
    assert.equal(openssl('pkeyutl', '-sign', '-inkey', priv, '-rawin', '-in', msg, '-out', sig).status, 0);
    const raw = readFileSync(sig);
    assert.equal(raw.length, 64);
    assert.ok(verifyRaw(pub, signedBytes(md), raw));
    assert.equal(signatureReport(md.signed, 'root', md).ok, false);
    md.signatures[pub.keyId] = new Signature({ keyID: pub.keyId, sig: raw.toString('hex') });
    const report = signatureReport(md.signed, 'root', md);
    assert.deepEqual(report.valid, [pub.keyId]);
    assert.ok(report.ok);
    // Through JSON, as a client receives it.
    const again = Metadata.fromJSON(
      md.signed.type,
      JSON.parse(JSON.stringify(md.toJSON())) as Parameters<typeof Metadata.fromJSON>[1],
    );
    assert.doesNotThrow(() => md.verifyDelegate('root', again));
    // openssl's PKCS#8 key file loads as a project signer with the same key id.
    assert.equal((await loadSigner(priv)).keyId, pub.keyId);
  });
});
