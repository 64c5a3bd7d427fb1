/**
 * Each operation of the table (protocol `operations.ts`) with its handlers: `local`, on this
 * KMS's own objects for its own callers; and where the table makes the operation federated,
 * `answerPeer`, for a peer KMS asking on behalf of one of its users, and `askPeer`, for a user of
 * this KMS asking about a peer's object. The core picks one (run.ts); the types make a
 * federated operation without its two federation handlers a compile error.
 */
import { bulkDeleteAuthorizationsSchema, createAuthorizationsSchema, type Operation } from '@openkms/protocol';
import { forPeer, forPeerListing } from '../federation/answering.js';
import { keyFromCopy, resourceKeysFromCopy, type AskDeps } from '../federation/copies.js';
import { forwardToPeer, type ForwardDeps } from '../federation/forwarding.js';
import { receiveInvalidations } from '../federation/inbox.js';
import { releaseKey, releaseResourceKeys } from '../federation/release.js';
import { createCmk, listCmks, updateCmk } from '../operations/admin.js';
import {
  bulkDeleteAuthorizations,
  createAuthorizations,
  deleteAuthorization,
  deleteAuthorizationByAuthId,
  retrieveAuthorizations,
} from '../operations/authorizations.js';
import type { Deps, Handler } from '../operations/context.js';
import { createEphemeralKey, deleteEphemeralKey } from '../operations/ecdhe.js';
import { bindKey, createKeys, retrieveKey, retrieveResourceKeys } from '../operations/keys.js';
import { ping } from '../operations/ping.js';
import { createResource, retrieveResource } from '../operations/resources.js';

/** The parts an ask-a-peer handler may use: the local ones and the federation's asking side. */
export type AskPeerDeps = Deps & AskDeps & ForwardDeps;

export interface LocalHandlers {
  local: Handler;
}
export interface FederatedHandlers extends LocalHandlers {
  answerPeer: Handler;
  askPeer: Handler<AskPeerDeps>;
}

type HandlersOf<S extends Operation> = S['federation'] extends 'local' ? LocalHandlers : FederatedHandlers;
export type HandlerTable = { readonly [S in Operation as S['name']]: HandlersOf<S> };

export const handlers: HandlerTable = {
  createEphemeralKey: { local: createEphemeralKey },
  deleteEphemeralKey: { local: deleteEphemeralKey },
  createResource: { local: createResource },
  retrieveResource: { local: retrieveResource },
  createKeys: { local: createKeys },
  bindKey: { local: bindKey },
  retrieveKey: { local: retrieveKey, answerPeer: releaseKey, askPeer: keyFromCopy },
  retrieveResourceKeys: { local: retrieveResourceKeys, answerPeer: releaseResourceKeys, askPeer: resourceKeysFromCopy },
  createAuthorizations: { local: createAuthorizations, answerPeer: forPeer(createAuthorizations, createAuthorizationsSchema), askPeer: forwardToPeer(createAuthorizationsSchema) },
  retrieveAuthorizations: { local: retrieveAuthorizations, answerPeer: forPeerListing(retrieveAuthorizations), askPeer: forwardToPeer() },
  deleteAuthorization: { local: deleteAuthorization, answerPeer: forPeer(deleteAuthorization), askPeer: forwardToPeer() },
  deleteAuthorizationByAuthId: { local: deleteAuthorizationByAuthId, answerPeer: forPeer(deleteAuthorizationByAuthId), askPeer: forwardToPeer() },
  bulkDeleteAuthorizations: { local: bulkDeleteAuthorizations, answerPeer: forPeer(bulkDeleteAuthorizations, bulkDeleteAuthorizationsSchema), askPeer: forwardToPeer(bulkDeleteAuthorizationsSchema) },
  ping: { local: ping },
  createCmk: { local: createCmk },
  updateCmk: { local: updateCmk },
  listCmks: { local: listCmks },
  retrieveCmk: { local: listCmks },
  receiveInvalidations: { local: receiveInvalidations },
};
