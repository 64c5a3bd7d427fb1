/**
 * Seeded randomness for generated test inputs (mulberry32): a failing run prints its seed, and the
 * same seed in `envName` (or given) reproduces it exactly.
 */
export interface SeededRandom {
  seed: number;
  rand(): number;
  int(n: number): number;
  chance(p: number): boolean;
  pick<T>(items: readonly T[]): T;
  bytes(n: number): Buffer;
  /** A version-4 UUID made of this source's bytes (so a seed reproduces it too). */
  uuid(): string;
  /** `what`, tagged with the seed that reproduces it. */
  at(what: string): string;
}

export function seededRandom(envName: string, given?: number): SeededRandom {
  const fromEnv = process.env[envName];
  const seed = (given ?? (fromEnv ? Number(fromEnv) : Date.now() ^ (process.pid << 10))) >>> 0;
  let state = seed;
  const rand = (): number => {
    state = (state + 0x6d2b79f5) | 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number): number => Math.floor(rand() * n);
  const bytes = (n: number): Buffer => {
    const out = Buffer.alloc(n);
    for (let i = 0; i < n; i++) out[i] = int(256);
    return out;
  };
  return {
    seed,
    rand,
    int,
    chance: (p) => rand() < p,
    pick: (items) => items[int(items.length)]!,
    bytes,
    uuid() {
      const b = bytes(16);
      b[6] = (b[6]! & 0x0f) | 0x40;
      b[8] = (b[8]! & 0x3f) | 0x80;
      const h = b.toString('hex');
      return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
    },
    at: (what) => `${what} (${envName}=${seed})`,
  };
}
