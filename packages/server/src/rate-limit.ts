/**
 * Request limits (429), each a fixed one-minute window per key, counted in this process's memory
 * (docs/decisions.md, "Limits on by default"). 0 turns one off. Every key has a window of its own:
 * one principal (or address) past its limit is refused without touching anyone else's count, so a
 * flood is answered 429 while everyone else is served. Memory: windows that ended are dropped once
 * the table holds PRUNE_AT keys, so it holds about the keys seen in the last minute (never refusing
 * a key for want of room: that would let a flood of new keys lock everyone else out).
 */
import { isIPv4, isIPv6 } from 'node:net';

/** Windows held before the ended ones are dropped. */
const PRUNE_AT = 100_000;
const WINDOW_MS = 60_000;

export class RateLimiter {
  private readonly windows = new Map<string, { start: number; count: number }>();

  constructor(
    private readonly perMinute: number,
    private readonly now: () => number,
  ) {}

  allow(key: string): boolean {
    if (this.perMinute <= 0) return true;
    const now = this.now();
    let w = this.windows.get(key);
    if (!w || now - w.start >= WINDOW_MS) {
      if (this.windows.size > PRUNE_AT) this.prune(now);
      w = { start: now, count: 0 };
      this.windows.set(key, w);
    }
    w.count += 1;
    return w.count <= this.perMinute;
  }

  private prune(now: number): void {
    for (const [k, w] of this.windows) if (now - w.start >= WINDOW_MS) this.windows.delete(k);
  }
}

/**
 * The per-principal limit, keyed by the channel owner (core/authenticate.ts). A peer KMS is not
 * counted: it speaks for all of its users at once (forwarded requests, federated reads,
 * invalidations), each already counted by their own KMS, so one number for the whole peer would
 * throttle federation at a rate no single user reaches. Peers are configured and authenticated by
 * their certificates; their handshakes still count against their address (HandshakeLimit).
 */
export class PrincipalLimit {
  constructor(private readonly limiter: RateLimiter) {}

  allow(owner: string): boolean {
    return isPeerOwner(owner) || this.limiter.allow(owner);
  }
}

/** Peers own their channels as `kms://<authority>` (no path); users and bearers never do. */
function isPeerOwner(owner: string): boolean {
  return /^kms:\/\/[^/]+$/.test(owner);
}

/**
 * What a handshake is counted by: the address the connection came from, as the transport saw it.
 * IPv4 (also as IPv4-mapped IPv6) by the whole address; IPv6 by its /64, the least a host is given,
 * so that one host cannot pick a fresh address per handshake. Anything else (no address: an
 * in-process caller) is counted as itself.
 */
export function addressKey(address: string | undefined): string {
  if (address === undefined || address === '') return 'unknown';
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return mapped[1]!;
  if (isIPv4(address)) return address;
  if (isIPv6(address)) return `${expandIPv6(address).slice(0, 4).join(':')}::/64`;
  return address;
}

/** The eight 16-bit groups of an IPv6 address (zone id dropped), lower-case, without leading zeros. */
function expandIPv6(address: string): string[] {
  const bare = address.split('%')[0]!.toLowerCase();
  const [head, tail] = bare.includes('::') ? bare.split('::') : [bare, undefined];
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  // An embedded IPv4 tail (::1.2.3.4) is two groups; only the first four groups are used here.
  const groups = tail === undefined ? left : [...left, ...Array<string>(Math.max(0, 8 - left.length - right.length)).fill('0'), ...right];
  return groups.map((g) => (/^[0-9a-f]{1,4}$/.test(g) ? String(parseInt(g, 16).toString(16)) : g));
}
