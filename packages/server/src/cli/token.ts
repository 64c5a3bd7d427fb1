/** `kms token`: a development access token, alone on stdout, so TOKEN=$(npx kms token …) works. */
import { loadConfig } from '../config.js';
import { DEV_TOKEN_MAX_TTL_SECONDS, DEV_TOKEN_TTL_SECONDS } from '../limits.js';
import { devIssuerOf } from '../server.js';
import { DEFAULT_CONFIG, UsageError, flagOrEnv, intFlag, parse } from './args.js';

const USAGE = `usage: kms token --config D/kms.json --user U [--roles r1,r2] [--ttl S]
  prints an access token of the development issuer (identity.dev) for user U, alone on stdout;
  --ttl: its lifetime in seconds, 1 to ${DEV_TOKEN_MAX_TTL_SECONDS} (default ${DEV_TOKEN_TTL_SECONDS})
Environment: KMS_CONFIG, KMS_USER.`;

export async function tokenCommand(argv: string[]): Promise<void> {
  const { values } = parse(
    argv,
    {
      config: { type: 'string' },
      user: { type: 'string' },
      roles: { type: 'string' },
      ttl: { type: 'string' },
    },
    { usage: USAGE },
  );
  // Every flag is checked before the config is read.
  const ttlSeconds = intFlag(values.str('ttl'), '--ttl', 1, DEV_TOKEN_MAX_TTL_SECONDS, 'seconds');
  const user = flagOrEnv(values.str('user'), 'KMS_USER');
  if (!user) throw new UsageError('kms token needs --user');
  const config = loadConfig(flagOrEnv(values.str('config'), 'KMS_CONFIG') ?? DEFAULT_CONFIG);
  const issuer = devIssuerOf(config);
  if (!issuer) throw new UsageError('the development issuer is not enabled in this config (identity.dev.enabled)');
  const roles = values.str('roles') ? values.str('roles')!.split(',').map((r) => r.trim()).filter(Boolean) : undefined;
  try {
    process.stdout.write((await issuer.issue(user, { roles, ttlSeconds })) + '\n');
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}
