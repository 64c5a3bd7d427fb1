/** Flag parsing shared by the commands: node:util parseArgs, strict, with environment fallbacks. */
import { parseArgs, type ParseArgsConfig } from 'node:util';

export class UsageError extends Error {
  override name = 'UsageError';
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

export function parse(argv: string[], options: Options, allowPositionals = false): { values: Flags; positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({ args: argv, options: { ...options, help: { type: 'boolean', short: 'h' } }, strict: true, allowPositionals });
    return { values: new Flags(values), positionals };
  } catch (err) {
    throw new UsageError((err as Error).message.split('\n')[0]!);
  }
}

/** A flag's value, else the environment variable's, else undefined. */
export function flagOrEnv(value: string | undefined, env: string): string | undefined {
  return value ?? (process.env[env] || undefined);
}

export function intFlag(value: string | undefined, name: string, min = 0, max = Number.MAX_SAFE_INTEGER): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value)) throw new UsageError(`${name} must be a whole number`);
  const n = Number(value);
  if (n < min || n > max) throw new UsageError(`${name} must be between ${min} and ${max}`);
  return n;
}

export const DEFAULT_DIR = '.kms';
export const DEFAULT_CONFIG = `${DEFAULT_DIR}/kms.json`;
