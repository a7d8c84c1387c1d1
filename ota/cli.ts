/**
 * `cascade ota …`: argument parsing and printing only; the work is in repository.ts, publish.ts,
 * keys.ts and client.ts. Private keys are read from files (and passphrases from a named
 * environment variable), never from the command line, and never printed.
 */
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Signature } from '@tufjs/models';
import { numberOpt, parse } from '../cascade/args.ts';
import { CascadeError, ErrorCodes, invalidArgument } from '../cascade/errors.ts';
import { parseModelCard } from '../models/card.ts';
import { signedBytes } from './canonical.ts';
import { OtaClient } from './client.ts';
import { generateKeyFiles, loadPublicKey, loadSigner, type Signer, verifyRaw } from './keys.ts';
import { ANNOUNCE_TOPIC, checkCardMatchesManifest } from './manifest.ts';
import {
  type AnyMetadata,
  metadataText,
  parseAnyMetadata,
  ROLE_NAMES,
  type RoleKeys,
  type RoleName,
  type SignatureReport,
} from './metadata.ts';
import { publish } from './publish.ts';
import { OtaRepository, type StagedRole } from './repository.ts';
import { serveStatic } from './serve.ts';

const HELP = `Usage: cascade ota <command> [options]

Signed model updates on The Update Framework (TUF). Typical flow:
  keygen → init → sign root → add-target → sign targets → publish → (devices update)

Commands:
  keygen --out BASE [--passphrase-env VAR] [--force]
        write an Ed25519 key pair: BASE.key (private, mode 0600) and BASE.pub
  init --repo DIR --root-key PUB... [--root-threshold K] --targets-key PUB... [--targets-threshold K]
       --snapshot-key PUB... --timestamp-key PUB... [--snapshot-threshold K] [--timestamp-threshold K]
       [--expires-root D] [--expires-targets D] [--expires-snapshot D] [--expires-timestamp D]
        create a repository workspace: root v1 (unsigned) and empty targets; expiry in days
        (defaults 365, 90, 7, 1)
  rotate --repo DIR [--root-key PUB... --root-threshold K] [--targets-key ...] [--snapshot-key ...]
        stage a new root version with new keys; it needs the old and the new root threshold
  add-target --repo DIR --card CARD.json --hardware-class NAME [--rollout PCT] [--release N] [--keep N]
        add a model (card + its first file) for one hardware class; rollout 0-100 (default 100);
        re-adding the same model changes only its rollout
  sign --repo DIR --role root|targets (--key KEY... | --merge FILE... | --renew)
        sign a staged role, merge signatures made offline on a copy, or bump version and expiry
  sign --file ROLE.json (--key KEY... [--out FILE] | --payload OUT | --public PUB --signature SIG)
        offline: sign a copy of a role file; export the exact bytes to sign (for openssl or an
        HSM); or attach a raw Ed25519 signature made elsewhere (checked before it is added)
  publish --repo DIR --snapshot-key KEY... --timestamp-key KEY... [--timestamp-only] [--announce MQTT_URL]
        write the static repository to DIR/published (serve it with any HTTP server)
  verify --repo URL|DIR --root ROOT.json [--download] [--hardware-class NAME] [--json]
        run the full client update workflow against a repository, as a device does
  status --repo DIR [--json]
        versions, expiry, signatures and targets of a workspace
  serve --dir DIR [--port N] [--host H]
        serve a published repository over HTTP (development and demos)

Key options take files; passphrases come from the environment variable named by --passphrase-env.`;

const OPTIONS = {
  help: { type: 'boolean', short: 'h' },
  out: { type: 'string' },
  force: { type: 'boolean' },
  'passphrase-env': { type: 'string' },
  repo: { type: 'string' },
  'root-key': { type: 'string', multiple: true },
  'targets-key': { type: 'string', multiple: true },
  'snapshot-key': { type: 'string', multiple: true },
  'timestamp-key': { type: 'string', multiple: true },
  'root-threshold': { type: 'string' },
  'targets-threshold': { type: 'string' },
  'snapshot-threshold': { type: 'string' },
  'timestamp-threshold': { type: 'string' },
  'expires-root': { type: 'string' },
  'expires-targets': { type: 'string' },
  'expires-snapshot': { type: 'string' },
  'expires-timestamp': { type: 'string' },
  card: { type: 'string' },
  'hardware-class': { type: 'string' },
  rollout: { type: 'string' },
  release: { type: 'string' },
  keep: { type: 'string' },
  role: { type: 'string' },
  key: { type: 'string', multiple: true },
  merge: { type: 'string', multiple: true },
  renew: { type: 'boolean' },
  file: { type: 'string' },
  payload: { type: 'string' },
  public: { type: 'string' },
  signature: { type: 'string' },
  'timestamp-only': { type: 'boolean' },
  announce: { type: 'string' },
  root: { type: 'string' },
  download: { type: 'boolean' },
  json: { type: 'boolean' },
  dir: { type: 'string' },
  port: { type: 'string' },
  host: { type: 'string' },
} as const;

type Values = ReturnType<typeof parse<typeof OPTIONS>>['values'];

function need(v: string | undefined, name: string): string {
  if (v === undefined || v === '') throw new CascadeError(ErrorCodes.CLI_ERR_ARGS, `${name} is required`);
  return v;
}

/** Where the CLI prints its result lines (tests capture them). */
export type Print = (line: string) => void;

const stdout: Print = (line) => {
  process.stdout.write(`${line}\n`);
};

function passphrase(v: Values): string | undefined {
  const name = v['passphrase-env'];
  if (name === undefined) return undefined;
  const value = process.env[name];
  if (value === undefined || value === '') {
    throw new CascadeError(
      ErrorCodes.OTA_ERR_KEY,
      `environment variable ${name} (--passphrase-env) is not set`,
    );
  }
  return value;
}

async function signers(files: string[] | undefined, v: Values, name: string): Promise<Signer[]> {
  if (!files || files.length === 0) throw new CascadeError(ErrorCodes.CLI_ERR_ARGS, `${name} is required`);
  const pass = passphrase(v);
  return Promise.all(files.map((f) => loadSigner(f, pass)));
}

async function roleKeys(v: Values, role: RoleName, required: boolean): Promise<RoleKeys | undefined> {
  const files = v[`${role}-key`];
  if (!files || files.length === 0) {
    if (required) throw new CascadeError(ErrorCodes.CLI_ERR_ARGS, `--${role}-key is required`);
    return undefined;
  }
  const keys = await Promise.all(files.map((f) => loadPublicKey(f)));
  const threshold = numberOpt(`--${role}-threshold`, v[`${role}-threshold`], { integer: true, min: 1 }) ?? 1;
  return { keys, threshold };
}

function stagedRole(raw: string | undefined): StagedRole {
  if (raw !== 'root' && raw !== 'targets') throw invalidArgument('--role', 'root or targets', raw);
  return raw;
}

function describeReport(r: SignatureReport): string {
  const extra = r.invalid.length > 0 ? `, ${r.invalid.length} invalid` : '';
  return `${r.role}: ${r.valid.length}/${r.threshold} signatures${extra}${r.ok ? ' (threshold met)' : ''}`;
}

async function readJsonFile(path: string): Promise<unknown> {
  try {
    return JSON.parse(await readFile(path, 'utf8'));
  } catch (err) {
    throw new CascadeError(ErrorCodes.OTA_ERR_METADATA_INVALID, `${path}: cannot read JSON metadata`, {
      cause: err,
    });
  }
}

async function cmdSign(v: Values, out: Print): Promise<void> {
  if (v.file !== undefined) {
    const md: AnyMetadata = parseAnyMetadata(await readJsonFile(v.file), v.file);
    if (v.payload !== undefined) {
      await writeFile(v.payload, signedBytes(md));
      out(`wrote the ${md.signed.type} v${md.signed.version} signing payload to ${v.payload}`);
      return;
    }
    if (v.signature !== undefined) {
      const pub = await loadPublicKey(need(v.public, '--public'));
      const sig = await readFile(v.signature);
      if (!verifyRaw(pub, signedBytes(md), sig)) {
        throw new CascadeError(
          ErrorCodes.OTA_ERR_SIGNATURE_INVALID,
          `${v.signature}: does not verify with ${v.public}`,
        );
      }
      md.signatures[pub.keyId] = new Signature({ keyID: pub.keyId, sig: sig.toString('hex') });
    } else {
      for (const s of await signers(v.key, v, '--key')) md.sign((d) => s.sign(d), true);
    }
    const dest = v.out ?? v.file;
    await writeFile(dest, metadataText(md));
    out(
      `signed ${md.signed.type} v${md.signed.version}: ${Object.keys(md.signatures).length} signature(s) in ${dest}`,
    );
    return;
  }
  const repo = await OtaRepository.open(need(v.repo, '--repo'));
  const role = stagedRole(v.role);
  if (v.renew) {
    const md = await repo.renew(role, new Date());
    out(`${role} is now v${md.signed.version}, expires ${md.signed.expires}; sign it again`);
  }
  for (const f of v.merge ?? []) {
    const added = await repo.merge(role, await readJsonFile(f), f);
    out(`${f}: merged ${added.length} signature(s)`);
  }
  if (v.key) await repo.sign(role, await signers(v.key, v, '--key'));
  if (!v.renew && !v.merge && !v.key) {
    throw new CascadeError(ErrorCodes.CLI_ERR_ARGS, 'sign needs --key, --merge or --renew');
  }
  out(describeReport(await repo.report(role)));
}

async function announce(url: string, timestamp: number): Promise<void> {
  const { connectAsync } = await import('mqtt');
  const client = await connectAsync(url, { reconnectPeriod: 0, connectTimeout: 10_000 });
  try {
    await client.publishAsync(ANNOUNCE_TOPIC, JSON.stringify({ timestamp, at: new Date().toISOString() }), {
      qos: 1,
    });
  } finally {
    await client.endAsync();
  }
}

async function cmdVerify(v: Values, out: Print): Promise<void> {
  const target = need(v.repo, '--repo');
  const rootFile = need(v.root, '--root');
  const local = await stat(target)
    .then((s) => s.isDirectory())
    .catch(() => false);
  let served: Awaited<ReturnType<typeof serveStatic>> | undefined;
  if (local) {
    const hasMeta = await stat(join(target, 'metadata'))
      .then(() => true)
      .catch(() => false);
    served = await serveStatic(hasMeta ? target : join(target, 'published'));
  }
  const work = await mkdtemp(join(tmpdir(), 'cascade-ota-verify-'));
  try {
    await mkdir(join(work, 'metadata'));
    await writeFile(join(work, 'metadata', 'root.json'), await readFile(rootFile));
    const client = new OtaClient({ metadataDir: join(work, 'metadata'), repoUrl: served?.url ?? target });
    const repo = await client.refresh();
    const models = v['hardware-class']
      ? repo.models.filter((m) => m.meta.hardwareClass === v['hardware-class'])
      : repo.models;
    const checked: string[] = [];
    if (v.download) {
      for (const m of models) {
        await client.download(m.path, join(work, 'model'));
        await client.download(m.meta.card.path, join(work, 'card.json'));
        const card = parseModelCard(
          JSON.parse(await readFile(join(work, 'card.json'), 'utf8')),
          m.meta.card.path,
        );
        checkCardMatchesManifest(card, m, m.meta.hardwareClass);
        checked.push(m.path);
      }
    }
    if (v.json) {
      out(JSON.stringify({ ...repo, downloaded: checked }, null, 2));
      return;
    }
    out(
      `ok: root v${repo.rootVersion}, targets v${repo.targetsVersion}, timestamp expires ${repo.timestampExpires}`,
    );
    for (const m of models) {
      const dl = checked.includes(m.path) ? ', downloaded and verified' : '';
      out(
        `  ${m.path}  release ${m.meta.release}  ${m.meta.model}@${m.meta.version}  rollout ${m.meta.rollout}%${dl}`,
      );
    }
    for (const i of repo.invalid) out(`  ignored ${i.path}: ${i.reason}`);
  } finally {
    await served?.close();
    await rm(work, { recursive: true, force: true });
  }
}

async function cmdStatus(v: Values, out: Print): Promise<void> {
  const repo = await OtaRepository.open(need(v.repo, '--repo'));
  const s = await repo.status(new Date());
  if (v.json) {
    out(JSON.stringify(s, null, 2));
    return;
  }
  for (const r of s.roles) {
    const staged = r.staged ? `staged v${r.staged.version} (${describeReport(r.staged.signatures)})` : '';
    const pub = r.published
      ? `published v${r.published.version}, expires ${r.published.expires} (${Math.round(r.published.secondsLeft / 3600)} h left)`
      : 'not published';
    out(`${r.role.padEnd(9)} ${pub}${staged ? `; ${staged}` : ''}`);
  }
  for (const t of s.targets) {
    out(
      `target ${t.path}  release ${t.release}  ${t.model}@${t.version}  ${t.hardwareClass}  rollout ${t.rollout}%`,
    );
  }
  for (const w of s.warnings) out(`warning: ${w}`);
}

function days(v: Values, role: RoleName): number | undefined {
  const d = numberOpt(`--expires-${role}`, v[`expires-${role}`], { min: 1 / 24 });
  return d === undefined ? undefined : Math.round(d * 86_400);
}

/**
 * Runs `cascade ota` with its arguments.
 * @param out receives each output line; default: stdout.
 */
export async function main(argv: string[], out: Print = stdout): Promise<void> {
  const { values: v, positionals } = parse(argv, OPTIONS, true);
  const cmd = positionals[0];
  if (v.help || cmd === undefined) {
    out(HELP);
    return;
  }
  if (positionals.length > 1)
    throw new CascadeError(ErrorCodes.CLI_ERR_ARGS, `unexpected argument "${positionals[1]}"`);
  const now = new Date();
  switch (cmd) {
    case 'keygen': {
      const r = await generateKeyFiles(need(v.out, '--out'), { passphrase: passphrase(v), force: v.force });
      out(
        `key ${r.keyId}\n  private ${r.privatePath} (0600, keep offline for root and targets)\n  public  ${r.publicPath}`,
      );
      return;
    }
    case 'init': {
      const roles = {} as Record<RoleName, RoleKeys>;
      for (const role of ROLE_NAMES) roles[role] = (await roleKeys(v, role, true)) as RoleKeys;
      const expiry: Partial<Record<RoleName, number>> = {};
      for (const role of ROLE_NAMES) {
        const d = days(v, role);
        if (d !== undefined) expiry[role] = d;
      }
      const repo = await OtaRepository.init(need(v.repo, '--repo'), { roles, expiry, now });
      out(
        `created ${repo.dir}: sign root with ${roles.root.threshold} of ${roles.root.keys.length} root keys next`,
      );
      return;
    }
    case 'rotate': {
      const repo = await OtaRepository.open(need(v.repo, '--repo'));
      const changes: Partial<Record<RoleName, RoleKeys>> = {};
      for (const role of ROLE_NAMES) {
        const k = await roleKeys(v, role, false);
        if (k) changes[role] = k;
      }
      if (Object.keys(changes).length === 0)
        throw new CascadeError(ErrorCodes.CLI_ERR_ARGS, 'rotate needs at least one --<role>-key');
      const md = await repo.rotateRoot(changes, now);
      out(`staged root v${md.signed.version}: sign it with the old and the new root keys`);
      return;
    }
    case 'add-target': {
      // Arguments first: a typo is reported before any file is touched.
      const opts = {
        cardPath: need(v.card, '--card'),
        hardwareClass: need(v['hardware-class'], '--hardware-class'),
        rollout: numberOpt('--rollout', v.rollout, { integer: true, min: 0, max: 100 }) ?? 100,
        release: numberOpt('--release', v.release, { integer: true, min: 1 }),
        keep: numberOpt('--keep', v.keep, { integer: true, min: 1 }),
        now,
      };
      const repo = await OtaRepository.open(need(v.repo, '--repo'));
      const r = await repo.addModel(opts);
      out(
        `${r.updated ? 'updated' : 'added'} release ${r.release}: ${r.model} + ${r.card}; sign targets next`,
      );
      return;
    }
    case 'sign':
      return cmdSign(v, out);
    case 'publish': {
      const repo = await OtaRepository.open(need(v.repo, '--repo'));
      const r = await publish(repo, {
        snapshotSigners: v['timestamp-only'] ? [] : await signers(v['snapshot-key'], v, '--snapshot-key'),
        timestampSigners: await signers(v['timestamp-key'], v, '--timestamp-key'),
        timestampOnly: v['timestamp-only'],
        now,
      });
      out(
        `published root v${r.root}, targets v${r.targets}, snapshot v${r.snapshot}, timestamp v${r.timestamp} (${r.written.length} files) in ${join(repo.dir, 'published')}`,
      );
      if (v.announce) {
        await announce(v.announce, r.timestamp);
        out(`announced on ${ANNOUNCE_TOPIC}`);
      }
      return;
    }
    case 'verify':
      return cmdVerify(v, out);
    case 'status':
      return cmdStatus(v, out);
    case 'serve': {
      const srv = await serveStatic(need(v.dir, '--dir'), {
        port: numberOpt('--port', v.port, { integer: true, min: 0, max: 65535 }) ?? 8080,
        host: v.host,
      });
      out(`serving ${v.dir} at ${srv.url} (Ctrl-C to stop)`);
      await new Promise<void>((resolve) => {
        const stop = (): void => {
          void srv.close().then(resolve);
        };
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      });
      return;
    }
    default:
      throw new CascadeError(
        ErrorCodes.CLI_ERR_ARGS,
        `unknown ota command "${cmd}"; run \`cascade ota --help\``,
      );
  }
}
