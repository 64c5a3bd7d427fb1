import assert from 'node:assert/strict';
import { createPrivateKey, createPublicKey, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, test } from 'node:test';
import { CompactSign } from 'jose';
import { appendCheckpoint, lastCheckpointLine, signCheckpoint, verifyCheckpoint } from '../src/audit/checkpoint.js';
import { CHECKPOINT_EVERY, Checkpointer } from '../src/audit/checkpointer.js';
import { createCa, generateStaticKeyPem, issueKmsCertificate } from '../src/identity/certificates.js';
import { silentLogger } from '../src/logger.js';

const AUTHORITY = 'kms.a.example';
let key: { privateKey: ReturnType<typeof createPrivateKey>; kid: string };
let certPem: string;
let otherCertPem: string;

before(async () => {
  const ca = await createCa('checkpoint test CA');
  const [pem, otherPem] = await Promise.all([generateStaticKeyPem(), generateStaticKeyPem()]);
  const publicKeyPem = (p: string) => createPublicKey(p).export({ type: 'spki', format: 'pem' }) as string;
  certPem = await issueKmsCertificate({ ca, authority: AUTHORITY, publicKeyPem: publicKeyPem(pem) });
  otherCertPem = await issueKmsCertificate({ ca, authority: AUTHORITY, publicKeyPem: publicKeyPem(otherPem) });
  key = { privateKey: createPrivateKey(pem), kid: `kms://${AUTHORITY}` };
});

const head = { seq: 42, hash: 'ab'.repeat(32) };

test('a checkpoint is a PS256 JWS of {seq, hash, time} that verifies under the static certificate', async () => {
  const jws = await signCheckpoint(head, 1_800_000_000_000, key);
  const header = JSON.parse(Buffer.from(jws.split('.')[0]!, 'base64url').toString()) as Record<string, unknown>;
  assert.deepEqual(header, { alg: 'PS256', kid: key.kid, typ: 'kms-audit-checkpoint' });
  assert.deepEqual(await verifyCheckpoint(jws, certPem), { ...head, time: 1_800_000_000_000 });
});

test('a checkpoint signed by another key, altered, or not a checkpoint is refused', async () => {
  const jws = await signCheckpoint(head, 1_800_000_000_000, key);
  await assert.rejects(verifyCheckpoint(jws, otherCertPem), /signature does not verify/);
  const [h, , s] = jws.split('.');
  const forged = Buffer.from(JSON.stringify({ ...head, seq: 1000, time: 1 })).toString('base64url');
  await assert.rejects(verifyCheckpoint(`${h}.${forged}.${s}`, certPem), /signature does not verify/);
  await assert.rejects(verifyCheckpoint('not a jws', certPem), /signature does not verify/);
  // Signed by the right key, but another kind of JWS (a sealed answer has no such typ).
  const other = await new CompactSign(Buffer.from(JSON.stringify({ ...head, time: 1 }))).setProtectedHeader({ alg: 'PS256', kid: key.kid }).sign(key.privateKey);
  await assert.rejects(verifyCheckpoint(other, certPem), /not a checkpoint/);
  const bad = await new CompactSign(Buffer.from(JSON.stringify({ seq: -1, hash: 'x', time: 1 }))).setProtectedHeader({ alg: 'PS256', kid: key.kid, typ: 'kms-audit-checkpoint' }).sign(key.privateKey);
  await assert.rejects(verifyCheckpoint(bad, certPem), /not \{seq, hash, time\}/);
});

test('checkpoints are appended one a line, owner-only; the last line is the newest', async () => {
  const file = join(mkdtempSync(join(tmpdir(), 'kms-checkpoint-')), 'audit.checkpoints');
  for (let seq = 1; seq <= 3; seq++) appendCheckpoint(file, await signCheckpoint({ seq, hash: head.hash }, seq, key));
  assert.equal(statSync(file).mode & 0o777, 0o600);
  assert.equal(readFileSync(file, 'utf8').split('\n').length, 4, 'three lines and the final newline');
  assert.equal((await verifyCheckpoint(lastCheckpointLine(file)!, certPem)).seq, 3);
});

test('the checkpointer writes on its interval, after CHECKPOINT_EVERY records, and when it closes', async () => {
  const file = join(mkdtempSync(join(tmpdir(), 'kms-checkpoint-')), 'audit.checkpoints');
  let seq = 0;
  const store = { auditHead: async () => ({ seq, hash: randomBytes(32).toString('hex') }) };
  const lines = () => readFileSync(file, 'utf8').trim().split('\n');
  const checkpointer = new Checkpointer({ store, file, intervalMs: 3_600_000, key, logger: silentLogger, now: Date.now });
  checkpointer.start();
  seq = CHECKPOINT_EVERY - 1;
  checkpointer.written(CHECKPOINT_EVERY - 1);
  await checkpointer.checkpoint(); // what the interval calls
  assert.equal(lines().length, 1);
  seq += CHECKPOINT_EVERY;
  checkpointer.written(CHECKPOINT_EVERY - 1);
  checkpointer.written(1);
  await checkpointer.close();
  const written = await Promise.all(lines().map((l) => verifyCheckpoint(l, certPem)));
  assert.deepEqual(written.map((c) => c.seq), [CHECKPOINT_EVERY - 1, seq, seq], 'the 10,000th record, then the last at close');
});
