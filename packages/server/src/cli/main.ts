/**
 * The `kms` command. Bad input of any kind gets one clear line on stderr and a non-zero exit,
 * never a stack trace (OPERATING.md).
 */
import { KmsError } from '@openkms/protocol';
import { ConfigError } from '../config.js';
import { KMS_VERSION } from '../version.js';
import { HelpRequested, UsageError } from './args.js';
import { auditCommand } from './audit.js';
import { backupCommand, restoreCommand } from './backup.js';
import { clientCommand } from './client.js';
import { demoCommand } from './demo.js';
import { discoveryCommand } from './discovery.js';
import { initCommand } from './init.js';
import { peerCommand } from './peer.js';
import { serveCommand } from './serve.js';
import { statusCommand } from './status.js';
import { tokenCommand } from './token.js';

const commands: Record<string, (argv: string[]) => Promise<void>> = {
  init: initCommand,
  serve: serveCommand,
  status: statusCommand,
  token: tokenCommand,
  audit: auditCommand,
  discovery: discoveryCommand,
  backup: backupCommand,
  restore: restoreCommand,
  client: clientCommand,
  peer: peerCommand,
  demo: demoCommand,
};

const USAGE = `usage: kms <command> [options]
  init          write a KMS folder (config, keys, certificates)
  serve         run the KMS (SIGHUP reloads peers, log level and TLS certificate)
  status        version, storage, audit head, certificate expiry, peers; exit 1 if something needs attention
  token         print a development access token
  peer          add, list or remove federation peers (other KMSs this one trusts)
  audit verify  check the audit log's hash chain and its newest signed checkpoint
  audit export  write the audit records as JSON lines (for a SIEM)
  discovery export  legal discovery: every key held for a user, sealed to a recipient, with the peers' proofs
  discovery verify  check a discovery export's keys and the peers' signatures
  backup        write an online, consistent backup of the database (never the root key)
  restore       restore a backup into an empty database
  client        talk to a KMS as a user (keys, resources, authorizations, encrypt, decrypt)
  demo          the federation scenario end to end: two KMSs, a file service, Alice and Bob
  version       print the version of this kms (also kms --version)
Run 'kms <command> --help' (or 'kms help <command>') for a command's options.
`;

export async function main(argv: string[]): Promise<void> {
  let [name, ...rest] = argv;
  if (name === 'help' && rest[0] && rest[0] in commands) [name, rest] = [rest[0], ['--help']];
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    // Asked for, help goes to stdout (kms --help | less); a bare `kms` is a usage error.
    (name ? process.stdout : process.stderr).write(USAGE);
    if (!name) process.exitCode = 2;
    return;
  }
  if (name === 'version' || name === '--version' || name === '-v') {
    process.stdout.write(`kms ${KMS_VERSION}\n`);
    return;
  }
  const command = commands[name];
  try {
    if (!command) throw new UsageError(`unknown command '${name}'; run 'kms --help'`);
    await command(rest);
  } catch (err) {
    if (err instanceof HelpRequested) {
      process.stdout.write(err.usage.endsWith('\n') ? err.usage : `${err.usage}\n`);
      return;
    }
    const known = err instanceof UsageError || err instanceof ConfigError || err instanceof KmsError;
    const message = known ? (err as Error).message : `unexpected error: ${(err as Error)?.message ?? String(err)}`;
    process.stderr.write(`kms: ${message}\n`);
    process.exitCode = err instanceof UsageError ? 2 : 1;
  }
}
