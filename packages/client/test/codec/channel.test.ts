/**
 * Differential test of the channel half of the SDK's two codecs (src/codec/node.ts on node:crypto,
 * src/codec/web.ts on jose and WebCrypto, here Node's) against `jose` itself, called directly with
 * the restrictions the SDK uses (`dir` / `A256GCM`). Reproduce a failure with
 * CHANNEL_CODEC_SEED=<seed>.
 *
 * Round trips: each variant seals and jose opens, jose seals and each variant opens, and each
 * variant opens the other's messages (a Node client and a browser on one channel), over random keys,
 * kids (channel URIs, unicode) and payloads (empty, binary, unicode JSON, up to 64 KB); the protected
 * header each variant writes is jose's, byte for byte.
 *
 * Tampered inputs, the oracle: a variant accepts ⟺ jose accepts ∧ (node variant only) the input
 * is strictly well-formed: every segment canonical unpadded base64url, the protected header a JSON
 * object with no members besides alg, enc, kid (string) and cty (string). That is where the node
 * variant is deliberately stricter (its file comment); it is computed independently (decode and
 * re-encode, inputs.ts), not with the protocol's strict-jose helpers. A message that does not authenticate
 * is refused with jose's code ERR_JWE_DECRYPTION_FAILED by every side, so the SDK's ANSWER_INVALID
 * carries the same cause in Node and in a browser.
 */
import assert from 'node:assert/strict';
import { createCipheriv, randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { deflateRawSync } from 'node:zlib';
import { CompactEncrypt, compactDecrypt } from 'jose';
import type { Decrypted, ProtectedHeader } from '@openkms/protocol';
import type { ClientCodec } from '../../src/codec/client-codec.js';
import { clientCodec as nodeCodec } from '../../src/codec/node.js';
import { clientCodec as webCodec } from '../../src/codec/web.js';
import { seededRandom } from '../support.js';
import { Differential, type Variant } from './differential.js';
import { b64u, codeOf, codecInputs, headerSegment, outcome, sameBytes, strictlyWellFormed, type Header } from './inputs.js';

const random = seededRandom('CHANNEL_CODEC_SEED');
const { rand, int, pick, at } = random;

type ChannelCodec = Pick<ClientCodec, 'encryptChannel' | 'decryptChannel'>;
const VARIANTS: ReadonlyArray<readonly [Variant, ChannelCodec]> = [
  ['node', nodeCodec],
  ['web', webCodec],
];

/** The reference: jose's own calls, not the protocol's joseCodec the web variant wraps. */
const jose = {
  seal(plaintext: Uint8Array, key: Uint8Array, kid: string, cty?: string): Promise<string> {
    return new CompactEncrypt(plaintext).setProtectedHeader({ alg: 'dir', enc: 'A256GCM', kid, ...(cty === undefined ? {} : { cty }) }).encrypt(key);
  },
  async open(compact: string, key: Uint8Array): Promise<Decrypted> {
    const { plaintext, protectedHeader } = await compactDecrypt(compact, key, { keyManagementAlgorithms: ['dir'], contentEncryptionAlgorithms: ['A256GCM'] });
    return { plaintext, header: protectedHeader as ProtectedHeader };
  },
};

const DECRYPTION_FAILED = 'ERR_JWE_DECRYPTION_FAILED';
const { randomText, randomPayload, channelUri, flipBit, segmentTamper, extraMembers } = codecInputs(random);
const strict = (compact: string) => strictlyWellFormed(compact, 5, ['alg', 'enc', 'kid', 'cty']);

/** Mostly channel URIs; sometimes kids no KMS makes, which the codecs still carry alike. */
function randomKid(): string {
  return rand() < 0.8 ? channelUri() : pick(['', `kms://kms.é.example/ecdhe/${randomText(6)}`, randomText(int(40))]);
}

/**
 * A JWE built with node:crypto from parts, so a tampered variant is properly encrypted (its header
 * really is the AAD) and only the property under test differs.
 */
function forge(o: { header: Header; headerSeg?: string; key: Uint8Array; plaintext: Uint8Array; iv?: Uint8Array; ek?: string; tagBytes?: number }): string {
  const h = o.headerSeg ?? headerSegment(o.header);
  const iv = o.iv ?? randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', o.key, iv, { authTagLength: 16 });
  cipher.setAAD(Buffer.from(h, 'latin1'));
  const ciphertext = Buffer.concat([cipher.update(o.plaintext), cipher.final()]);
  let tag = cipher.getAuthTag();
  if (o.tagBytes !== undefined) tag = o.tagBytes <= 16 ? tag.subarray(0, o.tagBytes) : Buffer.concat([tag, randomBytes(o.tagBytes - 16)]);
  return [h, o.ek ?? '', b64u(iv), b64u(ciphertext), b64u(tag)].join('.');
}

/** Protected headers other than the one the codecs write: [label, header, zip (the payload must be deflated)]. */
function headerVariant(kid: string): [string, Header, boolean?] {
  const base = { alg: 'dir', enc: 'A256GCM', kid };
  switch (int(18)) {
    case 0: case 1: case 2: {
      const [label, members] = extraMembers();
      return [`member:${label}`, { ...base, ...members }, members.zip === 'DEF'];
    }
    case 3: return ['__proto__', `{"alg":"dir","enc":"A256GCM","kid":${JSON.stringify(kid)},"__proto__":{"x":1}}`];
    case 4: return ['alg-other', { ...base, alg: pick(['none', 'HS256', 'RSA-OAEP', 'A256KW', 'ECDH-ES', 'DIR', 'dir ', '', 1]) }];
    case 5: return ['enc-other', { ...base, enc: pick(['A128GCM', 'A192GCM', 'A256CBC-HS512', 'a256gcm', '', null]) }];
    case 6: return ['no-alg-or-enc', rand() < 0.5 ? { enc: 'A256GCM', kid } : { alg: 'dir', kid }];
    case 7: return ['not-an-object', pick(['[]', '"dir"', '1', 'null', '{', `[${JSON.stringify(base)}]`, ''])];
    case 8: return ['bom', Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(JSON.stringify(base))])];
    case 9: return ['bad-utf8', Buffer.from(`{"alg":"dir","enc":"A256GCM","kid":"\xff\xfe"}`, 'latin1')];
    // valid: every side accepts these
    case 10: case 11: return ['ok:member-order', { enc: 'A256GCM', alg: 'dir', kid }]; // node-jose's order
    case 12: return ['ok:cty', { ...base, cty: pick(['JOSE', 'JWS', '']) }];
    case 13: return ['ok:no-kid', { alg: 'dir', enc: 'A256GCM' }];
    case 14: return ['ok:json-whitespace', JSON.stringify(base, null, 2)];
    case 15: return ['ok:escaped', JSON.stringify(base).replace('"dir"', '"\\u0064ir"')];
    default: return ['ok:duplicate-member', `{"alg":"HS256","alg":"dir","enc":"A256GCM","kid":${JSON.stringify(kid)}}`];
  }
}

// --- tests ------------------------------------------------------------------------------------------

test('each variant and jose open each other\'s messages: 1,500 random keys, kids and payloads (empty to 64 KB, unicode)', async () => {
  const sizes = { empty: 0, multiKb: 0 };
  for (let i = 0; i < 1500; i++) {
    const key = random.bytes(32);
    const kid = randomKid();
    const cty = rand() < 0.25 ? 'JOSE' : undefined;
    const plaintext = randomPayload(i === 0 ? 0 : undefined);
    if (plaintext.length === 0) sizes.empty++;
    if (plaintext.length >= 4096) sizes.multiKb++;
    const where = at(`#${i}: ${plaintext.length} bytes, kid ${JSON.stringify(kid)}${cty ? `, cty ${cty}` : ''}`);
    const header = cty === undefined ? { alg: 'dir', enc: 'A256GCM', kid } : { alg: 'dir', enc: 'A256GCM', kid, cty };
    const byJose = await jose.seal(plaintext, key, kid, cty);
    const sealed = new Map<Variant, string>();
    for (const [variant, codec] of VARIANTS) {
      const compact = await codec.encryptChannel(plaintext, key, kid, cty);
      const [h, encryptedKey, iv, , tag] = compact.split('.');
      assert.equal(h, byJose.split('.')[0], `${variant}: the protected header is jose's, byte for byte: ${where}`);
      assert.equal(encryptedKey, '', `${variant}: no encrypted key with dir: ${where}`);
      assert.equal(Buffer.from(iv!, 'base64url').length, 12, `${variant}: a 96-bit IV: ${where}`);
      assert.equal(Buffer.from(tag!, 'base64url').length, 16, `${variant}: a 128-bit tag: ${where}`);
      assert.ok(strict(compact), `${variant}: what it writes, the strict reader accepts: ${where}`);
      const opened = await jose.open(compact, key);
      assert.ok(sameBytes(opened.plaintext, plaintext), `${variant} seals, jose opens: ${where}`);
      assert.deepEqual(opened.header, header, where);
      const fromJose = await codec.decryptChannel(byJose, key);
      assert.ok(sameBytes(fromJose.plaintext, plaintext), `jose seals, ${variant} opens: ${where}`);
      assert.deepEqual(fromJose.header, header, where);
      sealed.set(variant, compact);
    }
    for (const [variant, codec] of VARIANTS) {
      const other = variant === 'node' ? 'web' : 'node';
      const opened = await codec.decryptChannel(sealed.get(other)!, key);
      assert.ok(sameBytes(opened.plaintext, plaintext), `${other} seals, ${variant} opens: ${where}`);
      assert.deepEqual(opened.header, header, where);
    }
  }
  assert.ok(sizes.empty > 0 && sizes.multiKb > 0, at(`empty and multi-KB payloads among the cases: ${JSON.stringify(sizes)}`));
});

test('tampered inputs: each variant accepts exactly what jose accepts (the node variant being stricter on headers and encoding only)', async () => {
  const differential = new Differential(DECRYPTION_FAILED, at);
  for (let i = 0; i < 1500; i++) {
    const key = random.bytes(32);
    const kid = randomKid();
    const plaintext = randomPayload(rand() < 0.9 ? int(200) : undefined);
    const sealer = pick([nodeCodec, webCodec, { encryptChannel: jose.seal }]);
    const base = await sealer.encryptChannel(plaintext, key, kid);
    let kind: string;
    let compact: string;
    let openKey = key;
    const r = int(20);
    if (r < 10) {
      [kind, compact] = segmentTamper(base);
    } else if (r < 16) {
      const [label, header, zip] = headerVariant(kid);
      kind = `header:${label}`;
      compact = forge({ header, key, plaintext: zip ? deflateRawSync(plaintext) : plaintext });
    } else if (r === 16) {
      kind = 'wrong-key';
      compact = base;
      openKey = random.bytes(32);
    } else if (r === 17) {
      const n = pick([0, 1, 8, 11, 13, 16, 32]);
      kind = `iv-length:${n}`;
      // node:crypto refuses an empty IV, so that one is cut out of a message made with 12 bytes
      const forged = forge({ header: { alg: 'dir', enc: 'A256GCM', kid }, key, plaintext, iv: randomBytes(n === 0 ? 12 : n) }).split('.');
      if (n === 0) forged[2] = '';
      compact = forged.join('.');
    } else if (r === 18) {
      const n = pick([0, 1, 12, 15, 17, 32]);
      kind = `tag-length:${n}`;
      compact = forge({ header: { alg: 'dir', enc: 'A256GCM', kid }, key, plaintext, tagBytes: n });
    } else {
      // dir with an encrypted key, or a header segment with padding or whitespace, used verbatim as AAD
      const h = b64u(JSON.stringify({ alg: 'dir', enc: 'A256GCM', kid }));
      const v = int(3);
      kind = ['dir-with-encrypted-key', 'header-padding-as-aad', 'header-whitespace-as-aad'][v]!;
      compact = v === 0
        ? forge({ header: { alg: 'dir', enc: 'A256GCM', kid }, key, plaintext, ek: b64u(random.bytes(1 + int(40))) })
        : forge({ header: '', headerSeg: v === 1 ? h + '='.repeat((4 - (h.length % 4)) % 4 || 4) : `${h.slice(0, 8)} ${h.slice(8)}`, key, plaintext });
    }
    for (const [variant, codec] of VARIANTS) await differential.check({ variant, kind, compact, strict: strict(compact), reference: () => jose.open(compact, openKey), mine: () => codec.decryptChannel(compact, openKey) });
  }
  differential.report();
});

test('a tag, ciphertext, IV or protected header changed in transit, or another key, is refused by jose and both variants as ERR_JWE_DECRYPTION_FAILED', async () => {
  const counts = new Map<string, number>();
  for (let i = 0; i < 400; i++) {
    const key = random.bytes(32);
    const kid = channelUri();
    const plaintext = randomPayload(1 + int(3000)); // never empty: the ciphertext has a bit to flip
    const sealer = pick([nodeCodec, webCodec, { encryptChannel: jose.seal }]);
    const [h, ek, iv, ct, tag] = (await sealer.encryptChannel(plaintext, key, kid, rand() < 0.3 ? 'JOSE' : undefined)).split('.') as [string, string, string, string, string];
    const part = pick(['tag', 'ciphertext', 'iv', 'header', 'key'] as const);
    let openKey = key;
    let compact: string;
    switch (part) {
      case 'tag': compact = [h, ek, iv, ct, flipBit(tag)].join('.'); break;
      case 'ciphertext': compact = [h, ek, iv, flipBit(ct), tag].join('.'); break;
      case 'iv': compact = [h, ek, flipBit(iv), ct, tag].join('.'); break;
      case 'header': {
        // a header every side accepts, so only the AAD tells: another channel's kid, or the same members reordered
        const other = rand() < 0.5 ? { alg: 'dir', enc: 'A256GCM', kid: channelUri() } : { enc: 'A256GCM', alg: 'dir', kid };
        compact = [b64u(JSON.stringify(other)), ek, iv, ct, tag].join('.');
        break;
      }
      default:
        compact = [h, ek, iv, ct, tag].join('.');
        openKey = random.bytes(32);
    }
    counts.set(part, (counts.get(part) ?? 0) + 1);
    const where = at(`#${i}, ${part} changed`);
    const sides: Array<readonly [string, (c: string, k: Uint8Array) => Promise<Decrypted>]> = [['jose', jose.open], ...VARIANTS.map(([v, c]) => [v, c.decryptChannel] as const)];
    for (const [side, open] of sides) {
      const result = await outcome(() => open(compact, openKey));
      assert.ok(!result.ok, `${side} accepted: ${where}`);
      assert.equal(codeOf(result.error), DECRYPTION_FAILED, `${side}: ${where}: ${String(result.error)}`);
    }
  }
  assert.equal(counts.size, 5, at('every part changed at least once'));
});

test('keys that are not 32 bytes, and arguments of the wrong type, are refused by both variants as jose refuses them', async () => {
  const plaintext = new TextEncoder().encode('{"status":200}');
  const good = await jose.seal(plaintext, random.bytes(32), channelUri());
  const sides: Array<readonly [string, ChannelCodec]> = [['jose', { encryptChannel: jose.seal, decryptChannel: jose.open }], ...VARIANTS];
  const failure = async (run: () => Promise<unknown>): Promise<string> => {
    try {
      await run();
    } catch (error) {
      return error instanceof TypeError ? 'TypeError' : String(codeOf(error));
    }
    return 'accepted';
  };
  const bad: Array<readonly [string, unknown]> = [['16 bytes', random.bytes(16)], ['31 bytes', random.bytes(31)], ['33 bytes', random.bytes(33)], ['empty', new Uint8Array(0)], ['a string', 'k'.repeat(32)]];
  for (const [label, key] of bad) {
    const outcomes = await Promise.all(sides.map(async ([side, codec]) => [side, await failure(() => codec.encryptChannel(plaintext, key as Uint8Array, 'kid')), await failure(() => codec.decryptChannel(good, key as Uint8Array))].join(' ')));
    const expected = label === 'a string' ? 'TypeError' : 'ERR_JWE_INVALID';
    assert.deepEqual(outcomes, sides.map(([side]) => `${side} ${expected} ${expected}`), `a key of ${label}`);
  }
  for (const [, codec] of VARIANTS) {
    assert.equal(await failure(() => codec.encryptChannel('text' as unknown as Uint8Array, random.bytes(32), 'kid')), 'TypeError');
    assert.notEqual(await failure(() => codec.decryptChannel(42 as unknown as string, random.bytes(32))), 'accepted');
  }
});

test('the node variant never repeats an IV: 5,000 seals, across IV-pool refills', async () => {
  const key = random.bytes(32);
  const seen = new Set<string>();
  for (let i = 0; i < 5000; i++) seen.add((await nodeCodec.encryptChannel(new Uint8Array(0), key, 'kid')).split('.')[2]!);
  assert.equal(seen.size, 5000);
});

test('the node variant\'s failures carry no key material and no plaintext', async () => {
  const key = random.bytes(32);
  const wrong = random.bytes(32);
  const secret = 'secret-answer-text';
  const compact = await nodeCodec.encryptChannel(new TextEncoder().encode(secret), key, channelUri());
  const [h, ek, iv, ct, tag] = compact.split('.') as [string, string, string, string, string];
  const attempts: Array<readonly [string, Uint8Array]> = [
    [compact, wrong],
    [[h, ek, iv, ct, flipBit(tag)].join('.'), key],
    [[h, b64u(key), iv, ct, tag].join('.'), key],
    [[b64u(`{"alg":"dir","enc":"A256GCM","k":"${b64u(key)}"}`), ek, iv, ct, tag].join('.'), key],
  ];
  for (const [input, openKey] of attempts) {
    const error = await nodeCodec.decryptChannel(input, openKey).then(() => assert.fail('accepted'), (e: unknown) => e);
    assert.ok(error instanceof Error);
    const text = `${error.message} ${String(codeOf(error))} ${error.stack ?? ''}`;
    for (const k of [key, wrong]) for (const encoding of ['hex', 'base64', 'base64url'] as const) assert.ok(!text.includes(Buffer.from(k).toString(encoding)), text);
    assert.ok(!text.includes(secret), text);
  }
});
