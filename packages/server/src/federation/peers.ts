/**
 * Federation peers (PROTOCOL.md §6, "Peers"): the other KMSs this one trusts, each with the
 * domains it serves, its endpoint and the CA certificates its identity must chain to. A peer may
 * not claim one of this KMS's own domains or another peer's domain (domains compare
 * case-insensitively); that is refused by `kms peer add` and at start (`validatePeers`).
 */
import { X509Certificate } from 'node:crypto';
import { parsePemCertificates } from '@openkms/protocol';
import { ConfigError, type KmsConfig } from '../config.js';

/** A configured peer, with its authority and domains lower-cased. */
export type Peer = KmsConfig['peers'][number];

/** What validation and the registry read from a config. */
export type PeersConfig = Pick<KmsConfig, 'authority' | 'domains' | 'peers'>;

const lower = (s: string): string => s.toLowerCase();

/**
 * The certificates of one trustAnchors entry, as base64 DER; each one parses as X.509.
 * Throws a plain Error saying what is wrong when the entry holds none that parse.
 */
export function trustAnchorCertificates(pem: string): string[] {
  let certs: string[];
  try {
    certs = parsePemCertificates(pem);
  } catch (err) {
    throw new Error((err as Error).message);
  }
  if (certs.length === 0) throw new Error('holds no PEM CERTIFICATE block');
  for (const b64 of certs) {
    try {
      new X509Certificate(Buffer.from(b64, 'base64'));
    } catch {
      throw new Error('holds a CERTIFICATE block that is not an X.509 certificate');
    }
  }
  return certs;
}

/**
 * Checks the names: no peer is this KMS, no two peers share an authority, no peer claims this
 * KMS's domains or another peer's. Throws ConfigError naming the offending peer.
 */
function checkPeerNames(config: PeersConfig): void {
  const ownAuthority = lower(config.authority);
  const own = new Set(config.domains.map(lower));
  const authorities = new Map<string, number>();
  const domainOwner = new Map<string, string>();
  config.peers.forEach((peer, i) => {
    const authority = lower(peer.authority);
    const where = `peers[${i}] (${authority})`;
    if (authority === ownAuthority) throw new ConfigError(`${where}: a peer cannot have this KMS's own authority`);
    const previous = authorities.get(authority);
    if (previous !== undefined) throw new ConfigError(`${where}: authority ${authority} is already peers[${previous}]`);
    authorities.set(authority, i);
    for (const d of new Set(peer.domains.map(lower))) {
      if (own.has(d)) throw new ConfigError(`${where}: domain ${d} is one of this KMS's own domains`);
      const owner = domainOwner.get(d);
      if (owner !== undefined) throw new ConfigError(`${where}: domain ${d} is already served by peer ${owner}`);
      domainOwner.set(d, authority);
    }
  });
}

/**
 * Refuses a config whose peers are invalid (ConfigError): a peer with this KMS's authority, two
 * peers with one authority, a peer claiming one of this KMS's domains or another peer's, or a
 * trustAnchors entry without a parseable certificate.
 */
export function validatePeers(config: PeersConfig): void {
  checkPeerNames(config);
  config.peers.forEach((peer, i) => {
    if (peer.trustAnchors.length === 0) throw new ConfigError(`peers[${i}] (${lower(peer.authority)}): trustAnchors is empty`);
    peer.trustAnchors.forEach((pem, j) => {
      try {
        trustAnchorCertificates(pem);
      } catch (err) {
        throw new ConfigError(`peers[${i}] (${lower(peer.authority)}): trustAnchors[${j}] ${(err as Error).message}`);
      }
    });
  });
}

/**
 * Lookups over the configured peers, by authority and by domain (both case-insensitive). The list
 * can be replaced as a whole while the KMS runs (SIGHUP): every lookup sees the old list or the new.
 */
export class PeerRegistry {
  private byAuth = new Map<string, Peer>();
  private byDom = new Map<string, Peer>();
  private list: readonly Peer[] = [];

  /** Throws ConfigError if the peers' names conflict (see validatePeers; certificates are not parsed here). */
  constructor(config: PeersConfig) {
    this.replace(config);
  }

  /** Takes the peers of `config` instead (same checks as the constructor; nothing changes if they fail). */
  replace(config: PeersConfig): void {
    checkPeerNames(config);
    const byAuth = new Map<string, Peer>();
    const byDom = new Map<string, Peer>();
    const list = Object.freeze(
      config.peers.map((p) => {
        const peer: Peer = Object.freeze({
          ...p,
          authority: lower(p.authority),
          domains: [...new Set(p.domains.map(lower))],
          trustAnchors: [...p.trustAnchors],
        });
        // An entry a reload leaves as it was stays the same object, so what is keyed on it (the
        // channel to that peer) is kept.
        const before = this.byAuth.get(peer.authority);
        return before && JSON.stringify(before) === JSON.stringify(peer) ? before : peer;
      }),
    );
    for (const peer of list) {
      byAuth.set(peer.authority, peer);
      for (const d of peer.domains) byDom.set(d, peer);
    }
    [this.list, this.byAuth, this.byDom] = [list, byAuth, byDom];
  }

  byAuthority(authority: string): Peer | undefined {
    return this.byAuth.get(lower(authority));
  }

  byDomain(domain: string): Peer | undefined {
    return this.byDom.get(lower(domain));
  }

  all(): readonly Peer[] {
    return this.list;
  }

  isPeerAuthority(authority: string): boolean {
    return this.byAuth.has(lower(authority));
  }
}
