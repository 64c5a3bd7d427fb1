/**
 * The channel codec for browsers and any runtime without `node:crypto` (what `#channel-codec` is
 * there; see channel-codec.ts): the protocol's reference codec on `jose` and WebCrypto.
 */
import { joseCodec } from '@openkms/protocol';
import type { ChannelCodec } from './channel-codec.js';

export const channelCodec: ChannelCodec = {
  encryptChannel: (plaintext, key, kid, cty) => joseCodec.encryptChannel(plaintext, key, kid, cty),
  decryptChannel: (compact, key) => joseCodec.decryptChannel(compact, key),
};
