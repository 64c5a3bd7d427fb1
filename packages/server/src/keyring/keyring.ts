/**
 * At-rest encryption: root key -> CMKs -> sealed key material (PROTOCOL.md §5 "Key material at
 * rest"). Every object key and channel key is sealed with AES-256-GCM under a CMK, with the
 * object's identity as additional data so a sealed blob cannot be moved to another row. CMKs are
 * sealed under the root key (a key file, KMS_ROOT_KEY, or a key in an HSM: RootKey). Rotation adds a new active CMK and
 * keeps the old ones for unsealing, so it never makes an existing key unreadable.
 */
import { createSecretKey, hkdfSync, randomBytes, randomUUID, type KeyObject } from 'node:crypto';
import { KmsError } from '@openkms/protocol';
import { Secret } from '../secret.js';
import type { CmkRow } from '../model.js';
import type { Store } from '../store/store.js';
import { KEPT_KEY_MS, MAX_KEPT_KEYS } from '../limits.js';
import { KeptMaterial } from './kept-material.js';
import { seal, unseal } from './sealing.js';

/**
 * Where the root key is and what it does: the keyring only ever asks it to wrap or unwrap a CMK
 * (at open and at CMK rotation, so its cost is per CMK, never per request) and for the audit
 * chain's key. Implementations: the key's bytes in this process (a key file or KMS_ROOT_KEY,
 * `localRootKey`) and a non-extractable key in an HSM (pkcs11.ts). Calls are synchronous: an HSM
 * is asked through PKCS#11's synchronous API (see pkcs11.ts for why).
 */
export interface RootKey {
  /** Seals a CMK under the root key, bound to `aad` (`cmk:<id>`), in the keyring's sealed format. */
  wrap(cmk: Uint8Array, aad: string): Uint8Array;
  /** The CMK that `wrap` sealed; throws when it was sealed under another root key or for another aad. */
  unwrap(sealed: Uint8Array, aad: string): Uint8Array;
  /** The audit chain's HMAC key: derived from the root key, so it needs no storage of its own. */
  auditKey(): Uint8Array;
  /** Where the root key is, for messages (never any key material). */
  describe(): string;
  /** Lets go of what the root key holds open (an HSM session); idempotent. */
  close(): void;
}

const AUDIT_INFO = 'openkms audit chain v1';

/** A root key whose 32 bytes are in this process: a key file or KMS_ROOT_KEY. */
export function localRootKey(bytes: Uint8Array, where: string): RootKey {
  const key = new Secret(bytes);
  return {
    wrap: (cmk, aad) => seal(key.reveal(), cmk, aad),
    unwrap: (sealed, aad) => unseal(key.reveal(), sealed, aad),
    auditKey: () => auditKeyOf(key.reveal()),
    describe: () => where,
    close: () => {},
  };
}

/** Parses a root key: 32 bytes, written as base64 (or base64url) text. */
export function parseRootKey(text: string): Uint8Array {
  const trimmed = text.trim();
  if (!/^[A-Za-z0-9+/_-]+=*$/.test(trimmed)) throw new Error('root key is not base64 text');
  const bytes = Buffer.from(trimmed.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
  if (bytes.length !== 32) throw new Error(`root key must be 32 bytes, found ${bytes.length}`);
  return new Uint8Array(bytes);
}

/** The audit chain's HMAC key of a root key held in this process (an HSM derives its own: pkcs11.ts). */
function auditKeyOf(rootKey: Uint8Array): Uint8Array {
  return new Uint8Array(hkdfSync('sha256', rootKey, new Uint8Array(0), AUDIT_INFO, 32));
}

export function generateRootKey(): string {
  return randomBytes(32).toString('base64') + '\n';
}

/**
 * Whether a CMK row was sealed under this root key: a restore checks a backup's CMKs before it
 * writes, since a database is unreadable under any other root key.
 */
export function sealedUnder(root: RootKey, row: Pick<CmkRow, 'id' | 'sealed'>): boolean {
  try {
    root.unwrap(row.sealed, `cmk:${row.id}`).fill(0);
    return true;
  } catch {
    return false;
  }
}

interface LoadedCmk {
  row: CmkRow;
  /** The CMK's key as node:crypto takes it (a KeyObject redacts itself too). */
  key: KeyObject;
}

export class Keyring {
  private readonly cmks = new Map<string, LoadedCmk>();
  private readonly kept = new KeptMaterial(MAX_KEPT_KEYS, KEPT_KEY_MS);

  private constructor(
    private readonly root: RootKey,
    private readonly store: Store,
  ) {}

  /**
   * Opens the keyring, creating the first (global, active) CMK on an empty store. The root key
   * stays its opener's to close: the keyring only borrows it.
   */
  static async open(root: RootKey, store: Store, now: number): Promise<Keyring> {
    const keyring = new Keyring(root, store);
    const rows = await store.listCmks();
    for (const row of rows) keyring.load(row);
    if (!rows.some((r) => r.state === 'active' && r.assignedOrgId === null)) await keyring.createCmk(null, now);
    return keyring;
  }

  private load(row: CmkRow): LoadedCmk {
    let key: Uint8Array;
    try {
      key = this.root.unwrap(row.sealed, `cmk:${row.id}`);
    } catch {
      throw new Error(`CMK ${row.id} cannot be unsealed under ${this.root.describe()}: wrong root key?`);
    }
    const loaded = { row, key: createSecretKey(key) };
    key.fill(0);
    this.cmks.set(row.id, loaded);
    return loaded;
  }

  /** Creates a new active CMK for the scope (null = global); the previous one turns inactive. */
  async createCmk(assignedOrgId: string | null, now: number): Promise<CmkRow> {
    const id = randomUUID();
    const row: CmkRow = {
      id,
      state: 'active',
      assignedOrgId,
      createdAt: now,
      sealed: this.root.wrap(randomBytes(32), `cmk:${id}`),
    };
    await this.store.insertCmk(row);
    await this.refresh();
    return row;
  }

  /** Re-reads CMK rows (states change; other instances may have rotated). */
  async refresh(): Promise<void> {
    for (const row of await this.store.listCmks()) {
      const known = this.cmks.get(row.id);
      if (known) known.row = row;
      else this.load(row);
    }
  }

  /** The CMK that seals new material for an organisation: its own active CMK, else the global one. */
  activeCmk(orgId?: string): CmkRow {
    let global: CmkRow | undefined;
    for (const { row } of this.cmks.values()) {
      if (row.state !== 'active') continue;
      if (orgId !== undefined && row.assignedOrgId === orgId) return row;
      if (row.assignedOrgId === null) global = row;
    }
    if (!global) throw new KmsError('INTERNAL', 'no active CMK');
    return global;
  }

  seal(cmkId: string, plaintext: Uint8Array, aad: string): Uint8Array {
    const cmk = this.cmks.get(cmkId);
    if (!cmk) throw new Error(`unknown CMK ${cmkId}`);
    return seal(cmk.key, plaintext, aad);
  }

  async unseal(cmkId: string, sealed: Uint8Array, aad: string): Promise<Secret> {
    let cmk = this.cmks.get(cmkId);
    if (!cmk) {
      await this.refresh();
      cmk = this.cmks.get(cmkId);
      if (!cmk) throw new Error(`unknown CMK ${cmkId}`);
    }
    return new Secret(unseal(cmk.key, sealed, aad));
  }

  /**
   * `unseal`, for material that is read again and again (object keys, on every retrieval): what it
   * gave for these sealed bytes under this CMK and aad is kept for a while, bounded
   * (kept-material.ts says why that needs no change feed). Each call gets its own bytes.
   */
  async unsealKept(cmkId: string, sealed: Uint8Array, aad: string): Promise<Secret> {
    const known = this.kept.get(aad, cmkId, sealed);
    if (known !== undefined) return new Secret(known);
    const material = await this.unseal(cmkId, sealed, aad);
    this.kept.set(aad, cmkId, sealed, material.reveal());
    return material;
  }
}
