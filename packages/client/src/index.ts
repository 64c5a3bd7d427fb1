export { KmsClient, type KeyFilter, type CreateResourceOptions } from './client.js';
export type { KmsClientOptions, PeerCredential, TokenProvider } from './options.js';
export { encryptContent, decryptContent, decryptContentText, contentKeyUri, encryptStream, decryptStream, type ContentKey } from './content.js';
export { ErrorCodes, KmsError, hasCode, type ErrorCode } from '@openkms/protocol';
export type { KeyRep, ResourceRep, AuthorizationRep, CmkRep } from '@openkms/protocol';
export type { WebSocketConstructor, WebSocketLike } from './ws-transport.js';
export type { FetchLike } from './transport.js';
export type { Answer } from './transport.js';
