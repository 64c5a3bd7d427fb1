/**
 * `kms discovery export`: every key this KMS holds for one user, sealed to a recipient's public
 * key, with the peers' signed answers (compliance/discovery.ts). `kms discovery verify`: the
 * recipient's check of such a file with its private key. The export itself is audited.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { userInfo } from 'node:os';
import { resolve } from 'node:path';
import type { JWK } from 'jose';
import { KmsError, parseDate } from '@openkms/protocol';
import { AuditLog } from '../audit/audit.js';
import { exportDiscovery, recipientOf, verifyDiscovery, type DiscoveryExport } from '../compliance/discovery.js';
import { ConfigError, configPath, loadConfig } from '../config.js';
import { normalizeUserId, isUserId } from '../identity/users.js';
import { Keyring } from '../keyring/keyring.js';
import { staticIdentityOf, withRootKey } from '../server.js';
import { DEFAULT_CONFIG, HelpRequested, UsageError, asksForHelp, flagOrEnv, parse } from './args.js';
import { withStore } from './existing-store.js';
import { writeOwnerOnly } from './owner-file.js';

const USAGE = `usage: kms discovery export [--config D/kms.json] [--db URL] --user U [--since T] --to-jwk FILE --out F
       kms discovery verify F --key FILE [--trust-anchors PEM]... [--config D/kms.json]
  export: every key this KMS holds for user U — the keys U created, the keys of the KROs U is
  authorized on, and the federated keys the archive of peers' KROs shows U was given — each as a
  JWE to the recipient's public key (--to-jwk: RSA for RSA-OAEP-256, EC or X25519 for ECDH-ES),
  with the peers' signed answers (sealed to the recipient too: they hold the keys) and the
  certificates they were signed under. --since T (RFC 3339): only keys created or bound since.
  Written owner-only to F, replaced whole once complete; the export is recorded in the audit log.
  verify: checks the exporting KMS's signature over F, opens F with the recipient's private key
  (--key), checks every peer answer's PS256 signature about a KRO authorizing U, each certificate
  against the trust anchors of its KMS (--trust-anchors, else --config: its own CA and its peers'
  anchors), and that every federated key is one those answers released. Exits 1 naming each problem.
Environment: KMS_CONFIG, KMS_DB, KMS_ROOT_KEY.`;

export async function discoveryCommand(argv: string[]): Promise<void> {
  const [sub, ...rest] = argv;
  if (sub === 'help' || asksForHelp(argv.slice(0, 1))) throw new HelpRequested(USAGE);
  if (sub === undefined) throw new UsageError("kms discovery needs a subcommand: export, verify; run 'kms discovery --help'");
  if (sub === 'export') return exportCommand(rest);
  if (sub === 'verify') return verifyCommand(rest);
  throw new UsageError(`unknown subcommand 'discovery ${sub}'; expected export or verify`);
}

function readJwk(file: string, what: string): JWK {
  let text: string;
  try {
    text = readFileSync(resolve(file), 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read ${what} ${resolve(file)}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  try {
    return JSON.parse(text) as JWK;
  } catch {
    throw new ConfigError(`${what} ${resolve(file)} is not JSON (a JWK)`);
  }
}

/** Who runs the command, for the audit record: the OS login, else the uid (a container's user may have no name). */
function operator(): string {
  try {
    return userInfo().username;
  } catch {
    return process.env.USER || `uid ${process.getuid?.() ?? 'unknown'}`;
  }
}

async function exportCommand(argv: string[]): Promise<void> {
  const { values } = parse(argv, { config: { type: 'string' }, db: { type: 'string' }, user: { type: 'string' }, since: { type: 'string' }, 'to-jwk': { type: 'string' }, out: { type: 'string' } }, { usage: USAGE });
  const [rawUser, toJwk, out] = [values.str('user'), values.str('to-jwk'), values.str('out')];
  if (!rawUser || !toJwk || !out) throw new UsageError('kms discovery export needs --user U, --to-jwk FILE and --out F');
  const sinceText = values.str('since');
  const since = sinceText === undefined ? undefined : parseDate(sinceText);
  if (sinceText !== undefined && since === undefined) throw new UsageError(`--since ${sinceText} is not an RFC 3339 date-time`);
  const config = loadConfig(flagOrEnv(values.str('config'), 'KMS_CONFIG') ?? DEFAULT_CONFIG);
  const user = normalizeUserId(rawUser, config.domains[0]!);
  if (!isUserId(user)) throw new UsageError(`--user ${rawUser} is not a user id`);
  const recipient = recipientOf(readJwk(toJwk, 'recipient key'));
  const target = resolve(out);
  const staticKey = await staticIdentityOf(config);
  const doc = await withRootKey(config, (rootKey) => withStore(config, values.str('db'), 'export', async (store) => {
    const keyring = await Keyring.open(rootKey, store, Date.now());
    const built = await exportDiscovery({ authority: config.authority, store, keyring, staticKey, user, since, unboundGraceMs: config.lifetimes.unboundGrace * 1000, recipient, now: Date.now() });
    // Audited before a byte is written, as a request is before it is answered: an export the log
    // could not record does not happen.
    await new AuditLog(store, rootKey.auditKey()).record({
      time: Date.now(),
      principal: `operator:${operator()}`,
      onBehalfOf: user,
      clientId: 'kms discovery export',
      method: 'export',
      uri: `kms://${config.authority}/discovery`,
      status: 200,
      peer: null,
      requestId: randomUUID(),
    });
    await writeOwnerOnly(target, async (write) => write(`${JSON.stringify(built, null, 1)}\n`));
    return built;
  }));
  const by = (via: string) => doc.keys.filter((k) => k.via === via).length;
  process.stdout.write(
    `exported ${doc.keys.length} keys of ${user} to ${target}: ${by('created')} created, ${by('authorized')} of KROs authorized here, ` +
      `${by('federated')} federated (${doc.proofs.length} peer answers kept as proof)\n`,
  );
}

async function verifyCommand(argv: string[]): Promise<void> {
  const { values, positionals } = parse(argv, { key: { type: 'string' }, 'trust-anchors': { type: 'string', multiple: true }, config: { type: 'string' } }, { usage: USAGE, positionals: true });
  const [file, ...extra] = positionals;
  const keyFile = values.str('key');
  if (!file || extra.length > 0) throw new UsageError('kms discovery verify needs exactly one export file');
  if (!keyFile) throw new UsageError("kms discovery verify needs --key FILE, the recipient's private JWK: the peers' signed answers hold keys and are sealed to it");
  let doc: DiscoveryExport;
  try {
    doc = JSON.parse(readFileSync(resolve(file), 'utf8')) as DiscoveryExport;
  } catch (err) {
    throw new ConfigError(`cannot read the export ${resolve(file)}: ${(err as NodeJS.ErrnoException).code ?? 'not JSON'}`);
  }
  const anchorFiles = values.list('trust-anchors') ?? [];
  const named = anchorFiles.map((f) => {
    try {
      return readFileSync(resolve(f), 'utf8');
    } catch (err) {
      throw new ConfigError(`cannot read trust anchors ${resolve(f)}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
    }
  });
  const configFile = flagOrEnv(values.str('config'), 'KMS_CONFIG');
  const config = configFile === undefined ? undefined : loadConfig(configFile);
  // --trust-anchors for every KMS; else the config's: its peers' anchors, and its own CA for itself.
  const anchorsOf = (authority: string) => {
    if (named.length > 0) return named;
    if (config === undefined) return undefined;
    if (authority === config.authority) return config.ca ? [readFileSync(configPath(config, config.ca.cert), 'utf8')] : undefined;
    return config.peers.find((p) => p.authority === authority)?.trustAnchors;
  };
  let report;
  try {
    report = await verifyDiscovery(doc, readJwk(keyFile, 'private key'), anchorsOf);
  } catch (err) {
    throw new KmsError('INVALID_ARGUMENT', `the export cannot be checked: ${err instanceof Error ? err.message : String(err)}`);
  }
  for (const problem of report.problems) process.stderr.write(`kms: ${problem}\n`);
  const { created, authorized, federated } = report.keys;
  const lines = [
    `${doc.user} at kms://${doc.kms}, exported ${doc.exportedAt}: ${created + authorized + federated} of ${doc.keys.length} keys open`,
    `  ${federated} federated keys proven by ${report.answers} verified peer answers`,
    `  ${created + authorized} keys of kms://${doc.kms} itself (${created} created by ${doc.user}, ${authorized} of KROs authorizing them)`,
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
  if (report.problems.length > 0) process.exitCode = 1;
}
