/**
 * kms.json: the one configuration file, written by `kms init`, read by every other command.
 * Paths inside it are relative to the file, so a KMS folder can be moved as a whole. What each
 * option means and its default: config/options.ts.
 */
import { readFileSync, realpathSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { z } from 'zod';
import { isAuthority } from '@openkms/protocol';
import { LOG_LEVELS, OPTIONS, defaultOf } from './config/options.js';

const domain = z
  .string()
  .min(1)
  .max(253)
  .transform((d) => d.toLowerCase())
  .refine((d) => isAuthority(d), 'not a domain name');

/** A browser origin as the Origin header carries it: a path or trailing slash would never match. */
const origin = z.string().refine((o) => URL.canParse(o) && new URL(o).origin === o, 'not an origin (scheme://host[:port], no path or trailing slash)');

const peerSchema = z.strictObject({
  authority: z.string().refine(isAuthority, 'not an authority name'),
  domains: z.array(domain).min(1),
  endpoint: z.string().url(),
  trustAnchors: z.array(z.string().includes('BEGIN CERTIFICATE')).min(1),
});

const seconds = z.number().int().positive();

/**
 * kms.json. Every object is strict, so a misspelt key is refused instead of silently meaning its
 * default; every section with defaults is a `prefault({})`, so an absent section gets each member's
 * default from options.ts (the only place defaults are written).
 */
export const configSchema = z.strictObject({
  authority: z.string().refine(isAuthority, 'not an authority name (e.g. kms.a.example)'),
  domains: z.array(domain).min(1),
  listen: z
    .strictObject({ host: z.string().min(1).default(defaultOf('listen.host')), port: z.number().int().min(0).max(65535).default(defaultOf('listen.port')) })
    .prefault({}),
  storage: z.strictObject({ url: z.string().min(1).default(defaultOf('storage.url')), timeoutSeconds: z.number().positive().max(60).default(defaultOf('storage.timeoutSeconds')) }).prefault({}),
  staticKey: z.strictObject({ key: z.string(), cert: z.string() }),
  ca: z.strictObject({ cert: z.string(), key: z.string().optional() }).optional(),
  rootKey: z
    .strictObject({
      file: z.string().optional(),
      // Giving both file and pkcs11 is refused when the root key is opened (server.ts openRootKey).
      pkcs11: z.strictObject({ module: z.string().min(1), token: z.string().min(1), key: z.string().min(1) }).optional(),
    })
    .prefault({}),
  tls: z.strictObject({ cert: z.string(), key: z.string() }).optional(),
  cors: z.strictObject({ origins: z.array(origin).default(() => defaultOf('cors.origins')) }).prefault({}),
  identity: z
    .strictObject({
      issuer: z.string().optional(),
      audience: z.string().optional(),
      jwksUri: z.string().url().optional(),
      jwksFile: z.string().optional(),
      discovery: z.boolean().default(defaultOf('identity.discovery')),
      introspection: z.strictObject({ endpoint: z.string().url(), clientId: z.string(), clientSecret: z.string() }).optional(),
      userClaim: z.string().min(1).default(defaultOf('identity.userClaim')),
      rolesClaim: z.string().min(1).default(defaultOf('identity.rolesClaim')),
      orgClaim: z.string().min(1).optional(),
      clockToleranceSeconds: z.number().int().min(0).max(300).default(defaultOf('identity.clockToleranceSeconds')),
      dev: z.strictObject({ enabled: z.boolean(), keyFile: z.string() }).optional(),
    })
    .prefault({}),
  lifetimes: z
    .strictObject({
      channel: seconds.default(defaultOf('lifetimes.channel')),
      unboundKey: seconds.default(defaultOf('lifetimes.unboundKey')),
      boundKey: seconds.default(defaultOf('lifetimes.boundKey')),
      unboundGrace: seconds.default(defaultOf('lifetimes.unboundGrace')),
      anonymousBearerMax: seconds.default(defaultOf('lifetimes.anonymousBearerMax')),
      maxResourceTtl: z.number().int().min(0).default(defaultOf('lifetimes.maxResourceTtl')),
    })
    .prefault({}),
  audit: z
    .strictObject({
      checkpoints: z
        .strictObject({
          file: z.string().min(1).default(defaultOf('audit.checkpoints.file')),
          intervalSeconds: seconds.max(3600).default(defaultOf('audit.checkpoints.intervalSeconds')),
        })
        .prefault({}),
    })
    .prefault({}),
  sweeper: z.strictObject({ intervalSeconds: seconds.default(defaultOf('sweeper.intervalSeconds')) }).prefault({}),
  limits: z
    .strictObject({
      maxAuthorizationsPerResource: z.number().int().positive().default(defaultOf('limits.maxAuthorizationsPerResource')),
      requestsPerMinutePerPrincipal: z.number().int().min(0).default(defaultOf('limits.requestsPerMinutePerPrincipal')),
      handshakesPerMinutePerAddress: z.number().int().min(0).default(defaultOf('limits.handshakesPerMinutePerAddress')),
    })
    .prefault({}),
  peers: z.array(peerSchema).default(() => []),
  federation: z
    .strictObject({ maxStaleness: seconds.default(defaultOf('federation.maxStaleness')), peerTimeout: seconds.default(defaultOf('federation.peerTimeout')) })
    .prefault({}),
  log: z.strictObject({ level: z.enum(LOG_LEVELS).default(defaultOf('log.level')) }).prefault({}),
});

export type KmsConfig = z.infer<typeof configSchema> & {
  /** Folder of kms.json; relative paths resolve against it. */
  baseDir: string;
};

export class ConfigError extends Error {
  override name = 'ConfigError';
}

export function parseConfig(raw: unknown, baseDir: string, source = 'config'): KmsConfig {
  const result = configSchema.safeParse(raw);
  if (!result.success) throw new ConfigError(`${source}: ${describeIssues(result.error.issues)}`);
  return { ...result.data, baseDir };
}

/** `peers[0].endpoint`: where in kms.json a problem is, as an operator would write it. */
function pathText(path: readonly PropertyKey[]): string {
  return path.map((p, i) => (typeof p === 'number' ? `[${p}]` : `${i > 0 ? '.' : ''}${String(p)}`)).join('');
}

/** The members an object at `path` may have, from the documented options. */
function knownKeysAt(path: readonly PropertyKey[]): string[] {
  const prefix = path.map((p) => (typeof p === 'number' ? '[]' : `.${String(p)}`)).join('').replace(/^\./, '');
  const keys = new Set<string>();
  for (const option of Object.keys(OPTIONS)) {
    const rest = prefix === '' ? option : option.startsWith(`${prefix}.`) ? option.slice(prefix.length + 1) : undefined;
    if (rest !== undefined) keys.add(rest.split(/[.[]/)[0]!);
  }
  return [...keys];
}

/**
 * One line for the first problem. Unknown keys come first: a misspelt key usually also makes a
 * required one look missing, and the misspelling is what the operator has to fix.
 */
function describeIssues(issues: readonly z.core.$ZodIssue[]): string {
  const unknown = issues.filter((i): i is z.core.$ZodIssueUnrecognizedKeys => i.code === 'unrecognized_keys');
  if (unknown.length > 0) {
    const names = unknown.flatMap((i) => i.keys.map((k) => pathText([...i.path, k])));
    if (names.length > 1) return `unknown keys ${names.join(', ')}`;
    const at = unknown[0]!.path;
    return `unknown key ${names[0]} (${at.length ? `${pathText(at)} takes` : 'known keys:'} ${knownKeysAt(at).join(', ')})`;
  }
  const issue = issues[0]!;
  return `${pathText(issue.path) || '(root)'}: ${issue.message}`;
}

/** The JSON of a config file as written (no defaults), and the real path it was read from. */
export function readConfigJson(path: string): { raw: unknown; text: string; realPath: string } {
  let text: string;
  let realPath: string;
  try {
    realPath = realpathSync(path);
    text = readFileSync(realPath, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new ConfigError(`${path} does not exist (kms init writes one; --config or KMS_CONFIG names another)`);
    throw new ConfigError(`cannot read ${path}: ${code ?? 'error'}`);
  }
  try {
    return { raw: JSON.parse(text) as unknown, text, realPath };
  } catch (err) {
    throw new ConfigError(`${path} is not valid JSON (${(err as Error).message})`);
  }
}

export function loadConfig(path: string): KmsConfig {
  const { raw, realPath } = readConfigJson(path);
  return parseConfig(raw, dirname(resolve(realPath)), path);
}

export function configPath(config: KmsConfig, path: string): string {
  return isAbsolute(path) ? path : resolve(config.baseDir, path);
}
