/**
 * What one request turned out to be, for its audit record, its metrics and its log line. Each
 * stage of the pipeline fills in what it learns (the operation once resolved, the principal once
 * authenticated), so that a request refused at any stage is still recorded as far as it got.
 */
import type { OperationName, RequestId } from '@openkms/protocol';

export interface RequestRecord {
  /** The operation, once resolved; `reset` for a message that could not be opened. */
  op: OperationName | 'reset' | 'unknown';
  principal: string | null;
  /** The user a compliance officer read as (`credential.onBehalfOf`), when it did. */
  onBehalfOf: string | null;
  clientId: string | null;
  method: string | null;
  uri: string | null;
  requestId: RequestId | undefined;
  /** `kms://<peer>` when the request came over (or claimed) a peer KMS's channel. */
  peer: string | null;
}

export function newRecord(): RequestRecord {
  return { op: 'reset', principal: null, onBehalfOf: null, clientId: null, method: null, uri: null, requestId: undefined, peer: null };
}
