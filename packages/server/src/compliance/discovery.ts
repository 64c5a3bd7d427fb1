/**
 * Legal discovery (PROTOCOL.md §6, OPERATING.md `kms discovery export`): every key this KMS holds
 * for one user — the keys the user created, the keys of the KROs the user is authorized on, and
 * the federated keys the archive shows the user was given — each sealed as a JWE to a recipient's
 * public key, with the peers' signed answers (sealed too: they hold the keys) and the certificate
 * they were signed under, so that the recipient can check where each federated key came from.
 *
 * The file holds no key material in clear: a key is only in its JWE and in the sealed answers.
 */
import { createHash, type KeyObject } from 'node:crypto';
import { CompactEncrypt, CompactSign, calculateJwkThumbprint, compactDecrypt, compactVerify, decodeProtectedHeader, importJWK, type JWK } from 'jose';
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
  /** This KMS's static public key with its x5c chain: what `signature` verifies under. */
  signer: StaticJwk;
  /**
   * A compact JWS (PS256, kid `kms://<kms>`, typ `kms-discovery-export`) by this KMS's static key
   * over `{sha256}`: the SHA-256 (hex) of the JSON of every other member, in this order. Nothing
   * can be added, removed or relabelled without breaking it.
   */
  signature: string;
}

const SIGNATURE_TYP = 'kms-discovery-export';
const digestOf = (body: Omit<DiscoveryExport, 'signature'>) => createHash('sha256').update(JSON.stringify(body)).digest('hex');

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
  /** The export is signed by it. */
  staticKey: { privateKey: KeyObject; publicJwk: StaticJwk };
  user: string;
  /** Only keys created or bound at or after this instant (epoch ms). */
  since?: number;
  /** lifetimes.unboundGrace, in ms: an unbound key past its expiry and this is gone, as for reads. */
  unboundGraceMs: number;
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

  // What is gone for everyone (PROTOCOL.md §5) is not exported: the KMS would not serve it either.
  const liveResources = new Map<string, boolean>();
  const live = async (row: KeyRow): Promise<boolean> => {
    if (row.resourceId === null) return row.expiresAt + o.unboundGraceMs > o.now;
    let known = liveResources.get(row.resourceId);
    if (known === undefined) {
      const resource = await o.store.getResource(row.resourceId);
      known = resource !== undefined && (resource.expiresAt === null || resource.expiresAt > o.now);
      liveResources.set(row.resourceId, known);
    }
    return known;
  };
  const addLocal = async (row: KeyRow, via: DiscoveredKey['via']) => {
    const uri = `kms://${o.authority}/keys/${row.id}`;
    if (seen.has(uri) || !wanted(row.createdAt, row.bindDate) || !(await live(row))) return;
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
  // A KRO's keys are read whole: pages by bind date would split the keys bound in one instant
  // (a resource created with its keys), and the export holds them all anyway.
  for (const resourceId of await resourcesOf(o)) {
    for (const row of await o.store.listResourceKeys(resourceId)) await addLocal(row, 'authorized');
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
  const body: Omit<DiscoveryExport, 'signature'> = {
    format: DISCOVERY_FORMAT,
    kms: o.authority,
    user: o.user,
    exportedAt: formatDate(o.now),
    since: o.since === undefined ? null : formatDate(o.since),
    recipient: { kty: String(o.recipient.jwk.kty), alg: o.recipient.alg, thumbprint: await calculateJwkThumbprint(o.recipient.jwk) },
    keys,
    proofs,
    signer: o.staticKey.publicJwk,
  };
  const signature = await new CompactSign(enc.encode(JSON.stringify({ sha256: digestOf(body) })))
    .setProtectedHeader({ alg: 'PS256', kid: `kms://${o.authority}`, typ: SIGNATURE_TYP })
    .sign(o.staticKey.privateKey);
  return { ...body, signature };
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
  /** Peer answers whose signatures verified under a certificate that chains to the trust anchors. */
  answers: number;
  problems: string[];
}

/**
 * Checks an export with the recipient's private key and the trust anchors of the KMSs involved:
 * the exporting KMS's signature over the whole file (under a certificate that chains to its
 * anchors), every JWE opens, every peer answer is a PS256 signature under the peer's certificate
 * (chaining to the peer's anchors) about a KRO that authorizes the user, and every federated key
 * is, bit for bit, one those answers released.
 */
export async function verifyDiscovery(doc: DiscoveryExport, privateJwk: JWK, anchorsOf: (authority: string) => string[] | undefined): Promise<VerifyReport> {
  const report: VerifyReport = { keys: { created: 0, authorized: 0, federated: 0 }, answers: 0, problems: [] };
  if (doc.format !== DISCOVERY_FORMAT) throw new KmsError('INVALID_ARGUMENT', `not a discovery export (format ${String(doc.format)})`);
  if (!Array.isArray(doc.keys) || !Array.isArray(doc.proofs)) throw new KmsError('INVALID_ARGUMENT', 'not a discovery export (no keys or proofs)');
  // The exporting KMS's signature first: without it, keys could have been added, removed or relabelled.
  try {
    await verifySignedBy(doc.signer, doc.kms, anchorsOf(doc.kms), undefined);
    const { signature, ...body } = doc;
    const { payload, protectedHeader } = await compactVerify(String(signature), await importJWK({ kty: 'RSA', n: doc.signer.n, e: doc.signer.e }, 'PS256'), { algorithms: ['PS256'] });
    if (protectedHeader.typ !== SIGNATURE_TYP || protectedHeader.kid !== `kms://${doc.kms}`) throw new Error('not the signature of a discovery export');
    if ((JSON.parse(dec.decode(payload)) as { sha256?: unknown }).sha256 !== digestOf(body)) throw new Error('the file is not what it signed');
  } catch (err) {
    report.problems.push(`the export's signature by kms://${String(doc.kms)}: ${err instanceof Error ? err.message : String(err)}`);
  }
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
    const local = key.uri.startsWith(`kms://${doc.kms}/keys/`) && key.authority === doc.kms;
    if (jwk.kty !== 'oct' || typeof jwk.k !== 'string') report.problems.push(`${key.uri}: not a key`);
    else if (key.via === 'created' || key.via === 'authorized') {
      if (local) report.keys[key.via] += 1;
      else report.problems.push(`${key.uri}: not a key of kms://${doc.kms}, yet not marked federated`);
    } else if (key.via !== 'federated') report.problems.push(`${key.uri}: unknown via ${String(key.via)}`);
    else if (key.proof !== undefined && doc.proofs[key.proof]?.authority !== key.authority) report.problems.push(`${key.uri}: its proof is of another KMS than kms://${key.authority}`);
    else if (key.proof === undefined || released[key.proof] === undefined) report.problems.push(`${key.uri}: no verified answer of kms://${key.authority} releases it`);
    else if (released[key.proof]!.get(key.uri) !== jwk.k) report.problems.push(`${key.uri}: not the key kms://${key.authority}'s signed answers released`);
    else report.keys.federated += 1;
  }
  return report;
}

/**
 * Checks that `signer` is the certificate of `kms://<authority>` under its trust anchors (at
 * `at`, when the signature was made; now without it). Without anchors nothing is proven.
 */
async function verifySignedBy(signer: StaticJwk | null | undefined, authority: string, anchors: string[] | undefined, at: Date | undefined): Promise<void> {
  if (!signer) throw new Error('no certificate for the signature');
  if (anchors === undefined || anchors.length === 0) throw new Error(`no trust anchors for kms://${authority} (give --trust-anchors or --config): its certificate proves nothing without them`);
  try {
    await verifyKmsCertificate({ jwk: signer, authority, trustAnchorsPem: anchors, now: at });
  } catch (err) {
    throw new Error(`the certificate of kms://${authority} is refused: ${err instanceof CertificateError ? err.message : String(err)}`);
  }
}

/**
 * A proof's answers: each a PS256 signature of the peer about the proof's KRO that lists the user
 * among its authorizations (each page of a KRO carries them), its keys then released to the user.
 * The certificate is checked at the time this KMS says it received them (in what it signed).
 */
async function verifyProof(proof: DiscoveryProof, answers: unknown, user: string, anchors: string[] | undefined, report: VerifyReport): Promise<Map<string, string>> {
  if (!Array.isArray(answers) || answers.length === 0) throw new Error('no signed answers');
  await verifySignedBy(proof.signer, proof.authority, anchors, proof.fetchedAt === undefined ? undefined : new Date(parseDate(proof.fetchedAt)!));
  const key = await importJWK({ kty: 'RSA', n: proof.signer!.n, e: proof.signer!.e }, 'PS256');
  const keys = new Map<string, string>();
  for (const jws of answers) {
    if (typeof jws !== 'string' || decodeProtectedHeader(jws).kid !== `kms://${proof.authority}`) throw new Error(`an answer not signed as kms://${proof.authority}`);
    const { payload } = await compactVerify(jws, key, { algorithms: ['PS256'] });
    const resource = (JSON.parse(dec.decode(payload)) as { resource?: { uri?: unknown; keys?: { uri?: unknown; jwk?: { k?: unknown } }[]; authorizations?: { authId?: unknown }[] } }).resource;
    if (resource?.uri !== proof.resourceUri) throw new Error('an answer about another KRO');
    if (!(resource.authorizations ?? []).some((a) => a.authId === user)) throw new Error(`an answer that does not authorize ${user}`);
    for (const k of resource.keys ?? []) if (typeof k.uri === 'string' && typeof k.jwk?.k === 'string') keys.set(k.uri, k.jwk.k);
    report.answers += 1;
  }
  return keys;
}
