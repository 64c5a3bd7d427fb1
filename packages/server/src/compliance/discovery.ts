/**
 * Legal discovery (PROTOCOL.md §6, OPERATING.md `kms discovery export`): every key this KMS holds
 * for one user — the keys the user created, the keys of the KROs the user is authorized on, and
 * the federated keys the archive shows the user was given — each sealed as a JWE to a recipient's
 * public key, with the peers' signed answers (sealed too: they hold the keys) and the certificate
 * they were signed under, so that the recipient can check where each federated key came from.
 *
 * The file holds no key material in clear: a key is only in its JWE and in the sealed answers.
 */
import { CompactEncrypt, calculateJwkThumbprint, compactDecrypt, compactVerify, decodeProtectedHeader, importJWK, type JWK } from 'jose';
import { CertificateError, KmsError, formatDate, parseDate, verifyKmsCertificate } from '@openkms/protocol';
import type { StaticJwk } from '@openkms/client';
import { isAuthorized } from '../policy.js';
import type { UserPrincipal } from '../identity/principal.js';
import { domainOf } from '../identity/users.js';
import { unsealCopy, type CopyContent } from '../federation/copies.js';
import { keyAad } from '../operations/keys.js';
import type { Keyring } from '../keyring/keyring.js';
import type { ArchivedCopy, KeyRow } from '../model.js';
import { MAX_KEYS_PER_ANSWER, MAX_KRO_DEPTH } from '../limits.js';
import type { Store } from '../store/store.js';

export const DISCOVERY_FORMAT = 'openkms-discovery/1';

/** One key of the export. */
export interface DiscoveredKey {
  uri: string;
  /** The KRO it is bound to; null for an unbound key. */
  resourceUri: string | null;
  /** The KMS that made it: this one, or the peer whose KRO it belongs to. */
  authority: string;
  /** How the user holds it: created it, is authorized on its KRO here, or a peer gave it (archive). */
  via: 'created' | 'authorized' | 'federated';
  createDate?: string;
  bindDate?: string;
  expirationDate?: string;
  /** For a federated key: the index in `proofs` of the peer's answers that released it. */
  proof?: number;
  /** Compact JWE to the recipient; its plaintext is the key's JWK `{kty: "oct", kid, k}`. */
  jwe: string;
}

/** A peer's signed answers for one archived version of its KRO that authorizes the user. */
export interface DiscoveryProof {
  authority: string;
  resourceUri: string;
  /** The archive's version number of the KRO. */
  version: number;
  /** When this KMS received it (absent for a copy whose date the archive no longer knows). */
  fetchedAt?: string;
  /** The peer's static public key with its x5c chain, as this KMS verified it; null if not kept. */
  signer: StaticJwk | null;
  /** Compact JWE to the recipient; its plaintext is a JSON array of the peer's compact JWS answers. */
  answers: string;
}

export interface DiscoveryExport {
  format: typeof DISCOVERY_FORMAT;
  /** This KMS's authority. */
  kms: string;
  user: string;
  exportedAt: string;
  since: string | null;
  recipient: { kty: string; alg: string; thumbprint: string };
  keys: DiscoveredKey[];
  proofs: DiscoveryProof[];
}

/** The recipient's public key, and the key management algorithm the JWEs use for it. */
export interface Recipient {
  jwk: JWK;
  alg: 'RSA-OAEP-256' | 'ECDH-ES';
}

/** Refuses what is not a public RSA (2048 bits or more), EC or X25519 key, in one line. */
export function recipientOf(jwk: unknown): Recipient {
  if (!jwk || typeof jwk !== 'object' || Array.isArray(jwk)) throw new KmsError('INVALID_ARGUMENT', 'the recipient key is not a JWK (a JSON object)');
  const key = jwk as JWK;
  if ('d' in key || 'p' in key) throw new KmsError('INVALID_ARGUMENT', "the recipient key holds private members: give the recipient's public key only");
  if (key.kty === 'RSA' && typeof key.n === 'string' && Buffer.from(key.n, 'base64url').length >= 256) return { jwk: key, alg: 'RSA-OAEP-256' };
  if (key.kty === 'EC' && ['P-256', 'P-384', 'P-521'].includes(String(key.crv))) return { jwk: key, alg: 'ECDH-ES' };
  if (key.kty === 'OKP' && key.crv === 'X25519') return { jwk: key, alg: 'ECDH-ES' };
  throw new KmsError('INVALID_ARGUMENT', 'the recipient key must be RSA (2048 bits or more, for RSA-OAEP-256), EC P-256/P-384/P-521 or X25519 (for ECDH-ES)');
}

const enc = new TextEncoder();
const dec = new TextDecoder();

export interface ExportOptions {
  authority: string;
  store: Store;
  keyring: Keyring;
  user: string;
  /** Only keys created or bound at or after this instant (epoch ms). */
  since?: number;
  recipient: Recipient;
  now: number;
}

/** Builds the export; reads page by page, so only the export itself grows with the data. */
export async function exportDiscovery(o: ExportOptions): Promise<DiscoveryExport> {
  const publicKey = await importJWK(o.recipient.jwk, o.recipient.alg);
  const seal = (plaintext: unknown, cty: string) =>
    new CompactEncrypt(enc.encode(JSON.stringify(plaintext)))
      .setProtectedHeader({ alg: o.recipient.alg, enc: 'A256GCM', cty, ...(o.recipient.jwk.kid !== undefined && { kid: o.recipient.jwk.kid }) })
      .encrypt(publicKey);
  const keys: DiscoveredKey[] = [];
  const proofs: DiscoveryProof[] = [];
  const seen = new Set<string>();
  const wanted = (created: number, bound: number | null) => o.since === undefined || created >= o.since || (bound !== null && bound >= o.since);

  const addLocal = async (row: KeyRow, via: DiscoveredKey['via']) => {
    const uri = `kms://${o.authority}/keys/${row.id}`;
    if (seen.has(uri) || !wanted(row.createdAt, row.bindDate)) return;
    seen.add(uri);
    const material = await o.keyring.unseal(row.cmkId, row.sealed, keyAad(row.id));
    const jwe = await seal({ kty: 'oct', kid: row.id, k: Buffer.from(material.reveal()).toString('base64url') }, 'jwk+json');
    material.wipe();
    keys.push({
      uri,
      resourceUri: row.resourceId === null ? null : `kms://${o.authority}/resources/${row.resourceId}`,
      authority: o.authority,
      via,
      createDate: formatDate(row.createdAt),
      ...(row.bindDate !== null && { bindDate: formatDate(row.bindDate) }),
      expirationDate: formatDate(row.expiresAt),
      jwe,
    });
  };

  // The keys the user created, bound or not.
  for (let after = ''; ; ) {
    const page = await o.store.keysCreatedBy(o.user, after, MAX_KEYS_PER_ANSWER);
    for (const row of page) await addLocal(row, 'created');
    if (page.length < MAX_KEYS_PER_ANSWER) break;
    after = page.at(-1)!.id;
  }
  // The keys of the KROs the user is authorized on: directly, or through KROs named as authIds
  // (each checked by the policy the KMS applies to the user's own reads).
  for (const resourceId of await resourcesOf(o)) {
    for (let before: number | undefined; ; ) {
      const page = await o.store.listResourceKeys(resourceId, { boundBefore: before, limit: MAX_KEYS_PER_ANSWER });
      for (const row of page) await addLocal(row, 'authorized');
      if (page.length < MAX_KEYS_PER_ANSWER) break;
      before = page.at(-1)!.bindDate!;
    }
  }
  // The archive: every version of a peer's KRO that shows the user authorized.
  for (let after: ArchivedCopy | undefined; ; ) {
    const page = await o.store.archivePage(after && { resourceUri: after.resourceUri, version: after.version }, 100);
    for (const row of page) {
      const content = await unsealCopy(o.keyring, row);
      if (!content.resource.authorizations.some((a) => a.authId === o.user)) continue;
      const fresh = content.resource.keys.filter((k) => !seen.has(k.uri) && wanted(parseDate(k.createDate) ?? 0, parseDate(k.bindDate) ?? null));
      if (fresh.length === 0) continue;
      const proof = proofs.push(await proofOf(row, content, seal)) - 1;
      for (const k of fresh) {
        seen.add(k.uri);
        keys.push({
          uri: k.uri,
          resourceUri: k.resourceUri,
          authority: row.authority,
          via: 'federated',
          createDate: k.createDate,
          bindDate: k.bindDate,
          expirationDate: k.expirationDate,
          proof,
          jwe: await seal(k.jwk, 'jwk+json'),
        });
      }
    }
    if (page.length < 100) break;
    after = page.at(-1);
  }
  return {
    format: DISCOVERY_FORMAT,
    kms: o.authority,
    user: o.user,
    exportedAt: formatDate(o.now),
    since: o.since === undefined ? null : formatDate(o.since),
    recipient: { kty: String(o.recipient.jwk.kty), alg: o.recipient.alg, thumbprint: await calculateJwkThumbprint(o.recipient.jwk) },
    keys,
    proofs,
  };
}

async function proofOf(row: ArchivedCopy, content: CopyContent, seal: (p: unknown, cty: string) => Promise<string>): Promise<DiscoveryProof> {
  return {
    authority: row.authority,
    resourceUri: row.resourceUri,
    version: row.version,
    ...(row.fetchedAt > 0 && { fetchedAt: formatDate(row.fetchedAt) }),
    signer: content.signer ?? null,
    answers: await seal(content.proofs, 'json'),
  };
}

/**
 * The KROs of this KMS the user is authorized on: those naming the user, and, up to the KRO
 * depth the policy walks, those naming one of them as an authId — each confirmed by the policy.
 */
async function resourcesOf(o: ExportOptions): Promise<string[]> {
  const prefix = `kms://${o.authority}/resources/`;
  const found = new Set<string>(await o.store.resourcesWithAuthId(o.user));
  let frontier = [...found];
  for (let depth = 0; depth < MAX_KRO_DEPTH && frontier.length > 0; depth++) {
    const next: string[] = [];
    for (const id of frontier) for (const via of await o.store.resourcesWithAuthId(`${prefix}${id}`)) if (!found.has(via)) next.push(via);
    next.forEach((id) => found.add(id));
    frontier = next;
  }
  const principal: UserPrincipal = { kind: 'user', id: o.user, domain: domainOf(o.user), roles: [], orgId: domainOf(o.user), expiresAt: Infinity };
  const confirmed: string[] = [];
  for (const id of [...found].sort()) if (await isAuthorized(principal, id, (r) => o.store.listAuthorizations(r), prefix)) confirmed.push(id);
  return confirmed;
}

/** What `kms discovery verify` found. */
export interface VerifyReport {
  keys: { created: number; authorized: number; federated: number };
  /** Peer answers whose signatures verified, and whether their certificates were checked against trust anchors. */
  answers: number;
  certificatesChecked: boolean;
  problems: string[];
}

/**
 * Checks an export with the recipient's private key: every JWE opens, every peer answer is a
 * PS256 signature by the certificate the export names (and, given trust anchors for the peer, a
 * certificate that chains to them), and every federated key is, bit for bit, one the peer's
 * verified answers released on a KRO that authorized the user.
 */
export async function verifyDiscovery(doc: DiscoveryExport, privateJwk: JWK, anchorsOf: (authority: string) => string[] | undefined): Promise<VerifyReport> {
  const report: VerifyReport = { keys: { created: 0, authorized: 0, federated: 0 }, answers: 0, certificatesChecked: true, problems: [] };
  if (doc.format !== DISCOVERY_FORMAT) throw new KmsError('INVALID_ARGUMENT', `not a discovery export (format ${String(doc.format)})`);
  const alg = doc.recipient?.alg;
  const privateKey = await importJWK(privateJwk, alg);
  const open = async (jwe: string): Promise<unknown> => {
    const { plaintext } = await compactDecrypt(jwe, privateKey, { keyManagementAlgorithms: [alg], contentEncryptionAlgorithms: ['A256GCM'] });
    return JSON.parse(dec.decode(plaintext)) as unknown;
  };
  /** Per proof: the keys its verified answers released (uri → k), or undefined when it did not verify. */
  const released: (Map<string, string> | undefined)[] = [];
  for (const [i, proof] of doc.proofs.entries()) {
    try {
      released.push(await verifyProof(proof, await open(proof.answers), doc.user, anchorsOf(proof.authority), report));
    } catch (err) {
      released.push(undefined);
      report.problems.push(`proof ${i} (${proof.resourceUri} version ${proof.version}): ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  for (const key of doc.keys) {
    let jwk: { kty?: unknown; k?: unknown };
    try {
      jwk = (await open(key.jwe)) as typeof jwk;
    } catch (err) {
      report.problems.push(`${key.uri}: its JWE does not open with this key (${err instanceof Error ? err.message : String(err)})`);
      continue;
    }
    if (jwk.kty !== 'oct' || typeof jwk.k !== 'string') report.problems.push(`${key.uri}: not a key`);
    else if (key.via !== 'federated') report.keys[key.via] += 1;
    else if (key.proof === undefined || released[key.proof] === undefined) report.problems.push(`${key.uri}: no verified answer of kms://${key.authority} releases it`);
    else if (released[key.proof]!.get(key.uri) !== jwk.k) report.problems.push(`${key.uri}: not the key kms://${key.authority}'s signed answers released`);
    else report.keys.federated += 1;
  }
  return report;
}

async function verifyProof(proof: DiscoveryProof, answers: unknown, user: string, anchors: string[] | undefined, report: VerifyReport): Promise<Map<string, string>> {
  if (!proof.signer) throw new Error('the archive kept no certificate for these answers');
  if (!Array.isArray(answers) || answers.length === 0) throw new Error('no signed answers');
  if (anchors === undefined) report.certificatesChecked = false;
  else {
    try {
      await verifyKmsCertificate({ jwk: proof.signer, authority: proof.authority, trustAnchorsPem: anchors, now: proof.fetchedAt === undefined ? undefined : new Date(parseDate(proof.fetchedAt)!) });
    } catch (err) {
      throw new Error(`the certificate of kms://${proof.authority} is refused: ${err instanceof CertificateError ? err.message : String(err)}`);
    }
  }
  const key = await importJWK({ kty: 'RSA', n: proof.signer.n, e: proof.signer.e }, 'PS256');
  const keys = new Map<string, string>();
  let authorized = false;
  for (const jws of answers) {
    if (typeof jws !== 'string' || decodeProtectedHeader(jws).kid !== `kms://${proof.authority}`) throw new Error(`an answer not signed as kms://${proof.authority}`);
    const { payload } = await compactVerify(jws, key, { algorithms: ['PS256'] });
    const resource = (JSON.parse(dec.decode(payload)) as { resource?: { uri?: unknown; keys?: { uri?: unknown; jwk?: { k?: unknown } }[]; authorizations?: { authId?: unknown }[] } }).resource;
    if (resource?.uri !== proof.resourceUri) throw new Error('an answer about another KRO');
    for (const k of resource.keys ?? []) if (typeof k.uri === 'string' && typeof k.jwk?.k === 'string') keys.set(k.uri, k.jwk.k);
    if ((resource.authorizations ?? []).some((a) => a.authId === user)) authorized = true;
    report.answers += 1;
  }
  if (!authorized) throw new Error(`the signed answers do not authorize ${user}`);
  return keys;
}
