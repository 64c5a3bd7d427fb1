/**
 * The KmsClient's own refusals that need no KMS: a closed client refuses every call without
 * sending anything (it never reopens a connection nobody would close). Everything the client does
 * with a KMS is tested against the real one in test/client*.test.ts.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { KmsClient } from '../src/client.js';
import type { FetchLike } from '../src/transport.js';
import { refusal } from './support.js';

const ANCHOR = '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n';

test('a closed client refuses every call with CLIENT_CLOSED and sends nothing; closing twice is fine', async () => {
  const calls: string[] = [];
  const fetch: FetchLike = async (url, init) => {
    calls.push(`${init.method} ${url}`);
    throw new Error('not reached');
  };
  for (const transport of ['http', 'websocket'] as const) {
    const client = new KmsClient({ url: 'http://127.0.0.1:7001', trustAnchors: [ANCHOR], token: 't', fetch, transport, WebSocket: class {} as never });
    await client.close();
    await client.close();
    await refusal(client.ping(), 'CLIENT_CLOSED', /closed: make a new one/);
    await refusal(client.authority(), 'CLIENT_CLOSED');
    await refusal(client.createKeys(1), 'CLIENT_CLOSED');
    await refusal(client.request({ method: 'retrieve', uri: '/keys' }), 'CLIENT_CLOSED');
    const key = { uri: 'kms://kms.a.example/keys/1', jwk: { k: randomBytes(32).toString('base64url') } };
    // Encrypting needs no KMS and still works; decrypting asks the KMS for the key.
    const jwe = await client.encrypt(key as never, 'local');
    await refusal(client.decrypt(jwe), 'CLIENT_CLOSED');
  }
  assert.deepEqual(calls, [], 'nothing was sent after close');
});
