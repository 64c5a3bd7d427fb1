/**
 * Transports carry compact messages to the KMS and answers back. They are untrusted: all they see
 * is JOSE. Each one hands back the *decoded* answer (the client's decoder verifies or decrypts it),
 * because a WebSocket can only match an answer to its request by the requestId inside it.
 */
import type { KmsResponse, RequestId } from '@openkms/protocol';

export interface Answer {
  payload: KmsResponse;
  /** True when the answer was a JWS under the KMS static key (ECDHE answers, resets). */
  signed: boolean;
  /**
   * The KMS's own signature over the payload, when the answer nested one (answers to a peer KMS,
   * PROTOCOL.md §6): kept so a federated copy can later prove what the KMS released.
   */
  proof?: string;
}

export type Decoder = (compact: string) => Promise<Answer>;

export interface Transport {
  /** Sends one message; resolves with its decoded answer. */
  exchange(message: string, requestId: RequestId): Promise<Answer>;
  close(): Promise<void>;
}

export type FetchLike = (input: string, init: { method: string; headers: Record<string, string>; body?: string; signal?: AbortSignal }) => Promise<{
  status: number;
  json(): Promise<unknown>;
  text(): Promise<string>;
}>;
