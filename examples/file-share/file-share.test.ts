/**
 * The file-sharing example (draft §3.1) runs end to end: Bob and Carol read Alice's file, Dave
 * cannot, and the file service never held anything but ciphertext.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { run } from './file-share.js';

test('file-share example: only ciphertext at the service, Bob and Carol decrypt, Dave is refused', { timeout: 20_000 }, async () => {
  const lines: string[] = [];
  const r = await run({ log: (line) => lines.push(line) });

  // Bob and Carol got Alice's file back, byte for byte.
  assert.ok(r.bob.equals(r.plaintext), "Bob's copy is Alice's file");
  assert.ok(r.carol.equals(r.plaintext), "Carol's copy is Alice's file");
  assert.ok(r.chunks >= 3, 'the file was streamed in several chunks');

  // The service stored ciphertext only: no line of the file, not even its distinctive words.
  const storedText = r.stored.toString('latin1');
  assert.ok(!storedText.includes('CONFIDENTIAL'));
  assert.ok(!storedText.includes('Initech'));
  for (const line of r.plaintext.toString('utf8').split('\n').filter((l) => l.length >= 16)) {
    assert.ok(!storedText.includes(line), `the stored bytes contain a line of the plaintext: ${line}`);
  }
  assert.equal(r.stored.indexOf(r.plaintext.subarray(0, 32)), -1);
  // Every chunk is a dir/A256GCM JWE naming the KMS key.
  for (const chunk of r.stored.toString('utf8').trim().split('\n')) {
    assert.equal(chunk.split('.').length, 5);
    const header = JSON.parse(Buffer.from(chunk.split('.')[0]!, 'base64url').toString('utf8')) as { alg: string; enc: string; kid: string };
    assert.deepEqual([header.alg, header.enc, header.kid], ['dir', 'A256GCM', r.keyUri]);
  }

  // Nothing the service ever received carries a key, in any encoding, nor the plaintext.
  const received = r.serviceReceived;
  assert.ok(r.keyValues.length >= 1);
  for (const k of r.keyValues) {
    const raw = Buffer.from(k, 'base64url');
    assert.equal(raw.length, 32);
    for (const form of [k, raw.toString('base64'), raw.toString('hex')]) assert.ok(!received.includes(form), 'a key value reached the file service');
    assert.equal(received.indexOf(raw), -1, 'raw key bytes reached the file service');
  }
  assert.ok(!received.toString('latin1').includes('CONFIDENTIAL'));
  assert.ok(received.toString('latin1').includes(r.resourceUri), 'the service knows only which KRO stands for the file');

  // The race of the draft, and Dave.
  assert.equal(r.tooEarlyStatus, 403);
  assert.equal(r.dave.downloadedBytes, r.stored.length, 'Dave can fetch the ciphertext');
  assert.equal(r.dave.resourceKeysStatus, 403);
  assert.equal(r.dave.keyStatus, 403);

  // Each step is told in plain words.
  for (const step of ['(1)', '(2)', '(3)', '(4)', '(5-7)', '(8)']) assert.ok(lines.some((l) => l.startsWith(step)), `step ${step} is logged`);
  assert.ok(lines.some((l) => l.includes('Dave')));
});
