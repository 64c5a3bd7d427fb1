/**
 * `kms audit verify`: checks the hash chain and the newest signed checkpoint; non-zero exit naming
 * the first bad record, or the records a checkpoint proves were removed. `kms audit export`: the
 * records as JSON lines, for a SIEM.
 */
import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { verifyAudit } from '../audit/audit.js';
import { lastCheckpointLine, verifyCheckpoint } from '../audit/checkpoint.js';
import { ConfigError, configPath, loadConfig, type KmsConfig } from '../config.js';
import { withRootKey } from '../server.js';
import { withStore } from './existing-store.js';
import { writeOwnerOnly } from './owner-file.js';
import { DEFAULT_CONFIG, HelpRequested, UsageError, asksForHelp, flagOrEnv, intFlag, parse } from './args.js';

const USAGE = `usage: kms audit verify [--config D/kms.json] [--db URL] [--checkpoints FILE]
       kms audit export [--config D/kms.json] [--db URL] --out FILE [--since SEQ]
  verify: checks the audit log's hash chain (keyed from the root key), the one chain every node on
  the database extends, and counts each node's records; then the newest signed checkpoint of
  --checkpoints (KMS_AUDIT_CHECKPOINTS; default the config's audit.checkpoints.file): its
  signature under the static certificate, and that the record it names is there with its hash.
  Exits 1 naming the first altered, missing or reordered record, or the checkpoint whose records
  were removed. An absent checkpoint file is a warning (a KMS folder from before checkpoints),
  unless --checkpoints names it. A database that does not exist is refused, never created.
  export: writes the records after record SEQ (default 0: all), in seq order, one JSON object a
  line with every column, to --out (KMS_AUDIT_OUT), owner-only, replaced whole once complete.
  --db (KMS_DB) names another database than the config's storage.url.
Environment: KMS_CONFIG, KMS_DB, KMS_ROOT_KEY, KMS_AUDIT_CHECKPOINTS, KMS_AUDIT_OUT.`;

/** Records read per page by export: memory stays bounded whatever the log's length. */
const PAGE = 1000;

export async function auditCommand(argv: string[]): Promise<void> {
  const [sub, ...rest] = argv;
  if (sub === 'help' || asksForHelp(argv.slice(0, 1))) throw new HelpRequested(USAGE);
  if (sub === undefined) throw new UsageError("kms audit needs a subcommand: verify, export; run 'kms audit --help'");
  if (sub === 'verify') return verify(rest);
  if (sub === 'export') return exportAudit(rest);
  throw new UsageError(`unknown subcommand 'audit ${sub}'; expected verify or export`);
}

async function verify(argv: string[]): Promise<void> {
  const { values } = parse(argv, { config: { type: 'string' }, db: { type: 'string' }, checkpoints: { type: 'string' } }, { usage: USAGE });
  const config = loadConfig(flagOrEnv(values.str('config'), 'KMS_CONFIG') ?? DEFAULT_CONFIG);
  const key = await withRootKey(config, (root) => root.auditKey());
  const named = flagOrEnv(values.str('checkpoints'), 'KMS_AUDIT_CHECKPOINTS');
  const checkpoints = named === undefined ? configPath(config, config.audit.checkpoints.file) : resolve(named);
  await withStore(config, values.str('db'), 'verify', async (store) => {
    const result = await verifyAudit(store, key);
    if (!result.ok) {
      process.stderr.write(`kms: audit log broken at record ${result.seq}: ${result.problem} (${result.records} records before it verify)\n`);
      process.exitCode = 1;
      return;
    }
    const line = existsSync(checkpoints) ? lastCheckpointLine(checkpoints) : undefined;
    if (line === undefined) {
      if (named !== undefined) throw new ConfigError(`no audit checkpoint in ${checkpoints}: cannot tell whether records were removed`);
      process.stderr.write(`kms: warning: no audit checkpoint in ${checkpoints}: the chain verifies, but removed newest records would not be noticed\n`);
    } else {
      let checkpoint;
      try {
        checkpoint = await verifyCheckpoint(line, read(config, config.staticKey.cert));
      } catch (err) {
        throw new ConfigError(`the newest checkpoint in ${checkpoints} is refused: ${(err as Error).message}`);
      }
      const at = `checkpoint of record ${checkpoint.seq} (${new Date(checkpoint.time).toISOString()})`;
      if (checkpoint.seq > result.records) {
        process.stderr.write(`kms: audit log truncated: the ${at} in ${checkpoints} proves records ${result.records + 1} to ${checkpoint.seq} existed; the log ends at record ${result.records}\n`);
        process.exitCode = 1;
        return;
      }
      const [row] = checkpoint.seq === 0 ? [] : await store.readAudit(checkpoint.seq - 1, 1);
      if (checkpoint.seq > 0 && row?.hash !== checkpoint.hash) {
        process.stderr.write(`kms: audit log rewritten: record ${checkpoint.seq} does not have the hash of the ${at} in ${checkpoints}\n`);
        process.exitCode = 1;
        return;
      }
    }
    // One chain for every node on the database: who wrote how much of it.
    const lines = [`audit log intact: ${result.records} records`, ...Object.entries(result.nodes).map(([node, n]) => `  ${n} by node ${node}`)];
    if (result.unattributed > 0) lines.push(`  ${result.unattributed} from before records named their node`);
    process.stdout.write(`${lines.join('\n')}\n`);
  });
}

function read(config: KmsConfig, path: string): string {
  const full = configPath(config, path);
  try {
    return readFileSync(full, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read static certificate ${full}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  }
}

async function exportAudit(argv: string[]): Promise<void> {
  const { values } = parse(argv, { config: { type: 'string' }, db: { type: 'string' }, out: { type: 'string' }, since: { type: 'string' } }, { usage: USAGE });
  const out = flagOrEnv(values.str('out'), 'KMS_AUDIT_OUT');
  if (out === undefined || out === '') throw new UsageError('kms audit export needs --out FILE (or KMS_AUDIT_OUT)');
  const since = intFlag(values.str('since'), '--since') ?? 0;
  const config = loadConfig(flagOrEnv(values.str('config'), 'KMS_CONFIG') ?? DEFAULT_CONFIG);
  const target = resolve(out);
  const count = await withStore(config, values.str('db'), 'verify', (store) =>
    // Owner-only: the records name users and what they asked for.
    writeOwnerOnly(target, async (write) => {
      let n = 0;
      for (let after = since; ; ) {
        const rows = await store.readAudit(after, PAGE);
        if (rows.length === 0) break;
        write(rows.map((r) => `${JSON.stringify(r)}\n`).join(''));
        n += rows.length;
        after = rows.at(-1)!.seq;
      }
      return n;
    }),
  );
  process.stdout.write(`exported ${count} audit records after record ${since} to ${target}\n`);
}
