/**
 * The SDK's codec for browsers and any runtime without `node:crypto` (what `#codec` is there; see
 * client-codec.ts): the protocol's reference implementations on `jose` and WebCrypto.
 */
import { joseCodec, verifyStatic } from '@openkms/protocol';
import type { ClientCodec } from './client-codec.js';

export const clientCodec: ClientCodec = {
  encryptChannel: (plaintext, key, kid, cty) => joseCodec.encryptChannel(plaintext, key, kid, cty),
  decryptChannel: (compact, key) => joseCodec.decryptChannel(compact, key),
  verifyStatic: (compact, publicKey) => verifyStatic(compact, publicKey),
};
