/**
 * The SDK's per-message JOSE (PROTOCOL.md §4): sealing its requests and opening the KMS's answers
 * on an ECDHE channel (compact JWE `dir` / `A256GCM`, kid = the channel URI, both directions), and
 * verifying what the KMS signs with its static key (compact JWS `PS256`: the handshake answer, a
 * reset, and the signature nested in every answer to a peer KMS, PROTOCOL.md §6). Every request
 * and every answer goes through it; the handshake's own steps (RSA-OAEP encryption, P-256, HKDF)
 * stay on WebCrypto everywhere: they happen once per channel.
 *
 * Two variants export `clientCodec` with this interface; package.json maps the private import
 * `#codec` to one of them by the runtime's condition:
 *   - `node`    → node.ts: `node:crypto`, synchronous AES-256-GCM and RSA-PSS (about a tenth of
 *                 the CPU of a seal and an open through WebCrypto's async queue, under half for a
 *                 verification: docs/decisions.md "The SDK's per-message JOSE");
 *   - `browser` and anything else → web.ts: `jose` on WebCrypto, as every browser has it.
 * A bundler building for browsers (esbuild `platform: 'browser'`, webpack, Vite) picks the web
 * variant, so no `node:` import reaches a browser bundle (test/codec/selection.test.ts). Both put
 * the same bytes on the wire and accept each other's (test/codec/channel.test.ts,
 * test/codec/static-signature.test.ts).
 */
import type { AsymmetricKey, Decrypted, MessageCodec } from '@openkms/protocol';

export interface ClientCodec extends Pick<MessageCodec, 'encryptChannel' | 'decryptChannel'> {
  /** Verifies a compact JWS `PS256` under the KMS's static public key; throws on any failure. */
  verifyStatic(compact: string, publicKey: AsymmetricKey): Promise<Decrypted>;
}
