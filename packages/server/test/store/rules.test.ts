/**
 * The decisions both stores share (src/store/rules.ts), without a database: every bind outcome
 * and its precedence, what binds write, how adds of authorizations merge and count, the sweep's
 * cutoffs, how an audit batch must follow the head, the peers' replay window and the inputs refused. contract.ts checks each backend applies them.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { AuditRow, AuthorizationRow, KeyBind, KeyRow } from '../../src/model.js';
import {
  answerClaimDecision,
  authIdsOf,
  bindOutcome,
  bindWrites,
  checkAuditLink,
  checkAuditRow,
  checkChangesRead,
  checkCount,
  checkKeyFilter,
  checkKeyRow,
  checkPushRow,
  checkText,
  feedCutoffs,
  PEER_REQUEST_SLICE_MS,
  peerRequestOutcome,
  peerRequestSlices,
  planAuthorizations,
  putCopyOutcome,
  sweepCutoffs,
  type AnswerState,
} from '../../src/store/rules.js';
import { CHANGE_RETENTION_MS, INVALIDATION_RETENTION_MS, MAX_KEPT_CHANGES } from '../../src/limits.js';

const now = 1_800_000_000_000;
const key = (id: string, over: Partial<KeyRow> = {}): KeyRow => ({
  id,
  userId: 'alice@a.example',
  clientId: 'c1',
  createdAt: now - 1000,
  expiresAt: now + 1000,
  resourceId: null,
  bindDate: null,
  bindSeq: null,
  cmkId: 'cmk',
  sealed: new Uint8Array([1]),
  ...over,
});
const bind = (id: string, over: Partial<KeyBind> = {}): KeyBind => ({ id, userId: 'alice@a.example', clientId: 'c1', bindDate: now, expiresAt: now + 5000, now, ...over });
const keys = (...rows: KeyRow[]) => new Map(rows.map((k) => [k.id, k]));
const found = (...rows: KeyRow[]) => ({ resource: true, keys: keys(...rows) });

describe('bindOutcome', () => {
  test('bound: an unbound, unexpired key of the same user and client, into an existing resource', () => {
    assert.equal(bindOutcome([bind('k')], found(key('k'))), 'bound');
    assert.equal(bindOutcome([bind('a'), bind('b')], found(key('a'), key('b'))), 'bound');
    assert.equal(bindOutcome([], found()), 'bound', 'nothing to bind');
  });

  test('missing: no such key, or no such resource', () => {
    assert.equal(bindOutcome([bind('k')], found()), 'missing');
    assert.equal(bindOutcome([bind('a'), bind('b')], found(key('a'))), 'missing', 'one of two');
    assert.equal(bindOutcome([bind('k')], { resource: false, keys: keys(key('k')) }), 'missing', 'resource swept');
    assert.equal(bindOutcome([], { resource: false, keys: keys() }), 'missing', 'even with nothing to bind');
  });

  test('not-owner: another user, or the same user from another client', () => {
    assert.equal(bindOutcome([bind('k', { userId: 'bob@a.example' })], found(key('k'))), 'not-owner');
    assert.equal(bindOutcome([bind('k', { clientId: 'c2' })], found(key('k'))), 'not-owner');
    assert.equal(bindOutcome([bind('k')], found(key('k', { userId: 'bob@a.example' }))), 'not-owner');
  });

  test('already-bound: a bound key (to any resource), or a key named twice', () => {
    assert.equal(bindOutcome([bind('k')], found(key('k', { resourceId: 'r', bindDate: now, bindSeq: 1 }))), 'already-bound');
    assert.equal(bindOutcome([bind('k'), bind('k')], found(key('k'))), 'already-bound');
  });

  test('expired: the unbound key expired at or before `now`, not a millisecond later', () => {
    assert.equal(bindOutcome([bind('k')], found(key('k', { expiresAt: now }))), 'expired');
    assert.equal(bindOutcome([bind('k')], found(key('k', { expiresAt: now - 1 }))), 'expired');
    assert.equal(bindOutcome([bind('k')], found(key('k', { expiresAt: now + 1 }))), 'bound');
  });

  test('precedence per key: missing, not-owner, already-bound, expired', () => {
    const boundExpired = key('k', { resourceId: 'r', expiresAt: now - 1 });
    assert.equal(bindOutcome([bind('k', { userId: 'bob@a.example' })], found(boundExpired)), 'not-owner', 'nobody else learns it is bound');
    assert.equal(bindOutcome([bind('k')], found(boundExpired)), 'already-bound', 'bound before expired');
    assert.equal(bindOutcome([bind('k'), bind('k', { clientId: 'c2' })], found(key('k'))), 'not-owner', 'a second naming by another client');
    assert.equal(bindOutcome([bind('k')], { resource: false, keys: keys(key('k', { userId: 'bob@a.example' })) }), 'missing');
  });

  test('the first refusal in the order given decides', () => {
    const state = found(key('expired', { expiresAt: now }), key('theirs', { userId: 'bob@a.example' }));
    assert.equal(bindOutcome([bind('expired'), bind('theirs'), bind('gone')], state), 'expired');
    assert.equal(bindOutcome([bind('theirs'), bind('expired'), bind('gone')], state), 'not-owner');
    assert.equal(bindOutcome([bind('gone'), bind('theirs'), bind('expired')], state), 'missing');
  });

  test('a bind whose times are not integers is refused, whatever the key', () => {
    assert.throws(() => bindOutcome([bind('k', { bindDate: now + 0.5 })], found(key('k'))), RangeError);
    assert.throws(() => bindOutcome([bind('k', { now: Number.NaN })], found()), /bind\.now must be an integer/);
    assert.throws(() => bindOutcome([bind('k', { expiresAt: Infinity })], found(key('k'))), RangeError);
  });
});

describe('bindWrites', () => {
  test('each key takes its bind date, new expiry and the reserved sequence numbers in the order given', () => {
    const writes = bindWrites([bind('b', { bindDate: now + 1, expiresAt: now + 9 }), bind('a')], 'r', 42);
    assert.deepEqual(writes, [
      { id: 'b', resourceId: 'r', bindDate: now + 1, bindSeq: 41, expiresAt: now + 9 },
      { id: 'a', resourceId: 'r', bindDate: now, bindSeq: 42, expiresAt: now + 5000 },
    ]);
    assert.deepEqual(bindWrites([], 'r', 7), []);
  });
});

describe('planAuthorizations', () => {
  const row = (authId: string | null, id = `new-${authId}`): AuthorizationRow => ({ id, resourceId: 'asked', authId, roleUri: null, createdAt: now });
  const held = (authId: string): AuthorizationRow => ({ ...row(authId, `old-${authId}`), resourceId: 'r' });
  const none = { count: 0, byAuthId: new Map<string, AuthorizationRow>() };

  test('new rows are written to the resource and answered as written', () => {
    const plan = planAuthorizations('r', [row('bob@a.example'), row(null)], none, 10);
    assert.notEqual(plan, 'over-limit');
    if (plan === 'over-limit') return;
    assert.deepEqual(plan.inserts, [{ ...row('bob@a.example'), resourceId: 'r' }, { ...row(null), resourceId: 'r' }]);
    assert.deepEqual(plan.answer, plan.inserts);
  });

  test('an authId the resource holds is answered by its row and not written', () => {
    const plan = planAuthorizations('r', [row('alice@a.example'), row('bob@a.example')], { count: 1, byAuthId: new Map([['alice@a.example', held('alice@a.example')]]) }, 10);
    if (plan === 'over-limit') return assert.fail('within the limit');
    assert.deepEqual(plan.answer.map((a) => a.id), ['old-alice@a.example', 'new-bob@a.example']);
    assert.deepEqual(plan.inserts.map((a) => a.id), ['new-bob@a.example']);
  });

  test('an authId twice in one add is one row; anonymous rows are never merged', () => {
    const plan = planAuthorizations('r', [row('bob@a.example', 'b1'), row('bob@a.example', 'b2'), row(null, 'n1'), row(null, 'n2')], none, 10);
    if (plan === 'over-limit') return assert.fail('within the limit');
    assert.deepEqual(plan.answer.map((a) => a.id), ['b1', 'b1', 'n1', 'n2']);
    assert.deepEqual(plan.inserts.map((a) => a.id), ['b1', 'n1', 'n2']);
  });

  test('over-limit when what would be written takes the resource past the limit; what exists does not count twice', () => {
    assert.equal(planAuthorizations('r', [row('bob@a.example'), row('carol@a.example')], { ...none, count: 3 }, 4), 'over-limit');
    assert.notEqual(planAuthorizations('r', [row('bob@a.example')], { ...none, count: 3 }, 4), 'over-limit', 'exactly at the limit');
    const full = { count: 4, byAuthId: new Map([['alice@a.example', held('alice@a.example')]]) };
    assert.notEqual(planAuthorizations('r', [row('alice@a.example')], full, 4), 'over-limit', 'nothing new to write');
    assert.equal(planAuthorizations('r', [row(null)], full, 4), 'over-limit');
  });

  test('a malformed limit or row is refused', () => {
    assert.throws(() => planAuthorizations('r', [], none, -1), RangeError);
    assert.throws(() => planAuthorizations('r', [{ ...row(null), createdAt: 1.5 }], none, 10), /authorization\.createdAt/);
  });

  test('authIdsOf: the non-null authIds, once each, in order', () => {
    assert.deepEqual(authIdsOf([row('b'), row(null), row('a'), row('b')]), ['b', 'a']);
    assert.deepEqual(authIdsOf([row(null)]), []);
  });
});

describe('the change feed and federation invalidations', () => {
  test('a sweep keeps feed entries for their retention and the newest MAX_KEPT_CHANGES, invalidations for theirs', () => {
    assert.deepEqual(feedCutoffs(now, 5), { changesAt: now - CHANGE_RETENTION_MS, changesSeq: 5 - MAX_KEPT_CHANGES, invalidationsAt: now - INVALIDATION_RETENTION_MS });
    assert.throws(() => feedCutoffs(now + 0.5, 0), RangeError);
  });

  test('a copy is refused only when the KRO was invalidated after its fetch began', () => {
    assert.equal(putCopyOutcome(undefined, 0), 'stored', 'never invalidated');
    assert.equal(putCopyOutcome(3, 3), 'stored', 'invalidated before the fetch began (the mark includes it)');
    assert.equal(putCopyOutcome(2, 3), 'stored');
    assert.equal(putCopyOutcome(4, 3), 'invalidated');
    assert.throws(() => putCopyOutcome(1, -1), RangeError);
    assert.throws(() => putCopyOutcome(1, 0.5), RangeError);
  });

  test('a read of the feed names a seq and at least one entry', () => {
    checkChangesRead(0, 1);
    assert.throws(() => checkChangesRead(0, 0), /limit must be at least 1/);
    assert.throws(() => checkChangesRead(-1, 10), /afterSeq must be a non-negative integer/);
    assert.throws(() => checkChangesRead(Number.NaN, 10), RangeError);
  });
});

describe('sweepCutoffs', () => {
  test('resources and channels up to now, unbound keys up to the grace before it', () => {
    assert.deepEqual(sweepCutoffs(now, 86_400_000), { resources: now, unboundKeys: now - 86_400_000, channels: now, peerRequests: now });
    assert.deepEqual(sweepCutoffs(now, 0), { resources: now, unboundKeys: now, channels: now, peerRequests: now });
  });

  test('a negative grace or a fractional now is refused', () => {
    assert.throws(() => sweepCutoffs(now, -1), /unboundGraceMs must be a non-negative integer/);
    assert.throws(() => sweepCutoffs(now + 0.5, 0), RangeError);
  });
});

describe('audit batches (checkAuditLink)', () => {
  const row = (seq: number, prevHash: string, hash: string): AuditRow => ({
    seq, time: now, principal: null, clientId: null, method: null, uri: null, status: 200, peer: null, requestId: null, node: 'n', prevHash, hash,
  });
  const head = { seq: 7, hash: 'h7' };

  test('rows that follow the head one by one pass, and so does an empty batch', () => {
    assert.doesNotThrow(() => checkAuditLink(head, [row(8, 'h7', 'h8'), row(9, 'h8', 'h9')]));
    assert.doesNotThrow(() => checkAuditLink(head, []));
  });

  test('a gap, a repeated seq, a wrong predecessor or a malformed row is refused', () => {
    assert.throws(() => checkAuditLink(head, [row(9, 'h7', 'h9')]), /audit record 9 does not follow record 7/);
    assert.throws(() => checkAuditLink(head, [row(7, 'h7', 'x')]), /does not follow/);
    assert.throws(() => checkAuditLink(head, [row(8, 'h6', 'h8')]), /does not follow/, 'a fork of the head');
    assert.throws(() => checkAuditLink(head, [row(8, 'h7', 'h8'), row(9, 'h7', 'h9')]), /audit record 9 does not follow record 8/);
    assert.throws(() => checkAuditLink(head, [{ ...row(8, 'h7', 'h8'), time: now + 0.5 }]), /audit\.time/);
  });
});

describe("the peers' replay window", () => {
  const window = 600_000;
  const request = (at: number) => ({ peer: 'b.example', requestId: 'string:r', now: at, expiresAt: at + window });

  test('a request counts in the slice of its instant; the slices since its window began still count', () => {
    const at = 100 * PEER_REQUEST_SLICE_MS + 5;
    assert.deepEqual(peerRequestSlices(request(at)), { slice: 100, since: 90, expiresAt: 101 * PEER_REQUEST_SLICE_MS + window });
    // On a slice boundary the window reaches back exactly window / slice slices.
    assert.deepEqual(peerRequestSlices(request(100 * PEER_REQUEST_SLICE_MS)), { slice: 100, since: 90, expiresAt: 101 * PEER_REQUEST_SLICE_MS + window });
  });

  test('the count of a slice outlives every request it counted', () => {
    const at = 100 * PEER_REQUEST_SLICE_MS;
    for (const t of [at, at + 1, at + PEER_REQUEST_SLICE_MS - 1]) {
      // Every later request whose window still holds one of this slice's reads this slice.
      const { expiresAt } = peerRequestSlices(request(t));
      const lastHeld = t + window - 1;
      assert.ok(peerRequestSlices(request(lastHeld)).since <= 100 && expiresAt > lastHeld, String(t));
    }
  });

  test('a replay first, then the bound', () => {
    assert.equal(peerRequestOutcome({ seen: false, accepted: 0 }, 2), 'accepted');
    assert.equal(peerRequestOutcome({ seen: false, accepted: 1 }, 2), 'accepted');
    assert.equal(peerRequestOutcome({ seen: false, accepted: 2 }, 2), 'over-limit');
    assert.equal(peerRequestOutcome({ seen: true, accepted: 0 }, 2), 'replayed');
    assert.equal(peerRequestOutcome({ seen: true, accepted: 5 }, 2), 'replayed', 'a replay is told as one, even over the limit');
  });

  test('fractional instants, a window that ends before it starts, a negative limit are refused', () => {
    assert.throws(() => peerRequestSlices({ ...request(now), now: now + 0.5 }), /peer request\.now/);
    assert.throws(() => peerRequestSlices({ ...request(now), expiresAt: now }), /expiresAt must be after now/);
    assert.throws(() => peerRequestOutcome({ seen: false, accepted: 0 }, -1), /limit/);
  });
});

describe('input checks', () => {
  test('counts: non-negative safe integers only', () => {
    for (const n of [0, 1, Number.MAX_SAFE_INTEGER]) assert.doesNotThrow(() => checkCount('limit', n));
    for (const n of [-1, 1.5, Number.NaN, Infinity, 2 ** 53]) assert.throws(() => checkCount('limit', n), RangeError, String(n));
  });

  test('key filters: integer instants, a count as limit, every member optional', () => {
    assert.doesNotThrow(() => checkKeyFilter({}));
    assert.doesNotThrow(() => checkKeyFilter({ boundAfter: -5, boundBefore: now, limit: 0 }));
    assert.throws(() => checkKeyFilter({ boundAfter: now + 0.1 }), /filter\.boundAfter/);
    assert.throws(() => checkKeyFilter({ boundBefore: Number.NaN }), /filter\.boundBefore/);
    assert.throws(() => checkKeyFilter({ limit: -1 }), /limit/);
  });

  test('rows: integer columns must hold integers, nullable ones may be null', () => {
    assert.doesNotThrow(() => checkKeyRow(key('k')));
    assert.doesNotThrow(() => checkKeyRow(key('k', { resourceId: 'r', bindDate: now, bindSeq: 3 })));
    assert.throws(() => checkKeyRow(key('k', { bindSeq: 0.5 })), /key\.bindSeq must be an integer, got 0\.5/);
    assert.throws(() => checkKeyRow(key('k', { expiresAt: Number.NaN })), /key\.expiresAt/);
    const audit = { seq: 1, time: now, principal: null, clientId: null, method: null, uri: null, status: 200, peer: null, requestId: null, node: null, prevHash: '0', hash: 'h' };
    assert.doesNotThrow(() => checkAuditRow(audit));
    assert.throws(() => checkAuditRow({ ...audit, status: 200.5 }), /audit\.status/);
  });

  test('text columns: a lone surrogate or U+0000 is refused, any other text kept as it is', () => {
    assert.doesNotThrow(() => checkKeyRow(key('k', { clientId: 'c😀\n\u0007' })));
    for (const junk of ['\ud800', '\udfff', '\u0000']) {
      assert.throws(() => checkKeyRow(key('k', { clientId: `c${junk}` })), /key\.clientId contains/);
      assert.throws(() => checkKeyRow(key('k', { userId: `u${junk}@a.example` })), /key\.userId contains/);
      assert.throws(() => checkText('x', junk), RangeError);
      assert.throws(() => bindOutcome([bind('k', { clientId: junk })], found(key('k'))), /bind\.clientId contains/);
      assert.throws(() => checkPushRow({ id: 'p', resourceIds: ['r', `r${junk}`], userIds: [], targets: null, createdAt: now, attempts: 0, nextAttemptAt: now }), /push\.resourceIds\[1\] contains/);
    }
    const audit = { seq: 1, time: now, principal: null, clientId: null, method: 'create', uri: '/keys', status: 200, peer: null, requestId: 'r', node: null, prevHash: '0', hash: 'h' };
    for (const field of ['principal', 'clientId', 'method', 'uri', 'peer', 'requestId', 'node'] as const) {
      assert.throws(() => checkAuditRow({ ...audit, [field]: 'x\ud800' }), new RegExp(`audit\\.${field} contains a lone UTF-16 surrogate`));
      assert.throws(() => checkAuditLink({ seq: 0, hash: '0' }, [{ ...audit, [field]: 'x\u0000' }]), new RegExp(`audit\\.${field} contains U\\+0000`));
    }
  });
});

describe('remembered answers (answerClaimDecision)', () => {
  const now = 1_800_000_000_000;
  const claim = { channelId: 'c', requestId: 'string:r', digest: 'a'.repeat(64), claimant: 'x', now, leaseUntil: now + 10, answerUntil: now + 60, expiresAt: now + 100 };
  const state = (over: Partial<AnswerState> = {}): AnswerState => ({
    digest: claim.digest,
    leaseUntil: now + 5,
    answerUntil: now + 30,
    expiresAt: now + 50,
    answered: over.answer !== undefined,
    answer: undefined,
    ...over,
  });
  const answer = { cmkId: 'k', sealed: new Uint8Array([1]) };

  test('nothing remembered: insert; an expired row, whatever it held: taken over', () => {
    assert.equal(answerClaimDecision(undefined, claim), 'insert');
    assert.equal(answerClaimDecision(state({ expiresAt: now, answer }), claim), 'take-over');
    assert.equal(answerClaimDecision(state({ expiresAt: now, digest: 'b'.repeat(64) }), claim), 'take-over');
  });

  test('another request is a mismatch, answered or not; the same one gets its answer, past the lease too', () => {
    assert.deepEqual(answerClaimDecision(state({ digest: 'b'.repeat(64) }), claim), { state: 'mismatch' });
    assert.deepEqual(answerClaimDecision(state({ digest: 'b'.repeat(64), answer }), claim), { state: 'mismatch' });
    assert.deepEqual(answerClaimDecision(state({ answer }), claim), { state: 'answered', answer });
    assert.deepEqual(answerClaimDecision(state({ answer, leaseUntil: now - 1 }), claim), { state: 'answered', answer });
  });

  test('answered, past its answer\'s window or with the answer swept: spent, never run again while remembered', () => {
    assert.deepEqual(answerClaimDecision(state({ answer, answerUntil: now }), claim), { state: 'spent' });
    assert.deepEqual(answerClaimDecision(state({ answered: true, answer: undefined }), claim), { state: 'spent' });
    assert.deepEqual(answerClaimDecision(state({ answered: true, answer: undefined, leaseUntil: now - 1 }), claim), { state: 'spent' }, 'not a dead claim');
    assert.deepEqual(answerClaimDecision(state({ answered: true, answer: undefined, digest: 'b'.repeat(64) }), claim), { state: 'mismatch' });
    assert.equal(answerClaimDecision(state({ answered: true, answer: undefined, expiresAt: now }), claim), 'take-over', 'forgotten once its channel ended');
  });

  test('running under a live lease; taken over once it ended', () => {
    assert.deepEqual(answerClaimDecision(state(), claim), { state: 'running' });
    assert.equal(answerClaimDecision(state({ leaseUntil: now }), claim), 'take-over');
  });

  test('a malformed claim is a RangeError', () => {
    for (const over of [{ now: 0.5 }, { leaseUntil: now }, { expiresAt: now + 5 }, { answerUntil: now + 5 }, { answerUntil: now + 101 }, { digest: 'short' }]) {
      assert.throws(() => answerClaimDecision(undefined, { ...claim, ...over }), RangeError, JSON.stringify(over));
    }
  });
});
