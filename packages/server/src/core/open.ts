/**
 * Stage 1, open (PROTOCOL.md §4): which key a message is under — the static key (an ECDHE
 * handshake) or a channel key (a common message) — and its plaintext. A message that cannot be
 * opened is answered by a reset, which tells the client to handshake again.
 */
import type { KeyObject } from 'node:crypto';
import { KmsError, Limits, STATIC_KEY_ALGS, isUuid, parseKmsUri, peekHeader, segmentCount, type MessageCodec } from '@openkms/protocol';
import type { Channel } from '../channels.js';
import type { RequestRecord } from './record.js';

export interface Opened {
  /** The channel it came on; none for a message under the static key. */
  channel?: Channel;
  plaintext: Uint8Array;
  /** The JWE's `cty`: `JOSE` when the payload is a JWS (a peer KMS signs every request). */
  cty: unknown;
}

export interface ChannelLookup {
  get(id: string): Promise<Channel | undefined>;
}

export class Opener {
  constructor(
    private readonly authority: string,
    private readonly staticKey: { privateKey: KeyObject; kid: string },
    private readonly channels: ChannelLookup,
    private readonly codec: MessageCodec,
  ) {}

  /** Opens a message; `record.op` says a handshake as soon as the header names the static key. */
  async open(compact: string, record: RequestRecord): Promise<Opened> {
    if (typeof compact !== 'string' || compact.length > Limits.maxMessageChars || segmentCount(compact) !== 5) {
      throw KmsError.reset('message is not a compact JWE');
    }
    const header = peekHeader(compact);
    if (header?.alg === 'dir' && header.enc === 'A256GCM' && typeof header.kid === 'string') return this.openChannel(compact, header.kid);
    if (STATIC_KEY_ALGS.includes(header?.alg as (typeof STATIC_KEY_ALGS)[number]) && header?.kid === this.staticKey.kid) {
      record.op = 'createEphemeralKey';
      const opened = await this.codec.decryptStatic(compact, this.staticKey.privateKey).catch(() => {
        throw KmsError.reset('message could not be decrypted');
      });
      return { plaintext: opened.plaintext, cty: opened.header.cty };
    }
    throw KmsError.reset('message could not be decrypted');
  }

  private async openChannel(compact: string, kid: string): Promise<Opened> {
    const ref = parseKmsUri(kid);
    const id = ref && (ref.authority === undefined || ref.authority === this.authority) && ref.segments.length === 2 && ref.segments[0] === 'ecdhe' && isUuid(ref.segments[1]!) ? ref.segments[1]! : undefined;
    // A storage failure here is not a reset (clients would re-handshake in a loop): it propagates,
    // and the core answers it as an internal error.
    const channel = id === undefined ? undefined : await this.channels.get(id);
    if (!channel) throw KmsError.reset('ephemeral key unknown, expired or deleted');
    const opened = await this.codec.decryptChannel(compact, channel.key.reveal()).catch(() => {
      throw KmsError.reset('message could not be decrypted');
    });
    return { channel, plaintext: opened.plaintext, cty: opened.header.cty };
  }
}

/** The peer KMS that owns a channel: peers own theirs as `kms://<authority>` (no path). */
export function peerOwning(channel: Channel): string | undefined {
  const owner = parseKmsUri(channel.owner);
  return owner?.authority !== undefined && owner.segments.length === 0 ? owner.authority : undefined;
}
