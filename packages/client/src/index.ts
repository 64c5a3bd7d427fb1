export { KmsClient, type KmsClientOptions, type PeerCredential, type TokenProvider, type KeyFilter, type CreateResourceOptions } from './client.js';
export { encryptContent, decryptContent, decryptContentText, contentKeyUri, encryptStream, decryptStream, type ContentKey } from './content.js';
export { KmsError } from '@openkms/protocol';
export type { KeyRep, ResourceRep, AuthorizationRep, CmkRep } from '@openkms/protocol';
export type { WebSocketConstructor, WebSocketLike } from './ws-transport.js';
export type { FetchLike } from './transport.js';
export type { Answer } from './transport.js';
