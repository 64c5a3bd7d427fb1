/** `kms audit verify`: checks the hash chain; non-zero exit naming the first bad record. */
import { verifyAudit } from '../audit/audit.js';
import { loadConfig } from '../config.js';
import { auditKeyOf } from '../keyring/keyring.js';
import { openStore, rootKeyOf } from '../server.js';
import { DEFAULT_CONFIG, UsageError, flagOrEnv, parse } from './args.js';

export async function auditCommand(argv: string[]): Promise<void> {
  const [sub, ...rest] = argv;
  if (sub !== 'verify') throw new UsageError('usage: kms audit verify --config D/kms.json [--db URL]');
  const { values } = parse(rest, { config: { type: 'string' }, db: { type: 'string' } });
  const config = loadConfig(flagOrEnv(values.str('config'), 'KMS_CONFIG') ?? DEFAULT_CONFIG);
  const key = auditKeyOf(rootKeyOf(config));
  const store = await openStore(flagOrEnv(values.str('db'), 'KMS_DB') ?? config.storage.url, config.baseDir);
  try {
    const result = await verifyAudit(store, key);
    if (result.ok) {
      process.stdout.write(`audit log intact: ${result.records} records\n`);
    } else {
      process.stderr.write(`kms: audit log broken at record ${result.seq}: ${result.problem} (${result.records} records before it verify)\n`);
      process.exitCode = 1;
    }
  } finally {
    await store.close();
  }
}
