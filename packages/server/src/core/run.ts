/**
 * Stage 4, run: the handler the dispatch mode picks (handlers.ts) — the local one, the
 * one answering a peer KMS for its user, or the one asking a peer about its object — called with
 * the request's context.
 */
import type { Channel } from '../channels.js';
import type { Deps } from '../operations/context.js';
import type { AskPeerDeps, FederatedHandlers, HandlerTable, LocalHandlers } from './handlers.js';
import type { KmsResponse } from '@openkms/protocol';
import type { Authenticated } from './authenticate.js';
import type { Resolved } from './resolve.js';

export class Runner {
  constructor(
    private readonly handlers: HandlerTable,
    /** What local and answer-a-peer handlers see. */
    private readonly deps: Deps,
    /** What ask-a-peer handlers see: the same, with the asking side of federation. */
    private readonly askDeps: AskPeerDeps,
  ) {}

  run({ request, principal, peer }: Authenticated, resolved: Resolved, channel: Channel | undefined): Promise<KmsResponse> {
    const ctx = { request, principal, peer, authority: resolved.authority, id: resolved.id, query: resolved.query, channel };
    const handlers: LocalHandlers | FederatedHandlers = this.handlers[resolved.spec.name];
    if (resolved.dispatch === 'local') return handlers.local(ctx, this.deps);
    // resolve() picks a federation handler only for operations the table makes federated.
    if (!('askPeer' in handlers)) throw new Error(`${resolved.spec.name} is not federated`);
    return resolved.dispatch === 'answerPeer' ? handlers.answerPeer(ctx, this.deps) : handlers.askPeer(ctx, this.askDeps);
  }
}
