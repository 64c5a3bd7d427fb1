/**
 * The rows a retrieve is decided on — the key, its resource, the resource's authorizations (and
 * those of the KROs they name) — kept in memory, so that the common request reads nothing from
 * storage but writes its audit record. Kept true as channels are (channels.ts):
 *
 * - a write of this process (bind, resource created, authorizations added or deleted) evicts what
 *   it changed once it has run, before its caller is answered (evictingWrites);
 * - a write of another process on the database reaches here through the change feed, which the
 *   stores extend in the write's own transaction (`key`, `resource`: coherence.ts evicts);
 * - a read that began before an eviction does not cache what it read (the epoch), which may be
 *   the row the eviction was about;
 * - while this node does not follow the feed nothing is cached or trusted, and every read goes to
 *   storage; when it follows again it starts empty;
 * - an entry is re-read after ROW_CACHE_MS whatever happens, should a word of the feed be lost.
 *
 * What a write elsewhere changes is thus seen here once the feed is read (PostgreSQL: at its
 * NOTIFY; SQLite: within CHANGE_POLL_MS). A refusal is never decided on cached rows alone: the
 * operation decides it again on rows read from storage (operations/guards.ts cachedFirst), so a
 * grant or a bind made a moment ago on another node is never refused here. Rows are not mutated
 * by their readers (they are frozen). Deleted rows need no word: the sweeper deletes only rows
 * past their expiry, which every check refuses by itself.
 *
 * Only storage's own answers are cached: no absent row (a key or a resource created elsewhere
 * a moment later is found at once).
 */
import { MAX_CACHED_AUTHORIZATIONS, MAX_CACHED_KEYS, MAX_CACHED_RESOURCES, ROW_CACHE_MS } from './limits.js';
import type { AuthorizationRow, KeyRow, ResourceRow } from './model.js';
import type { Store } from './store/store.js';

/** Where a check reads its rows: storage itself, or these caches of it. */
export type RowSource = Pick<Store, 'getKey' | 'getResource' | 'listAuthorizations'>;

interface Entry<V> {
  value: V;
  /** When it was read (now()). */
  at: number;
  /** Its share of the bound (authorization sets: their rows). */
  weight: number;
}

/** A map bounded in total weight, oldest entries out first, each used for ROW_CACHE_MS at most. */
class Bounded<V> {
  private readonly entries = new Map<string, Entry<V>>();
  private weight = 0;

  constructor(private readonly maxWeight: number) {}

  get(id: string, now: number): V | undefined {
    const entry = this.entries.get(id);
    if (entry === undefined) return undefined;
    // A clock set back makes the age negative: not trusted either.
    const age = now - entry.at;
    if (age >= 0 && age < ROW_CACHE_MS) return entry.value;
    this.delete(id);
    return undefined;
  }

  set(id: string, value: V, now: number, weight = 1): void {
    if (weight > this.maxWeight) return;
    this.delete(id);
    while (this.weight + weight > this.maxWeight) this.delete(this.entries.keys().next().value!);
    this.entries.set(id, { value, at: now, weight });
    this.weight += weight;
  }

  delete(id: string): void {
    const entry = this.entries.get(id);
    if (entry === undefined) return;
    this.entries.delete(id);
    this.weight -= entry.weight;
  }

  clear(): void {
    this.entries.clear();
    this.weight = 0;
  }

  get size(): number {
    return this.entries.size;
  }
}

/** One kind of row: its entries, how it is read from storage (frozen), and its weight. */
interface Cache<V> {
  rows: Bounded<V>;
  load(id: string): Promise<V | undefined>;
  weigh(value: V): number;
}

const one = () => 1;

export class CachedRows implements RowSource {
  private readonly keys: Cache<KeyRow>;
  private readonly resources: Cache<ResourceRow>;
  private readonly authorizations: Cache<readonly AuthorizationRow[]>;
  private following = false;
  /** Moves on every eviction: a read begun before one does not cache what it read. */
  private epoch = 0;

  constructor(
    store: RowSource,
    private readonly now: () => number,
  ) {
    this.keys = { rows: new Bounded(MAX_CACHED_KEYS), load: async (id) => freeze(await store.getKey(id)), weigh: one };
    this.resources = { rows: new Bounded(MAX_CACHED_RESOURCES), load: async (id) => freeze(await store.getResource(id)), weigh: one };
    this.authorizations = {
      rows: new Bounded(MAX_CACHED_AUTHORIZATIONS),
      load: async (id) => Object.freeze((await store.listAuthorizations(id)).map((row) => Object.freeze(row))),
      weigh: (rows) => Math.max(1, rows.length),
    };
  }

  /** Whether this node follows the change feed: only then is anything cached and served from memory. */
  get active(): boolean {
    return this.following;
  }

  getKey(id: string): Promise<KeyRow | undefined> {
    return this.read(this.keys, id, false);
  }

  getResource(id: string): Promise<ResourceRow | undefined> {
    return this.read(this.resources, id, false);
  }

  /** A resource's authorizations; the array is shared by every caller (frozen, like its rows). */
  async listAuthorizations(resourceId: string): Promise<AuthorizationRow[]> {
    return (await this.read(this.authorizations, resourceId, false)) as AuthorizationRow[];
  }

  /**
   * Storage's rows, which then replace what is cached of them: where a refusal is decided again
   * (operations/guards.ts cachedFirst), so that the next request is decided on them too.
   */
  readonly fresh: RowSource = {
    getKey: (id) => this.read(this.keys, id, true),
    getResource: (id) => this.read(this.resources, id, true),
    listAuthorizations: async (id) => (await this.read(this.authorizations, id, true)) as AuthorizationRow[],
  };

  /**
   * The rows of one decision, and whether any of them was served from memory: only then can a
   * refusal be a cache's, worth deciding again on storage (cachedFirst); a refusal decided on rows
   * just read from storage is storage's, and is not read twice.
   */
  decision(): RowSource & { fromMemory: boolean } {
    const d: RowSource & { fromMemory: boolean } = {
      fromMemory: false,
      getKey: (id) => this.read(this.keys, id, false, d),
      getResource: (id) => this.read(this.resources, id, false, d),
      listAuthorizations: async (id) => (await this.read(this.authorizations, id, false, d)) as AuthorizationRow[],
    };
    return d;
  }

  private async read<V>(cache: Cache<V>, id: string, fresh: boolean, decision?: { fromMemory: boolean }): Promise<V | undefined> {
    const now = this.now();
    if (this.following && !fresh) {
      const hit = cache.rows.get(id, now);
      if (hit !== undefined) {
        if (decision) decision.fromMemory = true;
        return hit;
      }
    }
    const epoch = this.epoch;
    const value = await cache.load(id);
    if (value !== undefined && this.following && epoch === this.epoch) cache.rows.set(id, value, now, cache.weigh(value));
    return value;
  }

  /** The key was bound (here or elsewhere): its next read goes to storage. */
  evictKey(id: string): void {
    this.epoch++;
    this.keys.rows.delete(id);
  }

  /** The resource was created or its authorizations changed (here or elsewhere). */
  evictResource(id: string): void {
    this.epoch++;
    this.resources.rows.delete(id);
    this.authorizations.rows.delete(id);
  }

  /** Following the feed (again): start empty, changes may have been missed. Or not: cache nothing. */
  setFollowing(on: boolean): void {
    this.epoch++;
    for (const cache of [this.keys, this.resources, this.authorizations]) cache.rows.clear();
    this.following = on;
  }

  /** How many rows of each kind are held (tests, and what an operator may want to see). */
  sizes(): { keys: number; resources: number; authorizationSets: number } {
    return { keys: this.keys.rows.size, resources: this.resources.rows.size, authorizationSets: this.authorizations.rows.size };
  }
}

const freeze = <T extends object>(row: T | undefined): T | undefined => (row === undefined ? undefined : Object.freeze(row));

/** The writes that change what CachedRows holds, and what each evicts once it has run (failed or not). */
const EVICTS: Partial<Record<keyof Store, (rows: CachedRows, args: unknown[]) => void>> = {
  bindKey: (rows, [bind]) => rows.evictKey((bind as { id: string }).id),
  createResource: (rows, [resource, , binds]) => {
    rows.evictResource((resource as ResourceRow).id);
    for (const b of binds as { id: string }[]) rows.evictKey(b.id);
  },
  addAuthorizations: (rows, [resourceId]) => rows.evictResource(resourceId as string),
  deleteAuthorizations: (rows, [resourceId]) => rows.evictResource(resourceId as string),
};

/**
 * `store` whose writes of keys, resources and authorizations evict from `rows` what they changed
 * before they resolve: this process reads its own writes at once (other processes: the feed).
 */
export function evictingWrites(store: Store, rows: CachedRows): Store {
  const wrappers = new Map<string | symbol, unknown>();
  return new Proxy(store, {
    get(target, property, receiver) {
      const evict = typeof property === 'string' ? EVICTS[property as keyof Store] : undefined;
      const value: unknown = Reflect.get(target, property, receiver);
      if (evict === undefined || typeof value !== 'function') return value;
      let wrapper = wrappers.get(property);
      if (wrapper === undefined) {
        wrapper = async (...args: unknown[]) => {
          try {
            return await (value as (...a: unknown[]) => Promise<unknown>).apply(target, args);
          } finally {
            evict(rows, args);
          }
        };
        wrappers.set(property, wrapper);
      }
      return wrapper;
    },
  });
}
