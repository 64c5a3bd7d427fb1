/**
 * Stage 1, open (PROTOCOL.md §4): which key a message is under — the static key (an ECDHE
 * handshake) or a channel key (a common message) — and its plaintext. A message that cannot be
 * opened is answered by a reset, which tells the client to handshake again.
 */
import type { KeyObject } from 'node:crypto';
import { KmsError, Limits, STATIC_KEY_ALGS, isUuid, parseKmsUri, peekHeader, segmentCount, type Decrypted, type MessageCodec, type ProtectedHeader } from '@openkms/protocol';
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
  /** The channel when memory alone may answer for it (channels.ts); undefined: ask `get`. */
  cached?(id: string): Channel | undefined;
}

/**
 * A message whose protected header was read once: routed by `header`, then opened under the key it
 * names without decoding the header again. fast-codec.ts's `ReceivedJwe` is one; any other codec
 * is read through `peekedBy` below.
 */
export interface ReadMessage {
  readonly header: ProtectedHeader;
  openChannel(key: Uint8Array): Decrypted | Promise<Decrypted>;
  openStatic(privateKey: KeyObject): Decrypted | Promise<Decrypted>;
}

/** A codec that reads a message's header once itself (fast-codec.ts): undefined when it refuses it. */
interface ReadingCodec extends MessageCodec {
  read(compact: string): ReadMessage | undefined;
}

const reads = (codec: MessageCodec): codec is ReadingCodec => typeof (codec as Partial<ReadingCodec>).read === 'function';

/** Any other codec (joseCodec): the header peeked for routing, the codec then reads the whole message. */
function peekedBy(codec: MessageCodec): (compact: string) => ReadMessage | undefined {
  return (compact) => {
    const header = peekHeader(compact);
    return header && {
      header,
      openChannel: (key) => codec.decryptChannel(compact, key),
      openStatic: (privateKey) => codec.decryptStatic(compact, privateKey),
    };
  };
}

/** What a channel's kid must start with for the quick reading of it (`channelIdOf`). */
const ABSOLUTE_CHANNEL = (authority: string) => `kms://${authority}/ecdhe/`;

export class Opener {
  private readonly read: (compact: string) => ReadMessage | undefined;
  private readonly channelPrefix: string;

  constructor(
    private readonly authority: string,
    private readonly staticKey: { privateKey: KeyObject; kid: string },
    private readonly channels: ChannelLookup,
    codec: MessageCodec,
  ) {
    this.read = reads(codec) ? (compact) => codec.read(compact) : peekedBy(codec);
    this.channelPrefix = ABSOLUTE_CHANNEL(authority);
  }

  /** Opens a message; `record.op` says a handshake as soon as the header names the static key. */
  async open(compact: string, record: RequestRecord): Promise<Opened> {
    if (typeof compact !== 'string' || compact.length > Limits.maxMessageChars || segmentCount(compact) !== 5) {
      throw KmsError.reset('message is not a compact JWE');
    }
    const read = this.read(compact);
    if (read === undefined) {
      // The codec refuses its header: a reset, labelled a handshake when it claims the static key.
      if (this.namesStaticKey(peekHeader(compact))) record.op = 'createEphemeralKey';
      throw KmsError.reset('message could not be decrypted');
    }
    const { header } = read;
    if (header.alg === 'dir' && header.enc === 'A256GCM' && typeof header.kid === 'string') return this.openChannel(read, header.kid);
    if (this.namesStaticKey(header)) {
      record.op = 'createEphemeralKey';
      let opened: Decrypted;
      try {
        opened = await read.openStatic(this.staticKey.privateKey);
      } catch {
        throw KmsError.reset('message could not be decrypted');
      }
      return { plaintext: opened.plaintext, cty: opened.header.cty };
    }
    throw KmsError.reset('message could not be decrypted');
  }

  private namesStaticKey(header: ProtectedHeader | undefined): boolean {
    return STATIC_KEY_ALGS.includes(header?.alg as (typeof STATIC_KEY_ALGS)[number]) && header?.kid === this.staticKey.kid;
  }

  private async openChannel(read: ReadMessage, kid: string): Promise<Opened> {
    const id = this.channelIdOf(kid);
    // A storage failure here is not a reset (clients would re-handshake in a loop): it propagates,
    // and the core answers it as an internal error.
    const channel = id === undefined ? undefined : this.channels.cached?.(id) ?? (await this.channels.get(id));
    if (!channel) throw KmsError.reset('ephemeral key unknown, expired or deleted');
    let opened: Decrypted;
    try {
      // The node:crypto codec answers at once: no await (and no promise) for it.
      const decrypting = read.openChannel(channel.key.reveal());
      opened = decrypting instanceof Promise ? await decrypting : decrypting;
    } catch {
      throw KmsError.reset('message could not be decrypted');
    }
    return { channel, plaintext: opened.plaintext, cty: opened.header.cty };
  }

  /**
   * The id of the channel of this KMS a kid names, or undefined. The form this KMS gives its
   * channels (`kms://<authority>/ecdhe/<uuid>`, what every client sends back) is read by its
   * prefix; any other (relative, upper-case authority, a trailing slash) by the URI parser.
   */
  private channelIdOf(kid: string): string | undefined {
    if (kid.length === this.channelPrefix.length + 36 && kid.startsWith(this.channelPrefix)) {
      const id = kid.slice(this.channelPrefix.length);
      return isUuid(id) ? id : undefined;
    }
    const ref = parseKmsUri(kid);
    return ref && (ref.authority === undefined || ref.authority === this.authority) && ref.segments.length === 2 && ref.segments[0] === 'ecdhe' && isUuid(ref.segments[1]!) ? ref.segments[1]! : undefined;
  }
}

/** The peer KMS that owns a channel: peers own theirs as `kms://<authority>` (no path). */
export function peerOwning(channel: Channel): string | undefined {
  const owner = parseKmsUri(channel.owner);
  return owner?.authority !== undefined && owner.segments.length === 0 ? owner.authority : undefined;
}
