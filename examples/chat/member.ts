/**
 * A chat member's client: a connection to the relay plus the member's own KmsClient. It encrypts
 * what it posts with the room's current key and decrypts what it receives with the key each
 * message names, fetching keys from the KMS as needed: all the room's keys through the room's
 * KRO on joining (draft §3.2 step 5), and any key it has not seen since (e.g. after a rotation)
 * by the URI the message names.
 */
import { WebSocket } from 'ws';
import { contentKeyUri, decryptContentText, encryptContent, type KeyRep, type KmsClient } from '@openkms/client';
import type { Posted, RelayFrame } from './relay.js';

export interface Read {
  seq: number;
  from: string;
  text: string;
  keyUri: string;
}

const WAIT_MS = 5_000;

/** When a key was bound to its resource (0 for none). */
const bound = (key: KeyRep | undefined) => (key?.bindDate ? Date.parse(key.bindDate) : 0);

export class ChatMember {
  /** Keys this member holds, by URI. */
  readonly keys = new Map<string, KeyRep>();
  /** Every message the relay delivered to this member, in order (ciphertext). */
  readonly inbox: Posted[] = [];
  resourceUri: string | undefined;
  private sendKey: KeyRep | undefined;
  private socket: WebSocket | undefined;
  private waiters: (() => void)[] = [];

  constructor(
    readonly user: string,
    readonly kms: KmsClient,
  ) {}

  /** Connects to the room and receives its history (ciphertext) and its KRO's URI. */
  async join(relayUrl: string, room: string): Promise<Posted[]> {
    const socket = new WebSocket(`${relayUrl}/rooms/${room}?user=${encodeURIComponent(this.user)}`);
    this.socket = socket;
    const welcome = new Promise<Posted[]>((resolve, reject) => {
      socket.once('error', reject);
      socket.on('message', (data) => {
        const frame = JSON.parse(String(data)) as RelayFrame;
        if (frame.type === 'welcome') {
          this.resourceUri = frame.resourceUri;
          this.inbox.push(...frame.history);
          resolve(frame.history);
        } else if (frame.type === 'message') {
          this.inbox.push({ seq: frame.seq, from: frame.from, jwe: frame.jwe });
        } else if (frame.type === 'resource') {
          this.resourceUri = frame.resourceUri;
        } else if (frame.type === 'error') {
          console.error(`relay to ${this.user}: ${frame.reason}`);
        }
        for (const wake of this.waiters.splice(0)) wake();
      });
    });
    return welcome;
  }

  /** Tells the relay which KRO stands for the room. */
  setResource(resourceUri: string): void {
    this.resourceUri = resourceUri;
    this.socket!.send(JSON.stringify({ type: 'set-resource', resourceUri }));
  }

  /** Resolves once the relay has delivered message `seq` to this member. */
  async waitFor(seq: number): Promise<Posted> {
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      const found = this.inbox.find((m) => m.seq === seq);
      if (found) return found;
      if (Date.now() > deadline) throw new Error(`${this.user}: message ${seq} never arrived`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 100);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** Draft §3.2 step 5: all keys bound to the room's KRO (newest first); the newest becomes the one to post with. */
  async fetchRoomKeys(): Promise<KeyRep[]> {
    if (!this.resourceUri) throw new Error(`${this.user}: the room has no KMS resource yet`);
    const keys = await this.kms.retrieveResourceKeys(this.resourceUri);
    for (const key of keys) this.keys.set(key.uri, key);
    if (keys[0]) this.sendKey = keys[0];
    return keys;
  }

  /** Posts with `key` from now on (the creator, and whoever rotates the room's key). */
  useKey(key: KeyRep): void {
    this.keys.set(key.uri, key);
    this.sendKey = key;
  }

  /** Encrypts and posts `text`; resolves with its sequence number once the relay has echoed it. */
  async post(text: string): Promise<number> {
    if (!this.sendKey) throw new Error(`${this.user} holds no key for this room`);
    const jwe = await encryptContent(this.sendKey, text);
    const before = this.inbox.length;
    this.socket!.send(JSON.stringify({ type: 'post', jwe }));
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      const echo = this.inbox.slice(before).find((m) => m.jwe === jwe);
      if (echo) return echo.seq;
      if (Date.now() > deadline) throw new Error(`${this.user}: the relay did not take the post`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }

  /**
   * Decrypts one message with the key it names: a key already held, or else fetched from the KMS
   * (which answers only if this member is authorized on the room — otherwise a KmsError 403).
   * A key bound to the room later than the one this member posts with becomes the one to post
   * with, so members follow rotations (and a removed member posting under an old key cannot pull
   * the room back to a key he holds).
   */
  async read(message: Posted): Promise<Read> {
    const keyUri = contentKeyUri(message.jwe);
    let key = this.keys.get(keyUri);
    if (!key) {
      key = await this.kms.retrieveKey(keyUri);
      this.keys.set(keyUri, key);
    }
    const text = await decryptContentText(message.jwe, key);
    if (key.resourceUri === this.resourceUri && bound(key) > bound(this.sendKey)) this.sendKey = key;
    return { seq: message.seq, from: message.from, text, keyUri };
  }

  async leave(): Promise<void> {
    const socket = this.socket;
    this.socket = undefined;
    if (!socket || socket.readyState === WebSocket.CLOSED) return;
    await new Promise<void>((resolve) => {
      socket.once('close', () => resolve());
      socket.close();
    });
  }
}
