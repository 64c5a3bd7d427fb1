/**
 * kms.json (src/config.ts) against its documented options (src/config/options.ts): the schema
 * accepts exactly the documented options, fills in exactly the documented defaults, refuses an
 * unknown key at any depth naming it, and the README's configuration reference is the one
 * generated from the options. `kms init` writes only known keys; the test harness's overrides are
 * checked the same way.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { initKmsDir } from '../src/cli/init.js';
import { ConfigError, configSchema, loadConfig, parseConfig } from '../src/config.js';
import { OPTIONS, type ConfigOption } from '../src/config/options.js';
import { configReference, referenceIn, referenceRows } from '../src/config/reference.js';
import { startDevKms } from '../src/testing/harness.js';

const scratch = mkdtempSync(join(tmpdir(), 'kms-config-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

const CERT = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n';

/** The least a config must say. */
const minimal = () => ({ authority: 'kms.a.example', domains: ['a.example'], staticKey: { key: 'static-key.pem', cert: 'static-cert.pem' } });

/** A config that gives every documented option a value other than its default. */
const complete = () => ({
  authority: 'kms.a.example',
  domains: ['a.example'],
  listen: { host: '0.0.0.0', port: 7443 },
  storage: { url: 'postgres://kms@db.a.example/kms', timeoutSeconds: 0.5 },
  staticKey: { key: 'static-key.pem', cert: 'static-cert.pem' },
  ca: { cert: 'ca.pem', key: 'ca-key.pem' },
  // Both only to cover every option: opening the root key refuses the two together (server.ts).
  rootKey: { file: 'root.key', pkcs11: { module: '/usr/lib/softhsm/libsofthsm2.so', token: 'kms', key: 'kms-root' } },
  tls: { cert: 'tls.pem', key: 'tls-key.pem' },
  cors: { origins: ['https://app.a.example'] },
  identity: {
    issuer: 'https://idp.a.example',
    audience: 'kms://kms.a.example',
    jwksUri: 'https://idp.a.example/jwks',
    jwksFile: 'jwks.json',
    discovery: true,
    introspection: { endpoint: 'https://idp.a.example/introspect', clientId: 'kms', clientSecret: 'secret' },
    userClaim: 'email',
    rolesClaim: 'groups',
    orgClaim: 'org',
    clockToleranceSeconds: 5,
    dev: { enabled: false, keyFile: 'dev-issuer-key.json' },
  },
  lifetimes: { channel: 600, unboundKey: 600, boundKey: 86_400, unboundGrace: 3600, anonymousBearerMax: 86_400, maxResourceTtl: 86_400 },
  sweeper: { intervalSeconds: 30 },
  audit: { checkpoints: { file: 'elsewhere/audit.checkpoints', intervalSeconds: 5 } },
  limits: { maxAuthorizationsPerResource: 100, requestsPerMinutePerPrincipal: 600, handshakesPerMinutePerAddress: 60 },
  peers: [{ authority: 'kms.b.example', domains: ['b.example'], endpoint: 'https://kms.b.example', trustAnchors: [CERT] }],
  federation: { maxStaleness: 10, peerTimeout: 2 },
  log: { level: 'warn' },
});

const documented = Object.keys(OPTIONS);
const option = (path: string) => (OPTIONS as Record<string, ConfigOption>)[path]!;

/** The leaf paths of a JSON value, written as options.ts writes them (`peers[].endpoint`). */
function jsonLeaves(value: unknown, prefix = ''): string[] {
  if (Array.isArray(value)) return value.length > 0 && typeof value[0] === 'object' ? [...new Set(value.flatMap((v) => jsonLeaves(v, `${prefix}[]`)))] : [prefix];
  if (value !== null && typeof value === 'object') return Object.entries(value).flatMap(([k, v]) => jsonLeaves(v, prefix ? `${prefix}.${k}` : k));
  return [prefix];
}

/** The leaf paths the schema accepts, found by walking it (zod 4 keeps the structure in `_zod.def`). */
interface Def {
  type: string;
  innerType?: { _zod: { def: Def } };
  in?: { _zod: { def: Def } };
  element?: { _zod: { def: Def } };
  shape?: Record<string, { _zod: { def: Def } }>;
}
function schemaLeaves(def: Def, prefix = ''): string[] {
  if (def.innerType) return schemaLeaves(def.innerType._zod.def, prefix);
  if (def.type === 'pipe') return schemaLeaves(def.in!._zod.def, prefix);
  if (def.type === 'object') return Object.entries(def.shape!).flatMap(([k, v]) => schemaLeaves(v._zod.def, prefix ? `${prefix}.${k}` : k));
  if (def.type === 'array' && def.element!._zod.def.type === 'object') return schemaLeaves(def.element!._zod.def, `${prefix}[]`);
  return [prefix];
}

/** The value at a documented path of a parsed config (`peers[].x`: of its first entry). */
function at(config: unknown, path: string): unknown {
  return path.split(/\.|(?=\[\])/).reduce<unknown>((v, key) => (key === '[]' ? (v as unknown[])[0] : (v as Record<string, unknown> | undefined)?.[key]), config);
}

function refused(raw: unknown, message: RegExp): void {
  assert.throws(
    () => parseConfig(raw, scratch, 'kms.json'),
    (err: unknown) => err instanceof ConfigError && message.test(err.message),
    `expected ${message}`,
  );
}

describe('the documented options are the schema', () => {
  test('every option the schema accepts is documented, and every documented option is in the schema', () => {
    const accepted = schemaLeaves((configSchema as unknown as { _zod: { def: Def } })._zod.def);
    assert.deepEqual(accepted.filter((p) => !documented.includes(p)), [], 'in the schema, not in options.ts');
    assert.deepEqual(documented.filter((p) => !accepted.includes(p)), [], 'in options.ts, not in the schema');
  });

  test('a config giving every documented option is accepted, with the values given', () => {
    const raw = complete();
    assert.deepEqual(jsonLeaves(raw).sort(), [...documented].sort(), 'the fixture covers every option');
    const config = parseConfig(raw, scratch);
    for (const path of documented) assert.deepEqual(at(config, path), at(raw, path), path);
  });

  test('an absent option takes the documented default; one without a default stays absent', () => {
    const config = parseConfig(minimal(), scratch);
    for (const path of documented) {
      const o = option(path);
      if (o.required) continue;
      assert.deepEqual(at(config, path), o.default, `${path} defaults to ${JSON.stringify(o.default)}`);
    }
  });

  test('a section given in part gets the defaults of the rest', () => {
    const config = parseConfig({ ...minimal(), lifetimes: { channel: 60 }, listen: { port: 0 } }, scratch);
    assert.equal(config.lifetimes.channel, 60);
    assert.equal(config.lifetimes.boundKey, option('lifetimes.boundKey').default);
    assert.equal(config.listen.port, 0);
    assert.equal(config.listen.host, option('listen.host').default);
  });

  test('no two parsed configs share a default array', () => {
    const one = parseConfig(minimal(), scratch);
    one.cors.origins.push('https://evil.example');
    one.peers.push(complete().peers[0]!);
    const two = parseConfig(minimal(), scratch);
    assert.deepEqual(two.cors.origins, []);
    assert.deepEqual(two.peers, []);
    assert.deepEqual(option('cors.origins').default, []);
  });

  test('the storage deadline is a positive number of seconds, at most 60', () => {
    for (const timeoutSeconds of [0, -1, 61, '2']) refused({ ...minimal(), storage: { timeoutSeconds } }, /^kms\.json: storage\.timeoutSeconds: /);
    assert.equal(parseConfig({ ...minimal(), storage: { timeoutSeconds: 0.25 } }, scratch).storage.timeoutSeconds, 0.25);
  });

  test('the checkpoint interval is a whole number of seconds, 1 to 3600', () => {
    for (const intervalSeconds of [0, 0.5, 3601, '60']) refused({ ...minimal(), audit: { checkpoints: { intervalSeconds } } }, /^kms\.json: audit\.checkpoints\.intervalSeconds: /);
    assert.equal(parseConfig({ ...minimal(), audit: { checkpoints: { intervalSeconds: 1 } } }, scratch).audit.checkpoints.intervalSeconds, 1);
  });

  test('a required option left out is named', () => {
    for (const path of documented.filter((p) => option(p).required)) {
      const raw = complete() as Record<string, unknown>;
      const keys = path.replace('[]', '.0').split('.');
      const parent = keys.slice(0, -1).reduce<Record<string, unknown>>((v, k) => v[k] as Record<string, unknown>, raw);
      delete parent[keys.at(-1)!];
      const shown = path.replace('[]', '[0]').replace(/\./g, '\\.').replace(/\[0\]/, '\\[0\\]');
      refused(raw, new RegExp(`^kms\\.json: ${shown}: `));
    }
  });
});

describe('unknown keys are refused, naming the key', () => {
  test('at the top level', () => {
    refused({ ...minimal(), federaton: { maxStaleness: 5 } }, /^kms\.json: unknown key federaton \(known keys: authority, domains, .*federation, log\)$/);
  });

  test('in a section', () => {
    refused({ ...minimal(), limits: { maxAuthorisations: 5 } }, /^kms\.json: unknown key limits\.maxAuthorisations \(limits takes maxAuthorizationsPerResource, requestsPerMinutePerPrincipal, handshakesPerMinutePerAddress\)$/);
    refused({ ...minimal(), identity: { dev: { enabled: true, keyFile: 'k', file: 'k' } } }, /^kms\.json: unknown key identity\.dev\.file \(identity\.dev takes enabled, keyFile\)$/);
    refused({ ...minimal(), tls: { cert: 'c', key: 'k', ca: 'x' } }, /unknown key tls\.ca \(tls takes cert, key\)$/);
  });

  test('in a peers[] entry', () => {
    const peer = { ...complete().peers[0]!, trustAnchor: CERT };
    refused({ ...minimal(), peers: [complete().peers[0]!, peer] }, /^kms\.json: unknown key peers\[1\]\.trustAnchor \(peers\[1\] takes authority, domains, endpoint, trustAnchors\)$/);
  });

  test('several at once are all named', () => {
    refused({ ...minimal(), log: { level: 'info', format: 'json' }, extra: 1 }, /^kms\.json: unknown keys log\.format, extra$/);
  });

  test('before a required key the misspelling makes look missing', () => {
    const { staticKey, ...rest } = minimal();
    refused({ ...rest, statickey: staticKey }, /^kms\.json: unknown key statickey /);
  });

  test('loadConfig names the file it read', () => {
    const file = join(scratch, 'typo.json');
    writeFileSync(file, JSON.stringify({ ...minimal(), sweeper: { interval: 5 } }));
    assert.throws(() => loadConfig(file), (err: unknown) => err instanceof ConfigError && err.message === `${file}: unknown key sweeper.interval (sweeper takes intervalSeconds)`);
  });

  test('values are still checked: an origin with a path would never match', () => {
    refused({ ...minimal(), cors: { origins: ['https://app.a.example/'] } }, /^kms\.json: cors\.origins\[0\]: not an origin/);
    assert.deepEqual(parseConfig({ ...minimal(), cors: { origins: ['http://localhost:5173'] } }, scratch).cors.origins, ['http://localhost:5173']);
  });
});

describe('what writes kms.json', () => {
  test('kms init writes only known keys', async () => {
    const dir = join(scratch, 'init');
    const file = await initKmsDir({ dir, authority: 'kms.a.example', domains: ['a.example'] });
    const written = JSON.parse(readFileSync(file, 'utf8')) as unknown;
    // `peers: []` is the array whose entries' members are documented as peers[].…
    const known = (p: string) => documented.includes(p) || documented.some((d) => d.startsWith(`${p}[].`));
    assert.deepEqual(jsonLeaves(written).filter((p) => !known(p)), []);
    assert.ok(jsonLeaves(written).length > 10, 'the written config was read');
    const config = loadConfig(file);
    assert.equal(config.listen.port, option('listen.port').default);
    assert.equal(config.storage.url, option('storage.url').default);
  });

  test('the test harness merges its overrides into kms.json and refuses unknown ones', async () => {
    const kms = await startDevKms({ config: { lifetimes: { channel: 600 } } });
    try {
      assert.equal(kms.config.lifetimes.channel, 600);
      assert.equal(kms.config.lifetimes.unboundKey, option('lifetimes.unboundKey').default);
    } finally {
      await kms.close();
    }
    await assert.rejects(startDevKms({ config: { lifetimes: { chanel: 600 } } }), (err: unknown) => err instanceof ConfigError && /unknown key lifetimes\.chanel/.test(err.message));
  });
});

describe("the README's configuration reference", () => {
  const readme = readFileSync(new URL('../../../../README.md', import.meta.url), 'utf8');
  const block = referenceIn(readme);

  test('lists every option with its default, and nothing else', () => {
    assert.ok(block, 'README.md has the configuration reference markers');
    const inReadme = new Map(
      block
        .split('\n')
        .map((line) => [/^\| `([^`]+)` \|/.exec(line)?.[1], line] as const)
        .filter((e): e is readonly [string, string] => e[0] !== undefined),
    );
    const generated = referenceRows();
    assert.deepEqual([...generated.keys()].filter((p) => !inReadme.has(p)), [], 'options missing from the README');
    assert.deepEqual([...inReadme.keys()].filter((p) => !generated.has(p)), [], 'README rows that are no option');
    for (const [path, row] of generated) assert.equal(inReadme.get(path), row, `README row of ${path} (run: node scripts/config-reference.mjs --write)`);
  });

  test('is exactly the generated block', () => {
    assert.equal(block, configReference(), 'run: node scripts/config-reference.mjs --write');
  });
});
