/**
 * @openkms/client: the SDK an application uses to talk to its KMS, and the content encryption
 * that uses the keys it gets. Besides the names the server, the examples, the benchmark and the
 * tests use, the types an application needs to write its options and read its answers.
 */
export { KmsClient, type KeyFilter, type CreateResourceOptions } from './client.js';
export type { KmsClientOptions, PeerCredential, TokenProvider } from './options.js';
export { encryptContent, decryptContent, decryptContentText, contentKeyUri, encryptStream, decryptStream, type ContentKey } from './content.js';
export { ErrorCodes, KmsError, hasCode, type ErrorCode } from '@openkms/protocol';
export type { KeyRep, ResourceRep, AuthorizationRep, CmkRep } from '@openkms/protocol';
export type { WebSocketConstructor, WebSocketLike } from './ws-transport.js';
export type { FetchLike, Answer, StaticJwk } from './transport.js';
