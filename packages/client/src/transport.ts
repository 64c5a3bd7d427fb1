/**
 * Transports carry compact messages to the KMS and answers back. They are untrusted: all they see
 * is JOSE. Each one hands back the *decoded* answer (the client's decoder verifies or decrypts it),
 * because a WebSocket can only match an answer to its request by the requestId inside it.
 */
import type { KmsResponse, RequestId } from '@openkms/protocol';

/** A KMS's static public key (RSA), as its discovery document gives it, with its x5c chain. */
export interface StaticJwk {
  kty: 'RSA';
  kid: string;
  n: string;
  e: string;
  x5c: string[];
}

export interface Answer {
  payload: KmsResponse;
  /** True when the answer was a JWS under the KMS static key (ECDHE answers, resets). */
  signed: boolean;
  /**
   * The KMS's own signature over the payload, when the answer nested one (answers to a peer KMS,
   * PROTOCOL.md §6): kept so a federated copy can later prove what the KMS released.
   */
  proof?: string;
  /** With a proof: the KMS's static public key it verified under, with its x5c chain. */
  signer?: StaticJwk;
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
