/**
 * The per-address handshake limit (docs/decisions.md, "Limits on by default"). A handshake is the
 * dearest request a stranger can send: after the RSA decryption it costs a token verification
 * (maybe a call to the identity provider), a P-256 key pair, a channel row and a PS256 signature.
 * Counted by the connection's address before the credential is looked at, so a flood of
 * handshakes with bad or stolen tokens stops at the decryption. The refusal is a well-formed
 * handshake answer (PROTOCOL.md §4: a JWS under the static key, 429, the requestId echoed), which
 * is why the message is decrypted first: without the requestId a client could not tell which of
 * its handshakes was refused.
 */
import { KmsError, Limits, jsonDepthWithin, topLevelMember } from '@openkms/protocol';
import { addressKey } from '../rate-limit.js';
import type { Opened } from './open.js';
import type { RequestRecord } from './record.js';
import { noteRequestId } from './request.js';

export function admitHandshake(limiter: { allow(key: string): boolean }, address: string | undefined, opened: Opened, record: RequestRecord): void {
  if (limiter.allow(addressKey(address))) return;
  noteRequestId(unverifiedRequest(opened), record);
  throw new KmsError('RATE_LIMITED', 'too many handshakes from this address: retry later');
}

/**
 * The request of a handshake, read only for the requestId its refusal echoes: JSON, or for a peer
 * KMS (cty JOSE) the payload of its JWS, whose signature is not checked (the refusal grants nothing).
 */
function unverifiedRequest(opened: Opened): unknown {
  try {
    let text = new TextDecoder('utf-8', { fatal: true }).decode(opened.plaintext);
    if (opened.cty === 'JOSE') text = Buffer.from(text.split('.')[1] ?? '', 'base64url').toString('utf8');
    return jsonDepthWithin(text, Limits.maxJsonDepth) ? JSON.parse(text) : { requestId: topLevelMember(text, 'requestId') };
  } catch {
    return undefined;
  }
}
