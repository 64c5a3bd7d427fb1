/**
 * A minimal protocol client for the server's tests, on the protocol package's codecs: the ECDHE
 * handshake, then requests under the channel key, over HTTP batch or WebSocket. (Applications use
 * the client SDK; this one exists to send exactly what a test needs, including malformed input.)
 */
import { randomUUID } from 'node:crypto';
import { importJWK, type CryptoKey as JoseKey } from 'jose';
import WebSocket from 'ws';
import {
  deriveChannelKey,
  encryptStatic,
  generateEphemeralKeyPair,
  importEcPublicKey,
  joseCodec,
  segmentCount,
  verifyStatic,
  type KmsResponse,
} from '@openkms/protocol';

const enc = new TextEncoder();
const dec = new TextDecoder();

export async function postBatch(url: string, messages: string[]): Promise<string[]> {
  const res = await fetch(`${url}/kms/messages`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ kmsMessages: messages }),
  });
  if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  return ((await res.json()) as { kmsMessages: string[] }).kmsMessages;
}

/** Liveness and readiness both answer 200 (the server survived whatever the test sent). */
export async function assertHealthy(url: string): Promise<void> {
  for (const path of ['/healthz', '/readyz']) {
    const res = await fetch(`${url}${path}`);
    await res.arrayBuffer();
    if (res.status !== 200) throw new Error(`${path} answered ${res.status}`);
  }
}

export interface WellKnown {
  kmsCluster: string;
  rsaPublicKey: { kty: string; kid: string; n: string; e: string; x5c: string[] };
  domains: string[];
}

export class TestClient {
  channelUri = '';
  channelKey: Uint8Array = new Uint8Array(0);

  private constructor(
    readonly url: string,
    readonly wellKnown: WellKnown,
    readonly staticKey: JoseKey,
    public bearer: string,
    public clientId: string,
  ) {}

  static async connect(url: string, bearer: string, clientId = `client-${randomUUID()}`): Promise<TestClient> {
    const wellKnown = (await (await fetch(`${url}/.well-known/kms`)).json()) as WellKnown;
    const { kty, n, e } = wellKnown.rsaPublicKey;
    const staticKey = (await importJWK({ kty, n, e }, 'RSA-OAEP')) as JoseKey;
    const client = new TestClient(url, wellKnown, staticKey, bearer, clientId);
    const answer = await client.handshake();
    if (answer.status !== 201) throw new Error(`handshake failed: ${answer.status} ${answer.reason}`);
    return client;
  }

  /** Performs an ECDHE handshake (again); returns the server's answer. */
  async handshake(extra: Record<string, unknown> = {}): Promise<KmsResponse> {
    const pair = await generateEphemeralKeyPair();
    const body = { requestId: randomUUID(), client: this.client(), method: 'create', uri: '/ecdhe', jwk: pair.publicJwk, ...extra };
    const answer = await this.decode((await postBatch(this.url, [await this.sealStatic(body)]))[0]!);
    if (answer.status === 201) {
      const key = answer.key as { uri: string; jwk: { kty: 'EC'; crv: 'P-256'; x: string; y: string } };
      this.channelUri = key.uri;
      this.channelKey = await deriveChannelKey(pair.privateKey, await importEcPublicKey(key.jwk));
    }
    return answer;
  }

  client(): { clientId: string; credential: { bearer: string } } {
    return { clientId: this.clientId, credential: { bearer: this.bearer } };
  }

  /** An ECDHE-shaped message under the static key. */
  async sealStatic(body: unknown): Promise<string> {
    const rsa = (await importJWK({ ...this.wellKnown.rsaPublicKey, x5c: undefined }, 'RSA-OAEP')) as JoseKey;
    return encryptStatic(enc.encode(JSON.stringify(body)), rsa, this.wellKnown.rsaPublicKey.kid);
  }

  /** A common message under the channel key. */
  async seal(body: unknown, kid = this.channelUri, key = this.channelKey): Promise<string> {
    const text = typeof body === 'string' ? body : JSON.stringify(body);
    return joseCodec.encryptChannel(enc.encode(text), key, kid);
  }

  /** Opens an answer: a JWS must verify under the static key, a JWE must decrypt under the channel key. */
  async decode(answer: string): Promise<KmsResponse & { _signed?: boolean }> {
    if (segmentCount(answer) === 3) {
      const rsa = (await importJWK({ kty: 'RSA', n: this.wellKnown.rsaPublicKey.n, e: this.wellKnown.rsaPublicKey.e }, 'PS256')) as JoseKey;
      const { plaintext } = await verifyStatic(answer, rsa);
      return { ...(JSON.parse(dec.decode(plaintext)) as KmsResponse), _signed: true };
    }
    const { plaintext } = await joseCodec.decryptChannel(answer, this.channelKey);
    return JSON.parse(dec.decode(plaintext)) as KmsResponse;
  }

  /** Sends one request (requestId and client filled in unless given) and decodes the answer. */
  async request(body: Record<string, unknown>): Promise<KmsResponse & { _signed?: boolean }> {
    const full = { requestId: randomUUID(), client: this.client(), ...body };
    return this.decode((await postBatch(this.url, [await this.seal(full)]))[0]!);
  }

  async requestWs(bodies: Record<string, unknown>[]): Promise<KmsResponse[]> {
    const ws = new WebSocket(`${this.url.replace(/^http/, 'ws')}/kms/ws`);
    await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
    const pending = new Map<string, (r: KmsResponse) => void>();
    ws.on('message', (data) => {
      void this.decode(String(data)).then((r) => pending.get(String(r.requestId))?.(r));
    });
    const answers = await Promise.all(
      bodies.map(async (body) => {
        const requestId = randomUUID();
        const answer = new Promise<KmsResponse>((resolve) => pending.set(requestId, resolve));
        ws.send(await this.seal({ requestId, client: this.client(), ...body }));
        return answer;
      }),
    );
    ws.close();
    return answers;
  }
}
