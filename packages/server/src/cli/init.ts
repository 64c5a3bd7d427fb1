/**
 * `kms init`: a KMS folder with everything a server needs — config, static key and certificate
 * (issued by a CA of its own unless one is given), the root of at-rest encryption, the
 * development token issuer. Secrets are written owner-only; nothing is overwritten without --force.
 */
import { createPublicKey } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { isAuthority } from '@openkms/protocol';
import { defaultOf } from '../config/options.js';
import { createCa, generateStaticKeyPem, issueKmsCertificate } from '../identity/certificates.js';
import { generateDevIssuerKey } from '../identity/dev-issuer.js';
import { generateRootKey } from '../keyring/keyring.js';
import { UsageError, flagOrEnv, intFlag, parse } from './args.js';

export interface InitOptions {
  dir: string;
  authority: string;
  domains: string[];
  port?: number;
  caCertPem?: string;
  caKeyPem?: string;
  force?: boolean;
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

export async function initKmsDir(o: InitOptions): Promise<string> {
  if (!isAuthority(o.authority)) throw new UsageError(`--authority ${o.authority} is not a DNS name (e.g. kms.a.example)`);
  for (const d of o.domains) if (!isAuthority(d.toLowerCase())) throw new UsageError(`--domain ${d} is not a domain name`);
  if (o.domains.length === 0) throw new UsageError('at least one --domain is required');
  const dir = resolve(o.dir);
  const configFile = join(dir, FILES.config);
  if (existsSync(configFile) && !o.force) throw new UsageError(`${configFile} exists; use --force to overwrite`);
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
  writeFileSync(join(dir, FILES.rootKey), generateRootKey(), secret);
  writeFileSync(join(dir, FILES.devIssuerKey), await generateDevIssuerKey(), secret);

  const config = {
    authority: o.authority.toLowerCase(),
    domains: o.domains.map((d) => d.toLowerCase()),
    // Written out although they are the defaults, so an operator sees where to change them.
    listen: { host: defaultOf('listen.host'), port: o.port ?? defaultOf('listen.port') },
    storage: { url: defaultOf('storage.url') },
    staticKey: { key: FILES.staticKey, cert: FILES.staticCert },
    ca: ca.own ? { cert: FILES.ca, key: FILES.caKey } : { cert: FILES.ca },
    rootKey: { file: FILES.rootKey },
    identity: { audience: `kms://${o.authority.toLowerCase()}`, dev: { enabled: true, keyFile: FILES.devIssuerKey } },
    peers: [],
  };
  writeFileSync(configFile, JSON.stringify(config, null, 2) + '\n');
  return configFile;
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
  writes D/kms.json, the static key and certificate (issued by a CA of its own, ca.pem, unless
  --ca-cert and --ca-key give one), root.key and the development issuer key; secrets owner-only.
  --port: listen.port in kms.json (default ${defaultOf('listen.port')}); --force: overwrite an existing D/kms.json
Environment: KMS_DIR, KMS_AUTHORITY, KMS_DOMAINS (comma-separated), KMS_PORT.`;

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
    },
    { usage: USAGE },
  );
  const dir = flagOrEnv(values.str('dir'), 'KMS_DIR');
  const authority = flagOrEnv(values.str('authority'), 'KMS_AUTHORITY');
  const domains = values.list('domain') ?? (process.env.KMS_DOMAINS ? process.env.KMS_DOMAINS.split(',') : []);
  if (!dir || !authority || domains.length === 0) throw new UsageError('kms init needs --dir, --authority and --domain');
  const file = await initKmsDir({
    dir,
    authority,
    domains,
    port: intFlag(flagOrEnv(values.str('port'), 'KMS_PORT'), '--port', 0, 65535),
    caCertPem: readPem(values.str('ca-cert'), '--ca-cert'),
    caKeyPem: readPem(values.str('ca-key'), '--ca-key'),
    force: values.bool('force'),
  });
  process.stderr.write(`wrote ${file}\n`);
}
