// Access-token validation against real parts: a real HTTP server plays the IdP (JWKS, OIDC
// discovery, RFC 7662 introspection), tokens are signed with jose, and the clock is injected.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT, UnsecuredJWT, decodeProtectedHeader, exportJWK, exportSPKI, generateKeyPair, importJWK } from 'jose';
import type { CryptoKey, JWK } from 'jose';
import { KmsError } from '@openkms/protocol';
import type { IdentityConfig } from '../src/identity/principal.js';
import { createTokenVerifier } from '../src/identity/tokens.js';
import { DISCOVERY_RETRY_MS, MAX_CACHE_MS, MAX_TOKEN_BYTES, NO_EXP_CACHE_MS } from '../src/limits.js';
import type { TokenVerifierOptions } from '../src/identity/tokens.js';
import { generateDevIssuerKey, loadDevIssuer } from '../src/identity/dev-issuer.js';
import { TokenCache } from '../src/identity/token-cache.js';

const ISSUER = 'https://idp.example';
const AUDIENCE = 'kms.example';
const T0 = Date.UTC(2030, 0, 1);
const CLIENT_ID = 'kms client';
const CLIENT_SECRET = 's3cret:with/odd&chars';

// ---------------------------------------------------------------------------------------------
// The fake IdP: one real HTTP server on 127.0.0.1, every request counted by path.

interface Idp {
  base: string;
  hits: Map<string, number>;
  jwks: { keys: JWK[] };
  /** Discovery documents by issuer path prefix, e.g. '/good'. */
  discovery: Map<string, Record<string, unknown>>;
  /** Introspection answers by token; unknown tokens are inactive. */
  introspection: Map<string, Record<string, unknown>>;
  /** Form bodies received by the introspection endpoint (to check what is sent). */
  introspectionRequests: URLSearchParams[];
}

let server: Server;
let idp: Idp;
let keys: { rsa: CryptoKey; rsaPss: CryptoKey; ec: CryptoKey; ed: CryptoKey; rogue: CryptoKey; rsaPublicPem: string; rsaPublicJwk: JWK };
let tmp: string;

function hits(path: string): number {
  return idp.hits.get(path) ?? 0;
}

function send(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const path = new URL(req.url ?? '/', 'http://x').pathname;
  idp.hits.set(path, hits(path) + 1);
  if (req.method === 'GET' && path.startsWith('/jwks/')) return send(res, 200, idp.jwks);
  const wellKnown = '/.well-known/openid-configuration';
  if (req.method === 'GET' && path.endsWith(wellKnown)) {
    const doc = idp.discovery.get(path.slice(0, -wellKnown.length));
    return doc ? send(res, 200, doc) : send(res, 404, { error: 'not_found' });
  }
  if (req.method === 'POST' && path === '/introspect') {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const expected =
      'Basic ' + Buffer.from(`${formValue(CLIENT_ID)}:${formValue(CLIENT_SECRET)}`).toString('base64');
    if (req.headers.authorization !== expected) return send(res, 401, { error: 'invalid_client' });
    if (req.headers['content-type'] !== 'application/x-www-form-urlencoded') return send(res, 400, { error: 'invalid_request' });
    const form = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
    idp.introspectionRequests.push(form);
    return send(res, 200, idp.introspection.get(form.get('token') ?? '') ?? { active: false });
  }
  send(res, 404, { error: 'not_found' });
}

function formValue(v: string): string {
  return new URLSearchParams({ v }).toString().slice(2);
}

before(async () => {
  const rsa = await generateKeyPair('RS256', { extractable: true });
  const ec = await generateKeyPair('ES256', { extractable: true });
  const ed = await generateKeyPair('EdDSA', { extractable: true });
  const rogue = await generateKeyPair('RS256', { extractable: true });
  const rsaPublicJwk = { ...(await exportJWK(rsa.publicKey)), kid: 'rsa-1' };
  keys = {
    rsa: rsa.privateKey,
    // The same RSA key, as WebCrypto wants it for PS256 signatures.
    rsaPss: (await importJWK(await exportJWK(rsa.privateKey), 'PS256')) as CryptoKey,
    ec: ec.privateKey,
    ed: ed.privateKey,
    rogue: rogue.privateKey,
    rsaPublicPem: await exportSPKI(rsa.publicKey),
    rsaPublicJwk,
  };
  server = createServer((req, res) => {
    handle(req, res).catch(() => send(res, 500, { error: 'server_error' }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  idp = {
    base: `http://127.0.0.1:${port}`,
    hits: new Map(),
    jwks: {
      keys: [
        // No `alg` on the RSA key: the IdP uses it for RS256 and PS256.
        rsaPublicJwk,
        { ...(await exportJWK(ec.publicKey)), kid: 'ec-1', alg: 'ES256' },
        { ...(await exportJWK(ed.publicKey)), kid: 'ed-1', alg: 'EdDSA' },
      ],
    },
    discovery: new Map(),
    introspection: new Map(),
    introspectionRequests: [],
  };
  tmp = mkdtempSync(join(tmpdir(), 'kms-identity-'));
});

after(() => {
  server.closeAllConnections();
  server.close();
  rmSync(tmp, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------
// Helpers

interface Clock {
  t: number;
}

interface SignOptions {
  key?: CryptoKey | Uint8Array;
  alg?: string;
  kid?: string | null;
  iss?: string | null;
  aud?: string | string[] | null;
  /** Seconds; null = no exp. Default: 10 minutes after T0. */
  exp?: number | null;
  nbf?: number;
}

async function sign(claims: Record<string, unknown> = {}, o: SignOptions = {}): Promise<string> {
  const alg = o.alg ?? 'RS256';
  const kid = o.kid === undefined ? defaultKid(alg) : o.kid;
  const jwt = new SignJWT({ sub: 'alice@example.com', ...claims })
    .setProtectedHeader(kid === null ? { alg } : { alg, kid })
    .setIssuedAt(T0 / 1000);
  if (o.iss !== null) jwt.setIssuer(o.iss ?? ISSUER);
  if (o.aud !== null) jwt.setAudience(o.aud ?? AUDIENCE);
  if (o.exp !== null) jwt.setExpirationTime(o.exp ?? T0 / 1000 + 600);
  if (o.nbf !== undefined) jwt.setNotBefore(o.nbf);
  return jwt.sign(o.key ?? defaultKey(alg));
}

function defaultKid(alg: string): string {
  return alg === 'ES256' ? 'ec-1' : alg === 'EdDSA' ? 'ed-1' : 'rsa-1';
}

function defaultKey(alg: string): CryptoKey {
  return alg === 'ES256' ? keys.ec : alg === 'EdDSA' ? keys.ed : alg === 'PS256' ? keys.rsaPss : keys.rsa;
}

let jwksPaths = 0;
/** A JWKS URL of its own per verifier, so request counts do not mix between tests. */
function freshJwksPath(): string {
  jwksPaths += 1;
  return `/jwks/${jwksPaths}`;
}

function verifierFor(config: IdentityConfig, clock: Clock = { t: T0 }, extra: Partial<TokenVerifierOptions> = {}) {
  return createTokenVerifier(config, { baseDir: tmp, now: () => clock.t, ...extra });
}

/** A verifier against the fake IdP's JWKS; returns the JWKS path to count its requests. */
function jwtVerifier(clock: Clock = { t: T0 }, extra: Partial<IdentityConfig> = {}) {
  const path = freshJwksPath();
  const verifier = verifierFor({ issuer: ISSUER, audience: AUDIENCE, jwksUri: idp.base + path, ...extra }, clock);
  return { verifier, path };
}

function introspectionConfig(secret = CLIENT_SECRET): IdentityConfig {
  return {
    issuer: ISSUER,
    audience: AUDIENCE,
    introspection: { endpoint: `${idp.base}/introspect`, clientId: CLIENT_ID, clientSecret: secret },
  };
}

/** The check fails with a 401 carrying `reason`, and neither the token nor secrets leak into it. */
async function refused(promise: Promise<unknown>, reason: string, token?: string): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof KmsError, `expected KmsError, got ${String(err)}`);
    assert.equal(err.status, 401);
    assert.equal(err.reason, reason);
    if (token !== undefined) assert.ok(!err.message.includes(token) && !err.reason.includes(token));
    assert.ok(!err.message.includes(CLIENT_SECRET));
    return true;
  });
}

function closedPort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

// ---------------------------------------------------------------------------------------------

describe('JWT access tokens against a remote JWKS', () => {
  test('a valid RS256 token is accepted and mapped', async () => {
    const { verifier } = jwtVerifier();
    const token = await sign({ roles: ['kms-user'] });
    const result = await verifier.verify(token);
    assert.deepEqual(result, { userId: 'alice@example.com', roles: ['kms-user'], expiresAt: T0 + 600_000 });
  });

  for (const alg of ['PS256', 'ES256', 'EdDSA']) {
    test(`${alg} is accepted`, async () => {
      const { verifier } = jwtVerifier();
      assert.equal((await verifier.verify(await sign({}, { alg }))).userId, 'alice@example.com');
    });
  }

  test('expiry: accepted within the clock tolerance, refused after it', async () => {
    const token = await sign({}, { exp: T0 / 1000 + 60 });
    await jwtVerifier({ t: T0 + 60_000 + 29_000 }).verifier.verify(token);
    await refused(jwtVerifier({ t: T0 + 60_000 + 31_000 }).verifier.verify(token), 'credential expired', token);
    const strict = jwtVerifier({ t: T0 + 61_000 }, { clockToleranceSeconds: 0 }).verifier;
    await refused(strict.verify(token), 'credential expired');
  });

  test('a token of another issuer is refused, without fetching keys', async () => {
    const { verifier, path } = jwtVerifier();
    const token = await sign({}, { iss: 'https://other-idp.example' });
    await refused(verifier.verify(token), 'credential issuer not accepted', token);
    await refused(verifier.verify(await sign({}, { iss: null })), 'credential issuer not accepted');
    assert.equal(hits(path), 0);
  });

  test('audience: a token for another service is refused; one naming the KMS among others is accepted', async () => {
    const { verifier } = jwtVerifier();
    await refused(verifier.verify(await sign({}, { aud: 'mail.example' })), 'credential audience not accepted');
    await refused(verifier.verify(await sign({}, { aud: null })), 'credential audience not accepted');
    const result = await verifier.verify(await sign({}, { aud: ['mail.example', AUDIENCE] }));
    assert.equal(result.userId, 'alice@example.com');
  });

  test('a token without exp is refused', async () => {
    const { verifier } = jwtVerifier();
    await refused(verifier.verify(await sign({}, { exp: null })), 'credential has no expiry');
  });

  test('nbf: refused while in the future beyond the tolerance, accepted within it', async () => {
    const { verifier } = jwtVerifier();
    await refused(verifier.verify(await sign({}, { nbf: T0 / 1000 + 120 })), 'credential not yet valid');
    await verifier.verify(await sign({}, { nbf: T0 / 1000 + 20 }));
  });

  test('alg none is refused', async () => {
    const { verifier, path } = jwtVerifier();
    const token = new UnsecuredJWT({ sub: 'mallory@example.com' })
      .setIssuer(ISSUER)
      .setAudience(AUDIENCE)
      .setExpirationTime(T0 / 1000 + 600)
      .encode();
    await refused(verifier.verify(token), 'credential algorithm not accepted', token);
    assert.equal(hits(path), 0);
  });

  test('HS256 "signed" with the public key is refused', async () => {
    const { verifier } = jwtVerifier();
    const secrets = [
      new TextEncoder().encode(keys.rsaPublicPem),
      new TextEncoder().encode(JSON.stringify(keys.rsaPublicJwk)),
    ];
    for (const secret of secrets) {
      const token = await sign({ sub: 'mallory@example.com' }, { alg: 'HS256', key: secret });
      await refused(verifier.verify(token), 'credential algorithm not accepted', token);
    }
  });

  test('a token signed by an unknown key is refused', async () => {
    const { verifier } = jwtVerifier();
    // Same kid as the IdP's key, different key; an unknown kid; no kid at all.
    for (const kid of ['rsa-1', 'rogue', null]) {
      await refused(verifier.verify(await sign({}, { key: keys.rogue, kid })), 'credential invalid');
    }
  });

  test('a token with a tampered payload is refused', async () => {
    const { verifier } = jwtVerifier();
    const [h, , s] = (await sign()).split('.');
    const forged = Buffer.from(JSON.stringify({ sub: 'root@example.com', iss: ISSUER, aud: AUDIENCE, exp: T0 / 1000 + 600 })).toString('base64url');
    await refused(verifier.verify(`${h}.${forged}.${s}`), 'credential invalid');
  });

  test('size: a 16 KiB token is accepted, one byte more is refused before any parsing', async () => {
    const { verifier, path } = jwtVerifier();
    const base = await sign({ pad: '' });
    const padded = await sign({ pad: 'x'.repeat(Math.floor(((MAX_TOKEN_BYTES - base.length) * 3) / 4) - 8) });
    assert.ok(padded.length <= MAX_TOKEN_BYTES && padded.length > MAX_TOKEN_BYTES - 16, `length ${padded.length}`);
    await verifier.verify(padded);
    const fetched = hits(path);
    const oversize = 'a'.repeat(MAX_TOKEN_BYTES + 1);
    await refused(verifier.verify(oversize), 'credential too large');
    const oversizeJwt = await sign({ pad: 'x'.repeat(MAX_TOKEN_BYTES) });
    await refused(verifier.verify(oversizeJwt), 'credential too large');
    assert.equal(hits(path), fetched);
  });

  test('missing or malformed bearers are refused', async () => {
    const { verifier } = jwtVerifier();
    await refused(verifier.verify(''), 'credential missing');
    await refused(verifier.verify('opaque-token-without-introspection'), 'credential invalid');
    await refused(verifier.verify('abc.def.ghi'), 'credential invalid');
    await refused(verifier.verify('a.b.c.d.e'), 'credential invalid');
  });
});

describe('claims', () => {
  test('roles: an array or a space-separated string; anything else is no roles', async () => {
    const { verifier } = jwtVerifier();
    const roles = async (value: unknown) => (await verifier.verify(await sign({ roles: value }))).roles;
    assert.deepEqual(await roles(['kms-admin', 'auditor']), ['kms-admin', 'auditor']);
    assert.deepEqual(await roles('kms-admin  auditor '), ['kms-admin', 'auditor']);
    assert.deepEqual(await roles(['kms-admin', 7, null]), ['kms-admin']);
    assert.deepEqual(await roles(42), []);
    assert.deepEqual(await roles(undefined), []);
  });

  test('rolesClaim and orgClaim are configurable', async () => {
    const { verifier } = jwtVerifier({ t: T0 }, { rolesClaim: 'groups', orgClaim: 'org' });
    const result = await verifier.verify(await sign({ groups: 'kms-admin', roles: ['ignored'], org: 'acme' }));
    assert.deepEqual(result.roles, ['kms-admin']);
    assert.equal(result.orgId, 'acme');
    assert.equal((await verifier.verify(await sign({ org: 12 }))).orgId, undefined);
  });

  test('userClaim = email: the email is the user id; a token without it is refused', async () => {
    const { verifier } = jwtVerifier({ t: T0 }, { userClaim: 'email' });
    const result = await verifier.verify(await sign({ sub: '248289761001', email: 'bob@example.com' }));
    assert.equal(result.userId, 'bob@example.com');
    await refused(verifier.verify(await sign({ sub: '248289761001' })), 'credential has no user id');
  });

  test('the user id must be a printable string of at most 256 characters', async () => {
    const { verifier } = jwtVerifier();
    assert.equal((await verifier.verify(await sign({ sub: 'u'.repeat(256) }))).userId.length, 256);
    await refused(verifier.verify(await sign({ sub: 'u'.repeat(257) })), 'credential user id invalid');
    await refused(verifier.verify(await sign({ sub: 42 })), 'credential user id invalid');
    await refused(verifier.verify(await sign({ sub: 'eve@example.com\nforged log line' })), 'credential user id invalid');
    await refused(verifier.verify(await sign({ sub: '' })), 'credential has no user id');
    // Neither could be stored or audited as it is (PROTOCOL.md §4 "Strings").
    await refused(verifier.verify(await sign({ sub: 'eve\ud800@example.com' })), 'credential user id invalid');
    await refused(verifier.verify(await sign({ sub: 'eve\u0000@example.com' })), 'credential user id invalid');
    assert.equal((await verifier.verify(await sign({ sub: 'eve😀@example.com' }))).userId, 'eve😀@example.com');
  });

  test('userClaim = email: an email with a lone surrogate is refused like any invalid user id', async () => {
    const { verifier } = jwtVerifier({ t: T0 }, { userClaim: 'email' });
    await refused(verifier.verify(await sign({ sub: '248289761001', email: 'bob\udc00@example.com' })), 'credential user id invalid');
  });
});

describe('JWKS from a file', () => {
  test('jwksFile is read relative to baseDir', async () => {
    writeFileSync(join(tmp, 'jwks.json'), JSON.stringify(idp.jwks));
    const verifier = verifierFor({ issuer: ISSUER, audience: AUDIENCE, jwksFile: 'jwks.json' });
    assert.equal((await verifier.verify(await sign({}, { alg: 'ES256' }))).userId, 'alice@example.com');
    await refused(verifier.verify(await sign({}, { key: keys.rogue })), 'credential invalid');
  });

  test('a missing or malformed jwksFile fails at build time', () => {
    assert.throws(() => verifierFor({ issuer: ISSUER, audience: AUDIENCE, jwksFile: 'nope.json' }), /jwksFile/);
    writeFileSync(join(tmp, 'bad.json'), '{"not":"a key set"}');
    assert.throws(() => verifierFor({ issuer: ISSUER, audience: AUDIENCE, jwksFile: 'bad.json' }), /JSON Web Key Set/);
  });
});

describe('OIDC discovery', () => {
  test('keys are found through the discovery document, fetched once', async () => {
    const issuer = `${idp.base}/good`;
    idp.discovery.set('/good', { issuer, jwks_uri: `${idp.base}/jwks/discovered` });
    const verifier = verifierFor({ issuer, audience: AUDIENCE, discovery: true });
    assert.equal(hits('/good/.well-known/openid-configuration'), 0, 'discovery is lazy');
    await verifier.verify(await sign({}, { iss: issuer }));
    await verifier.verify(await sign({ roles: ['other'] }, { iss: issuer }));
    assert.equal(hits('/good/.well-known/openid-configuration'), 1);
    assert.equal(hits('/jwks/discovered'), 1);
  });

  test('a document naming another issuer is refused; discovery is retried later', async () => {
    const issuer = `${idp.base}/bad`;
    idp.discovery.set('/bad', { issuer: 'https://evil.example', jwks_uri: `${idp.base}/jwks/evil` });
    const clock = { t: T0 };
    const details: string[] = [];
    const verifier = verifierFor({ issuer, audience: AUDIENCE, discovery: true }, clock, {
      onProviderError: (d) => details.push(d),
    });
    const token = await sign({}, { iss: issuer });
    await refused(verifier.verify(token), 'identity provider misconfigured', token);
    assert.equal(hits('/jwks/evil'), 0, 'keys of the other issuer are never fetched');
    assert.match(details[0] ?? '', /issuer does not match/);

    // Within the retry delay the IdP is not asked again.
    await refused(verifier.verify(token), 'identity provider misconfigured');
    assert.equal(hits('/bad/.well-known/openid-configuration'), 1);

    // Once the IdP is fixed and the delay has passed, the same verifier recovers.
    idp.discovery.set('/bad', { issuer, jwks_uri: `${idp.base}/jwks/fixed` });
    clock.t += DISCOVERY_RETRY_MS;
    assert.equal((await verifier.verify(token)).userId, 'alice@example.com');
    assert.equal(hits('/bad/.well-known/openid-configuration'), 2);
  });

  test('an unreachable IdP is a 401, not a crash', async () => {
    const issuer = `http://127.0.0.1:${await closedPort()}`;
    const verifier = verifierFor({ issuer, audience: AUDIENCE, discovery: true });
    await refused(verifier.verify(await sign({}, { iss: issuer })), 'identity provider unreachable');
  });

  test('an unreachable JWKS is a 401, not a crash', async () => {
    const verifier = verifierFor({ issuer: ISSUER, audience: AUDIENCE, jwksUri: `http://127.0.0.1:${await closedPort()}/jwks` });
    await refused(verifier.verify(await sign()), 'identity provider unreachable');
  });
});

describe('opaque tokens via RFC 7662 introspection', () => {
  test('an active token is accepted; the KMS authenticates with HTTP Basic and sends the token as a form', async () => {
    idp.introspection.set('opaque-active', {
      active: true,
      sub: 'carol@example.com',
      roles: 'kms-admin',
      aud: [AUDIENCE, 'other'],
      iss: ISSUER,
      exp: T0 / 1000 + 300,
    });
    const verifier = verifierFor(introspectionConfig());
    const result = await verifier.verify('opaque-active');
    assert.deepEqual(result, { userId: 'carol@example.com', roles: ['kms-admin'], expiresAt: T0 + 300_000 });
    assert.equal(idp.introspectionRequests.at(-1)?.get('token'), 'opaque-active');
  });

  test('an inactive or unknown token is refused', async () => {
    idp.introspection.set('opaque-inactive', { active: false, sub: 'carol@example.com' });
    const verifier = verifierFor(introspectionConfig());
    await refused(verifier.verify('opaque-inactive'), 'credential invalid', 'opaque-inactive');
    await refused(verifier.verify('opaque-unknown'), 'credential invalid');
  });

  test('a wrong client secret is an IdP configuration problem, and the token is refused', async () => {
    idp.introspection.set('opaque-secret', { active: true, sub: 'carol@example.com' });
    const details: string[] = [];
    const verifier = createTokenVerifier(introspectionConfig('wrong'), {
      baseDir: tmp,
      now: () => T0,
      onProviderError: (d) => details.push(d),
    });
    await refused(verifier.verify('opaque-secret'), 'identity provider misconfigured');
    assert.match(details[0] ?? '', /client credentials refused/);
    assert.ok(!details[0]?.includes('wrong') && !details[0]?.includes('opaque-secret'));
  });

  test('audience, issuer and expiry stated by the IdP are checked', async () => {
    const verifier = verifierFor(introspectionConfig());
    idp.introspection.set('opaque-aud', { active: true, sub: 'carol@example.com', aud: 'mail.example' });
    await refused(verifier.verify('opaque-aud'), 'credential audience not accepted');
    idp.introspection.set('opaque-iss', { active: true, sub: 'carol@example.com', iss: 'https://other.example' });
    await refused(verifier.verify('opaque-iss'), 'credential issuer not accepted');
    idp.introspection.set('opaque-exp', { active: true, sub: 'carol@example.com', exp: T0 / 1000 - 31 });
    await refused(verifier.verify('opaque-exp'), 'credential expired');
    idp.introspection.set('opaque-noaud', { active: true, sub: 'carol@example.com', exp: T0 / 1000 - 29 });
    assert.equal((await verifier.verify('opaque-noaud')).userId, 'carol@example.com');
  });

  test('with no JWKS configured, JWTs are introspected too', async () => {
    const token = await sign({}, { key: keys.rogue });
    idp.introspection.set(token, { active: true, sub: 'dave@example.com', exp: T0 / 1000 + 60 });
    const verifier = verifierFor(introspectionConfig());
    assert.equal((await verifier.verify(token)).userId, 'dave@example.com');
  });

  test('failures are not cached: a token activated after a refusal is accepted', async () => {
    const verifier = verifierFor(introspectionConfig());
    await refused(verifier.verify('opaque-later'), 'credential invalid');
    idp.introspection.set('opaque-later', { active: true, sub: 'erin@example.com', exp: T0 / 1000 + 60 });
    assert.equal((await verifier.verify('opaque-later')).userId, 'erin@example.com');
  });

  test('results are cached; without exp only for a minute, so a revocation is seen', async () => {
    const clock = { t: T0 };
    const verifier = verifierFor(introspectionConfig(), clock);
    idp.introspection.set('opaque-noexp', { active: true, sub: 'frank@example.com' });
    const before = hits('/introspect');
    const first = await verifier.verify('opaque-noexp');
    assert.equal(first.expiresAt, T0 + NO_EXP_CACHE_MS);
    await verifier.verify('opaque-noexp');
    assert.equal(hits('/introspect'), before + 1);

    idp.introspection.set('opaque-noexp', { active: false });
    clock.t += NO_EXP_CACHE_MS - 1;
    await verifier.verify('opaque-noexp');
    clock.t += 1;
    await refused(verifier.verify('opaque-noexp'), 'credential invalid');
    assert.equal(hits('/introspect'), before + 2);
  });

  test('a long-lived introspected token is re-checked after the cache bound', async () => {
    const clock = { t: T0 };
    const verifier = verifierFor(introspectionConfig(), clock);
    idp.introspection.set('opaque-long', { active: true, sub: 'gina@example.com', exp: T0 / 1000 + 86_400 });
    const before = hits('/introspect');
    await verifier.verify('opaque-long');
    clock.t += MAX_CACHE_MS - 1;
    await verifier.verify('opaque-long');
    assert.equal(hits('/introspect'), before + 1);
    clock.t += 1;
    await verifier.verify('opaque-long');
    assert.equal(hits('/introspect'), before + 2);
  });

  test('concurrent checks of one token share a single introspection', async () => {
    const verifier = verifierFor(introspectionConfig());
    idp.introspection.set('opaque-burst', { active: true, sub: 'hank@example.com', exp: T0 / 1000 + 60 });
    const before = hits('/introspect');
    const results = await Promise.all(Array.from({ length: 5 }, () => verifier.verify('opaque-burst')));
    assert.ok(results.every((r) => r.userId === 'hank@example.com'));
    assert.equal(hits('/introspect'), before + 1);
  });

  test('an unreachable introspection endpoint is a 401', async () => {
    const config = introspectionConfig();
    config.introspection = { ...config.introspection!, endpoint: `http://127.0.0.1:${await closedPort()}/introspect` };
    await refused(verifierFor(config).verify('opaque-active'), 'identity provider unreachable');
  });
});

describe('the verification cache', () => {
  test('a second check of the same token does not reach the IdP; after expiry it is refused', async () => {
    const clock = { t: T0 };
    const { verifier, path } = jwtVerifier(clock);
    const token = await sign({ roles: ['kms-user'] }, { exp: T0 / 1000 + 120 });
    await verifier.verify(token);
    assert.equal(hits(path), 1);
    await verifier.verify(token);
    assert.equal(hits(path), 1);

    clock.t = T0 + 120_000 + 30_000;
    await refused(verifier.verify(token), 'credential expired', token);
  });

  test('callers get copies: mutating a result does not change the cached one', async () => {
    const { verifier } = jwtVerifier();
    const token = await sign({ roles: ['kms-user'] });
    (await verifier.verify(token)).roles.push('kms-admin');
    assert.deepEqual((await verifier.verify(token)).roles, ['kms-user']);
  });

  test('TokenCache: bounded, oldest evicted first, entries expire, keys are digests', () => {
    const cache = new TokenCache<string>(3);
    for (const k of ['a', 'b', 'c', 'd']) cache.set(k, k.toUpperCase(), T0 + 1000, T0);
    assert.equal(cache.size, 3);
    assert.equal(cache.get('a', T0), undefined);
    assert.equal(cache.get('d', T0), 'D');
    assert.equal(cache.get('d', T0 + 1000), undefined);
    cache.set('e', 'E', T0, T0);
    assert.equal(cache.get('e', T0), undefined, 'already-expired results are not stored');
    const key = TokenCache.keyOf('bearer-value');
    assert.match(key, /^[0-9a-f]{64}$/);
  });
});

describe('configuration', () => {
  test('an audience is required whenever an IdP is configured', () => {
    assert.throws(() => verifierFor({ issuer: ISSUER, jwksUri: `${idp.base}/jwks/x` }), /audience is required/);
    assert.throws(() => verifierFor({ ...introspectionConfig(), audience: undefined }), /audience is required/);
  });

  test('other mistakes fail at build time with a clear message', () => {
    assert.throws(() => verifierFor({ audience: AUDIENCE, jwksUri: `${idp.base}/jwks/x` }), /issuer is required/);
    assert.throws(
      () => verifierFor({ issuer: ISSUER, audience: AUDIENCE, jwksUri: `${idp.base}/jwks/x`, discovery: true }),
      /only one of/,
    );
    assert.throws(() => verifierFor({ issuer: ISSUER, audience: AUDIENCE, jwksUri: 'http://idp.example/jwks' }), /https/);
    assert.throws(() => verifierFor({ issuer: ISSUER, audience: AUDIENCE }), /no jwksFile, jwksUri, discovery or introspection/);
    assert.throws(() => verifierFor({}), /no way to verify/);
    assert.throws(() => verifierFor({ issuer: ISSUER, audience: AUDIENCE, jwksUri: `${idp.base}/jwks/x`, clockToleranceSeconds: -1 }), /clockTolerance/);
  });
});

describe('development issuer', () => {
  const DEV_ISSUER = 'https://kms.example/dev-issuer';

  test('round trip: a generated key issues tokens the verifier accepts', async () => {
    const keyFile = await generateDevIssuerKey();
    const parsed = JSON.parse(keyFile) as JWK;
    assert.equal(parsed.kty, 'RSA');
    assert.equal(parsed.alg, 'PS256');
    assert.ok(parsed.d, 'the key file holds the private key');
    assert.equal(Buffer.from(parsed.n ?? '', 'base64url').length, 256, 'RSA 2048');

    const dev = loadDevIssuer(keyFile, DEV_ISSUER, AUDIENCE);
    assert.equal(dev.publicJwk.d, undefined, 'the public JWK carries no private member');
    assert.equal(dev.publicJwk.kid, parsed.kid);

    const token = await dev.issue('alice@example.com', { roles: ['kms-admin'], now: T0 });
    const header = decodeProtectedHeader(token);
    assert.equal(header.alg, 'PS256');
    assert.equal(header.kid, parsed.kid);

    const verifier = verifierFor({}, { t: T0 }, { devPublicJwk: dev.publicJwk, devIssuer: DEV_ISSUER, devAudience: AUDIENCE });
    const result = await verifier.verify(token);
    assert.deepEqual(result, { userId: 'alice@example.com', roles: ['kms-admin'], expiresAt: T0 + 3_600_000 });
  });

  test('dev tokens and IdP tokens are told apart by issuer', async () => {
    const dev = loadDevIssuer(await generateDevIssuerKey(), DEV_ISSUER, AUDIENCE);
    const verifier = verifierFor(
      { issuer: ISSUER, audience: AUDIENCE, jwksUri: idp.base + freshJwksPath(), userClaim: 'email' },
      { t: T0 },
      { devPublicJwk: dev.publicJwk, devIssuer: DEV_ISSUER, devAudience: AUDIENCE },
    );
    assert.equal((await verifier.verify(await dev.issue('dev-user@example.com', { now: T0 }))).userId, 'dev-user@example.com');
    assert.equal((await verifier.verify(await sign({ email: 'idp-user@example.com' }))).userId, 'idp-user@example.com');
    // A token claiming the dev issuer but signed by the IdP's key is not a dev token.
    await refused(verifier.verify(await sign({}, { iss: DEV_ISSUER, alg: 'PS256' })), 'credential invalid');
  });

  test('dev tokens expire, and are bound to their audience and key', async () => {
    const keyFile = await generateDevIssuerKey();
    const dev = loadDevIssuer(keyFile, DEV_ISSUER, AUDIENCE);
    const clock = { t: T0 };
    const options = { devPublicJwk: dev.publicJwk, devIssuer: DEV_ISSUER, devAudience: AUDIENCE };
    const verifier = verifierFor({}, clock, options);

    const short = await dev.issue('alice@example.com', { ttlSeconds: 60, now: T0 });
    await verifier.verify(short);
    clock.t = T0 + 60_000 + 31_000;
    await refused(verifier.verify(short), 'credential expired');
    clock.t = T0;

    const otherAudience = loadDevIssuer(keyFile, DEV_ISSUER, 'mail.example');
    await refused(verifier.verify(await otherAudience.issue('alice@example.com', { now: T0 })), 'credential audience not accepted');

    const otherKey = loadDevIssuer(await generateDevIssuerKey(), DEV_ISSUER, AUDIENCE);
    await refused(verifier.verify(await otherKey.issue('alice@example.com', { now: T0 })), 'credential invalid');
  });

  test('key files: PKCS#8 PEM is accepted; garbage and weak keys are refused without echoing them', async () => {
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const pem = privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
    const dev = loadDevIssuer(pem, DEV_ISSUER, AUDIENCE);
    assert.equal(dev.publicJwk.alg, 'PS256');
    const verifier = verifierFor({}, { t: T0 }, { devPublicJwk: dev.publicJwk, devIssuer: DEV_ISSUER, devAudience: AUDIENCE });
    await verifier.verify(await dev.issue('alice@example.com', { now: T0 }));

    const garbage = 'not-a-key-SENSITIVE';
    assert.throws(
      () => loadDevIssuer(garbage, DEV_ISSUER, AUDIENCE),
      (err: Error) => /key file/.test(err.message) && !err.message.includes('SENSITIVE'),
    );
    const weak = generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
    assert.throws(() => loadDevIssuer(weak, DEV_ISSUER, AUDIENCE), /2048/);
    await assert.rejects(dev.issue('alice@example.com', { ttlSeconds: 0 }), /ttlSeconds/);
    await assert.rejects(dev.issue(''), /user/);
  });

  test('the verifier refuses a dev key without issuer/audience, or with another algorithm', async () => {
    const dev = loadDevIssuer(await generateDevIssuerKey(), DEV_ISSUER, AUDIENCE);
    assert.throws(() => verifierFor({}, { t: T0 }, { devPublicJwk: dev.publicJwk }), /devIssuer and devAudience/);
    assert.throws(
      () => verifierFor({}, { t: T0 }, { devPublicJwk: { ...dev.publicJwk, alg: 'HS256' }, devIssuer: DEV_ISSUER, devAudience: AUDIENCE }),
      /PS256 or RS256/,
    );
  });
});
