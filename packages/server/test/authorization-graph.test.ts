/**
 * The one walk of the authorization graph (src/authorization-graph.ts), on graphs in memory: each
 * resource visited once, breadth first, within MAX_KRO_DEPTH hops and MAX_KRO_VISITS resources,
 * and how it ended. The step records every visit, so a bound is seen to stop the work itself.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { kroOf, walkKros } from '../src/authorization-graph.js';
import { MAX_KRO_DEPTH, MAX_KRO_VISITS } from '../src/limits.js';

/** A graph: resource -> the resources it links to. Walks it, returning how it ended and the visits. */
async function walk(graph: Record<string, string[]>, start: string[], stopAt?: string) {
  const visits: string[] = [];
  const end = await walkKros(start, async (id) => {
    visits.push(id);
    return id === stopAt ? 'stop' : (graph[id] ?? []);
  });
  return { end, visits };
}

/** r0 -> r1 -> … -> r<hops>. */
function chain(hops: number): Record<string, string[]> {
  const graph: Record<string, string[]> = {};
  for (let i = 0; i < hops; i++) graph[`r${i}`] = [`r${i + 1}`];
  return graph;
}

/** hub -> leaf0 … leaf<n-1>. */
const star = (n: number) => ({ hub: Array.from({ length: n }, (_, i) => `leaf${i}`) });

describe('walkKros', () => {
  test('a graph without links: the start only, done', async () => {
    assert.deepEqual(await walk({}, ['a']), { end: 'done', visits: ['a'] });
    assert.deepEqual(await walk({}, []), { end: 'done', visits: [] });
  });

  test('breadth first: every resource of one hop before any of the next', async () => {
    const graph = { a: ['b', 'c'], b: ['d'], c: ['e'], d: ['f'] };
    assert.deepEqual(await walk(graph, ['a']), { end: 'done', visits: ['a', 'b', 'c', 'd', 'e', 'f'] });
  });

  test('several starts are the first level, each once', async () => {
    assert.deepEqual(await walk({ a: ['c'], b: ['c', 'a'] }, ['a', 'b', 'a']), { end: 'done', visits: ['a', 'b', 'c'] });
  });

  test('cycles and self-links: each resource is visited once and the walk ends', async () => {
    assert.deepEqual(await walk({ a: ['b'], b: ['c'], c: ['a', 'b'] }, ['a']), { end: 'done', visits: ['a', 'b', 'c'] });
    assert.deepEqual(await walk({ a: ['a'] }, ['a']), { end: 'done', visits: ['a'] });
  });

  test('a diamond visits the shared resource once', async () => {
    assert.deepEqual(await walk({ a: ['b', 'c'], b: ['d'], c: ['d'] }, ['a']), { end: 'done', visits: ['a', 'b', 'c', 'd'] });
  });

  test("'stop' ends the walk at once: nothing after it is visited", async () => {
    const graph = { a: ['b', 'c'], b: ['d'], c: ['e'] };
    assert.deepEqual(await walk(graph, ['a'], 'b'), { end: 'stopped', visits: ['a', 'b'] });
    // Stopping at the last resource is still a stop, not a walk that ran out.
    assert.deepEqual(await walk(graph, ['a'], 'e'), { end: 'stopped', visits: ['a', 'b', 'c', 'd', 'e'] });
  });

  test(`MAX_KRO_DEPTH (${MAX_KRO_DEPTH}) hops are walked to the end`, async () => {
    const { end, visits } = await walk(chain(MAX_KRO_DEPTH), ['r0']);
    assert.equal(end, 'done');
    assert.equal(visits.length, MAX_KRO_DEPTH + 1);
  });

  test('one hop more is bounded, and the resource past the bound is never visited', async () => {
    const { end, visits } = await walk(chain(MAX_KRO_DEPTH + 1), ['r0']);
    assert.equal(end, 'bounded');
    assert.equal(visits.length, MAX_KRO_DEPTH + 1);
    assert.ok(!visits.includes(`r${MAX_KRO_DEPTH + 1}`));
    // Nor can a 'stop' there be reached.
    assert.equal((await walk(chain(MAX_KRO_DEPTH + 1), ['r0'], `r${MAX_KRO_DEPTH + 1}`)).end, 'bounded');
  });

  test('a cycle longer than the depth bound is bounded too (the last level still has somewhere to go)', async () => {
    const graph = chain(MAX_KRO_DEPTH + 1);
    graph[`r${MAX_KRO_DEPTH + 1}`] = ['r0'];
    assert.equal((await walk(graph, ['r0'])).end, 'bounded');
    // At the depth bound, links back to resources already visited leave nothing to walk: done.
    const short = chain(MAX_KRO_DEPTH);
    short[`r${MAX_KRO_DEPTH}`] = ['r0'];
    assert.equal((await walk(short, ['r0'])).end, 'done');
  });

  test('depth counts the shortest path: a far resource also linked directly is reached', async () => {
    const graph = chain(MAX_KRO_DEPTH + 3);
    graph.r0!.push(`r${MAX_KRO_DEPTH + 3}`);
    const { visits } = await walk(graph, ['r0'], `r${MAX_KRO_DEPTH + 3}`);
    assert.deepEqual(visits, ['r0', 'r1', `r${MAX_KRO_DEPTH + 3}`]);
  });

  test(`MAX_KRO_VISITS (${MAX_KRO_VISITS}) resources in all are walked; one more is bounded without being visited`, async () => {
    const within = await walk(star(MAX_KRO_VISITS - 1), ['hub']);
    assert.deepEqual([within.end, within.visits.length], ['done', MAX_KRO_VISITS]);
    const over = await walk(star(MAX_KRO_VISITS), ['hub']);
    assert.deepEqual([over.end, over.visits.length], ['bounded', MAX_KRO_VISITS]);
    assert.ok(!over.visits.includes(`leaf${MAX_KRO_VISITS - 1}`));
  });

  test('the visit bound holds across levels, within the depth bound', async () => {
    // Two levels of 20 links each: 1 + 20 + 400 resources, far within the depth bound.
    const graph: Record<string, string[]> = { root: [] };
    for (let i = 0; i < 20; i++) {
      graph.root!.push(`m${i}`);
      graph[`m${i}`] = Array.from({ length: 20 }, (_, j) => `l${i}-${j}`);
    }
    const { end, visits } = await walk(graph, ['root']);
    assert.deepEqual([end, visits.length], ['bounded', MAX_KRO_VISITS]);
  });
});

describe('kroOf', () => {
  const prefix = 'kms://kms.a.example/resources/';

  test('a KRO authId of this KMS names its resource id', () => {
    assert.equal(kroOf(`${prefix}abc`, prefix), 'abc');
  });

  test('a user, an anonymous authorization (null) or another KMS\'s KRO names none', () => {
    assert.equal(kroOf('alice@a.example', prefix), undefined);
    assert.equal(kroOf(null, prefix), undefined);
    assert.equal(kroOf('kms://kms.b.example/resources/abc', prefix), undefined);
  });
});
