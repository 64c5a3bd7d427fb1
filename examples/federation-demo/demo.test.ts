/**
 * `kms demo` (what `npm run demo` runs, OPERATING.md): the seed's ten steps end to end with two
 * real KMS processes; exits 0 only if Bob decrypted Alice's file and was refused after Alice
 * removed him. And the fallback without the invalidation push: B refuses within its staleness bound.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { test } from 'node:test';
import { runDemo } from './demo.js';
import { runKms } from './processes.js';

test('kms demo: the ten steps, Bob decrypts through his own KMS, and is refused after the revocation', { timeout: 70_000 }, async () => {
  const r = await runKms(['demo'], 60_000);
  assert.equal(r.code, 0, `exit ${r.code}\n${r.stderr}\n${r.stdout}`);
  const lines = r.stdout.split('\n');
  for (let step = 1; step <= 10; step++) assert.ok(lines.some((l) => l.startsWith(`(${step}) `)), `step (${step}) is printed`);

  // What crossed which wire.
  assert.match(r.stdout, /^\(1\) Alice → KMS A: create 2 keys \[JWE dir\/A256GCM, [\d.]+ K?B\]; KMS A → Alice: 2 unbound keys/m);
  assert.match(r.stdout, /^\(2\) .*Alice → file service: POST \/files \[\d+ chunks, each a JWE dir\/A256GCM/m);
  assert.match(r.stdout, /^\(6\) Bob → KMS B: retrieve kms:\/\/kms\.a\.example\/keys\//m);
  assert.match(r.stdout, /^\(7\) KMS B → KMS A: GET \/\.well-known\/kms.*ECDHE as kms:\/\/kms\.b\.example.*\[JWE RSA-OAEP[^,]*carrying a signed JWS/m);
  assert.match(r.stdout, /^\(8\) KMS B → KMS A: federated retrieve .* on behalf of bob@b\.example \[JWE dir\/A256GCM carrying a signed JWS, [\d.]+ K?B\]; KMS A → KMS B: .*\[JWE dir\/A256GCM carrying a signed JWS/m);
  assert.match(r.stdout, /A's audit: retrieve kms:\/\/kms\.a\.example\/keys\/\S+ by bob@b\.example via kms:\/\/kms\.b\.example → 200/);
  assert.match(r.stdout, /^\(9\) KMS B .* KMS B → Bob: the key \[JWE dir\/A256GCM/m);
  assert.match(r.stdout, /^\(10\) Bob decrypts .* identical to Alice's file\.$/m);

  // Only ciphertext at the file service and on the KMS-to-KMS wire.
  assert.match(r.stdout, /no line of the plaintext and no key value/);
  assert.match(r.stdout, /KMS-to-KMS wire carried .*: only JOSE, no key value/);

  // The revocation, within the fallback bound (5 s) plus the polling allowance (3 s).
  const refused = /refused 403 \(.*\) ([\d.]+) s after the removal/.exec(r.stdout);
  assert.ok(refused, 'Bob is refused after the revocation');
  assert.ok(Number(refused[1]) <= 8, `refused after ${refused[1]} s`);
  assert.match(r.stdout, /^Result: OK/m);

  // Clean shutdown: both KMS processes exit 0 on SIGTERM, the temporary folder is gone.
  assert.match(r.stdout, /KMS A exited 0, KMS B exited 0/);
  const root = /^Setup, in (\S+):$/m.exec(r.stdout)?.[1];
  assert.ok(root && !existsSync(root), `${root} was removed`);
});

test('runDemo without the push: B keeps serving its fresh copy, then refuses within federation.maxStaleness', { timeout: 60_000 }, async () => {
  const lines: string[] = [];
  const maxStaleness = 3;
  const r = await runDemo({ log: (line) => lines.push(line), withoutPush: true, maxStaleness });
  const output = lines.join('\n');
  assert.ok(r.bobDecrypted, output);
  assert.ok(r.serviceSawOnlyCiphertext, output);
  assert.ok(r.peerWireOpaque, output);
  assert.equal(r.invalidationPushed, false, output);
  assert.ok(r.revokedRefused, output);
  // Never past the bound (the copy was fetched before the removal), allowing one poll and its round trip.
  assert.ok(r.revocationDelayMs >= 0 && r.revocationDelayMs <= maxStaleness * 1000 + 1500, `refused after ${r.revocationDelayMs} ms`);
  assert.ok(r.servedAfterRevocation > 0, 'B served its still-fresh copy in the meantime');
  assert.ok(r.peerAuditRecords >= 2, "A's audit holds B's requests");
  assert.deepEqual(r.shutdownCodes, [0, 0]);
  assert.ok(lines.some((l) => l.includes('No invalidation crossed KMS A → KMS B')), output);
});
