/** `kms audit verify`: checks the hash chain; non-zero exit naming the first bad record. */
import { existsSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { verifyAudit } from '../audit/audit.js';
import { ConfigError, loadConfig } from '../config.js';
import { auditKeyOf } from '../keyring/keyring.js';
import { openStore, rootKeyOf } from '../server.js';
import { DEFAULT_CONFIG, HelpRequested, UsageError, asksForHelp, flagOrEnv, parse } from './args.js';

const USAGE = `usage: kms audit verify [--config D/kms.json] [--db URL]
  checks the audit log's hash chain (keyed from the root key), the one chain every node on the
  database extends, and counts each node's records; exits 1 naming the first altered, missing or
  reordered record. --db (KMS_DB) names another database than the config's storage.url.
Environment: KMS_CONFIG, KMS_DB, KMS_ROOT_KEY.`;

/**
 * Opening a SQLite file that is not there would create an empty one, and an empty log verifies:
 * a misspelt --db would then read as "intact". Verification only reads what exists.
 */
function refuseMissingSqlite(url: string, baseDir: string): void {
  if (!url.startsWith('sqlite:')) return;
  const path = url.slice('sqlite:'.length);
  if (path === ':memory:') throw new ConfigError('an in-memory database holds no audit log to verify');
  const full = isAbsolute(path) ? path : resolve(baseDir, path);
  if (path !== '' && !existsSync(full)) throw new ConfigError(`no database at ${full}: nothing to verify`);
}

export async function auditCommand(argv: string[]): Promise<void> {
  const [sub, ...rest] = argv;
  if (sub === 'help' || asksForHelp(argv.slice(0, 1))) throw new HelpRequested(USAGE);
  if (sub === undefined) throw new UsageError("kms audit needs a subcommand: verify; run 'kms audit --help'");
  if (sub !== 'verify') throw new UsageError(`unknown subcommand 'audit ${sub}'; expected verify`);
  const { values } = parse(rest, { config: { type: 'string' }, db: { type: 'string' } }, { usage: USAGE });
  const config = loadConfig(flagOrEnv(values.str('config'), 'KMS_CONFIG') ?? DEFAULT_CONFIG);
  const key = auditKeyOf(rootKeyOf(config));
  const url = flagOrEnv(values.str('db'), 'KMS_DB') ?? config.storage.url;
  refuseMissingSqlite(url, config.baseDir);
  const store = await openStore(url, config.baseDir);
  try {
    const result = await verifyAudit(store, key);
    if (result.ok) {
      // One chain for every node on the database: who wrote how much of it.
      const lines = [`audit log intact: ${result.records} records`, ...Object.entries(result.nodes).map(([node, n]) => `  ${n} by node ${node}`)];
      if (result.unattributed > 0) lines.push(`  ${result.unattributed} from before records named their node`);
      process.stdout.write(`${lines.join('\n')}\n`);
    } else {
      process.stderr.write(`kms: audit log broken at record ${result.seq}: ${result.problem} (${result.records} records before it verify)\n`);
      process.exitCode = 1;
    }
  } finally {
    await store.close();
  }
}
