/**
 * `kms peer add|list|remove`: the other KMSs this one federates with (PROTOCOL.md §6 "Peers",
 * OPERATING.md). Works offline on kms.json: the peer's CA certificates are copied into the config.
 * Edits change only the `peers` member of the file as written (no defaults are filled in), are
 * validated as a whole before anything is written, and replace the file atomically.
 * Changes take effect on the next start, or at once when a running `kms serve` gets SIGHUP.
 */
import { randomBytes, X509Certificate } from 'node:crypto';
import { chmodSync, readFileSync, renameSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { isAuthority } from '@openkms/protocol';
import { ConfigError, loadConfig, parseConfig, readConfigJson, type KmsConfig } from '../config.js';
import { trustAnchorCertificates, validatePeers } from '../federation/peers.js';
import { DEFAULT_CONFIG, HelpRequested, UsageError, asksForHelp, flagOrEnv, parse } from './args.js';

const USAGE = `usage: kms peer add --config D/kms.json --authority A --domain X [--domain Y…] --endpoint URL --ca PEMFILE [--ca PEMFILE…]
       kms peer list --config D/kms.json [--json]
       kms peer remove --config D/kms.json --authority A
Environment: KMS_CONFIG, KMS_PEER_AUTHORITY, KMS_PEER_DOMAINS (comma-separated), KMS_PEER_ENDPOINT, KMS_PEER_CA (comma-separated).
Changes take effect on the next start, or at once on SIGHUP to a running kms serve.
`;

const subcommands: Record<string, (argv: string[]) => Promise<void>> = {
  add: peerAdd,
  list: peerList,
  remove: peerRemove,
};

export async function peerCommand(argv: string[]): Promise<void> {
  const [name, ...rest] = argv;
  if (name === 'help' || asksForHelp(argv.slice(0, 1))) throw new HelpRequested(USAGE);
  if (!name) throw new UsageError("kms peer needs a subcommand: add, list or remove; run 'kms peer --help'");
  const sub = subcommands[name];
  if (!sub) throw new UsageError(`unknown subcommand 'peer ${name}'; expected add, list or remove`);
  await sub(rest);
}

// ---------------------------------------------------------------------------------------------
// The config file, raw

interface RawConfigFile {
  /** The path as given, for messages. */
  path: string;
  /** The file actually written (symlinks resolved). */
  target: string;
  raw: Record<string, unknown>;
  /** The file's indentation, kept when writing back. */
  indent: string | number;
  parsed: KmsConfig;
}

function configFileOf(given: string | undefined): string {
  return flagOrEnv(given, 'KMS_CONFIG') ?? DEFAULT_CONFIG;
}

function readRawConfig(path: string): RawConfigFile {
  const { raw, text, realPath: target } = readConfigJson(path);
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ConfigError(`${path}: (root): not a JSON object`);
  const parsed = parseConfig(raw, dirname(target), path);
  const m = /^\{\r?\n([ \t]+)"/.exec(text);
  return { path, target, raw: raw as Record<string, unknown>, indent: m ? m[1]! : 2, parsed };
}

/** The raw peers array as written (entries kept as they are). */
function rawPeers(file: RawConfigFile): unknown[] {
  const peers = file.raw.peers;
  if (peers === undefined) return [];
  if (!Array.isArray(peers)) throw new ConfigError(`${file.path}: peers: not an array`);
  return peers;
}

function rawAuthority(entry: unknown): string | undefined {
  if (typeof entry !== 'object' || entry === null) return undefined;
  const a = (entry as { authority?: unknown }).authority;
  return typeof a === 'string' ? a.toLowerCase() : undefined;
}

/** Validates the edited config as a whole, then replaces the file atomically (temp file + rename). */
function writeRawConfig(file: RawConfigFile, raw: Record<string, unknown>): void {
  validatePeers(parseConfig(raw, dirname(file.target), file.path));
  const dir = dirname(file.target);
  const tmp = join(dir, `.${basename(file.target)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  let mode = 0o644;
  try {
    mode = statSync(file.target).mode & 0o777;
  } catch {
    /* keep the default */
  }
  try {
    writeFileSync(tmp, JSON.stringify(raw, null, file.indent) + '\n', { mode, flag: 'wx' });
    chmodSync(tmp, mode);
    renameSync(tmp, file.target);
  } catch (err) {
    try {
      unlinkSync(tmp);
    } catch {
      /* already gone */
    }
    throw new ConfigError(`cannot write ${file.path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Input checks

function authorityOf(value: string | undefined, command: string): string {
  if (!value) throw new UsageError(`kms peer ${command} needs --authority`);
  const a = value.trim().toLowerCase();
  if (!isAuthority(a)) throw new UsageError(`--authority ${value} is not an authority name (e.g. kms.b.example)`);
  return a;
}

function endpointOf(value: string | undefined): string {
  if (!value) throw new UsageError('kms peer add needs --endpoint');
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new UsageError(`--endpoint ${value} is not a URL (e.g. https://kms.b.example)`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new UsageError(`--endpoint ${value} must be an http(s) URL`);
  if (url.username || url.password) throw new UsageError(`--endpoint ${value} must not carry credentials`);
  if (url.search || url.hash) throw new UsageError(`--endpoint ${value} must not have a query or fragment`);
  return value;
}

function toPem(b64: string): string {
  const lines = b64.match(/.{1,64}/g) ?? [];
  return `-----BEGIN CERTIFICATE-----\n${lines.join('\n')}\n-----END CERTIFICATE-----\n`;
}

/**
 * The CA certificates in the given PEM files, one PEM text per certificate (only the CERTIFICATE
 * blocks are copied: anything else in a file, a private key say, is not), duplicates dropped.
 */
function trustAnchorsFrom(files: string[]): string[] {
  const seen = new Set<string>();
  const out: string[] = [];
  for (const file of files) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new UsageError(`--ca ${file}: ${(err as NodeJS.ErrnoException).code ?? 'cannot read'}`);
    }
    let certs: string[];
    try {
      certs = trustAnchorCertificates(text);
    } catch (err) {
      throw new UsageError(`--ca ${file} ${(err as Error).message}`);
    }
    for (const b64 of certs) {
      const cert = new X509Certificate(Buffer.from(b64, 'base64'));
      if (!cert.ca) throw new UsageError(`--ca ${file}: certificate '${cert.subject.replace(/\n/g, ', ')}' is not a CA certificate`);
      if (seen.has(b64)) continue;
      seen.add(b64);
      out.push(toPem(b64));
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Subcommands

async function peerAdd(argv: string[]): Promise<void> {
  const { values } = parse(
    argv,
    {
      config: { type: 'string' },
      authority: { type: 'string' },
      domain: { type: 'string', multiple: true },
      endpoint: { type: 'string' },
      ca: { type: 'string', multiple: true },
    },
    { usage: USAGE },
  );
  const authority = authorityOf(flagOrEnv(values.str('authority'), 'KMS_PEER_AUTHORITY'), 'add');
  const domainsIn = values.list('domain') ?? splitEnv('KMS_PEER_DOMAINS');
  if (domainsIn.length === 0) throw new UsageError('kms peer add needs at least one --domain');
  const domains: string[] = [];
  for (const d of domainsIn) {
    const l = d.trim().toLowerCase();
    if (!isAuthority(l)) throw new UsageError(`--domain ${d} is not a domain name`);
    if (!domains.includes(l)) domains.push(l);
  }
  const endpoint = endpointOf(flagOrEnv(values.str('endpoint'), 'KMS_PEER_ENDPOINT'));
  const caFiles = values.list('ca') ?? splitEnv('KMS_PEER_CA');
  if (caFiles.length === 0) throw new UsageError("kms peer add needs --ca (the peer's CA certificate, e.g. its ca.pem)");
  const trustAnchors = trustAnchorsFrom(caFiles);

  const file = readRawConfig(configFileOf(values.str('config')));
  const own = file.parsed;
  if (authority === own.authority.toLowerCase()) throw new UsageError(`${authority} is this KMS's own authority, not a peer`);
  const ownDomains = new Set(own.domains.map((d) => d.toLowerCase()));
  for (const d of domains) {
    if (ownDomains.has(d)) throw new UsageError(`domain ${d} is served by this KMS (${own.authority}); a peer cannot claim it`);
    const other = own.peers.find((p) => p.authority.toLowerCase() !== authority && p.domains.some((x) => x.toLowerCase() === d));
    if (other) throw new UsageError(`domain ${d} is already served by peer ${other.authority.toLowerCase()}`);
  }

  const entry = { authority, domains, endpoint, trustAnchors };
  const peers = [...rawPeers(file)];
  const at = peers.findIndex((p) => rawAuthority(p) === authority);
  if (at >= 0) peers[at] = entry;
  else peers.push(entry);
  writeRawConfig(file, { ...file.raw, peers });
  process.stderr.write(`peer ${authority} ${at >= 0 ? 'replaced' : 'added'}: domains ${domains.join(', ')}; takes effect on the next start\n`);
}

async function peerList(argv: string[]): Promise<void> {
  const { values } = parse(argv, { config: { type: 'string' }, json: { type: 'boolean' } }, { usage: USAGE });
  const config = loadConfig(configFileOf(values.str('config')));
  if (values.bool('json')) {
    process.stdout.write(JSON.stringify(config.peers, null, 2) + '\n');
    return;
  }
  if (config.peers.length === 0) {
    process.stderr.write('no peers\n');
    return;
  }
  for (const p of config.peers) {
    const n = p.trustAnchors.length;
    process.stdout.write(`${p.authority.toLowerCase()}\tdomains ${p.domains.join(',')}\tendpoint ${p.endpoint}\t${n} trust anchor${n === 1 ? '' : 's'}\n`);
  }
}

async function peerRemove(argv: string[]): Promise<void> {
  const { values } = parse(argv, { config: { type: 'string' }, authority: { type: 'string' } }, { usage: USAGE });
  const authority = authorityOf(flagOrEnv(values.str('authority'), 'KMS_PEER_AUTHORITY'), 'remove');
  const file = readRawConfig(configFileOf(values.str('config')));
  const peers = rawPeers(file);
  const kept = peers.filter((p) => rawAuthority(p) !== authority);
  if (kept.length === peers.length) throw new UsageError(`no peer ${authority} in ${file.path}`);
  writeRawConfig(file, { ...file.raw, peers: kept });
  process.stderr.write(`peer ${authority} removed; takes effect on the next start\n`);
}

function splitEnv(name: string): string[] {
  const v = process.env[name];
  return v ? v.split(',').map((s) => s.trim()).filter(Boolean) : [];
}
