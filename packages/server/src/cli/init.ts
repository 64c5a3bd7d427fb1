/**
 * `kms init`: a KMS folder with everything a server needs — config, static key and certificate
 * (issued by a CA of its own unless one is given), the root of at-rest encryption, the
 * development token issuer. Secrets are written owner-only; nothing is overwritten without --force,
 * and not even with it while a database of the folder holds data (a new root key would make it
 * unreadable). `--renew-certificates` replaces only the static certificate.
 */
import { createPublicKey, X509Certificate } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { isAuthority } from '@openkms/protocol';
import { configPath, ConfigError, loadConfig } from '../config.js';
import { defaultOf } from '../config/options.js';
import { createCa, generateStaticKeyPem, issueKmsCertificate, loadStaticIdentity } from '../identity/certificates.js';
import { generateDevIssuerKey } from '../identity/dev-issuer.js';
import { generateRootKey } from '../keyring/keyring.js';
import { openPkcs11RootKey } from '../keyring/pkcs11.js';
import { UsageError, flagOrEnv, intFlag, parse } from './args.js';
import { dataHeldFor } from './existing-data.js';

export interface InitOptions {
  dir: string;
  authority: string;
  domains: string[];
  port?: number;
  caCertPem?: string;
  caKeyPem?: string;
  force?: boolean;
  /** The root key in an HSM (found, or created non-extractable) instead of a root.key file. */
  hsm?: { module: string; token: string; key: string; pin: string | undefined };
  /** Told what was found or created in the HSM. */
  say?: (line: string) => void;
}

export const FILES = {
  config: 'kms.json',
  staticKey: 'static-key.pem',
  staticCert: 'static-cert.pem',
  ca: 'ca.pem',
  caKey: 'ca-key.pem',
  rootKey: 'root.key',
  devIssuerKey: 'dev-issuer-key.json',
} as const;

/** The label of the HSM root key when --hsm-key names none (its audit key is `<label>-audit`). */
export const DEFAULT_HSM_KEY = 'openkms-root';

export async function initKmsDir(o: InitOptions): Promise<string> {
  if (!isAuthority(o.authority)) throw new UsageError(`--authority ${o.authority} is not a DNS name (e.g. kms.a.example)`);
  for (const d of o.domains) if (!isAuthority(d.toLowerCase())) throw new UsageError(`--domain ${d} is not a domain name`);
  if (o.domains.length === 0) throw new UsageError('at least one --domain is required');
  const dir = resolve(o.dir);
  const configFile = join(dir, FILES.config);
  if (existsSync(configFile) && !o.force) throw new UsageError(`${configFile} exists; use --force to overwrite`);
  // Looked at before anything is written, with or without --force: a kms.db left without its kms.json
  // still needs the root key beside it.
  const held = await dataHeldFor(dir, configFile);
  if (held) throw new UsageError(`refusing to write a new root key: ${held}; nothing was written (kms init --renew-certificates replaces only the certificate)`);
  // The HSM before any file: a wrong PIN or token leaves nothing behind.
  let rootKey: { file: string } | { pkcs11: { module: string; token: string; key: string } } = { file: FILES.rootKey };
  if (o.hsm) {
    const module = resolve(o.hsm.module);
    const { root, created } = await openPkcs11RootKey({ ...o.hsm, module, create: true });
    root.close();
    const labels = [o.hsm.key, `${o.hsm.key}-audit`];
    const found = labels.filter((l) => !created.includes(l));
    o.say?.(
      `PKCS#11 token '${o.hsm.token}': ${[created.length ? `created ${created.map((l) => `'${l}'`).join(' and ')}` : '', found.length ? `found ${found.map((l) => `'${l}'`).join(' and ')}` : ''].filter(Boolean).join(', ')} (non-extractable); no root key file is written`,
    );
    rootKey = { pkcs11: { module, token: o.hsm.token, key: o.hsm.key } };
  }
  mkdirSync(dir, { recursive: true, mode: 0o700 });

  let ca: { certPem: string; keyPem: string; own: boolean };
  if (o.caCertPem && o.caKeyPem) ca = { certPem: o.caCertPem, keyPem: o.caKeyPem, own: false };
  else if (o.caCertPem || o.caKeyPem) throw new UsageError('--ca-cert and --ca-key go together');
  else ca = { ...(await createCa(`${o.authority} CA`)), own: true };

  const staticKeyPem = await generateStaticKeyPem();
  const publicKeyPem = createPublicKey(staticKeyPem).export({ type: 'spki', format: 'pem' }) as string;
  const certPem = await issueKmsCertificate({ ca, authority: o.authority, publicKeyPem });

  const secret = { mode: 0o600 } as const;
  writeFileSync(join(dir, FILES.staticKey), staticKeyPem, secret);
  writeFileSync(join(dir, FILES.staticCert), certPem);
  writeFileSync(join(dir, FILES.ca), ca.certPem);
  if (ca.own) writeFileSync(join(dir, FILES.caKey), ca.keyPem, secret);
  if ('file' in rootKey) writeFileSync(join(dir, FILES.rootKey), generateRootKey(), secret);
  writeFileSync(join(dir, FILES.devIssuerKey), await generateDevIssuerKey(), secret);

  const config = {
    authority: o.authority.toLowerCase(),
    domains: o.domains.map((d) => d.toLowerCase()),
    // Written out although they are the defaults, so an operator sees where to change them.
    listen: { host: defaultOf('listen.host'), port: o.port ?? defaultOf('listen.port') },
    storage: { url: defaultOf('storage.url') },
    staticKey: { key: FILES.staticKey, cert: FILES.staticCert },
    ca: ca.own ? { cert: FILES.ca, key: FILES.caKey } : { cert: FILES.ca },
    rootKey,
    identity: { audience: `kms://${o.authority.toLowerCase()}`, dev: { enabled: true, keyFile: FILES.devIssuerKey } },
    peers: [],
  };
  writeFileSync(configFile, JSON.stringify(config, null, 2) + '\n');
  return configFile;
}

/** Writes through a temporary file and a rename, so a crash leaves the old file or the new one. */
function replaceFile(path: string, text: string, mode: number): void {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, text, { mode });
  renameSync(tmp, path);
}

export interface RenewOptions {
  /** The folder's kms.json. */
  configFile: string;
  /** The CA key when kms.json names none (the CA was given to init with --ca-key). */
  caKeyPem?: string;
  /** Also replace the static key (outstanding anonymous bearers, signed by the old one, stop working). */
  newStaticKey?: boolean;
}

/**
 * A new static certificate from the folder's own CA, for the static key it has (or a new one):
 * the root key, the CA and the database are not touched, so every stored key stays readable and
 * whoever trusts ca.pem trusts the new certificate. Checked as `kms serve` checks it before
 * anything is replaced. Returns the new certificate's expiry.
 */
export async function renewCertificates(o: RenewOptions): Promise<Date> {
  const config = loadConfig(o.configFile);
  const readText = (path: string, what: string) => {
    try {
      return readFileSync(configPath(config, path), 'utf8');
    } catch (err) {
      throw new ConfigError(`cannot read ${what} ${configPath(config, path)}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
    }
  };
  const caKeyPem = o.caKeyPem ?? (config.ca?.key ? readText(config.ca.key, 'CA key') : undefined);
  if (!config.ca?.cert) throw new ConfigError(`${o.configFile} names no CA (ca.cert): nothing to issue the certificate from`);
  if (!caKeyPem) throw new UsageError(`${o.configFile} names no CA key (the CA was given to kms init): pass it with --ca-key`);
  const ca = { certPem: readText(config.ca.cert, 'CA certificate'), keyPem: caKeyPem };
  const keyPem = o.newStaticKey ? await generateStaticKeyPem() : readText(config.staticKey.key, 'static key');
  const publicKeyPem = createPublicKey(keyPem).export({ type: 'spki', format: 'pem' }) as string;
  let certPem: string;
  try {
    certPem = await issueKmsCertificate({ ca, authority: config.authority, publicKeyPem });
    await loadStaticIdentity({ keyPem, certChainPem: certPem, authority: config.authority });
  } catch (err) {
    throw new ConfigError(`cannot renew the static certificate: ${(err as Error).message}`);
  }
  // The key before the certificate: a crash between the two leaves a pair serve refuses, never a
  // certificate for a key that was lost.
  if (o.newStaticKey) replaceFile(configPath(config, config.staticKey.key), keyPem, 0o600);
  replaceFile(configPath(config, config.staticKey.cert), certPem, 0o644);
  return new Date(new X509Certificate(certPem).validTo);
}

function readPem(path: string | undefined, flag: string): string | undefined {
  if (path === undefined) return undefined;
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new UsageError(`${flag} ${path}: ${(err as NodeJS.ErrnoException).code ?? 'cannot read'}`);
  }
}

const USAGE = `usage: kms init --dir D --authority A --domain X [--domain Y…] [--port P] [--ca-cert F --ca-key F] [--force]
                [--hsm-module PATH --hsm-token LABEL [--hsm-key LABEL]]
       kms init --renew-certificates --dir D [--ca-key F] [--new-static-key]
  writes D/kms.json, the static key and certificate (issued by a CA of its own, ca.pem, unless
  --ca-cert and --ca-key give one), root.key and the development issuer key; secrets owner-only.
  --hsm-module, --hsm-token: the root key in an HSM instead of root.key: finds, or creates, the
  non-extractable AES-256 key --hsm-key (default ${DEFAULT_HSM_KEY}) and the HMAC key
  <key>-audit in the PKCS#11 token, with the user PIN from KMS_HSM_PIN (needs the package pkcs11js).
  --port: listen.port in kms.json (default ${defaultOf('listen.port')}); --force: overwrite an existing D/kms.json.
  Refuses, even with --force, while D/kms.db or the database D/kms.json names holds data: a new
  root key would make every stored key unreadable.
  --renew-certificates: a new static certificate from the folder's CA (--ca-key when the CA was
  given); keeps the root key, the CA, the static key (a new one with --new-static-key, which ends
  outstanding anonymous bearers) and the data.
Environment: KMS_DIR, KMS_AUTHORITY, KMS_DOMAINS (comma-separated), KMS_PORT, KMS_HSM_PIN.`;

export async function initCommand(argv: string[]): Promise<void> {
  const { values } = parse(
    argv,
    {
      dir: { type: 'string' },
      authority: { type: 'string' },
      domain: { type: 'string', multiple: true },
      port: { type: 'string' },
      'ca-cert': { type: 'string' },
      'ca-key': { type: 'string' },
      force: { type: 'boolean' },
      'renew-certificates': { type: 'boolean' },
      'new-static-key': { type: 'boolean' },
      'hsm-module': { type: 'string' },
      'hsm-token': { type: 'string' },
      'hsm-key': { type: 'string' },
    },
    { usage: USAGE },
  );
  const dir = flagOrEnv(values.str('dir'), 'KMS_DIR');
  if (values.bool('renew-certificates')) {
    if (!dir) throw new UsageError('kms init --renew-certificates needs --dir');
    // What names or replaces the folder's identity belongs to a new folder, not to a renewal.
    for (const flag of ['authority', 'domain', 'port', 'ca-cert', 'force', 'hsm-module', 'hsm-token', 'hsm-key'] as const) {
      if (values.str(flag) !== undefined || values.list(flag) !== undefined || values.bool(flag)) throw new UsageError(`--${flag} does not go with --renew-certificates (it keeps the folder's config and CA)`);
    }
    const configFile = join(resolve(dir), FILES.config);
    if (!existsSync(configFile)) throw new UsageError(`${configFile} does not exist: nothing to renew (kms init without --renew-certificates makes a folder)`);
    const expires = await renewCertificates({ configFile, caKeyPem: readPem(values.str('ca-key'), '--ca-key'), newStaticKey: values.bool('new-static-key') });
    process.stderr.write(`renewed the static certificate of ${configFile}, valid until ${expires.toISOString()}; restart kms serve to use it\n`);
    return;
  }
  if (values.bool('new-static-key')) throw new UsageError('--new-static-key goes with --renew-certificates');
  const authority = flagOrEnv(values.str('authority'), 'KMS_AUTHORITY');
  const domains = values.list('domain') ?? (process.env.KMS_DOMAINS ? process.env.KMS_DOMAINS.split(',') : []);
  if (!dir || !authority || domains.length === 0) throw new UsageError('kms init needs --dir, --authority and --domain');
  const hsmModule = values.str('hsm-module');
  const hsmToken = values.str('hsm-token');
  if (Boolean(hsmModule) !== Boolean(hsmToken)) throw new UsageError('--hsm-module and --hsm-token go together');
  if (values.str('hsm-key') !== undefined && !hsmModule) throw new UsageError('--hsm-key goes with --hsm-module and --hsm-token');
  const file = await initKmsDir({
    dir,
    authority,
    domains,
    port: intFlag(flagOrEnv(values.str('port'), 'KMS_PORT'), '--port', 0, 65535),
    caCertPem: readPem(values.str('ca-cert'), '--ca-cert'),
    caKeyPem: readPem(values.str('ca-key'), '--ca-key'),
    force: values.bool('force'),
    hsm: hsmModule && hsmToken ? { module: hsmModule, token: hsmToken, key: values.str('hsm-key') ?? DEFAULT_HSM_KEY, pin: process.env.KMS_HSM_PIN } : undefined,
    say: (line) => process.stderr.write(`${line}
`),
  });
  process.stderr.write(`wrote ${file}\n`);
}
