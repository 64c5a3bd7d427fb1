/**
 * Discovery refuses, before anything else is sent, every document it cannot trust, served here by
 * a `fetch` the test plays: each refusal with its code (DISCOVERY_INVALID, CERTIFICATE_REFUSED,
 * KMS_UNREACHABLE, KMS_TIMEOUT) and its cause. A genuine document and certificate, and the
 * certificate checks one by one, are in test/client.test.ts against the real KMS.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CertificateError } from '@openkms/protocol';
import { discover } from '../src/discovery.js';
import type { FetchLike } from '../src/transport.js';
import { refusal } from './support.js';

const URL = 'http://127.0.0.1:7001';
const ANCHOR = '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n';
const CLUSTER = 'kms://kms.a.example';
/** The shape of a discovery document; its x5c is no certificate, so the certificate check refuses it. */
const DOC = { kmsCluster: CLUSTER, rsaPublicKey: { kty: 'RSA', kid: CLUSTER, n: 'sXch', e: 'AQAB', x5c: ['AAAA'] }, domains: ['a.example'] };

/** A fetch that answers GET /.well-known/kms with `status` and `body` (a document or raw text). */
function serving(body: unknown, status = 200): { fetch: FetchLike; calls: string[] } {
  const calls: string[] = [];
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  const fetch: FetchLike = async (url, init) => {
    calls.push(`${init.method} ${url}`);
    return { status, text: async () => text, json: async () => JSON.parse(text) as unknown };
  };
  return { fetch, calls };
}

const discovering = (fetch: FetchLike, options: { authority?: string; trustAnchors?: string[]; timeoutMs?: number } = {}) =>
  discover({ url: URL, fetch, trustAnchors: [ANCHOR], ...options });

test('no trust anchors: CERTIFICATE_REFUSED before the document is even asked for', async () => {
  const { fetch, calls } = serving(DOC);
  await refusal(discovering(fetch, { trustAnchors: [] }), 'CERTIFICATE_REFUSED', /no trust anchors/);
  assert.deepEqual(calls, []);
});

test('the document is asked for at <url>/.well-known/kms; a certificate that does not parse is CERTIFICATE_REFUSED with the CertificateError as cause', async () => {
  const { fetch, calls } = serving(DOC);
  const err = await refusal(discovering(fetch), 'CERTIFICATE_REFUSED', /^KMS certificate refused: x5c\[0\] is not a DER X\.509 certificate$/);
  assert.deepEqual(calls, [`GET ${URL}/.well-known/kms`]);
  assert.ok(err.cause instanceof CertificateError);
});

test('a document that is not a KMS\'s is DISCOVERY_INVALID, saying what is wrong', async () => {
  const key = DOC.rsaPublicKey;
  const cases: [unknown, RegExp][] = [
    [{ ...DOC, kmsCluster: undefined }, /names no valid kmsCluster/],
    [{ ...DOC, kmsCluster: 'https://kms.a.example' }, /names no valid kmsCluster/],
    [{ ...DOC, kmsCluster: 'kms://bad host' }, /names no valid kmsCluster/],
    [{ ...DOC, rsaPublicKey: undefined }, /RSA JWK with kid = kmsCluster and an x5c chain/],
    [{ ...DOC, rsaPublicKey: { ...key, kty: 'EC' } }, /RSA JWK/],
    [{ ...DOC, rsaPublicKey: { ...key, kid: 'kms://kms.b.example' } }, /kid = kmsCluster/],
    [{ ...DOC, rsaPublicKey: { ...key, n: 42 } }, /RSA JWK/],
    [{ ...DOC, rsaPublicKey: { ...key, x5c: undefined } }, /x5c chain/],
    ['[1, 2]', /not a JSON object/],
    ['null', /not a JSON object/],
  ];
  for (const [doc, reason] of cases) await refusal(discovering(serving(doc).fetch), 'DISCOVERY_INVALID', reason);
  const notJson = await refusal(discovering(serving('<html>hello</html>').fetch), 'DISCOVERY_INVALID', /\/\.well-known\/kms answered a document that is not JSON$/);
  assert.ok(notJson.cause instanceof SyntaxError);
});

test('a KMS other than the expected authority is DISCOVERY_INVALID naming both; the comparison ignores case', async () => {
  await refusal(discovering(serving(DOC).fetch, { authority: 'kms.b.example' }), 'DISCOVERY_INVALID', /^expected KMS kms\.b\.example, found kms\.a\.example$/);
  // The expected authority matches: the refusal comes from the certificate, one step further.
  await refusal(discovering(serving(DOC).fetch, { authority: 'KMS.A.Example' }), 'CERTIFICATE_REFUSED');
});

test('HTTP statuses: 404 DISCOVERY_INVALID, 500 INTERNAL, a gateway\'s 502-503 KMS_UNREACHABLE and 504 KMS_TIMEOUT', async () => {
  await refusal(discovering(serving('{"error":"no such endpoint: GET /.well-known/kms"}', 404).fetch), 'DISCOVERY_INVALID', /GET http:\/\/127\.0\.0\.1:7001\/\.well-known\/kms answered HTTP 404: no such endpoint/);
  await refusal(discovering(serving('{"error":"internal error"}', 500).fetch), 'INTERNAL', /answered HTTP 500: internal error$/);
  for (const status of [502, 503]) await refusal(discovering(serving('Bad Gateway', status).fetch), 'KMS_UNREACHABLE', new RegExp(`^KMS unreachable: GET .*/\\.well-known/kms answered HTTP ${status}: Bad Gateway$`));
  await refusal(discovering(serving('Gateway Timeout', 504).fetch), 'KMS_TIMEOUT', /^KMS did not answer in time: GET .*\/\.well-known\/kms answered HTTP 504: Gateway Timeout$/);
});

test('a fetch that fails is KMS_UNREACHABLE with its error as cause; no answer in time is KMS_TIMEOUT', async () => {
  const refused = new TypeError('fetch failed', { cause: Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:7001'), { code: 'ECONNREFUSED' }) });
  const failing: FetchLike = async () => {
    throw refused;
  };
  const err = await refusal(discovering(failing), 'KMS_UNREACHABLE', /^KMS unreachable: GET http:\/\/127\.0\.0\.1:7001\/\.well-known\/kms: connect ECONNREFUSED 127\.0\.0\.1:7001$/);
  assert.equal(err.cause, refused);
  const hanging: FetchLike = (_url, init) => new Promise((_, reject) => init.signal!.addEventListener('abort', () => reject(init.signal!.reason)));
  const slow = await refusal(discovering(hanging, { timeoutMs: 20 }), 'KMS_TIMEOUT', /^KMS did not answer in time: GET .*\/\.well-known\/kms \(timeout 20 ms\)$/);
  assert.equal((slow.cause as Error).name, 'AbortError');
});
