/**
 * Service configuration from three sources, in rising precedence: a JSON file, environment
 * variables and command-line flags, over the schema's defaults. One TypeBox schema (with
 * `additionalProperties: false` on its objects) validates the merged result; every violation is
 * listed at once in one {@link CascadeError} `CFG_ERR_INVALID`, each naming the source of the bad
 * value. The result is deep-frozen.
 *
 * Environment variables are derived from the schema, never parsed from names: the key path
 * `cloud.timeoutMs` under prefix `CASCADE_GATEWAY_` is `CASCADE_GATEWAY_CLOUD_TIMEOUT_MS`. Their
 * string values are converted to the schema's types (numbers, booleans, JSON for arrays and
 * objects). An unknown variable with the prefix is an error, so a typo does not pass silently.
 *
 * The loader never reads `process.env`: entry points pass it in.
 */
import { readFileSync } from 'node:fs';
import { type Static, type TObject, type TSchema, TypeGuard } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { Value } from '@sinclair/typebox/value';
import { CascadeError, ErrorCodes } from '../errors.ts';

/** Where the values come from; every field is optional. */
export interface ConfigSources {
  /** JSON file with a partial config (its keys as in the schema). */
  file?: string;
  /** The environment (entry points pass `process.env`). */
  env?: Readonly<Record<string, string | undefined>>;
  /** Prefix of this service's variables, e.g. `CASCADE_GATEWAY_`. Required to read `env`. */
  envPrefix?: string;
  /**
   * Values from flags, as a partial config (nested objects for nested keys). `undefined` values
   * are ignored, so a CLI can pass every option whether set or not.
   */
  flags?: Readonly<Record<string, unknown>>;
}

type Plain = Record<string, unknown>;

function isPlain(v: unknown): v is Plain {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** `timeoutMs` → `TIMEOUT_MS`. */
export function envName(path: readonly string[], prefix: string): string {
  return prefix + path.map((k) => k.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase()).join('_');
}

/** Every leaf key path of an object schema (an object property counts as a leaf if it has no properties). */
function leaves(schema: TSchema, path: string[] = []): { path: string[]; schema: TSchema }[] {
  if (TypeGuard.IsObject(schema) && Object.keys(schema.properties).length > 0) {
    return Object.entries(schema.properties).flatMap(([k, s]) => leaves(s, [...path, k]));
  }
  return [{ path, schema }];
}

function setPath(target: Plain, path: readonly string[], value: unknown): void {
  let at = target;
  for (const k of path.slice(0, -1)) {
    if (!isPlain(at[k])) at[k] = {};
    at = at[k] as Plain;
  }
  at[path[path.length - 1]] = value;
}

/** Deep merge: plain objects merge, everything else (arrays included) replaces. */
function merge(
  base: Plain,
  over: Readonly<Plain>,
  origin: Map<string, string>,
  source: string,
  at = '',
): void {
  for (const [k, v] of Object.entries(over)) {
    if (v === undefined) continue;
    const path = `${at}/${k}`;
    if (isPlain(v) && isPlain(base[k])) {
      merge(base[k] as Plain, v, origin, source, path);
    } else {
      base[k] = isPlain(v) ? structuredClone(v) : v;
      origin.set(path, source);
    }
  }
}

/** Converts one environment string to the type its schema wants (strings stay strings). */
function fromEnv(raw: string, schema: TSchema): unknown {
  if (TypeGuard.IsString(schema) || TypeGuard.IsLiteral(schema)) return Value.Convert(schema, raw);
  if (TypeGuard.IsArray(schema) || TypeGuard.IsObject(schema) || TypeGuard.IsRecord(schema)) {
    try {
      return JSON.parse(raw);
    } catch {
      return raw;
    }
  }
  if (
    TypeGuard.IsUnion(schema) &&
    schema.anyOf.some((s) => TypeGuard.IsString(s) || TypeGuard.IsLiteral(s))
  ) {
    return raw === 'null' && schema.anyOf.some((s) => TypeGuard.IsNull(s)) ? null : raw;
  }
  return Value.Convert(schema, raw);
}

/** Deep-freezes a plain value in place and returns it. */
export function deepFreeze<T>(v: T): Readonly<T> {
  if (typeof v === 'object' && v !== null && !Object.isFrozen(v)) {
    Object.freeze(v);
    for (const x of Object.values(v)) deepFreeze(x);
  }
  return v;
}

function describe(v: unknown): string {
  const s = JSON.stringify(v);
  return s === undefined ? String(v) : s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

/**
 * Loads, merges and validates a config: defaults < file < env < flags.
 * @param schema a TypeBox object schema with defaults on optional knobs.
 * @param name the config's name in messages (e.g. "gateway config").
 * @throws {CascadeError} CFG_ERR_INVALID for an unreadable or non-JSON file, unknown environment
 *   variables, or schema violations, all listed in one message.
 */
export function loadConfig<T extends TObject>(
  schema: T,
  sources: ConfigSources = {},
  name = 'config',
): Readonly<Static<T>> {
  const problems: string[] = [];
  const origin = new Map<string, string>();
  const merged: Plain = {};

  if (sources.file !== undefined) {
    let json: unknown;
    try {
      json = JSON.parse(readFileSync(sources.file, 'utf8'));
    } catch (err) {
      const why = err instanceof SyntaxError ? 'not valid JSON' : 'cannot be read';
      throw new CascadeError(ErrorCodes.CFG_ERR_INVALID, `${name}: ${sources.file} ${why}`, { cause: err });
    }
    if (isPlain(json)) merge(merged, json, origin, sources.file);
    else problems.push(`${sources.file}: expected a JSON object, received ${describe(json)}`);
  }

  if (sources.env !== undefined && sources.envPrefix !== undefined) {
    const prefix = sources.envPrefix;
    const known = new Set<string>();
    const fromEnvironment: Plain = {};
    const envOrigins: [string, string][] = [];
    for (const leaf of leaves(schema)) {
      const key = envName(leaf.path, prefix);
      known.add(key);
      const raw = sources.env[key];
      if (raw === undefined || raw === '') continue;
      setPath(fromEnvironment, leaf.path, fromEnv(raw, leaf.schema));
      envOrigins.push([`/${leaf.path.join('/')}`, `env ${key}`]);
    }
    for (const key of Object.keys(sources.env)) {
      if (key.startsWith(prefix) && !known.has(key)) problems.push(`env ${key}: unknown setting`);
    }
    merge(merged, fromEnvironment, origin, 'env');
    for (const [path, from] of envOrigins) origin.set(path, from);
  }

  if (sources.flags !== undefined) merge(merged, sources.flags, origin, 'flag');

  const value = Value.Default(schema, merged) as unknown;
  const check = compiled(schema);
  if (!check.Check(value) || problems.length > 0) {
    for (const e of check.Errors(value)) {
      const from = sourceOf(origin, e.path);
      problems.push(
        `${e.path || '/'}: ${e.message}, received ${describe(e.value)}${from ? ` (from ${from})` : ''}`,
      );
    }
    throw new CascadeError(ErrorCodes.CFG_ERR_INVALID, `${name}: ${problems.join('; ')}`);
  }
  return deepFreeze(value as Static<T>);
}

function sourceOf(origin: Map<string, string>, path: string): string | undefined {
  for (let p = path; p !== ''; p = p.slice(0, p.lastIndexOf('/'))) {
    const hit = origin.get(p);
    if (hit !== undefined) return hit;
  }
  return undefined;
}

const cache = new WeakMap<TSchema, ReturnType<typeof TypeCompiler.Compile>>();

function compiled(schema: TSchema): ReturnType<typeof TypeCompiler.Compile> {
  let c = cache.get(schema);
  if (c === undefined) {
    c = TypeCompiler.Compile(schema);
    cache.set(schema, c);
  }
  return c;
}
