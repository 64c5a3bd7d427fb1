/**
 * Stage 3, resolve: what the request asks for. The operation (from the operation table, by
 * method and URI), the authority of the object it acts on (this KMS's, or a peer's served through
 * federation), the federation dispatch mode, and the access gate: whether this caller may use the
 * operation at all (the operation then applies its own policy to the object).
 */
import { KmsError, matchOperation, objectRef, parseKmsUri, type Operation } from '@openkms/protocol';
import { mayUseOperation } from '../policy.js';
import type { Authenticated } from './authenticate.js';
import type { RequestRecord } from './record.js';

/** Which handler of the operation runs (handlers.ts). */
export type Dispatch = 'local' | 'answerPeer' | 'askPeer';

export interface Resolved {
  spec: Operation;
  dispatch: Dispatch;
  /** The authority of the object the operation acts on. */
  authority: string;
  id: string;
  query: Map<string, string>;
}

export class Resolver {
  constructor(
    private readonly authority: string,
    private readonly peers: { isPeerAuthority(authority: string): boolean },
  ) {}

  /** `key`: which key the message came under; each operation arrives under one of them only. */
  resolve({ request, principal, peer }: Authenticated, key: 'static' | 'channel', record: RequestRecord): Resolved {
    const uri = parseKmsUri(request.uri);
    if (!uri) throw KmsError.badRequest('invalid field uri: not a KMS URI');
    const named = uri.authority ?? this.authority;
    if (named !== this.authority && !this.peers.isPeerAuthority(named)) throw KmsError.notFound(`unknown KMS authority ${named}`);
    if (named !== this.authority && peer) throw KmsError.forbidden('a peer KMS asks only for objects of this KMS');
    const found = matchOperation(request.method, uri.segments);
    if (!found || found.spec.key !== key) throw KmsError.badRequest(`invalid field uri: no operation ${request.method} ${request.uri}`);
    const { spec, id } = found;
    record.op = spec.name;
    if (named !== this.authority && spec.federation === 'local') throw KmsError.notFound(`kms://${named} objects are not served through this KMS for ${spec.name}`);
    if (!mayUseOperation(principal, spec.name, peer)) throw KmsError.forbidden('not allowed with this credential');
    const authority = spec.subject === 'resourceUri' && !peer ? this.peerNamedBy(request.resourceUri) ?? named : named;
    const dispatch: Dispatch = authority !== this.authority ? 'askPeer' : peer && principal.kind === 'user' && spec.federation !== 'local' ? 'answerPeer' : 'local';
    return { spec, dispatch, authority, id, query: uri.query };
  }

  /**
   * The peer whose KRO a `resourceUri` member names, if it names one. Anything else — this KMS's,
   * an unknown authority's, no resource at all — is the local operation's to check (after it has
   * validated the request), so a malformed request is a 400 wherever it points. A peer's own
   * request is never resolved this way: federation is one hop.
   */
  private peerNamedBy(resourceUri: unknown): string | undefined {
    const authority = typeof resourceUri === 'string' ? objectRef(resourceUri, 'resources', this.authority)?.authority : undefined;
    return authority !== undefined && authority !== this.authority && this.peers.isPeerAuthority(authority) ? authority : undefined;
  }
}
