/** Draft 4.7.5–4.7.7: create keys, bind a key, retrieve one key or a resource's keys. */
import { randomBytes } from 'node:crypto';
import {
  KmsError,
  Limits,
  Status,
  bindKeySchema,
  createKeysSchema,
  parseDate,
  retrieveKeysSchema,
  validate,
} from '@openkms/protocol';
import { timeOrderedIds } from '../ids.js';
import { ownsUnboundKey } from '../policy.js';
import { Secret } from '../secret.js';
import type { KeyRow } from '../model.js';
import { MAX_KEYS_PER_ANSWER } from '../limits.js';
import type { Deps, Handler } from './context.js';
import { cachedFirst, liveResource, localId, requireAuthorized, userPrincipal } from './guards.js';
import { keyRep } from './representations.js';

/** An object key: 256 bits (PROTOCOL.md: an AES-256 `oct` JWK). */
const KEY_BYTES = 32;

/** The additional authenticated data a key is sealed under: a sealed key cannot pass for another. */
export const keyAad = (id: string) => `key:${id}`;

/** A key row as its representation; its material unsealed once and kept a while (Keyring.unsealKept). */
async function reveal(deps: Deps, row: KeyRow) {
  return keyRep(deps.authority, row, await deps.keyring.unsealKept(row.cmkId, row.sealed, keyAad(row.id)));
}

export const createKeys: Handler = async (ctx, deps) => {
  const { count } = validate(createKeysSchema, ctx.request);
  if (count > Limits.maxKeyCount) throw KmsError.tooLarge(`count: at most ${Limits.maxKeyCount} keys per request`);
  const user = userPrincipal(ctx.principal);
  const now = deps.now();
  const cmk = deps.keyring.activeCmk(user.orgId);
  const ids = timeOrderedIds(count, now);
  // One draw for all the keys' material; each key's Secret is its own 32 bytes of it.
  const drawn = randomBytes(KEY_BYTES * count);
  const materials: Secret[] = [];
  const rows: KeyRow[] = [];
  for (let i = 0; i < count; i++) {
    const id = ids[i]!;
    const material = new Secret(drawn.subarray(i * KEY_BYTES, (i + 1) * KEY_BYTES));
    materials.push(material);
    rows.push({
      id,
      userId: user.id,
      clientId: ctx.request.client.clientId,
      createdAt: now,
      expiresAt: now + deps.config.lifetimes.unboundKey * 1000,
      resourceId: null,
      bindDate: null,
      bindSeq: null,
      cmkId: cmk.id,
      sealed: deps.keyring.seal(cmk.id, material.reveal(), keyAad(id)),
    });
  }
  await deps.store.insertKeys(rows);
  return { status: Status.CREATED, keys: rows.map((row, i) => keyRep(deps.authority, row, materials[i]!)) };
};

export const bindKey: Handler = async (ctx, deps) => {
  const { resourceUri } = validate(bindKeySchema, ctx.request);
  const user = userPrincipal(ctx.principal);
  const resourceId = localId(deps, resourceUri, 'resources', 'resourceUri');
  const key = await deps.store.getKey(ctx.id);
  if (!key) throw KmsError.notFound('no such key');
  if (key.userId !== user.id) throw KmsError.forbidden('only the key creator may bind it');
  await liveResource(deps, resourceId, 'resourceUri');
  await requireAuthorized(deps, user, resourceId);
  const now = deps.now();
  const outcome = await deps.store.bindKey({
    id: key.id,
    resourceId,
    userId: user.id,
    clientId: ctx.request.client.clientId,
    bindDate: now,
    expiresAt: now + deps.config.lifetimes.boundKey * 1000,
    now,
  });
  bindFailure(outcome, 'key');
  await deps.changes.changed([resourceId]);
  return { status: Status.OK, key: await reveal(deps, (await deps.store.getKey(key.id))!) };
};

/** Maps a failed bind to the profile's status; `field` names the key in the reason. */
export function bindFailure(outcome: string, field: string): void {
  switch (outcome) {
    case 'bound':
      return;
    case 'missing':
      throw KmsError.notFound(`${field}: no such key`);
    case 'not-owner':
      throw KmsError.forbidden(`${field}: only the key creator may bind it, from the client that created it`);
    case 'already-bound':
      throw new KmsError('KEY_ALREADY_BOUND', `${field}: key already bound`);
    case 'expired':
      throw new KmsError('KEY_EXPIRED', `${field}: unbound key expired`);
    default:
      throw new Error(`unexpected bind outcome ${outcome}`);
  }
}

export const retrieveKey: Handler = async (ctx, deps) => {
  const key = await cachedFirst(deps, async (rows) => {
    const key = await rows.getKey(ctx.id);
    if (!key) throw KmsError.notFound('no such key');
    if (key.resourceId === null) {
      // An expired unbound key stays readable by its creator until the sweeper destroys it.
      if (key.expiresAt + deps.config.lifetimes.unboundGrace * 1000 <= deps.now()) throw KmsError.notFound('no such key');
      if (!ownsUnboundKey(ctx.principal, key, ctx.request.client.clientId)) {
        throw KmsError.forbidden('an unbound key is readable only by its creator, from the client that created it');
      }
    } else {
      await liveResource(deps, key.resourceId, 'resource', rows);
      await requireAuthorized(deps, ctx.principal, key.resourceId, rows);
    }
    return key;
  });
  return { status: Status.OK, key: await reveal(deps, key) };
};

export const retrieveResourceKeys: Handler = async (ctx, deps) => {
  const filter = validate(retrieveKeysSchema, ctx.request);
  await cachedFirst(deps, async (rows) => {
    await liveResource(deps, ctx.id, 'resource', rows);
    await requireAuthorized(deps, ctx.principal, ctx.id, rows);
  });
  const rows = await deps.store.listResourceKeys(ctx.id, {
    boundAfter: filter.boundAfter === undefined ? undefined : parseDate(filter.boundAfter),
    boundBefore: filter.boundBefore === undefined ? undefined : parseDate(filter.boundBefore),
    // Every answer is bounded; truncation keeps the newest, as a client's own count would.
    limit: Math.min(filter.count ?? MAX_KEYS_PER_ANSWER, MAX_KEYS_PER_ANSWER),
  });
  return { status: Status.OK, keys: await Promise.all(rows.map((row) => reveal(deps, row))) };
};
