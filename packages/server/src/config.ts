/**
 * kms.json: the one configuration file, written by `kms init`, read by every other command.
 * Paths inside it are relative to the file, so a KMS folder can be moved as a whole.
 */
import { readFileSync, realpathSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { z } from 'zod';
import { isAuthority } from '@openkms/protocol';

const domain = z
  .string()
  .min(1)
  .max(253)
  .transform((d) => d.toLowerCase())
  .refine((d) => isAuthority(d), 'not a domain name');

const peerSchema = z.object({
  authority: z.string().refine(isAuthority, 'not an authority name'),
  domains: z.array(domain).min(1),
  endpoint: z.string().url(),
  trustAnchors: z.array(z.string().includes('BEGIN CERTIFICATE')).min(1),
});

const seconds = (def: number) => z.number().int().positive().default(def);

export const configSchema = z.object({
  authority: z.string().refine(isAuthority, 'not an authority name (e.g. kms.a.example)'),
  domains: z.array(domain).min(1),
  listen: z.object({ host: z.string().default('127.0.0.1'), port: z.number().int().min(0).max(65535).default(7001) }).default({ host: '127.0.0.1', port: 7001 }),
  storage: z.object({ url: z.string().default('sqlite:kms.db') }).default({ url: 'sqlite:kms.db' }),
  staticKey: z.object({ key: z.string(), cert: z.string() }),
  ca: z.object({ cert: z.string(), key: z.string().optional() }).optional(),
  rootKey: z.object({ file: z.string().optional() }).default({}),
  tls: z.object({ cert: z.string(), key: z.string() }).optional(),
  /** Browser origins allowed to call the KMS directly (CORS); none by default. */
  cors: z.object({ origins: z.array(z.string().url()).default([]) }).default({ origins: [] }),
  identity: z
    .object({
      issuer: z.string().optional(),
      audience: z.string().optional(),
      jwksUri: z.string().url().optional(),
      jwksFile: z.string().optional(),
      discovery: z.boolean().optional(),
      introspection: z.object({ endpoint: z.string().url(), clientId: z.string(), clientSecret: z.string() }).optional(),
      userClaim: z.string().optional(),
      rolesClaim: z.string().optional(),
      orgClaim: z.string().optional(),
      clockToleranceSeconds: z.number().int().min(0).max(300).optional(),
      dev: z.object({ enabled: z.boolean(), keyFile: z.string() }).optional(),
    })
    .default({}),
  lifetimes: z
    .object({
      channel: seconds(3600),
      unboundKey: seconds(3600),
      boundKey: seconds(365 * 24 * 3600),
      unboundGrace: seconds(24 * 3600),
      anonymousBearerMax: seconds(30 * 24 * 3600),
      maxResourceTtl: z.number().int().min(0).default(0),
    })
    .default({ channel: 3600, unboundKey: 3600, boundKey: 365 * 24 * 3600, unboundGrace: 24 * 3600, anonymousBearerMax: 30 * 24 * 3600, maxResourceTtl: 0 }),
  sweeper: z.object({ intervalSeconds: seconds(60) }).default({ intervalSeconds: 60 }),
  limits: z
    .object({
      maxAuthorizationsPerResource: z.number().int().positive().default(10_000),
      requestsPerMinutePerPrincipal: z.number().int().min(0).default(0),
    })
    .default({ maxAuthorizationsPerResource: 10_000, requestsPerMinutePerPrincipal: 0 }),
  peers: z.array(peerSchema).default([]),
  federation: z.object({ maxStaleness: seconds(30), peerTimeout: seconds(5) }).default({ maxStaleness: 30, peerTimeout: 5 }),
  log: z.object({ level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info') }).default({ level: 'info' }),
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
  if (!result.success) {
    const issue = result.error.issues[0]!;
    throw new ConfigError(`${source}: ${issue.path.join('.') || '(root)'}: ${issue.message}`);
  }
  return { ...result.data, baseDir };
}

/** The JSON of a config file as written (no defaults), and the real path it was read from. */
export function readConfigJson(path: string): { raw: unknown; text: string; realPath: string } {
  let text: string;
  let realPath: string;
  try {
    realPath = realpathSync(path);
    text = readFileSync(realPath, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  try {
    return { raw: JSON.parse(text) as unknown, text, realPath };
  } catch {
    throw new ConfigError(`${path} is not valid JSON`);
  }
}

export function loadConfig(path: string): KmsConfig {
  const { raw, realPath } = readConfigJson(path);
  return parseConfig(raw, dirname(resolve(realPath)), path);
}

export function configPath(config: KmsConfig, path: string): string {
  return isAbsolute(path) ? path : resolve(config.baseDir, path);
}
