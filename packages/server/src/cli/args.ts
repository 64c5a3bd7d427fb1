/** Flag parsing shared by the commands: node:util parseArgs, strict, with environment fallbacks. */
import { parseArgs, type ParseArgsConfig } from 'node:util';

export class UsageError extends Error {
  override name = 'UsageError';
}

/**
 * `--help` (or `-h`) was given: main prints `usage` on stdout and exits 0. Thrown by parse()
 * before anything else is looked at, so asking for help never does what the command does.
 */
export class HelpRequested extends Error {
  override name = 'HelpRequested';
  constructor(readonly usage: string) {
    super('help requested');
  }
}

type Options = NonNullable<ParseArgsConfig['options']>;

/** Parsed flags, read by kind so each command's code stays typed. */
export class Flags {
  constructor(private readonly values: Record<string, unknown>) {}
  str(name: string): string | undefined {
    const v = this.values[name];
    return typeof v === 'string' ? v : undefined;
  }
  list(name: string): string[] | undefined {
    const v = this.values[name];
    return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : undefined;
  }
  bool(name: string): boolean {
    return this.values[name] === true;
  }
}

export interface ParseHow {
  /** Words that are not flags are allowed (and returned). */
  positionals?: boolean;
  /** The command's usage: with it, `--help`/`-h` throws HelpRequested instead of being parsed. */
  usage?: string;
}

/** `--help` or `-h` among the flags (words after `--` are values, not flags). */
export function asksForHelp(argv: readonly string[]): boolean {
  const end = argv.indexOf('--');
  return (end < 0 ? argv : argv.slice(0, end)).some((a) => a === '--help' || a === '-h');
}

export function parse(argv: string[], options: Options, how: ParseHow = {}): { values: Flags; positionals: string[] } {
  if (how.usage !== undefined && asksForHelp(argv)) throw new HelpRequested(how.usage);
  const all: Options = { ...options, help: { type: 'boolean', short: 'h' } };
  try {
    const { values, positionals } = parseArgs({ args: joinDashedValues(argv, all), options: all, strict: true, allowPositionals: how.positionals ?? false });
    return { values: new Flags(values), positionals };
  } catch (err) {
    // Node's own first line, except where it suggests a syntax this command does not use.
    const e = err as NodeJS.ErrnoException;
    const unknown = e.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' ? /'([^']+)'/.exec(e.message)?.[1] : undefined;
    throw new UsageError(unknown ? `unknown option ${unknown}; run with --help for the options` : e.message.split('\n')[0]!);
  }
}

/**
 * parseArgs reads `--ttl -5` as a flag followed by an unknown option `-5` and calls it ambiguous.
 * A value flag followed by a negative number takes it as its value (`--ttl=-5`), so the flag's own
 * check can say what range it accepts; followed by another flag, or by nothing, it lacks a value.
 */
function joinDashedValues(argv: readonly string[], options: Options): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const word = argv[i]!;
    if (word === '--') {
      out.push(...argv.slice(i));
      break;
    }
    const name = /^--([^=]+)$/.exec(word)?.[1];
    if (name === undefined || options[name]?.type !== 'string') {
      out.push(word);
      continue;
    }
    const next = argv[i + 1];
    if (next === undefined) throw new UsageError(`--${name} needs a value`);
    if (next.startsWith('-') && !/^-\d/.test(next)) throw new UsageError(`--${name} needs a value before ${next} (write --${name}=${next} if that is the value)`);
    out.push(`${word}=${next}`);
    i++;
  }
  return out;
}

/** A flag's value, else the environment variable's, else undefined. */
export function flagOrEnv(value: string | undefined, env: string): string | undefined {
  return value ?? (process.env[env] || undefined);
}

/**
 * A whole number in [min, max], or undefined when the flag is absent. The message names the flag,
 * its range and (with `unit`) what it counts, e.g. "--ttl must be a whole number of seconds, from 1
 * to 2592000, got -5".
 */
export function intFlag(value: string | undefined, name: string, min = 0, max = Number.MAX_SAFE_INTEGER, unit?: string): number | undefined {
  if (value === undefined) return undefined;
  const n = /^\d+$/.test(value) ? Number(value) : NaN;
  if (!(n >= min && n <= max)) {
    const range = max === Number.MAX_SAFE_INTEGER ? `at least ${min}` : `from ${min} to ${max}`;
    throw new UsageError(`${name} must be a whole number${unit ? ` of ${unit}` : ''}, ${range}, got ${value === '' ? 'nothing' : value}`);
  }
  return n;
}

export const DEFAULT_DIR = '.kms';
export const DEFAULT_CONFIG = `${DEFAULT_DIR}/kms.json`;
