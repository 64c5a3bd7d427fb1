/**
 * `kms client …`: the client SDK from the command line, for operators and for trying things out.
 * It speaks to a KMS like any application: discovery, certificate validation against --ca, an
 * ECDHE channel, and the token from --token or KMS_TOKEN.
 */
import { createReadStream, createWriteStream, readFileSync, renameSync, rmSync } from 'node:fs';
import { Readable, Writable } from 'node:stream';
import { KmsClient, decryptStream, encryptStream, type AuthorizationRep, type KeyRep, type ResourceRep } from '@openkms/client';
import { configPath, loadConfig } from '../config.js';
import { Flags, UsageError, flagOrEnv, intFlag, parse } from './args.js';

const COMMON = {
  url: { type: 'string' },
  config: { type: 'string' },
  ca: { type: 'string' },
  token: { type: 'string' },
  authority: { type: 'string' },
  'client-id': { type: 'string' },
  json: { type: 'boolean' },
} as const;

const USAGE = `usage: kms client <command> [--url URL | --config D/kms.json] [--ca PEM] [--token T] [--json]
  keys create [--count N]                       create unbound keys
  key get URI                                   retrieve one key
  resource create [--authorize U…] [--key URI…] [--anonymous N] [--ttl S]
  authorize --resource URI --user U [--user U…]
  deauthorize --resource URI --user U
  encrypt FILE --resource URI [--out F]         new key bound to the resource; writes FILE.jwe
  decrypt FILE [--out F]                        fetches the key FILE names; writes FILE without .jwe
The token comes from --token or KMS_TOKEN; --url/KMS_URL and --ca/KMS_CA, or --config, name the KMS.`;

/** Where the KMS is and which CA vouches for it: flags, environment, or a kms.json. */
function connect(values: Flags): KmsClient {
  const token = flagOrEnv(values.str('token'), 'KMS_TOKEN');
  if (!token) throw new UsageError('no token: pass --token or set KMS_TOKEN (e.g. TOKEN=$(npx kms token --user …))');
  let url = flagOrEnv(values.str('url'), 'KMS_URL');
  let caFile = flagOrEnv(values.str('ca'), 'KMS_CA');
  const configFile = flagOrEnv(values.str('config'), 'KMS_CONFIG');
  if (configFile && (!url || !caFile)) {
    const config = loadConfig(configFile);
    url ??= `${config.tls ? 'https' : 'http'}://${config.listen.host}:${config.listen.port}`;
    if (!caFile && config.ca) caFile = configPath(config, config.ca.cert);
  }
  if (!url) throw new UsageError('no KMS: pass --url (or KMS_URL) or --config');
  if (!caFile) throw new UsageError('no CA certificate to check the KMS against: pass --ca (or KMS_CA)');
  let ca: string;
  try {
    ca = readFileSync(caFile, 'utf8');
  } catch (err) {
    throw new UsageError(`--ca ${caFile}: ${(err as NodeJS.ErrnoException).code ?? 'cannot read'}`);
  }
  return new KmsClient({
    url: url.replace(/\/+$/, ''),
    token,
    trustAnchors: [ca],
    authority: values.str('authority'),
    clientId: flagOrEnv(values.str('client-id'), 'KMS_CLIENT_ID') ?? 'kms-cli',
  });
}

function describeKey(k: KeyRep): string {
  const state = k.resourceUri ? `bound to ${k.resourceUri} since ${k.bindDate}` : 'unbound';
  return `${k.uri}\n  ${state}; created ${k.createDate}; expires ${k.expirationDate}`;
}

function describeResource(r: ResourceRep, authorizations: AuthorizationRep[] = []): string {
  const lines = [r.uri, `  keys: ${r.keyUris.length ? r.keyUris.join(', ') : 'none'}`, `  authorizations: ${r.authorizationUris.length}`];
  if (r.expirationDate) lines.push(`  expires ${r.expirationDate}`);
  for (const a of authorizations) if (a.bearer) lines.push(`  anonymous bearer (${a.uri}): ${a.bearer}`);
  return lines.join('\n');
}

function out(values: Flags, json: unknown, text: string): void {
  process.stdout.write((values.bool('json') ? JSON.stringify(json, null, 2) : text) + '\n');
}

/** Writes through a temporary file, so a failure never leaves a partial output behind. */
async function pipeFile(input: string, output: string, transform: TransformStream<Uint8Array, Uint8Array>): Promise<void> {
  const partial = `${output}.partial`;
  try {
    const source = Readable.toWeb(createReadStream(input)) as unknown as ReadableStream<Uint8Array>;
    await source.pipeThrough(transform).pipeTo(Writable.toWeb(createWriteStream(partial, { mode: 0o600 })) as WritableStream<Uint8Array>);
    renameSync(partial, output);
  } catch (err) {
    rmSync(partial, { force: true });
    throw err;
  }
}

/** Each command's own flags (on top of COMMON); any other flag is refused. */
const FLAGS: Record<string, Record<string, { type: 'string' | 'boolean'; multiple?: boolean }>> = {
  'keys create': { count: { type: 'string' } },
  'key get': {},
  'resource create': {
    authorize: { type: 'string', multiple: true },
    key: { type: 'string', multiple: true },
    anonymous: { type: 'string' },
    ttl: { type: 'string' },
  },
  authorize: { resource: { type: 'string' }, user: { type: 'string', multiple: true } },
  deauthorize: { resource: { type: 'string' }, user: { type: 'string' } },
  encrypt: { resource: { type: 'string' }, out: { type: 'string' } },
  decrypt: { out: { type: 'string' } },
};

/** The command is the leading positional word(s); flags may stand anywhere. */
function commandOf(words: string[]): { name: string; positionals: string[] } {
  const two = `${words[0]} ${words[1]}`;
  if (two in FLAGS) return { name: two, positionals: words.slice(2) };
  return { name: words[0] ?? '', positionals: words.slice(1) };
}

export async function clientCommand(argv: string[]): Promise<void> {
  if (argv.length === 0 || argv[0] === 'help' || argv[0] === '--help' || argv[0] === '-h') {
    process.stderr.write(USAGE + '\n');
    if (argv.length === 0) process.exitCode = 2;
    return;
  }
  // A first pass with every known flag finds the command; the second is strict for that command.
  const all = Object.assign({}, COMMON, ...Object.values(FLAGS)) as Record<string, { type: 'string' | 'boolean'; multiple?: boolean }>;
  const { name, positionals } = commandOf(parse(argv, all, true).positionals);
  const options = FLAGS[name];
  if (!options) throw new UsageError(`unknown client command '${name}'; run 'kms client help'`);
  const { values } = parse(argv, { ...COMMON, ...options }, true);
  if (values.bool('help')) return void process.stderr.write(USAGE + '\n');
  const run = async (fn: (values: Flags, client: KmsClient) => Promise<void>) => {
    const client = connect(values);
    try {
      await fn(values, client);
    } finally {
      await client.close();
    }
  };
  const need = (value: string | undefined, what: string) => {
    if (!value) throw new UsageError(`kms client ${name} needs ${what}`);
    return value;
  };

  switch (name) {
    case 'keys create':
      return run(async (values, client) => {
        const keys = await client.createKeys(intFlag(values.str('count'), '--count', 1, 100) ?? 1);
        out(values, keys, keys.map(describeKey).join('\n') + '\n(key values are printed with --json)');
      });
    case 'key get':
      return run(async (values, client) => {
        const key = await client.retrieveKey(need(positionals[0], 'a key URI'));
        out(values, key, describeKey(key) + '\n(the key value is printed with --json)');
      });
    case 'resource create':
      return run(
        async (values, client) => {
          const created = await client.createResource({
            authIds: values.list('authorize'),
            keyUris: values.list('key'),
            anonymous: intFlag(values.str('anonymous'), '--anonymous', 0, 100),
            ttl: intFlag(values.str('ttl'), '--ttl', 0),
          });
          out(values, created, describeResource(created.resource, created.authorizations));
        },
      );
    case 'authorize':
      return run(async (values, client) => {
        const users = values.list('user') ?? [];
        if (users.length === 0) throw new UsageError('kms client authorize needs --user');
        const auths = await client.authorize(need(values.str('resource'), '--resource'), users);
        out(values, auths, auths.map((a) => `${a.authId} authorized (${a.uri})`).join('\n'));
      });
    case 'deauthorize':
      return run(async (values, client) => {
        const removed = await client.deauthorize(need(values.str('resource'), '--resource'), need(values.str('user'), '--user'));
        out(values, removed, `${removed.authId} no longer authorized on ${removed.resourceUri}`);
      });
    case 'encrypt':
      return run(async (values, client) => {
        const file = need(positionals[0], 'a FILE');
        const resource = need(values.str('resource'), '--resource');
        const [key] = await client.createKeys(1);
        const bound = await client.bindKey(key!.uri, resource);
        const output = values.str('out') ?? `${file}.jwe`;
        await pipeFile(file, output, encryptStream(bound));
        out(values, { file: output, keyUri: bound.uri, resourceUri: resource }, `wrote ${output} (key ${bound.uri})`);
      });
    case 'decrypt':
      return run(async (values, client) => {
        const file = need(positionals[0], 'a FILE');
        const output = values.str('out') ?? (file.endsWith('.jwe') ? file.slice(0, -4) : `${file}.out`);
        let keyUri = '';
        await pipeFile(file, output, decryptStream((uri) => ((keyUri = uri), client.retrieveKey(uri))));
        out(values, { file: output, keyUri }, `wrote ${output}`);
      });
    default:
      throw new UsageError(`unknown client command '${name}'`);
  }
}
