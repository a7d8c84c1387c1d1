/**
 * Argument parsing for every subcommand: node's parseArgs in strict mode, with its errors turned
 * into one-line CLI_ERR_ARGS errors, and typed number/choice readers that say what was expected
 * and what was received.
 */
import { type ParseArgsConfig, parseArgs } from 'node:util';
import { CascadeError, ErrorCodes, invalidArgument } from './errors.ts';

type Options = NonNullable<ParseArgsConfig['options']>;

/**
 * Parses `argv` against `options`.
 * @throws {CascadeError} CLI_ERR_ARGS for unknown options, missing values or stray positionals.
 */
export function parse<O extends Options>(
  argv: string[],
  options: O,
  allowPositionals = false,
): {
  values: ReturnType<typeof parseArgs<{ options: O; strict: true; allowPositionals: boolean }>>['values'];
  positionals: string[];
} {
  try {
    const r = parseArgs({ args: argv, options, strict: true, allowPositionals });
    return { values: r.values, positionals: r.positionals };
  } catch (err) {
    throw new CascadeError(ErrorCodes.CLI_ERR_ARGS, (err as Error).message.split('\n')[0]);
  }
}

/** Reads an optional numeric option. @throws {CascadeError} CLI_ERR_ARGS when not a number in range. */
export function numberOpt(
  name: string,
  raw: string | undefined,
  opts: { integer?: boolean; min?: number; max?: number } = {},
): number | undefined {
  if (raw === undefined) return undefined;
  const v = Number(raw);
  const what = `${opts.integer ? 'an integer' : 'a number'}${opts.min !== undefined ? ` >= ${opts.min}` : ''}${opts.max !== undefined ? ` <= ${opts.max}` : ''}`;
  if (
    raw.trim() === '' ||
    !Number.isFinite(v) ||
    (opts.integer && !Number.isInteger(v)) ||
    (opts.min !== undefined && v < opts.min) ||
    (opts.max !== undefined && v > opts.max)
  ) {
    throw invalidArgument(name, what, raw);
  }
  return v;
}

/** Reads an option restricted to a set of values. @throws {CascadeError} CLI_ERR_ARGS otherwise. */
export function choiceOpt<T extends string>(
  name: string,
  raw: string | undefined,
  choices: readonly T[],
): T | undefined {
  if (raw === undefined) return undefined;
  if (!(choices as readonly string[]).includes(raw))
    throw invalidArgument(name, `one of ${choices.join(', ')}`, raw);
  return raw as T;
}
