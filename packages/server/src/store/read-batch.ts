/**
 * Reads by key that arrive in one turn of the event loop are answered by one query (PostgreSQL:
 * `… WHERE id = ANY($1)`). A round trip to the database costs the KMS process tens of
 * microseconds of CPU whatever it carries, and every retrieveKey reads its key, its resource and
 * the resource's authorizations: a batch of requests then pays three round trips, not three each.
 *
 * Each read stays what it was: one snapshot of committed rows, taken after the call was made (the
 * query is sent after it), so a caller still reads what it wrote before. Reads that ran together
 * see the same snapshot, as they could have had they run one after the other.
 */
import { outsideRequest } from './deadline.js';

interface Waiting<V> {
  resolves: ((value: V) => void)[];
  rejects: ((err: unknown) => void)[];
}

export class ReadBatch<K, V> {
  private waiting = new Map<K, Waiting<V>>();
  private scheduled = false;

  /**
   * `fetch` answers the given distinct keys (at most `max`), by key; a key it leaves out gets
   * `missing()`. A failed fetch fails the reads of its keys. Two reads of one key each get their
   * own answer (`copy` of the first): no caller sees what another does to its rows.
   */
  constructor(
    private readonly fetch: (keys: K[]) => Promise<Map<K, V>>,
    private readonly missing: () => V,
    private readonly copy: (value: V) => V,
    private readonly max = 500,
  ) {}

  load(key: K): Promise<V> {
    return new Promise<V>((resolve, reject) => {
      let w = this.waiting.get(key);
      if (!w) this.waiting.set(key, (w = { resolves: [], rejects: [] }));
      w.resolves.push(resolve);
      w.rejects.push(reject);
      if (!this.scheduled) {
        this.scheduled = true;
        // The query serves every read in it: it runs outside the request that started it.
        outsideRequest(() => setImmediate(() => this.run()));
      }
    });
  }

  private run(): void {
    this.scheduled = false;
    const waiting = this.waiting;
    this.waiting = new Map();
    const keys = [...waiting.keys()];
    for (let i = 0; i < keys.length; i += this.max) {
      const chunk = keys.slice(i, i + this.max);
      this.fetch(chunk).then(
        (found) => {
          for (const key of chunk) {
            const value = found.has(key) ? found.get(key)! : this.missing();
            const { resolves } = waiting.get(key)!;
            resolves[0]!(value);
            for (let i = 1; i < resolves.length; i++) resolves[i]!(this.copy(value));
          }
        },
        (err: unknown) => {
          for (const key of chunk) for (const reject of waiting.get(key)!.rejects) reject(err);
        },
      );
    }
  }
}
