/**
 * The chat example (draft §3.2) runs end to end: members read the room through its KRO, a late
 * member reads the whole history, a removed member cannot read what is said after the rotation,
 * and the relay never held anything but ciphertext.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { run } from './chat.js';

test('chat example: ciphertext-only relay, history for late joiners, removal and key rotation', { timeout: 20_000 }, async () => {
  const lines: string[] = [];
  const r = await run({ log: (line) => lines.push(line) });
  const texts = (reads: { text: string }[]) => reads.map((x) => x.text);
  const said = (until: number) => r.posted.filter((p) => p.seq <= until).map((p) => p.text);

  assert.equal(r.posted.length, 6);
  assert.notEqual(r.firstKeyUri, r.secondKeyUri);
  // Before the rotation every post uses the first key; after it, the second (Carol followed it too).
  assert.deepEqual(
    r.posted.map((p) => p.keyUri),
    [r.firstKeyUri, r.firstKeyUri, r.firstKeyUri, r.firstKeyUri, r.secondKeyUri, r.secondKeyUri],
  );

  // Bob joined after two posts and read them; Carol joined after three and read all three.
  assert.deepEqual(texts(r.bobHistory), said(2));
  assert.deepEqual(texts(r.carolHistory), said(3));
  assert.deepEqual(texts(r.bobRead), [...said(2), r.posted[3]!.text]);
  assert.deepEqual(texts(r.aliceRead), [r.posted[2]!.text, r.posted[3]!.text, r.posted[5]!.text]);

  // After his removal the relay still delivered to Bob, but the KMS refused him the new key.
  assert.equal(r.bobAfterRemoval.delivered, 2);
  assert.equal(r.bobAfterRemoval.read, 0);
  assert.equal(r.bobAfterRemoval.newKeyStatus, 403);
  assert.equal(r.bobAfterRemoval.resourceKeysStatus, 403);
  // Carol, still authorized, read the message under the new key.
  assert.deepEqual(texts(r.carolAfterRotation), [r.posted[4]!.text]);
  assert.equal(r.carolAfterRotation[0]!.keyUri, r.secondKeyUri);

  // The relay only ever handled ciphertext: no message text, no key value in any encoding.
  const frames = r.relayFrames.join('\n');
  assert.ok(r.relayFrames.length > 0);
  for (const p of r.posted) {
    assert.ok(!frames.includes(p.text), `the relay saw plaintext: ${p.text}`);
  }
  for (const secret of ['12 March', '19 March', '1.2M', 'press release', 'another project']) assert.ok(!frames.includes(secret), `the relay saw "${secret}"`);
  for (const k of r.keyValues) {
    const raw = Buffer.from(k, 'base64url');
    assert.equal(raw.length, 32);
    for (const form of [k, raw.toString('base64'), raw.toString('hex')]) assert.ok(!frames.includes(form), 'a key value reached the relay');
  }
  assert.ok(frames.includes(r.resourceUri), 'the relay knows only which KRO stands for the room');

  for (const step of ['(1)', '(2)', '(3)', '(4-5)', '(6)', '(7)']) assert.ok(lines.some((l) => l.startsWith(step)), `step ${step} is logged`);
  assert.ok(lines.some((l) => l.includes('removes Bob')));
});
