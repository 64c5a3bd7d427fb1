/**
 * What the unit tests of the core's stages (test/core/*.test.ts) share: a static key pair like a
 * KMS's, channels and principals as the stages receive them, and a request with only the basic
 * members. Everything here is plain data or a real key: the stages run their own code on it.
 */
import { generateKeyPairSync, randomBytes, randomUUID, type KeyObject } from 'node:crypto';
import { KmsError, type ErrorCode, type KmsRequest } from '@openkms/protocol';
import assert from 'node:assert/strict';
import type { Channel } from '../../src/channels.js';
import type { PeerPrincipal, UserPrincipal } from '../../src/identity/principal.js';
import { Secret } from '../../src/secret.js';

export const AUTHORITY = 'kms.a.example';
export const PEER_AUTHORITY = 'kms.b.example';
/** A second peer: what a peer may never make this KMS ask (federation is one hop). */
export const THIRD_AUTHORITY = 'kms.c.example';

/** An RSA static key pair with its kid, as the assembly module hands it to the stages. */
export function staticKeyPair(kid = `kms://${AUTHORITY}`): { privateKey: KeyObject; publicKey: KeyObject; kid: string } {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { privateKey, publicKey, kid };
}

/** A live channel of this KMS owned by `owner` (a user id, or `kms://<peer>` for a peer KMS). */
export function channelOf(owner: string, id = randomUUID()): Channel {
  return {
    id,
    uri: `kms://${AUTHORITY}/ecdhe/${id}`,
    key: new Secret(randomBytes(32)),
    owner,
    clientId: 'client-1',
    createdAt: 0,
    expiresAt: Number.MAX_SAFE_INTEGER,
  };
}

export function userOf(id: string): UserPrincipal {
  const domain = id.slice(id.lastIndexOf('@') + 1);
  return { kind: 'user', id, domain, roles: [], orgId: domain, expiresAt: Number.MAX_SAFE_INTEGER };
}

export const peerPrincipal: PeerPrincipal = { kind: 'peer', authority: PEER_AUTHORITY, domains: ['b.example'], expiresAt: Number.MAX_SAFE_INTEGER };

/** A request with the basic members (draft 4.6.1) and whatever `more` adds. */
export function requestOf(method: KmsRequest['method'], uri: string, more: Record<string, unknown> = {}): KmsRequest {
  return { requestId: randomUUID(), client: { clientId: 'client-1', credential: { bearer: 'b' } }, method, uri, ...more };
}

/** Asserts that `work` fails with a KmsError of `code` answered with `status`. */
export async function rejectsWith(work: Promise<unknown> | (() => unknown), code: ErrorCode, status: number, reason?: RegExp): Promise<KmsError> {
  let caught: unknown;
  try {
    await (typeof work === 'function' ? work() : work);
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof KmsError, `expected KmsError ${code}, got ${caught === undefined ? 'success' : String(caught)}`);
  assert.equal(caught.code, code, `expected ${code}, got ${caught.code} (${caught.reason})`);
  assert.equal(caught.status, status, code);
  if (reason) assert.match(caught.reason, reason);
  return caught;
}
