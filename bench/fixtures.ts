/**
 * What the benchmark measures against: a real KMS (`startDevKms`: `startKms` with a real SQLite
 * file and real keys) on an ephemeral loopback port with a quiet logger, a user with keys bound to resources (made with the
 * SDK), and messages sealed in advance for the in-process measurements of `kms.handle()`.
 */
import { createPrivateKey, createPublicKey, randomUUID, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import {
  deriveChannelKey,
  encryptStatic,
  generateEphemeralKeyPair,
  importEcPublicKey,
  joseCodec,
  segmentCount,
  verifyStatic,
  type EphemeralKeyRep,
  type KmsResponse,
} from '@openkms/protocol';
import { KmsClient, type KmsClientOptions } from '@openkms/client';
import { configPath, type Logger, type RunningKms } from '@openkms/server';
import { NO_RATE_LIMITS, startDevKms } from '@openkms/server/testing';

const enc = new TextEncoder();
const dec = new TextDecoder();

const AUTHORITY = 'kms.bench.example';
const DOMAIN = 'bench.example';
const USER = `alice@${DOMAIN}`;
const CLIENT_ID = 'bench-client';

export interface Fixture {
  running: RunningKms;
  authority: string;
  token: string;
  caPem: string;
  /** The KMS static key (private, for the crypto-limit measurement) and its kid. */
  staticKey: KeyObject;
  staticPublic: KeyObject;
  kid: string;
  /** Keys bound to resources this user created (so authorized). */
  keyUris: string[];
  /** Server problems logged (warn/error) during the run; the dev-issuer notice at start is left out. */
  problems: string[];
  /** SDK options for `url`, `token`, `trustAnchors`, `authority`. */
  clientOptions(extra?: Partial<KmsClientOptions>): KmsClientOptions;
  /** A fresh channel made through `kms.handle()`. */
  channel(): Promise<{ uri: string; key: Uint8Array }>;
  /** A common message under `channel`, as the SDK would send it. */
  seal(channel: { uri: string; key: Uint8Array }, body: Record<string, unknown>): Promise<{ message: string; plaintext: Uint8Array }>;
  /** A handshake message under the static key, with a fresh client P-256 key. */
  sealHandshake(): Promise<{ message: string; plaintext: Uint8Array }>;
  /** Opens an answer: a JWS under the static key or a JWE under `channel`. */
  open(answer: string, channel?: { key: Uint8Array }): Promise<KmsResponse>;
  close(): Promise<void>;
}

/** A Logger at "warn": debug and info cost nothing, problems are kept to be reported. */
function quietLogger(problems: string[]): Logger {
  const keep = (level: string) => (obj: object, msg?: string) => {
    if (msg?.startsWith('the development token issuer is enabled')) return;
    if (problems.length < 100) problems.push(`${level}: ${msg ?? ''} ${JSON.stringify(obj).slice(0, 300)}`);
  };
  return { debug() {}, info() {}, warn: keep('warn'), error: keep('error') };
}

export async function setup(): Promise<Fixture> {
  const problems: string[] = [];
  // The benchmark is one principal on one address as fast as it can go: the limits that stop
  // exactly that (on by default) are turned off, so it measures the KMS and not its 429s.
  const running = await startDevKms({ authority: AUTHORITY, domains: [DOMAIN], logger: quietLogger(problems), config: { limits: NO_RATE_LIMITS } });
  const token = await running.token(USER, { ttlSeconds: 3600 });
  const caPem = running.trustAnchors[0]!;
  const { config } = running;
  const staticKey = createPrivateKey(readFileSync(configPath(config, config.staticKey.key), 'utf8'));
  const staticPublic = createPublicKey(staticKey);
  const { kms } = running;
  const kid = kms.staticKid;
  const authority = kms.authority;
  const client = { clientId: CLIENT_ID, credential: { bearer: token } };

  const clientOptions = (extra: Partial<KmsClientOptions> = {}): KmsClientOptions => ({
    url: running.url,
    token,
    trustAnchors: [caPem],
    authority,
    clientId: CLIENT_ID,
    ...extra,
  });

  // Keys bound to resources, made the way an application makes them.
  const sdk = new KmsClient(clientOptions());
  const keyUris: string[] = [];
  try {
    for (let r = 0; r < 4; r++) {
      const keys = await sdk.createKeys(8);
      await sdk.createResource({ keyUris: keys.map((k) => k.uri) });
      keyUris.push(...keys.map((k) => k.uri));
    }
  } finally {
    await sdk.close();
  }

  const { open, seal, sealHandshake, channel } = messages(authority, kid, staticPublic, client);

  return {
    running,
    authority,
    token,
    caPem,
    staticKey,
    staticPublic,
    kid,
    keyUris,
    problems,
    clientOptions,
    open,
    channel: () => channel((message) => kms.handle(message)),
    seal,
    sealHandshake,
    close: () => running.close(),
  };
}

/**
 * Messages as a client makes them, for a KMS of `authority` whose static public key is
 * `staticPublic` (kid `kid`), from `client`: handshakes under the static key, common messages under
 * a channel, and answers opened. Shared by the in-process fixture and the service benchmark.
 */
export interface Messages {
  open(answer: string, channel?: { key: Uint8Array }): Promise<KmsResponse>;
  seal(channel: { uri: string; key: Uint8Array }, body: Record<string, unknown>): Promise<{ message: string; plaintext: Uint8Array }>;
  sealHandshake(): Promise<{ message: string; plaintext: Uint8Array }>;
  /** A channel agreed through `send` (one handshake message in, its answer out). */
  channel(send: (message: string) => Promise<string>): Promise<{ uri: string; key: Uint8Array }>;
}

export function messages(authority: string, kid: string, staticPublic: KeyObject, client: { clientId: string; credential: { bearer: string } }): Messages {
  const open = async (answer: string, channel?: { key: Uint8Array }): Promise<KmsResponse> => {
    if (segmentCount(answer) === 3) return JSON.parse(dec.decode((await verifyStatic(answer, staticPublic)).plaintext)) as KmsResponse;
    if (!channel) throw new Error('a channel answer without a channel');
    return JSON.parse(dec.decode((await joseCodec.decryptChannel(answer, channel.key)).plaintext)) as KmsResponse;
  };
  const sealHandshake = async () => {
    const pair = await generateEphemeralKeyPair();
    const body = { requestId: randomUUID(), client, method: 'create', uri: `kms://${authority}/ecdhe`, jwk: pair.publicJwk };
    const plaintext = enc.encode(JSON.stringify(body));
    return { message: await encryptStatic(plaintext, staticPublic, kid), plaintext, pair };
  };
  const seal = async (channel: { uri: string; key: Uint8Array }, body: Record<string, unknown>) => {
    const plaintext = enc.encode(JSON.stringify({ requestId: randomUUID(), client, ...body }));
    return { message: await joseCodec.encryptChannel(plaintext, channel.key, channel.uri), plaintext };
  };
  const channel = async (send: (message: string) => Promise<string>): Promise<{ uri: string; key: Uint8Array }> => {
    const { message, pair } = await sealHandshake();
    const answer = await open(await send(message));
    const rep = answer.key as EphemeralKeyRep | undefined;
    if (answer.status !== 201 || !rep) throw new Error(`handshake refused: ${answer.status} ${answer.reason ?? ''}`);
    return { uri: rep.uri, key: await deriveChannelKey(pair.privateKey, await importEcPublicKey(rep.jwk)) };
  };
  return {
    open,
    seal,
    sealHandshake: async () => {
      const { message, plaintext } = await sealHandshake();
      return { message, plaintext };
    },
    channel,
  };
}
