/**
 * `kms client …`: the client SDK from the command line, for operators and for trying things out.
 * It speaks to a KMS like any application: discovery, certificate validation against --ca, an
 * ECDHE channel, and the token from --token or KMS_TOKEN.
 */
import { accessSync, constants, createReadStream, createWriteStream, linkSync, readFileSync, realpathSync, renameSync, rmSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { KmsClient, decryptStream, encryptStream, type AuthorizationRep, type KeyRep, type ResourceRep } from '@openkms/client';
import { Limits } from '@openkms/protocol';
import { configPath, loadConfig } from '../config.js';
import { Flags, HelpRequested, UsageError, flagOrEnv, intFlag, parse } from './args.js';

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
  encrypt FILE --resource URI [--out F] [--force]  new key bound to the resource; writes FILE.jwe
  decrypt FILE [--out F] [--force]              fetches the key FILE names; writes FILE without .jwe
The token comes from --token or KMS_TOKEN; --url/KMS_URL and --ca/KMS_CA, or --config, name the KMS.
encrypt and decrypt never overwrite an existing output file unless --force is given.`;

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

/** A file to read: refused up front, before the KMS is asked for anything on its behalf. */
function checkInput(file: string): void {
  let isFile: boolean;
  try {
    isFile = statSync(file).isFile();
    accessSync(file, constants.R_OK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new UsageError(`${file}: ${code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'not readable (permission denied)' : (code ?? 'cannot read')}`);
  }
  if (!isFile) throw new UsageError(`${file} is not a file`);
}

/** An output path: an existing file is kept unless `force`; its folder must take a new file. */
function checkOutput(output: string, input: string, force: boolean): void {
  const existing = statSync(output, { throwIfNoEntry: false });
  if (existing) {
    if (!existing.isFile()) throw new UsageError(`${output} exists and is not a file`);
    if (realpathSync(output) === realpathSync(input)) throw new UsageError(`${output} is the input file; choose another --out`);
    if (!force) throw new UsageError(`${output} exists; use --force to overwrite it`);
  }
  const folder = dirname(resolve(output));
  try {
    if (!statSync(folder).isDirectory()) throw new UsageError(`cannot write ${output}: ${folder} is not a folder`);
    accessSync(folder, constants.W_OK);
  } catch (err) {
    if (err instanceof UsageError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    throw new UsageError(`cannot write ${output}: ${code === 'ENOENT' ? `no folder ${folder}` : code === 'EACCES' ? `${folder} is not writable (permission denied)` : (code ?? 'error')}`);
  }
}

/**
 * Writes through a temporary file, so a failure never leaves a partial output behind. Without
 * `force` the result is hard-linked into place, which fails if a file appeared there meanwhile
 * (checkOutput ran before the KMS was asked), so an existing file is never replaced.
 */
async function pipeFile(input: string, output: string, transform: TransformStream<Uint8Array, Uint8Array>, force: boolean): Promise<void> {
  const partial = `${output}.partial`;
  try {
    const source = Readable.toWeb(createReadStream(input)) as unknown as ReadableStream<Uint8Array>;
    await source.pipeThrough(transform).pipeTo(Writable.toWeb(createWriteStream(partial, { mode: 0o600 })) as WritableStream<Uint8Array>);
    if (force) renameSync(partial, output);
    else placeWithoutReplacing(partial, output);
  } finally {
    rmSync(partial, { force: true });
  }
}

function placeWithoutReplacing(partial: string, output: string): void {
  try {
    linkSync(partial, output);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new UsageError(`${output} exists; use --force to overwrite it`);
    // A file system without hard links: checkOutput's answer stands.
    if (statSync(output, { throwIfNoEntry: false })) throw new UsageError(`${output} exists; use --force to overwrite it`);
    renameSync(partial, output);
  }
}

type FlagSpec = Record<string, { type: 'string' | 'boolean'; multiple?: boolean }>;

/** Each command's own flags (on top of COMMON; any other flag is refused) and how many words it takes. */
const COMMANDS: Record<string, { flags: FlagSpec; words: 0 | 1 }> = {
  'keys create': { flags: { count: { type: 'string' } }, words: 0 },
  'key get': { flags: {}, words: 1 },
  'resource create': {
    flags: { authorize: { type: 'string', multiple: true }, key: { type: 'string', multiple: true }, anonymous: { type: 'string' }, ttl: { type: 'string' } },
    words: 0,
  },
  authorize: { flags: { resource: { type: 'string' }, user: { type: 'string', multiple: true } }, words: 0 },
  deauthorize: { flags: { resource: { type: 'string' }, user: { type: 'string' } }, words: 0 },
  encrypt: { flags: { resource: { type: 'string' }, out: { type: 'string' }, force: { type: 'boolean' } }, words: 1 },
  decrypt: { flags: { out: { type: 'string' }, force: { type: 'boolean' } }, words: 1 },
};

/** The command is the leading positional word(s); flags may stand anywhere. */
function commandOf(words: string[]): { name: string; positionals: string[] } {
  const two = `${words[0]} ${words[1]}`;
  if (two in COMMANDS) return { name: two, positionals: words.slice(2) };
  return { name: words[0] ?? '', positionals: words.slice(1) };
}

export async function clientCommand(argv: string[]): Promise<void> {
  if (argv.length === 0) {
    process.stderr.write(USAGE + '\n');
    process.exitCode = 2;
    return;
  }
  // A first pass with every known flag finds the command; the second is strict for that command.
  const all = Object.assign({}, COMMON, ...Object.values(COMMANDS).map((c) => c.flags)) as FlagSpec;
  const first = parse(argv, all, { positionals: true, usage: USAGE });
  if (first.positionals[0] === 'help') throw new HelpRequested(USAGE);
  const { name, positionals } = commandOf(first.positionals);
  const command = COMMANDS[name];
  if (!command) throw new UsageError(`unknown client command '${name}'; run 'kms client --help'`);
  const { values } = parse(argv, { ...COMMON, ...command.flags }, { positionals: true });
  if (positionals.length > command.words) throw new UsageError(`kms client ${name} takes ${command.words === 0 ? 'no argument' : 'one argument'}; unexpected '${positionals[command.words]}'`);
  const need = (value: string | undefined, what: string) => {
    if (!value) throw new UsageError(`kms client ${name} needs ${what}`);
    return value;
  };
  // Each command checks its input (flags, files) first and only then talks to the KMS.
  const run = async (fn: (client: KmsClient) => Promise<void>) => {
    const client = connect(values);
    try {
      await fn(client);
    } finally {
      await client.close();
    }
  };

  switch (name) {
    case 'keys create': {
      const count = intFlag(values.str('count'), '--count', 1, Limits.maxKeyCount) ?? 1;
      return run(async (client) => {
        const keys = await client.createKeys(count);
        out(values, keys, keys.map(describeKey).join('\n') + '\n(key values are printed with --json)');
      });
    }
    case 'key get': {
      const uri = need(positionals[0], 'a key URI');
      return run(async (client) => {
        const key = await client.retrieveKey(uri);
        out(values, key, describeKey(key) + '\n(the key value is printed with --json)');
      });
    }
    case 'resource create': {
      const request = {
        authIds: values.list('authorize'),
        keyUris: values.list('key'),
        anonymous: intFlag(values.str('anonymous'), '--anonymous', 0, Limits.maxAnonymous),
        ttl: intFlag(values.str('ttl'), '--ttl', 0, undefined, 'seconds'),
      };
      return run(async (client) => {
        const created = await client.createResource(request);
        out(values, created, describeResource(created.resource, created.authorizations));
      });
    }
    case 'authorize': {
      const resource = need(values.str('resource'), '--resource');
      const users = values.list('user') ?? [];
      if (users.length === 0) throw new UsageError('kms client authorize needs --user');
      return run(async (client) => {
        const auths = await client.authorize(resource, users);
        out(values, auths, auths.map((a) => `${a.authId} authorized (${a.uri})`).join('\n'));
      });
    }
    case 'deauthorize': {
      const resource = need(values.str('resource'), '--resource');
      const user = need(values.str('user'), '--user');
      return run(async (client) => {
        const removed = await client.deauthorize(resource, user);
        out(values, removed, `${removed.authId} no longer authorized on ${removed.resourceUri}`);
      });
    }
    case 'encrypt': {
      // Checked before the KMS is asked for a key and binds it to the resource.
      const file = need(positionals[0], 'a FILE');
      const resource = need(values.str('resource'), '--resource');
      const output = values.str('out') ?? `${file}.jwe`;
      const force = values.bool('force');
      checkInput(file);
      checkOutput(output, file, force);
      return run(async (client) => {
        const [key] = await client.createKeys(1);
        const bound = await client.bindKey(key!.uri, resource);
        await pipeFile(file, output, encryptStream(bound), force);
        out(values, { file: output, keyUri: bound.uri, resourceUri: resource }, `wrote ${output} (key ${bound.uri})`);
      });
    }
    case 'decrypt': {
      const file = need(positionals[0], 'a FILE');
      const output = values.str('out') ?? (file.endsWith('.jwe') ? file.slice(0, -4) : `${file}.out`);
      const force = values.bool('force');
      checkInput(file);
      checkOutput(output, file, force);
      return run(async (client) => {
        let keyUri = '';
        await pipeFile(file, output, decryptStream((uri) => ((keyUri = uri), client.retrieveKey(uri))), force);
        out(values, { file: output, keyUri }, `wrote ${output}`);
      });
    }
    default:
      throw new UsageError(`unknown client command '${name}'`);
  }
}
