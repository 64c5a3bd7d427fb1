/**
 * At-rest encryption: root key -> CMKs -> sealed key material (PROTOCOL.md §5 "Key material at
 * rest"). Every object key and channel key is sealed with AES-256-GCM under a CMK, with the
 * object's identity as additional data so a sealed blob cannot be moved to another row. CMKs are
 * sealed under the root key (a key file, or KMS_ROOT_KEY). Rotation adds a new active CMK and
 * keeps the old ones for unsealing, so it never makes an existing key unreadable.
 */
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes, randomUUID } from 'node:crypto';
import { KmsError } from '@openkms/protocol';
import { Secret } from '../secret.js';
import type { CmkRow } from '../model.js';
import type { Store } from '../store/store.js';

const VERSION = 1;
const IV = 12;
const TAG = 16;

function seal(key: Uint8Array, plaintext: Uint8Array, aad: string): Uint8Array {
  const iv = randomBytes(IV);
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  cipher.setAAD(Buffer.from(aad, 'utf8'));
  const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return Buffer.concat([Buffer.from([VERSION]), iv, cipher.getAuthTag(), body]);
}

function unseal(key: Uint8Array, sealed: Uint8Array, aad: string): Uint8Array {
  const buf = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
  if (buf.length < 1 + IV + TAG || buf[0] !== VERSION) throw new Error('sealed value has an unknown format');
  const decipher = createDecipheriv('aes-256-gcm', key, buf.subarray(1, 1 + IV));
  decipher.setAAD(Buffer.from(aad, 'utf8'));
  decipher.setAuthTag(buf.subarray(1 + IV, 1 + IV + TAG));
  return Buffer.concat([decipher.update(buf.subarray(1 + IV + TAG)), decipher.final()]);
}

/** Parses a root key: 32 bytes, written as base64 (or base64url) text. */
export function parseRootKey(text: string): Uint8Array {
  const trimmed = text.trim();
  if (!/^[A-Za-z0-9+/_-]+=*$/.test(trimmed)) throw new Error('root key is not base64 text');
  const bytes = Buffer.from(trimmed.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
  if (bytes.length !== 32) throw new Error(`root key must be 32 bytes, found ${bytes.length}`);
  return new Uint8Array(bytes);
}

/** The audit chain's HMAC key, derived from the root key (so it needs no storage of its own). */
export function auditKeyOf(rootKey: Uint8Array): Uint8Array {
  return new Uint8Array(hkdfSync('sha256', rootKey, new Uint8Array(0), 'openkms audit chain v1', 32));
}

export function generateRootKey(): string {
  return randomBytes(32).toString('base64') + '\n';
}

/**
 * Whether a CMK row was sealed under this root key: a restore checks a backup's CMKs before it
 * writes, since a database is unreadable under any other root key.
 */
export function sealedUnder(rootKey: Uint8Array, row: Pick<CmkRow, 'id' | 'sealed'>): boolean {
  try {
    unseal(rootKey, row.sealed, `cmk:${row.id}`).fill(0);
    return true;
  } catch {
    return false;
  }
}

interface LoadedCmk {
  row: CmkRow;
  key: Secret;
}

export class Keyring {
  private readonly cmks = new Map<string, LoadedCmk>();

  private constructor(
    private readonly root: Secret,
    private readonly store: Store,
  ) {}

  /** Opens the keyring, creating the first (global, active) CMK on an empty store. */
  static async open(rootKey: Uint8Array, store: Store, now: number): Promise<Keyring> {
    const keyring = new Keyring(new Secret(rootKey), store);
    const rows = await store.listCmks();
    for (const row of rows) keyring.load(row);
    if (!rows.some((r) => r.state === 'active' && r.assignedOrgId === null)) await keyring.createCmk(null, now);
    return keyring;
  }

  private load(row: CmkRow): LoadedCmk {
    let key: Uint8Array;
    try {
      key = unseal(this.root.reveal(), row.sealed, `cmk:${row.id}`);
    } catch {
      throw new Error(`CMK ${row.id} cannot be unsealed: wrong root key?`);
    }
    const loaded = { row, key: new Secret(key) };
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
      sealed: seal(this.root.reveal(), randomBytes(32), `cmk:${id}`),
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
    return seal(cmk.key.reveal(), plaintext, aad);
  }

  async unseal(cmkId: string, sealed: Uint8Array, aad: string): Promise<Secret> {
    let cmk = this.cmks.get(cmkId);
    if (!cmk) {
      await this.refresh();
      cmk = this.cmks.get(cmkId);
      if (!cmk) throw new Error(`unknown CMK ${cmkId}`);
    }
    return new Secret(unseal(cmk.key.reveal(), sealed, aad));
  }
}
