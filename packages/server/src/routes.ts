/**
 * The routing table: (method, uri pattern) -> operation, in the order of draft 4.7 and the
 * Administrative API. `{id}` matches one UUID. create /ecdhe is not here: it arrives under the
 * static key and the core handles it before any channel exists.
 */
import { isUuid, type Method } from '@openkms/protocol';
import { createCmk, listCmks, updateCmk } from './operations/admin.js';
import {
  bulkDeleteAuthorizations,
  createAuthorizations,
  deleteAuthorization,
  deleteAuthorizationByAuthId,
  retrieveAuthorizations,
} from './operations/authorizations.js';
import type { Operation } from './operations/context.js';
import { deleteEphemeralKey } from './operations/ecdhe.js';
import { bindKey, createKeys, retrieveKey, retrieveResourceKeys } from './operations/keys.js';
import { ping } from './operations/ping.js';
import { createResource, retrieveResource } from './operations/resources.js';
import { receiveInvalidations } from './federation/invalidations.js';

export interface Route {
  method: Method;
  pattern: string;
  name: string;
  operation: Operation;
}

const route = (method: Method, pattern: string, name: string, operation: Operation): Route => ({ method, pattern, name, operation });

export const routes: readonly Route[] = [
  route('delete', '/ecdhe/{id}', 'deleteEphemeralKey', deleteEphemeralKey), //            4.7.2
  route('create', '/resources', 'createResource', createResource), //                     4.7.3
  route('retrieve', '/resources/{id}', 'retrieveResource', retrieveResource), //          4.7.4
  route('create', '/keys', 'createKeys', createKeys), //                                  4.7.5
  route('update', '/keys/{id}', 'bindKey', bindKey), //                                   4.7.6
  route('retrieve', '/keys/{id}', 'retrieveKey', retrieveKey), //                         4.7.7
  route('retrieve', '/resources/{id}/keys', 'retrieveResourceKeys', retrieveResourceKeys),
  route('create', '/authorizations', 'createAuthorizations', createAuthorizations), //    4.7.8
  route('retrieve', '/resources/{id}/authorizations', 'retrieveAuthorizations', retrieveAuthorizations), // 4.7.9-10
  route('delete', '/authorizations/{id}', 'deleteAuthorization', deleteAuthorization), // 4.7.11
  route('delete', '/resources/{id}/authorizations', 'deleteAuthorizationByAuthId', deleteAuthorizationByAuthId),
  route('delete', '/authorizations', 'bulkDeleteAuthorizations', bulkDeleteAuthorizations),
  route('update', '/ping', 'ping', ping), //                                              4.7.12
  route('create', '/cmk', 'createCmk', createCmk), //                                     Administrative API
  route('update', '/cmk/{id}', 'updateCmk', updateCmk),
  route('retrieve', '/cmk', 'listCmks', listCmks),
  route('retrieve', '/cmk/{id}', 'listCmks', listCmks),
  route('update', '/federation/invalidations', 'receiveInvalidations', receiveInvalidations), // PROTOCOL.md §6
];

const compiled = routes.map((r) => ({ ...r, parts: r.pattern.split('/').filter(Boolean) }));

/** Finds the route for a method and the path segments of a request URI. */
export function match(method: string, segments: readonly string[]): { route: Route; id: string } | undefined {
  for (const r of compiled) {
    if (r.method !== method || r.parts.length !== segments.length) continue;
    let id = '';
    let ok = true;
    for (let i = 0; i < r.parts.length && ok; i++) {
      const part = r.parts[i]!;
      const seg = segments[i]!;
      if (part === '{id}') {
        ok = isUuid(seg);
        id = seg;
      } else ok = part === seg;
    }
    if (ok) return { route: r, id };
  }
  return undefined;
}
