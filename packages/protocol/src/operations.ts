/**
 * The operation table: every operation of draft §4.7, the Administrative API and the federation
 * profile (PROTOCOL.md §5–6), in the draft's order, in one place. The server routes by it, gates
 * access by it, chooses the federation dispatch mode by it and labels metrics with its names; the
 * README's operation table is generated from it (a test compares them). A name outside this table
 * is a compile error, never a silent 403.
 */
import type { Method } from './messages.js';
import { isUuid } from './uri.js';

/**
 * Who may call an operation:
 * - `user`: a user of this KMS's domains, with a bearer token from the identity provider;
 * - `anonymous`: the holder of an anonymous authorization's bearer (PROTOCOL.md §5);
 * - `peer`: a peer KMS speaking for itself over its mutually authenticated channel (§6);
 * - `peerUser`: a peer KMS speaking for one of its users (`federated` + `onBehalfOf`, §6);
 * - `agent`: a user with the `orgAgent` role reading for a user of its organisation
 *   (`credential.onBehalfOf`, §4 "Compliance"): the request is evaluated as that user, reads only.
 */
export type Caller = 'user' | 'anonymous' | 'peer' | 'peerUser' | 'agent';

/**
 * How an operation crosses KMSs (PROTOCOL.md §6):
 * - `local`: only on this KMS's own objects; another authority's object is a 404;
 * - `read`: a federated read — asked of a peer's object, this KMS serves its user from a copy
 *   fetched from the peer; asked by a peer for its user, this KMS releases the KRO to it;
 * - `forward`: federated authorization management — asked of a peer's object, this KMS forwards
 *   the request on behalf of its user; asked by a peer, this KMS applies its own policy.
 */
export type FederationMode = 'local' | 'read' | 'forward';

/** Where the object an operation acts on is named: the request URI or the `resourceUri` member. */
export type Subject = 'uri' | 'resourceUri';

/**
 * What a second copy of a request (same channel, same requestId: a client retrying after its
 * connection broke before the answer came) gets:
 * - `repeat`: it runs again, which is harmless (reads, ping, a handshake: a second channel,
 *   invalidations: the copies are stale either way);
 * - `firstAnswer`: the KMS remembers the first answer (for its retry window) and gives it back,
 *   so a retried create makes no second key or resource and a retried bind or delete is no 409 or
 *   404; the request runs once;
 * - `never`: clients do not retry it (deleting a channel: the retry arrives on a dead channel).
 */
export type RetryMode = 'repeat' | 'firstAnswer' | 'never';

export interface OperationSpec {
  readonly name: string;
  readonly method: Method;
  /** Path pattern; `{id}` is one UUID. */
  readonly path: string;
  /** Where the draft (or this profile) defines it. */
  readonly section: string;
  /** Which key the request arrives under: the static key (handshake) or a channel key. */
  readonly key: 'static' | 'channel';
  readonly callers: readonly Caller[];
  /** Roles of which a user needs one (none: any user); the operation checks the organisation. */
  readonly roles: readonly string[];
  readonly federation: FederationMode;
  readonly subject: Subject;
  /** What a retry of it gets (RetryMode). */
  readonly retry: RetryMode;
  /** What it does, in a few words (the README's table). */
  readonly summary: string;
}

const op = <const N extends string, const F extends FederationMode = 'local'>(
  name: N,
  method: Method,
  path: string,
  section: string,
  callers: readonly Caller[],
  summary: string,
  retry: RetryMode,
  more: Partial<Pick<OperationSpec, 'key' | 'roles' | 'subject'>> & { federation?: F } = {},
) =>
  ({
    name,
    method,
    path,
    section,
    callers,
    summary,
    key: more.key ?? 'channel',
    roles: more.roles ?? [],
    federation: (more.federation ?? 'local') as F,
    subject: more.subject ?? 'uri',
    retry,
  }) satisfies OperationSpec;

const USER = ['user'] as const;
const READERS = ['user', 'anonymous', 'peerUser', 'agent'] as const;
const AUTHORIZERS = ['user', 'peerUser'] as const;
const ADMIN = ['kmsAdmin', 'orgAgent'] as const;

export const operations = [
  op('createEphemeralKey', 'create', '/ecdhe', '4.7.1', ['user', 'anonymous', 'peer'], 'the ECDHE handshake: a channel key', 'repeat', { key: 'static' }),
  op('deleteEphemeralKey', 'delete', '/ecdhe/{id}', '4.7.2', ['user', 'anonymous', 'peer'], 'close one of your own channels', 'never'),
  op('createResource', 'create', '/resources', '4.7.3', USER, 'a KRO, with `authIds`/`userIds`, `keyUris`, `anonymous`, `ttl`', 'firstAnswer'),
  op('retrieveResource', 'retrieve', '/resources/{id}', '4.7.4', ['user', 'agent'], 'a KRO', 'repeat'),
  op('createKeys', 'create', '/keys', '4.7.5', USER, '`count` (1–100) new unbound keys', 'firstAnswer'),
  op('bindKey', 'update', '/keys/{id}', '4.7.6', USER, 'bind a key to a KRO (`resourceUri`)', 'firstAnswer'),
  op('retrieveKey', 'retrieve', '/keys/{id}', '4.7.7', READERS, 'one key', 'repeat', { federation: 'read' }),
  op('retrieveResourceKeys', 'retrieve', '/resources/{id}/keys', '4.7.7', READERS, 'a KRO’s keys (`boundAfter`, `boundBefore`, `count`)', 'repeat', { federation: 'read' }),
  op('createAuthorizations', 'create', '/authorizations', '4.7.8', AUTHORIZERS, 'authorize `authIds` (or `anonymous` bearers) on `resourceUri`', 'firstAnswer', { federation: 'forward', subject: 'resourceUri' }),
  op('retrieveAuthorizations', 'retrieve', '/resources/{id}/authorizations', '4.7.9–10', ['user', 'peerUser', 'agent'], 'a KRO’s authorizations (`?authId=`)', 'repeat', { federation: 'forward' }),
  op('deleteAuthorization', 'delete', '/authorizations/{id}', '4.7.11', AUTHORIZERS, 'remove one authorization', 'firstAnswer', { federation: 'forward' }),
  op('deleteAuthorizationByAuthId', 'delete', '/resources/{id}/authorizations', '4.7.11', AUTHORIZERS, 'remove the authorization of `?authId=`', 'firstAnswer', { federation: 'forward' }),
  op('bulkDeleteAuthorizations', 'delete', '/authorizations', '4.7.11', AUTHORIZERS, 'remove `authIds` from `resourceUri`', 'firstAnswer', { federation: 'forward', subject: 'resourceUri' }),
  op('ping', 'update', '/ping', '4.7.12', ['user', 'anonymous', 'peer'], 'check the channel', 'repeat'),
  op('createCmk', 'create', '/cmk', 'Administrative API', USER, 'a new active CMK (`assignedOrgId`); the previous one turns inactive', 'firstAnswer', { roles: ADMIN }),
  op('updateCmk', 'update', '/cmk/{id}', 'Administrative API', USER, 'a CMK’s `state`', 'firstAnswer', { roles: ADMIN }),
  op('listCmks', 'retrieve', '/cmk', 'Administrative API', USER, 'the CMKs you administer (`assignedOrgId`)', 'repeat', { roles: ADMIN }),
  op('retrieveCmk', 'retrieve', '/cmk/{id}', 'Administrative API', USER, 'one CMK you administer', 'repeat', { roles: ADMIN }),
  op('receiveInvalidations', 'update', '/federation/invalidations', 'PROTOCOL.md §6', ['peer'], 'a peer’s KROs changed: its copies here are stale', 'repeat'),
] as const;

export type OperationName = (typeof operations)[number]['name'];
export type Operation = (typeof operations)[number];

const byName = new Map<string, OperationSpec>(operations.map((o) => [o.name, o]));

/** The table's entry for a name (the name is checked at compile time). */
export function operation(name: OperationName): OperationSpec {
  return byName.get(name)!;
}

/** The names of the operations a caller may use at all (each operation then applies its own policy). */
export function operationsFor(caller: Caller): ReadonlySet<OperationName> {
  return new Set(operations.filter((o) => (o.callers as readonly Caller[]).includes(caller)).map((o) => o.name));
}

interface Compiled {
  spec: Operation;
  parts: string[];
}

const compiled: Compiled[] = operations.map((spec) => ({ spec, parts: spec.path.split('/').filter(Boolean) }));

/** The operation for a method and the path segments of a request URI, with its `{id}`. */
export function matchOperation(method: string, segments: readonly string[]): { spec: Operation; id: string } | undefined {
  for (const { spec, parts } of compiled) {
    if (spec.method !== method || parts.length !== segments.length) continue;
    let id = '';
    let ok = true;
    for (let i = 0; i < parts.length && ok; i++) {
      const part = parts[i]!;
      const segment = segments[i]!;
      if (part === '{id}') {
        ok = isUuid(segment);
        id = segment;
      } else ok = part === segment;
    }
    if (ok) return { spec, id };
  }
  return undefined;
}
