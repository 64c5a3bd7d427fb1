/**
 * A KmsClient refuses, when it is made, every option it cannot work with: INVALID_ARGUMENT naming
 * the option, instead of a confusing failure (or a hang) at the first request.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KmsClient } from '../src/client.js';
import type { KmsClientOptions } from '../src/options.js';
import type { FetchLike } from '../src/transport.js';
import { refusal } from './support.js';

const ANCHOR = '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n';
const unused: FetchLike = async () => {
  throw new Error('making a client sends nothing');
};
const base: KmsClientOptions = { url: 'http://127.0.0.1:7001', trustAnchors: [ANCHOR], token: 't', fetch: unused };

test('good options make a client, without sending anything', () => {
  const accepted: Partial<KmsClientOptions>[] = [
    {},
    { url: 'https://kms.a.example/prefix' },
    { trustAnchors: [] }, // refused when connecting (CERTIFICATE_REFUSED), not here
    { authority: 'KMS.A.Example' },
    { token: async () => 't', clientId: 'laptop', transport: 'http' },
    { transport: 'websocket', WebSocket: class {} as unknown as KmsClientOptions['WebSocket'] },
    { debounceMs: 0, renewBeforeMs: 0, timeoutMs: 1, maxBatch: 101 }, // over the KMS's 100: its 413 says so
    { now: () => 0, peer: { kid: 'kms://kms.b.example', jwk: {}, sign: async () => 'a.b.c' } },
  ];
  for (const options of accepted) assert.ok(new KmsClient({ ...base, ...options }), JSON.stringify(options));
});

test('each unusable option is INVALID_ARGUMENT naming it', async () => {
  const refused: [Partial<KmsClientOptions> | Record<string, unknown>, RegExp][] = [
    [{ url: 'not a url' }, /^options\.url is not a URL/],
    [{ url: undefined }, /^options\.url is not a URL/],
    [{ url: 'ftp://kms.a.example' }, /^options\.url must be http: or https:, not ftp:/],
    [{ url: 'ws://kms.a.example' }, /^options\.url must be http: or https:/],
    [{ url: 'https://kms.a.example/?x=1' }, /^options\.url must be a base URL/],
    [{ url: 'https://kms.a.example/#top' }, /^options\.url must be a base URL/],
    [{ trustAnchors: ANCHOR }, /^options\.trustAnchors must be an array/],
    [{ trustAnchors: undefined }, /^options\.trustAnchors must be an array/],
    [{ trustAnchors: [ANCHOR, 42] }, /^options\.trustAnchors\[1\] is not a PEM text/],
    [{ trustAnchors: ['a file name, not its content'] }, /^options\.trustAnchors\[0\] holds no PEM CERTIFICATE block/],
    [{ trustAnchors: ['-----BEGIN CERTIFICATE-----\n%%%\n-----END CERTIFICATE-----'] }, /^options\.trustAnchors\[0\] is not usable: PEM CERTIFICATE block is not base64/],
    [{ authority: 'kms.a.example:7001' }, /^options\.authority is not a KMS authority/],
    [{ authority: 42 }, /^options\.authority/],
    [{ token: 42 }, /^options\.token must be a string or a function/],
    [{ clientId: '' }, /^options\.clientId/],
    [{ transport: 'smtp' }, /^options\.transport must be 'http' or 'websocket'/],
    [{ fetch: 'fetch' }, /^options\.fetch must be a function/],
    [{ WebSocket: {} }, /^options\.WebSocket must be a function/],
    [{ now: 1 }, /^options\.now must be a function/],
    [{ timeoutMs: 0 }, /^options\.timeoutMs must be a positive number of ms, not 0/],
    [{ timeoutMs: Number.POSITIVE_INFINITY }, /^options\.timeoutMs/],
    [{ timeoutMs: '5000' }, /^options\.timeoutMs/],
    [{ renewBeforeMs: -1 }, /^options\.renewBeforeMs must be a non-negative number/],
    [{ debounceMs: Number.NaN }, /^options\.debounceMs/],
    [{ maxBatch: 0 }, /^options\.maxBatch must be a positive integer number of messages/],
    [{ maxBatch: 2.5 }, /^options\.maxBatch/],
    [{ peer: { kid: 'kms://kms.b.example', jwk: {} } }, /^options\.peer must be \{ kid, jwk, sign \}/],
  ];
  for (const [options, reason] of refused) {
    await refusal(() => new KmsClient({ ...base, ...options } as KmsClientOptions), 'INVALID_ARGUMENT', reason);
  }
  const badUrl = await refusal(() => new KmsClient({ ...base, url: 'not a url' }), 'INVALID_ARGUMENT');
  assert.ok(badUrl.cause instanceof TypeError, 'the URL parser\'s error is the cause');
  await refusal(() => new KmsClient(undefined as unknown as KmsClientOptions), 'INVALID_ARGUMENT', /^options must be an object$/);
});

test('a WebSocket transport needs a WebSocket: refused when there is none to use', { skip: 'WebSocket' in globalThis ? 'this Node has a global WebSocket' : false }, async () => {
  await refusal(() => new KmsClient({ ...base, transport: 'websocket' }), 'INVALID_ARGUMENT', /no WebSocket available: pass options\.WebSocket/);
});
