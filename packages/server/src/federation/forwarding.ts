/**
 * The asking side of federated authorization management (PROTOCOL.md §6): a user's request about
 * a peer's KRO (authorize, list, deauthorize) is forwarded to that peer on the user's behalf, and
 * the peer applies its own policy to the user as if local. Its answer, success or refusal, reaches
 * the user; failures of the peer itself are 502/504.
 */
import { validate, type KmsRequest, type KmsResponse } from '@openkms/protocol';
import type { z } from 'zod';
import type { UserPrincipal } from '../identity/principal.js';
import { normalizeAuthId } from '../operations/authorizations.js';
import type { Deps, Handler } from '../operations/context.js';
import { userPrincipal } from '../operations/guards.js';
import type { PeerChannels } from './peer-channels.js';

export interface Forwarder {
  forward(user: UserPrincipal, request: KmsRequest, authority: string): Promise<KmsResponse>;
}

export class Forwarding implements Forwarder {
  constructor(private readonly channels: PeerChannels) {}

  forward(user: UserPrincipal, request: KmsRequest, authority: string): Promise<KmsResponse> {
    return this.channels.withinDeadline(this.forwardUnbounded(user, request, authority), authority);
  }

  private async forwardUnbounded(user: UserPrincipal, request: KmsRequest, authority: string): Promise<KmsResponse> {
    const peer = this.channels.peerOf(authority);
    // The user's own credential and requestId stay here: the peer channel has its own.
    const { requestId: _id, client: _client, ...body } = request;
    try {
      const answer = await this.channels.exchange(peer, { ...body, federated: true, onBehalfOf: user.id });
      await this.channels.audit(user, peer, request.method, request.uri, answer.payload.status);
      const { requestId: _answerId, ...payload } = answer.payload;
      return payload as KmsResponse;
    } catch (err) {
      const failure = this.channels.failure(err, peer, true);
      await this.channels.audit(user, peer, request.method, request.uri, failure.status);
      throw failure;
    }
  }
}

/** What the forwarding handlers receive besides the local parts. */
export interface ForwardDeps extends Deps {
  forwarder: Forwarder;
}

/**
 * The ask-a-peer handler of a forwarded operation: checks the request's own members here (with
 * `schema`, when it has a body), makes its names absolute where they mean what the user meant —
 * `bob` is bob@<this KMS's first domain> and `/resources/<id>` a KRO of this KMS, not of the peer —
 * and forwards it.
 */
export function forwardToPeer(schema?: z.ZodType): Handler<ForwardDeps> {
  return async (ctx, deps) => {
    if (schema) validate(schema, ctx.request);
    const request: Record<string, unknown> = { ...ctx.request };
    for (const field of ['authIds', 'userIds'] as const) {
      const list = request[field];
      if (Array.isArray(list)) request[field] = await Promise.all(list.map((v) => normalizeAuthId(deps, String(v), field)));
    }
    const raw = ctx.query.get('authId');
    if (raw !== undefined) {
      const base = ctx.request.uri.slice(0, ctx.request.uri.indexOf('?'));
      request.uri = `${base}?authId=${encodeURIComponent(await normalizeAuthId(deps, raw, 'authId'))}`;
    }
    return deps.forwarder.forward(userPrincipal(ctx.principal), request as KmsRequest, ctx.authority);
  };
}
