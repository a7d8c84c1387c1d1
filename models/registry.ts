/**
 * The model registry: models/registry.json lists the trained models, one per tier or more, each
 * pointing at its model card. Card paths are stored relative to the registry file so that the
 * models folder can be moved or shipped as a whole; loading resolves them to absolute paths.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, isAbsolute, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Static, Type } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { CascadeError, ErrorCodes } from '../cascade/errors.ts';
import { Tier } from './card.ts';

/** One registry entry as stored: `card` is relative to the registry file's folder. */
export const RegistryEntry = Type.Object(
  {
    name: Type.String({ minLength: 1 }),
    tier: Tier,
    card: Type.String({ minLength: 1 }),
  },
  { additionalProperties: false },
);
export type RegistryEntry = Static<typeof RegistryEntry>;

/** The registry file. */
export const RegistryFile = Type.Object(
  {
    schemaVersion: Type.Literal(1),
    models: Type.Array(RegistryEntry),
  },
  { additionalProperties: false },
);
export type RegistryFile = Static<typeof RegistryFile>;

/** A loaded entry: `card` is an absolute path. */
export interface RegisteredModel {
  name: string;
  tier: Tier;
  card: string;
}

/** models/registry.json, beside this module (also after compilation to dist/models/). */
export const DEFAULT_REGISTRY_PATH = fileURLToPath(new URL('./registry.json', import.meta.url));

const check = TypeCompiler.Compile(RegistryFile);

/** Parses and validates registry JSON text; `where` names the source in errors. */
function parseRegistry(text: string, where: string): RegistryFile {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new CascadeError(ErrorCodes.MODEL_ERR_INVALID, `${where}: registry is not valid JSON`, {
      cause: err,
    });
  }
  if (!check.Check(json)) {
    const errors = [...check.Errors(json)].slice(0, 5).map((e) => `${e.path || '/'} ${e.message}`);
    throw new CascadeError(
      ErrorCodes.MODEL_ERR_INVALID,
      `${where}: not a valid registry: ${errors.join('; ')}`,
    );
  }
  const seen = new Set<string>();
  for (const m of json.models) {
    if (seen.has(m.name)) {
      throw new CascadeError(ErrorCodes.MODEL_ERR_INVALID, `${where}: model "${m.name}" is listed twice`);
    }
    seen.add(m.name);
  }
  return json;
}

/**
 * Reads and validates a registry file.
 * @param path registry file; default {@link DEFAULT_REGISTRY_PATH}.
 * @returns the entries in file order, with absolute card paths.
 * @throws {CascadeError} MODEL_ERR_INVALID if the file is missing (with a hint to train models),
 *   not JSON, fails the schema or lists a name twice.
 */
export async function loadRegistry(path: string = DEFAULT_REGISTRY_PATH): Promise<RegisteredModel[]> {
  const abs = resolve(path);
  let text: string;
  try {
    text = await readFile(abs, 'utf8');
  } catch (err) {
    const hint =
      (err as NodeJS.ErrnoException).code === 'ENOENT'
        ? 'not found (train models with `cascade distill`)'
        : 'unreadable';
    throw new CascadeError(ErrorCodes.MODEL_ERR_INVALID, `${abs}: registry ${hint}`, { cause: err });
  }
  const file = parseRegistry(text, abs);
  const base = dirname(abs);
  return file.models.map((m) => ({ name: m.name, tier: m.tier, card: resolve(base, m.card) }));
}

/**
 * The first registered model of a tier.
 * @throws {CascadeError} MODEL_ERR_INVALID if the registry has no model of that tier.
 */
export function modelForTier(
  models: readonly RegisteredModel[],
  tier: Tier,
  where = 'registry',
): RegisteredModel {
  const hit = models.find((m) => m.tier === tier);
  if (!hit) throw new CascadeError(ErrorCodes.MODEL_ERR_INVALID, `${where}: no ${tier} model registered`);
  return hit;
}

/**
 * Writes a registry file atomically (temporary file, then rename), so a runtime that reads it
 * concurrently sees the old or the new registry, never half of one.
 * @param models entries; card paths may be absolute or relative to the current directory and are
 *   stored relative to the registry's folder, with '/' separators.
 * @param path registry file; default {@link DEFAULT_REGISTRY_PATH}. Its folder is created if needed.
 * @throws {CascadeError} MODEL_ERR_INVALID if the entries fail the schema or repeat a name.
 */
export async function writeRegistry(
  models: readonly RegisteredModel[],
  path: string = DEFAULT_REGISTRY_PATH,
): Promise<void> {
  const abs = resolve(path);
  const base = dirname(abs);
  const file: RegistryFile = {
    schemaVersion: 1,
    models: models.map((m) => {
      const card = isAbsolute(m.card) ? m.card : resolve(m.card);
      return { name: m.name, tier: m.tier, card: relative(base, card).split(sep).join('/') };
    }),
  };
  const text = `${JSON.stringify(file, null, 2)}\n`;
  parseRegistry(text, abs);
  await mkdir(base, { recursive: true });
  const tmp = `${abs}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    await writeFile(tmp, text);
    await rename(tmp, abs);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}
