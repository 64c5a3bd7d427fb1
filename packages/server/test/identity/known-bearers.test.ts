/**
 * A bearer seen before (src/identity/authenticator.ts, anonymous.ts, tokens.ts, jwks.ts): taken by
 * its digest, neither decoded nor verified again, yet expired exactly when a fresh check would
 * refuse it, revoked at once when its authorization goes, and dropped when the IdP's key set
 * changes. Real keys and real JWTs; the clock is injected, storage is two maps.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { describe, test } from 'node:test';
import { KmsError } from '@openkms/protocol';
import { AnonymousBearers } from '../../src/identity/anonymous.js';
import { Authenticator } from '../../src/identity/authenticator.js';
import { generateDevIssuerKey, loadDevIssuer } from '../../src/identity/dev-issuer.js';
import { guardRemote } from '../../src/identity/jwks.js';
import { TokenCache } from '../../src/identity/token-cache.js';
import { createTokenVerifier } from '../../src/identity/tokens.js';
import type { AuthorizationRow, ResourceRow } from '../../src/model.js';
import type { Store } from '../../src/store/store.js';

const AUTHORITY = 'kms.a.example';
const DEV_ISSUER = `kms://${AUTHORITY}/dev`;
const AUDIENCE = `kms://${AUTHORITY}`;
const T0 = Date.UTC(2031, 5, 1, 12, 0, 0);

/** The two reads an anonymous bearer needs, counted; deleting from the maps revokes. */
function storeOf() {
  const authorizations = new Map<string, AuthorizationRow>();
  const resources = new Map<string, ResourceRow>();
  const reads = { authorizations: 0, resources: 0 };
  const store = {
    async getAuthorization(id: string) {
      reads.authorizations++;
      return authorizations.get(id);
    },
    async getResource(id: string) {
      reads.resources++;
      return resources.get(id);
    },
  } as unknown as Store;
  return { store, authorizations, resources, reads };
}

async function setup() {
  const clock = { t: T0 };
  const now = () => clock.t;
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const anonymous = new AnonymousBearers(AUTHORITY, privateKey, publicKey, now);
  const dev = loadDevIssuer(await generateDevIssuerKey(), DEV_ISSUER, AUDIENCE);
  const verifier = createTokenVerifier({ audience: AUDIENCE }, { baseDir: '.', now, devPublicJwk: dev.publicJwk, devIssuer: DEV_ISSUER, devAudience: AUDIENCE });
  // Counts the full checks each side makes: a known bearer makes none.
  const checks = { tokens: 0, anonymous: 0 };
  const verify = verifier.verify.bind(verifier);
  verifier.verify = (bearer) => (checks.tokens++, verify(bearer));
  const anonymousVerify = anonymous.verify.bind(anonymous);
  anonymous.verify = (bearer, key) => (checks.anonymous++, anonymousVerify(bearer, key));
  const storage = storeOf();
  const authenticator = new Authenticator(['a.example'], verifier, anonymous, storage.store, now);
  return { clock, anonymous, dev, verifier, authenticator, checks, ...storage };
}

async function refused(work: Promise<unknown>, reason: RegExp): Promise<void> {
  await assert.rejects(work, (err: unknown) => err instanceof KmsError && err.status === 401 && reason.test(err.reason));
}

describe('a bearer of the IdP (here the development issuer) seen before', () => {
  test('is verified once, then taken by its digest until exp plus the clock tolerance, to the millisecond', async () => {
    const { clock, dev, authenticator, checks } = await setup();
    const bearer = await dev.issue('alice@a.example', { now: T0, ttlSeconds: 60, roles: ['r'] });
    const first = await authenticator.authenticate({ bearer });
    assert.equal(checks.tokens, 1);
    clock.t = T0 + 60_000 + 30_000 - 1; // exp + the default 30 s tolerance, less 1 ms
    assert.deepEqual(await authenticator.authenticate({ bearer }), first);
    assert.equal(checks.tokens, 1, 'not checked again while it may be reused');
    clock.t = T0 + 60_000 + 30_000;
    await refused(authenticator.authenticate({ bearer }), /expired/);
    assert.equal(checks.tokens, 2, 'checked again once past its reuse, and refused as a fresh check refuses it');
  });

  test('what a caller does to its principal does not change what the next request gets', async () => {
    const { dev, authenticator } = await setup();
    const bearer = await dev.issue('alice@a.example', { now: T0, roles: ['kms-user'] });
    const principal = await authenticator.authenticate({ bearer });
    (principal as unknown as { roles: string[] }).roles.push('kms-admin');
    assert.deepEqual(await authenticator.authenticate({ bearer }), { ...principal, roles: ['kms-user'] });
  });

  test('another token of the same user is a bearer of its own: checked once itself', async () => {
    const { dev, authenticator, checks } = await setup();
    await authenticator.authenticate({ bearer: await dev.issue('alice@a.example', { now: T0 }) });
    await authenticator.authenticate({ bearer: await dev.issue('alice@a.example', { now: T0 }) });
    assert.equal(checks.tokens, 2);
  });
});

describe('an anonymous bearer seen before', () => {
  async function anonymousBearer(ctx: Awaited<ReturnType<typeof setup>>, expiresAt: number) {
    const resourceId = randomUUID();
    const authorizationId = randomUUID();
    ctx.resources.set(resourceId, { id: resourceId, createdAt: T0, expiresAt: null } as ResourceRow);
    ctx.authorizations.set(authorizationId, { id: authorizationId, resourceId, authId: null, createdAt: T0, roleUri: null } as AuthorizationRow);
    const bearer = await ctx.anonymous.issue({ authorizationId, resourceId, expiresAt });
    return { bearer, resourceId, authorizationId };
  }

  test('is verified once; its authorization and resource are still read on every use', async () => {
    const ctx = await setup();
    const { bearer, authorizationId } = await anonymousBearer(ctx, T0 + 3_600_000);
    const principal = await ctx.authenticator.authenticate({ bearer });
    assert.equal(principal.kind, 'anonymous');
    await ctx.authenticator.authenticate({ bearer });
    await ctx.authenticator.authenticate({ bearer });
    assert.equal(ctx.checks.anonymous, 1, 'one signature check');
    assert.equal(ctx.checks.tokens, 0, 'never sent to the IdP');
    assert.deepEqual(ctx.reads, { authorizations: 3, resources: 3 });
    // Deleting the authorization revokes it on the next request, cached or not.
    ctx.authorizations.delete(authorizationId);
    await refused(ctx.authenticator.authenticate({ bearer }), /revoked/);
  });

  test('expires the millisecond jose would first refuse it: exp is whole seconds, rounded up', async () => {
    const ctx = await setup();
    const { bearer } = await anonymousBearer(ctx, T0 + 90_500); // exp = T0/1000 + 91
    await ctx.authenticator.authenticate({ bearer });
    ctx.clock.t = T0 + 91_000 - 1;
    await ctx.authenticator.authenticate({ bearer });
    assert.equal(ctx.checks.anonymous, 1);
    assert.notEqual(ctx.anonymous.cached(TokenCache.keyOf(bearer)), undefined);
    ctx.clock.t = T0 + 91_000;
    assert.equal(ctx.anonymous.cached(TokenCache.keyOf(bearer)), undefined);
    await refused(ctx.authenticator.authenticate({ bearer }), /invalid or expired/);
    assert.equal(ctx.checks.anonymous, 2, 'a fresh check, which refuses it too');
  });

  test('a bearer whose signature fails is not remembered, and is refused every time', async () => {
    const ctx = await setup();
    const { bearer } = await anonymousBearer(ctx, T0 + 3_600_000);
    const [h, p, s] = bearer.split('.') as [string, string, string];
    const forged = `${h}.${p}.${s.slice(0, -4)}${s.endsWith('AAAA') ? 'BBBB' : 'AAAA'}`;
    await refused(ctx.authenticator.authenticate({ bearer: forged }), /invalid or expired/);
    await refused(ctx.authenticator.authenticate({ bearer: forged }), /invalid or expired/);
    assert.equal(ctx.checks.anonymous, 2);
  });
});

describe("the IdP's key set changing", () => {
  /** A remote key set as jose makes one: a key lookup, and the set it last read. */
  function remote(initial: object) {
    let set: object | undefined = initial;
    const lookups: unknown[] = [];
    const source = Object.assign(async (header: unknown) => {
      lookups.push(header);
      return new Uint8Array(1);
    }, { jwks: () => (set === undefined ? undefined : structuredClone(set)) });
    return { source, lookups, replace: (next: object | undefined) => (set = next) };
  }

  test('is noticed after the lookup that read it: told once per change, not for the first set or an unchanged one', async () => {
    const r = remote({ keys: [{ kty: 'RSA', kid: 'one', n: 'AQAB', e: 'AQAB' }] });
    let told = 0;
    const guarded = guardRemote(r.source as never, () => told++);
    await guarded({ alg: 'RS256' }, undefined as never);
    await guarded({ alg: 'RS256' }, undefined as never);
    assert.equal(told, 0);
    r.replace({ keys: [{ kty: 'RSA', kid: 'two', n: 'AQAB', e: 'AQAB' }] });
    await guarded({ alg: 'RS256' }, undefined as never);
    assert.equal(told, 1);
    await guarded({ alg: 'RS256' }, undefined as never);
    assert.equal(told, 1);
    r.replace(undefined); // not read yet: nothing to compare
    await guarded({ alg: 'RS256' }, undefined as never);
    assert.equal(told, 1);
    assert.equal(r.lookups.length, 5);
  });
});
