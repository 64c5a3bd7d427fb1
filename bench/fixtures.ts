/**
 * Messages as a client makes them: handshakes under the KMS's static key (through the protocol
 * package, as the SDK does), and common messages sealed by the KMS's own node:crypto codec so the
 * load process spends little of the machine the server needs. A `User` is one principal with one
 * channel to a `kms serve` process, reached over HTTP.
 */
import { createPublicKey, randomUUID, type KeyObject } from 'node:crypto';
import {
  deriveChannelKey,
  encryptStatic,
  generateEphemeralKeyPair,
  importEcPublicKey,
  type EphemeralKeyRep,
  type KmsResponse,
} from '@openkms/protocol';
import { fastCodec } from '@openkms/server/testing';
import { answerOf, type Outgoing } from './wire.js';

const enc = new TextEncoder();
const dec = new TextDecoder();

export interface Client {
  clientId: string;
  credential: { bearer: string };
}

/** A handshake under the static key with a fresh client P-256 key, and how to finish it. */
export async function sealHandshake(authority: string, kid: string, staticPublic: KeyObject, client: Client) {
  const pair = await generateEphemeralKeyPair();
  const requestId = randomUUID();
  const plaintext = enc.encode(JSON.stringify({ requestId, client, method: 'create', uri: `kms://${authority}/ecdhe`, jwk: pair.publicJwk }));
  const message = await encryptStatic(plaintext, staticPublic, kid);
  return {
    message,
    requestId,
    plaintext,
    /** The channel the answer agrees on. */
    async channel(answer: string): Promise<{ uri: string; key: Uint8Array }> {
      const opened = (await answerOf(answer)) as KmsResponse;
      const rep = opened.key as EphemeralKeyRep | undefined;
      if (opened.status !== 201 || !rep) throw new Error(`handshake refused: ${opened.status} ${opened.reason ?? ''}`);
      return { uri: rep.uri, key: await deriveChannelKey(pair.privateKey, await importEcPublicKey(rep.jwk)) };
    },
  };
}

/** POSTs a batch to /kms/messages and answers its messages. */
export async function postBatch(url: string, messages: string[]): Promise<string[]> {
  const res = await fetch(`${url}/kms/messages`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kmsMessages: messages }) });
  const answers = ((await res.json()) as { kmsMessages?: string[] }).kmsMessages;
  if (res.status !== 200 || answers?.length !== messages.length) throw new Error(`batch answered HTTP ${res.status}`);
  return answers;
}

export interface WellKnown {
  authority: string;
  kid: string;
  staticPublic: KeyObject;
}

export async function wellKnown(url: string): Promise<WellKnown> {
  const doc = (await (await fetch(`${url}/.well-known/kms`)).json()) as { kmsCluster: string; rsaPublicKey: { kid: string } & Record<string, unknown> };
  return { authority: doc.kmsCluster.replace(/^kms:\/\//, ''), kid: doc.rsaPublicKey.kid, staticPublic: createPublicKey({ key: doc.rsaPublicKey, format: 'jwk' }) };
}

/** One principal with one channel to the KMS at `url`. */
export class User {
  private constructor(
    readonly url: string,
    readonly server: WellKnown,
    readonly client: Client,
    readonly channel: { uri: string; key: Uint8Array },
  ) {}

  static async connect(url: string, bearer: string, clientId = 'bench-client'): Promise<User> {
    const server = await wellKnown(url);
    const client = { clientId, credential: { bearer } };
    const handshake = await sealHandshake(server.authority, server.kid, server.staticPublic, client);
    const [answer] = await postBatch(url, [handshake.message]);
    return new User(url, server, client, await handshake.channel(answer!));
  }

  /** A common message under this user's channel, with a fresh requestId. */
  async seal(body: Record<string, unknown>): Promise<Outgoing> {
    const requestId = randomUUID();
    const plaintext = enc.encode(JSON.stringify({ requestId, client: this.client, ...body }));
    return { message: await fastCodec.encryptChannel(plaintext, this.channel.key, this.channel.uri), requestId };
  }

  async open(answer: string): Promise<KmsResponse> {
    if (answer.split('.').length === 3) return (await answerOf(answer)) as KmsResponse;
    return JSON.parse(dec.decode((await fastCodec.decryptChannel(answer, this.channel.key)).plaintext)) as KmsResponse;
  }

  /** Sends one request and answers its response, which must have `status`. */
  async ask(body: Record<string, unknown>, status: number): Promise<KmsResponse> {
    const [answer] = await postBatch(this.url, [(await this.seal(body)).message]);
    const response = await this.open(answer!);
    if (response.status !== status) throw new Error(`${String(body.method)} ${String(body.uri)} answered ${response.status} ${response.reason ?? ''}, not ${status}`);
    return response;
  }

  /** Requests answered 503 and sent again by `askAll` (a storage deadline passed while filling). */
  retried = 0;

  /**
   * Sends many requests in batches of 100, `parallel` batches at a time; each must answer `status`.
   * A 503 says "retry later": as a client should, the same sealed message (same requestId, so a
   * copy that did commit gets its first answer) goes again after a pause, up to five times.
   */
  async askAll(bodies: Record<string, unknown>[], status: number, parallel = 2): Promise<KmsResponse[]> {
    const out: KmsResponse[] = new Array(bodies.length);
    let next = 0;
    const worker = async () => {
      while (next < bodies.length) {
        const from = next;
        next = Math.min(bodies.length, next + 100);
        const sealed = await Promise.all(bodies.slice(from, next).map((b) => this.seal(b)));
        let pending = sealed.map((s, i) => ({ message: s.message, at: from + i }));
        for (let attempt = 0; pending.length > 0; attempt++) {
          if (attempt > 0) await new Promise((r) => setTimeout(r, 250 * attempt));
          const answers = await postBatch(this.url, pending.map((p) => p.message));
          const again: typeof pending = [];
          for (let i = 0; i < answers.length; i++) {
            const r = await this.open(answers[i]!);
            const at = pending[i]!.at;
            if (r.status === 503 && attempt < 5) again.push(pending[i]!);
            else if (r.status !== status) throw new Error(`${String(bodies[at]!.method)} ${String(bodies[at]!.uri)} answered ${r.status} ${r.reason ?? ''}`);
            else out[at] = r;
          }
          this.retried += again.length;
          pending = again;
        }
      }
    };
    await Promise.all(Array.from({ length: parallel }, worker));
    return out;
  }
}
