/**
 * The invalidation inbox (src/federation/inbox.ts): which of a peer's URIs count, and the arrival
 * order that keeps a fetch overtaken by an invalidation from being stored or served. The store is
 * a fake that records what it was told to invalidate.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, test } from 'node:test';
import { Invalidations } from '../../src/federation/inbox.js';
import { MAX_TRACKED_KROS } from '../../src/limits.js';

const PEER = 'kms.a.example';

class CopyStore {
  readonly calls: { authority: string; uris: readonly string[] }[] = [];
  async invalidateCopies(authority: string, uris: readonly string[]): Promise<number> {
    this.calls.push({ authority, uris });
    return uris.length;
  }
}

const kro = (authority = PEER) => `kms://${authority}/resources/${randomUUID()}`;

function inbox() {
  const store = new CopyStore();
  return { inbox: new Invalidations(store), store };
}

/** A fetch held open until `finish()`: the mark it began at, and its end. */
function heldFetch(box: Invalidations): { startedAt: number; finish: () => Promise<void> } {
  let release!: () => void;
  let startedAt = -1;
  // during() calls the fetch at once, so both are set when it returns.
  const done = box.during(async (s) => {
    startedAt = s;
    await new Promise<void>((resolve) => (release = resolve));
  });
  return {
    startedAt,
    finish: () => {
      release();
      return done;
    },
  };
}

describe('which URIs count', () => {
  test('only the sender\'s own absolute KRO URIs reach the store', async () => {
    const { inbox: box, store } = inbox();
    const own = [kro(), kro()];
    const others = [
      `/resources/${randomUUID()}`, // relative: would mean this KMS's own
      kro('kms.c.example'), // another peer's: a peer cannot drop another peer's copies
      kro('kms.b.example'),
      `kms://${PEER}/keys/${randomUUID()}`,
      `kms://${PEER}/resources/not-a-uuid`,
      `kms://${PEER}/resources/${randomUUID()}/keys`,
      `kms://${PEER}/resources/${randomUUID()}?authId=x`,
      'not a uri',
    ];
    assert.equal(await box.invalidated(PEER, [others[0]!, own[0]!, ...others.slice(1), own[1]!]), 2);
    assert.deepEqual(store.calls, [{ authority: PEER, uris: own }]);
    // Only what counted is remembered against later fetches.
    for (const uri of others) assert.equal(box.overtook(uri, 0), false, uri);
    for (const uri of own) assert.equal(box.overtook(uri, 0), true, uri);
  });

  test('nothing that counts: 0, and the store is not asked', async () => {
    const { inbox: box, store } = inbox();
    assert.equal(await box.invalidated(PEER, [kro('kms.c.example'), `/resources/${randomUUID()}`]), 0);
    assert.deepEqual(store.calls, []);
  });
});

describe('overtook', () => {
  test('an invalidation that arrived during a fetch overtook it; one from before did not', async () => {
    const { inbox: box } = inbox();
    const before = kro();
    const during = kro();
    await box.invalidated(PEER, [before]);
    const result = await box.during(async (startedAt) => {
      await box.invalidated(PEER, [during]);
      return { before: box.overtook(before, startedAt), during: box.overtook(during, startedAt), untouched: box.overtook(kro(), startedAt) };
    });
    assert.deepEqual(result, { before: false, during: true, untouched: false });
  });

  test('a KRO invalidated again during a fetch overtook it, though it was invalidated before too', async () => {
    const { inbox: box } = inbox();
    const uri = kro();
    await box.invalidated(PEER, [uri]);
    assert.equal(await box.during(async (startedAt) => box.overtook(uri, startedAt)), false);
    assert.equal(
      await box.during(async (startedAt) => {
        await box.invalidated(PEER, [uri]);
        return box.overtook(uri, startedAt);
      }),
      true,
    );
  });

  test('each fetch is judged from its own start: a later fetch is not overtaken by what came before it', async () => {
    const { inbox: box } = inbox();
    const uri = kro();
    const slow = heldFetch(box);
    await box.invalidated(PEER, [uri]);
    assert.equal(await box.during(async (startedAt) => box.overtook(uri, startedAt)), false, 'the later fetch');
    assert.equal(box.overtook(uri, slow.startedAt), true, 'the fetch that was under way');
    await slow.finish();
  });
});

describe('during: the bookkeeping', () => {
  test('a fetch that throws rejects with its own error', async () => {
    const { inbox: box } = inbox();
    const err = new Error('peer failed');
    await assert.rejects(
      box.during(async () => {
        throw err;
      }),
      (e) => e === err,
    );
  });

  /**
   * Past MAX_TRACKED_KROS remembered KROs, the inbox forgets invalidations older than every fetch
   * under way. So whether an old invalidation is still remembered shows whether a fetch is still
   * counted as under way.
   */
  async function afterPruning(box: Invalidations, uri: string, startedAt: number): Promise<boolean> {
    const flood = Array.from({ length: MAX_TRACKED_KROS + 1 }, () => kro());
    await box.invalidated(PEER, flood);
    await box.invalidated(PEER, [kro()]); // prunes
    return box.overtook(uri, startedAt);
  }

  test('a fetch under way keeps the invalidations that can still overtake it', async () => {
    const { inbox: box } = inbox();
    const uri = kro();
    const fetch = heldFetch(box);
    await box.invalidated(PEER, [uri]);
    assert.equal(await afterPruning(box, uri, fetch.startedAt), true);
    await fetch.finish();
  });

  test('a fetch that threw no longer counts as under way: its invalidations are forgotten in turn', async () => {
    const { inbox: box } = inbox();
    const uri = kro();
    let startedAt = -1;
    await assert.rejects(
      box.during(async (s) => {
        startedAt = s;
        await box.invalidated(PEER, [uri]);
        throw new Error('peer failed');
      }),
    );
    assert.equal(await afterPruning(box, uri, startedAt), false);
  });

  test('two fetches from one mark: one throwing leaves the other counted', async () => {
    const { inbox: box } = inbox();
    const uri = kro();
    const survivor = heldFetch(box);
    await assert.rejects(
      box.during(async (startedAt) => {
        assert.equal(startedAt, survivor.startedAt);
        throw new Error('peer failed');
      }),
      /peer failed/,
    );
    await box.invalidated(PEER, [uri]);
    assert.equal(await afterPruning(box, uri, survivor.startedAt), true);
    await survivor.finish();
  });
});
