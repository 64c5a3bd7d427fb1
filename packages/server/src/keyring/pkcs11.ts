/**
 * The root key in an HSM, over PKCS#11 (config `rootKey.pkcs11`): a non-extractable AES-256 key
 * wraps and unwraps the CMKs inside the token (CKM_AES_GCM, the keyring's sealed format, AAD
 * `cmk:<id>`), and a non-extractable HMAC key beside it, labelled `<key>-audit`, derives the audit
 * chain's key (CKM_SHA256_HMAC over a fixed label): neither ever leaves the token, and nothing
 * about them is stored outside it. The user PIN comes from KMS_HSM_PIN only.
 *
 * The binding is pkcs11js, an optional dependency loaded here only, so a KMS without an HSM
 * installs and loads no native PKCS#11 code. Only its synchronous calls are used: its
 * asynchronous (callback) calls hand raw pointers into JS Buffers to a libuv worker thread
 * without pinning the Buffers (pkcs11js issue #121, a possible use-after-free; #120, a leak of
 * every async call's mechanism and template). A synchronous call runs on the JS thread, with its
 * Buffers referenced by the call's own arguments until it returns, so neither applies. It blocks
 * the event loop for one HSM round trip, which happens per CMK (keyring open, CMK rotation) and
 * once at start for the audit key, never per request.
 */
import { randomBytes } from 'node:crypto';
import { ConfigError } from '../config.js';
import type { RootKey } from './keyring.js';
import { IV_BYTES, packSealed, TAG_BYTES, unpackSealed } from './sealing.js';

/** The parts of pkcs11js this uses (declared here so the server compiles without the package). */
type Handle = Buffer;
interface Attribute {
  type: number;
  value?: number | boolean | string | Buffer;
}
interface Mechanism {
  mechanism: number;
  parameter?: { type: number; iv?: Buffer; aad?: Buffer; ivBits: number; tagBits: number };
}
interface Pkcs11 {
  load(path: string): void;
  close(): void;
  C_Initialize(): void;
  C_Finalize(): void;
  C_GetSlotList(tokenPresent: boolean): Handle[];
  C_GetTokenInfo(slot: Handle): { label: string };
  C_OpenSession(slot: Handle, flags: number): Handle;
  C_CloseSession(session: Handle): void;
  C_Login(session: Handle, userType: number, pin: string): void;
  C_FindObjectsInit(session: Handle, template: Attribute[]): void;
  C_FindObjects(session: Handle, max: number): Handle[];
  C_FindObjectsFinal(session: Handle): void;
  C_GetAttributeValue(session: Handle, object: Handle, template: Attribute[]): { type: number; value?: Buffer }[];
  C_GenerateKey(session: Handle, mechanism: Mechanism, template: Attribute[]): Handle;
  C_EncryptInit(session: Handle, mechanism: Mechanism, key: Handle): void;
  C_Encrypt(session: Handle, data: Buffer, out: Buffer): Buffer;
  C_DecryptInit(session: Handle, mechanism: Mechanism, key: Handle): void;
  C_Decrypt(session: Handle, data: Buffer, out: Buffer): Buffer;
  C_SignInit(session: Handle, mechanism: Mechanism, key: Handle): void;
  C_Sign(session: Handle, data: Buffer, out: Buffer): Buffer;
}
type Binding = { PKCS11: new () => Pkcs11 } & Record<string, number>;

const AUDIT_LABEL = 'openkms audit chain v1';

export interface Pkcs11Options {
  /** Path of the PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so). */
  module: string;
  /** Label of the token. */
  token: string;
  /** Label of the AES key; the audit key is `<key>-audit`. */
  key: string;
  /** The user PIN (KMS_HSM_PIN). */
  pin: string | undefined;
  /** Create the keys that are missing (kms init) instead of refusing. */
  create?: boolean;
}

export interface OpenedPkcs11 {
  root: RootKey;
  /** The labels of the keys this open created (kms init says which it found and which it made). */
  created: string[];
}

let binding: Promise<Binding> | undefined;

/** pkcs11js, loaded on first use; its absence is one line saying what to install. */
function loadBinding(): Promise<Binding> {
  // Seen through the calls declared above: the build neither needs the optional package
  // (pkcs11js.d.ts) nor depends on its types.
  binding ??= (import('pkcs11js') as Promise<unknown>).then(
    (m) => (m as { default?: Binding }).default ?? (m as Binding),
    (err: NodeJS.ErrnoException) => {
      binding = undefined;
      const why = err.code === 'ERR_MODULE_NOT_FOUND' ? 'it is not installed' : `it does not load (${err.message.split('\n')[0]})`;
      throw new ConfigError(`rootKey.pkcs11 needs the optional package pkcs11js, but ${why}: npm install pkcs11js (it builds native code: node-gyp, make, g++)`);
    },
  );
  return binding;
}

/**
 * One loaded and initialised module per path, shared by the root keys of this process: PKCS#11
 * allows one C_Initialize per process, and C_Finalize only once the last user is gone.
 */
const modules = new Map<string, { lib: Pkcs11; users: number }>();

function acquire(b: Binding, path: string): Pkcs11 {
  const known = modules.get(path);
  if (known) {
    known.users++;
    return known.lib;
  }
  const lib = new b.PKCS11();
  try {
    lib.load(path);
  } catch (err) {
    throw new ConfigError(`PKCS#11 module ${path} cannot be loaded: ${reason(err)}`);
  }
  try {
    lib.C_Initialize();
  } catch (err) {
    lib.close();
    throw new ConfigError(`PKCS#11 module ${path} does not initialise: ${reason(err)}`);
  }
  modules.set(path, { lib, users: 1 });
  return lib;
}

function release(path: string): void {
  const known = modules.get(path);
  if (!known || --known.users > 0) return;
  modules.delete(path);
  try {
    known.lib.C_Finalize();
  } finally {
    known.lib.close();
  }
}

/** A PKCS#11 failure as its CKR_ name (pkcs11js's message is `CKR_NAME` or `CKR_NAME:code`); never a stack. */
function reason(err: unknown): string {
  const message = String((err as Error)?.message ?? err);
  return /CKR_[A-Z_]+/.exec(message)?.[0] ?? message.split('\n')[0]!.trim();
}

const isCkr = (err: unknown, name: string) => reason(err) === name;

/** Opens the token's root key, or (create) makes the keys that are missing first. */
export async function openPkcs11RootKey(o: Pkcs11Options): Promise<OpenedPkcs11> {
  if (o.pin === undefined || o.pin === '') throw new ConfigError(`KMS_HSM_PIN is not set: it must hold the user PIN of PKCS#11 token '${o.token}'`);
  const b = await loadBinding();
  const lib = acquire(b, o.module);
  let session: Handle | undefined;
  try {
    const slot = lib.C_GetSlotList(true).find((s) => lib.C_GetTokenInfo(s).label.trim() === o.token);
    if (!slot) {
      const labels = lib.C_GetSlotList(true).map((s) => `'${lib.C_GetTokenInfo(s).label.trim()}'`);
      throw new ConfigError(`no PKCS#11 token labelled '${o.token}' in ${o.module} (${labels.length ? `tokens: ${labels.join(', ')}` : 'it has no token'})`);
    }
    session = lib.C_OpenSession(slot, b.CKF_SERIAL_SESSION! | b.CKF_RW_SESSION!);
    try {
      lib.C_Login(session, b.CKU_USER!, o.pin);
    } catch (err) {
      // The login state is the process's: another root key of this process already logged in.
      if (!isCkr(err, 'CKR_USER_ALREADY_LOGGED_IN')) throw new ConfigError(`login to PKCS#11 token '${o.token}' refused: ${reason(err)} (the PIN is KMS_HSM_PIN)`);
    }
    const token = new TokenKeys(b, lib, session, o);
    const created: string[] = [];
    const aes = token.find('aes', o.key) ?? token.make('aes', o.key, created);
    const audit = token.find('hmac', `${o.key}-audit`) ?? token.make('hmac', `${o.key}-audit`, created);
    const root = new Pkcs11RootKey(b, lib, session, aes, audit, o, () => {
      lib.C_CloseSession(session!);
      release(o.module);
    });
    return { root, created };
  } catch (err) {
    if (session) {
      try {
        lib.C_CloseSession(session);
      } catch {
        // already failing: the first problem is the one to tell
      }
    }
    release(o.module);
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(`PKCS#11 token '${o.token}': ${reason(err)}`);
  }
}

type Kind = 'aes' | 'hmac';

/** Finding and making the two keys, each checked to be what the root needs: secret, 32 bytes, never leaving the token. */
class TokenKeys {
  constructor(
    private readonly b: Binding,
    private readonly lib: Pkcs11,
    private readonly session: Handle,
    private readonly o: Pkcs11Options,
  ) {}

  private keyType(kind: Kind): number {
    return kind === 'aes' ? this.b.CKK_AES! : this.b.CKK_GENERIC_SECRET!;
  }

  private what(kind: Kind, label: string): string {
    return `${kind === 'aes' ? 'AES-256' : 'HMAC'} key '${label}' of PKCS#11 token '${this.o.token}'`;
  }

  find(kind: Kind, label: string): Handle | undefined {
    const { b, lib, session } = this;
    lib.C_FindObjectsInit(session, [
      { type: b.CKA_CLASS!, value: b.CKO_SECRET_KEY! },
      { type: b.CKA_KEY_TYPE!, value: this.keyType(kind) },
      { type: b.CKA_LABEL!, value: label },
    ]);
    let found: Handle[];
    try {
      found = lib.C_FindObjects(session, 2);
    } finally {
      lib.C_FindObjectsFinal(session);
    }
    if (found.length === 0) {
      if (this.o.create) return undefined;
      throw new ConfigError(`there is no ${this.what(kind, label)}: kms init --hsm-module ${this.o.module} --hsm-token ${this.o.token} --hsm-key ${this.o.key} creates it`);
    }
    if (found.length > 1) throw new ConfigError(`PKCS#11 token '${this.o.token}' holds more than one key labelled '${label}': which is the root is ambiguous`);
    this.check(kind, label, found[0]!);
    return found[0]!;
  }

  /** A key found under the label must be one that never leaves the token, as init makes it. */
  private check(kind: Kind, label: string, key: Handle): void {
    const { b, lib, session } = this;
    const [sensitive, extractable, length] = lib.C_GetAttributeValue(session, key, [{ type: b.CKA_SENSITIVE! }, { type: b.CKA_EXTRACTABLE! }, { type: b.CKA_VALUE_LEN! }]);
    if (sensitive?.value?.[0] !== 1 || extractable?.value?.[0] !== 0) throw new ConfigError(`the ${this.what(kind, label)} is extractable or not sensitive: a root key must never leave the token`);
    if (length?.value && length.value.readUIntLE(0, Math.min(length.value.length, 6)) !== 32) throw new ConfigError(`the ${this.what(kind, label)} is not 32 bytes long`);
  }

  make(kind: Kind, label: string, created: string[]): Handle {
    const { b, lib, session } = this;
    const use: Attribute[] = kind === 'aes' ? [{ type: b.CKA_ENCRYPT!, value: true }, { type: b.CKA_DECRYPT!, value: true }] : [{ type: b.CKA_SIGN!, value: true }];
    const key = lib.C_GenerateKey(session, { mechanism: kind === 'aes' ? b.CKM_AES_KEY_GEN! : b.CKM_GENERIC_SECRET_KEY_GEN! }, [
      { type: b.CKA_CLASS!, value: b.CKO_SECRET_KEY! },
      { type: b.CKA_KEY_TYPE!, value: this.keyType(kind) },
      { type: b.CKA_VALUE_LEN!, value: 32 },
      { type: b.CKA_LABEL!, value: label },
      { type: b.CKA_TOKEN!, value: true },
      { type: b.CKA_PRIVATE!, value: true },
      { type: b.CKA_SENSITIVE!, value: true },
      { type: b.CKA_EXTRACTABLE!, value: false },
      // One purpose each: the AES key does not wrap token keys or sign; the HMAC key only signs.
      { type: b.CKA_WRAP!, value: false },
      { type: b.CKA_UNWRAP!, value: false },
      { type: b.CKA_DERIVE!, value: false },
      ...use,
    ]);
    created.push(label);
    return key;
  }
}

class Pkcs11RootKey implements RootKey {
  private closed = false;

  constructor(
    private readonly b: Binding,
    private readonly lib: Pkcs11,
    private readonly session: Handle,
    private readonly aes: Handle,
    private readonly audit: Handle,
    private readonly o: Pkcs11Options,
    private readonly onClose: () => void,
  ) {}

  private gcm(iv: Buffer, aad: string): Mechanism {
    return { mechanism: this.b.CKM_AES_GCM!, parameter: { type: this.b.CK_PARAMS_AES_GCM!, iv, aad: Buffer.from(aad, 'utf8'), ivBits: IV_BYTES * 8, tagBits: TAG_BYTES * 8 } };
  }

  private open(): void {
    if (this.closed) throw new Error(`${this.describe()} is closed`);
  }

  wrap(cmk: Uint8Array, aad: string): Uint8Array {
    this.open();
    const iv = randomBytes(IV_BYTES);
    this.lib.C_EncryptInit(this.session, this.gcm(iv, aad), this.aes);
    // PKCS#11 GCM output is the ciphertext followed by the tag.
    const out = this.lib.C_Encrypt(this.session, Buffer.from(cmk), Buffer.alloc(cmk.length + TAG_BYTES));
    return packSealed({ iv, tag: out.subarray(out.length - TAG_BYTES), body: out.subarray(0, out.length - TAG_BYTES) });
  }

  unwrap(sealed: Uint8Array, aad: string): Uint8Array {
    this.open();
    const { iv, tag, body } = unpackSealed(sealed);
    this.lib.C_DecryptInit(this.session, this.gcm(Buffer.from(iv), aad), this.aes);
    const out = Buffer.alloc(body.length + TAG_BYTES);
    const plain = this.lib.C_Decrypt(this.session, Buffer.concat([body, tag]), out);
    const cmk = new Uint8Array(plain);
    out.fill(0);
    return cmk;
  }

  auditKey(): Uint8Array {
    this.open();
    this.lib.C_SignInit(this.session, { mechanism: this.b.CKM_SHA256_HMAC! }, this.audit);
    return new Uint8Array(this.lib.C_Sign(this.session, Buffer.from(AUDIT_LABEL, 'utf8'), Buffer.alloc(32)));
  }

  describe(): string {
    return `the key '${this.o.key}' of PKCS#11 token '${this.o.token}'`;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.onClose();
  }
}
