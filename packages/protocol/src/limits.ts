/**
 * The protocol's limits, in one place: what every implementation of this profile enforces, client
 * and server alike (PROTOCOL.md §4–5). The server's own bounds are in its `limits.ts`.
 */
/** Limits every implementation of this profile enforces (counts over them → 413). */
export const Limits = {
  /** Keys per create-keys request. */
  maxKeyCount: 100,
  /** authIds or keyUris per request, and authIds per bulk delete. */
  maxListLength: 100,
  /** Anonymous authorizations per request. */
  maxAnonymous: 100,
  /** Messages per HTTP batch. */
  maxBatch: 100,
  /** Bytes of an HTTP batch body or one WebSocket frame. */
  maxBodyBytes: 1024 * 1024,
  /** Characters of one compact message. */
  maxMessageChars: 1024 * 1024,
  /** Characters of an identifier such as a clientId or an authId. */
  maxIdChars: 256,
  /** Characters (and UTF-8 bytes) of a bearer token. */
  maxBearerChars: 16 * 1024,
  /** Characters of a KMS URI. */
  maxUriChars: 2048,
  /** Certificates an x5c chain may carry (leaf first). */
  maxChainLength: 10,
  /** Bytes of one DER certificate (a guard against oversized input, far above any real one). */
  maxCertBytes: 64 * 1024,
  /**
   * Nesting of arrays and objects in one message's JSON. The deepest real request (a peer's
   * handshake: credential → jwk → x5c) is 4 deep; JSON nested a hundred thousand deep costs some
   * 50 ms to parse and more to walk, so it is refused before it is parsed.
   */
  maxJsonDepth: 32,
} as const;
