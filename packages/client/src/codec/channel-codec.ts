/**
 * The channel codec: how the SDK seals its requests and opens the KMS's answers on an ECDHE
 * channel (PROTOCOL.md §4 "Common messages": compact JWE `dir` / `A256GCM`, kid = the channel URI,
 * both directions). Every request and every answer but a handshake's or a reset's goes through it.
 *
 * Two variants export `channelCodec` with this interface; package.json maps the private import
 * `#channel-codec` to one of them by the runtime's condition:
 *   - `node`    → channel-node.ts: `node:crypto`, synchronous AES-256-GCM (about a quarter of the
 *                 CPU of WebCrypto's async queue per message, ARCHITECTURE.md "The hot path");
 *   - `browser` and anything else → channel-web.ts: `jose` on WebCrypto, as every browser has it.
 * A bundler building for browsers (esbuild `platform: 'browser'`, webpack, Vite) picks the web
 * variant, so no `node:` import reaches a browser bundle. Both put the same bytes on the wire and
 * accept each other's, proven by test/codec/channel-codec.test.ts.
 */
import type { MessageCodec } from '@openkms/protocol';

/** The channel half of the wire's codec: `encryptChannel` seals, `decryptChannel` opens (and throws on any failure). */
export type ChannelCodec = Pick<MessageCodec, 'encryptChannel' | 'decryptChannel'>;
