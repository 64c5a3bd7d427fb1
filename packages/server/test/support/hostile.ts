/**
 * Builders of hostile input for the KMS (PROTOCOL.md §3–§4), shared by the malformed corpus (one
 * in-process KMS) and the fuzz campaign (a live `kms serve`): junk text, random JSON, broken basic
 * requests, strings no member may hold, requests that fail at their operation, prototype keys,
 * pathological JSON and structural mutations of compact JWEs. Every choice comes from the seeded
 * random source, so a seed reproduces the same sequence of inputs.
 */
import type { SeededRandom } from './random.js';

export const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
/** Unicode junk: lone surrogates, controls, BOM, RTL and zero-width marks, emoji, combining marks. */
export const JUNK = ['\ud800', '\udfff', '\u0000', '\u0007', '\u001b', '\ufeff', '\u202e', '\u200b', '\u2028', '\u0301', '😀', '𝕏', 'ß', 'İ', '\uffff', '\\', '"', '%00', '../', '\r\n'];
/** Text no member may hold (PROTOCOL.md §4 "Strings"); a pair and other junk are fine elsewhere. */
export const BAD_TEXT = ['\ud800', '\udbff', '\udc00', '\udfff', '\u0000', '\u0001', '\u001f', '\u007f', '\ud83d\ud83d', '\ude00\ud83d'];

/** Who the built requests speak for, and what of the KMS they name. */
export interface HostileContext {
  /** The static key's kid (`kms://<authority>`) and its public JWK. */
  staticKid: string;
  staticJwk: Record<string, unknown>;
  /** The channel the requests are sealed under (its URI), and the client id they carry. */
  channelUri: string;
  clientId: string;
  /** Bearers: the channel owner's, another user's of the same domain, a user's of a domain the KMS does not serve. */
  tokens: { own: string; other: string; foreign: string };
  /** A requestId no other request of the run carries. */
  nextRid(): string;
}

export type Hostile = ReturnType<typeof hostileBuilders>;

/** The builders for one channel owner; `random` is shared, so the order of calls fixes the inputs. */
export function hostileBuilders(random: SeededRandom, ctx: HostileContext) {
  const { int, chance, pick, bytes, uuid } = random;
  const client = (bearer = ctx.tokens.own) => ({ clientId: ctx.clientId, credential: { bearer } });
  const randB64u = (n: number): string => Array.from({ length: n }, () => B64URL[int(64)]).join('');
  const b64u = (value: unknown): string =>
    Buffer.from(typeof value === 'string' ? value : value instanceof Uint8Array ? value : JSON.stringify(value)).toString('base64url');

  const junk = (n: number): string => Array.from({ length: n }, () => (chance(0.5) ? pick(JUNK) : String.fromCharCode(int(0x3000)))).join('');

  /** A random JSON value (depth-bounded). */
  function randomJson(depth = 0): unknown {
    switch (int(depth > 3 ? 5 : 8)) {
      case 0:
        return null;
      case 1:
        return chance(0.5);
      case 2:
        return pick([0, -1, 1.5, 1e308, -1e-308, Number.MAX_SAFE_INTEGER + 2, int(1000)]);
      case 3:
        return junk(int(12));
      case 4:
        return randB64u(int(40));
      case 5:
        return Array.from({ length: int(4) }, () => randomJson(depth + 1));
      default: {
        const o: Record<string, unknown> = {};
        for (let i = int(4); i > 0; i--) o[pick(['alg', 'enc', 'kid', 'cty', 'zip', 'crit', 'jwk', 'x', junk(3), '__proto__', 'constructor'])] = randomJson(depth + 1);
        return o;
      }
    }
  }

  /** A valid basic request, mutated so that it is certainly invalid; returns the body text and the echo. */
  function brokenBasic(base: Record<string, unknown>): { text: string; rid?: string | number; expect: readonly number[] } {
    const body: Record<string, unknown> = { ...base };
    const rid = body.requestId as string;
    const field = pick(['requestId', 'client', 'client.clientId', 'client.credential', 'client.credential.bearer', 'method', 'uri']);
    const missing = chance(0.3);
    const c = { ...(body.client as { clientId: string; credential: Record<string, unknown> }) };
    c.credential = { ...c.credential };
    body.client = c;
    let keepsRid = true;
    switch (field) {
      case 'requestId':
        keepsRid = false;
        if (missing) delete body.requestId;
        else body.requestId = pick<unknown>([null, true, 1.5, -0.5, [], {}, [rid], { id: rid }, 'r'.repeat(257 + int(100)), 2 ** 53 + 2, -(2 ** 60), 1e300]);
        break;
      case 'client':
        if (missing) delete body.client;
        else body.client = pick<unknown>([null, 'alice', 42, [], [c], { clientId: c.clientId }, { credential: c.credential }, {}]);
        break;
      case 'client.clientId':
        if (missing) delete (c as Record<string, unknown>).clientId;
        else (c as Record<string, unknown>).clientId = pick<unknown>([null, 5, '', [], {}, 'c'.repeat(257 + int(50)), true]);
        break;
      case 'client.credential':
        if (missing) delete (c as Record<string, unknown>).credential;
        else (c as Record<string, unknown>).credential = pick<unknown>([null, 'bearer', 7, [], [c.credential], true]);
        break;
      case 'client.credential.bearer':
        if (missing) {
          delete c.credential.bearer;
          return { text: JSON.stringify(body), rid, expect: [401] };
        }
        c.credential.bearer = pick<unknown>([null, 5, '', [], {}, true, ['x'], 'b'.repeat(16 * 1024 + 1 + int(10))]);
        break;
      case 'method':
        if (missing) delete body.method;
        else body.method = pick<unknown>([null, 5, '', 'patch', 'UPDATE', 'get', 'post', ' update', 'update ', junk(4), [], {}, 'constructor', '__proto__', 'toString']);
        break;
      default:
        if (missing) delete body.uri;
        else body.uri = pick<unknown>([null, 5, '', [], {}, '/'.repeat(2049), 'ping', '/ping/', '/ping/x', '/nope', `/keys/${uuid()}/x`, '/keys/not-a-uuid', '//ping', `kms://${junk(3)}/ping`, junk(6), '/PING', '/ping?x=1&x=2', 'http://kms.a.example/ping', '/ecdhe/x/y']);
    }
    // '/ping/' (one trailing slash) is tolerated by the URI grammar: make sure the request is invalid.
    if (body.uri === '/ping/') body.uri = '/ping//';
    return { text: JSON.stringify(body), rid: keepsRid ? rid : undefined, expect: [400] };
  }


  /**
   * A request with one string member made of text no member may hold: refused with a 400 naming that
   * member, echoing the requestId unless it is the requestId itself.
   */
  function badText(base: Record<string, unknown>): { text: string; rid?: string | number; reason: RegExp } {
    const bad = `${pick(['', 'x', '😀'])}${pick(BAD_TEXT)}${pick(['', 'y', '😀'])}`;
    const body: Record<string, unknown> = { ...base };
    const c = { ...(body.client as { clientId: string; credential: Record<string, unknown> }) };
    c.credential = { ...c.credential };
    body.client = c;
    const field = pick(['requestId', 'client.clientId', 'uri', 'client.credential.bearer', 'client.credential.userId']);
    if (field === 'requestId') body.requestId = bad;
    else if (field === 'client.clientId') c.clientId = bad;
    else if (field === 'uri') body.uri = `${body.uri as string}${bad}`;
    else if (field === 'client.credential.bearer') c.credential.bearer = `${c.credential.bearer as string}${bad}`;
    else c.credential.userId = bad;
    const name = field.replace(/\./g, '\\.');
    return { text: JSON.stringify(body), rid: field === 'requestId' ? undefined : (body.requestId as string), reason: new RegExp(`invalid field ${name}: contains`) };
  }

  const validPing = (): Record<string, unknown> => ({ requestId: ctx.nextRid(), client: client(), method: 'update', uri: '/ping' });

  /** Valid JSON requests that fail at the operation (decrypts, validates as a basic request). */
  function brokenOperation(): { body: Record<string, unknown>; expect: readonly number[] } {
    const u = uuid();
    const base = { requestId: ctx.nextRid(), client: client() };
    const many = (n: number) => Array.from({ length: n }, (_, i) => `u${i}@a.example`);
    const options: [Record<string, unknown>, readonly number[]][] = [
      [{ method: 'create', uri: '/keys', count: pick<unknown>([0, -1, 1.5, '5', null, [], {}, true]) }, [400]],
      [{ method: 'create', uri: '/keys', count: pick<unknown>([2 ** 60, 1e308]) }, [400, 413]],
      [{ method: 'create', uri: '/keys' }, [400]],
      [{ method: 'create', uri: '/keys', count: 101 + int(1e6) }, [413]],
      [{ method: 'create', uri: '/resources', authIds: pick<unknown>(['x', [1], [''], [null], {}, ['a'.repeat(300)]]) }, [400]],
      [{ method: 'create', uri: '/resources', authIds: many(101 + int(50)) }, [413]],
      [{ method: 'create', uri: '/resources', userIds: many(101) }, [413]],
      [{ method: 'create', uri: '/resources', ttl: pick<unknown>([-1, 1.5, 'x', null, 1e400]) }, [400]],
      [{ method: 'create', uri: '/resources', anonymous: pick<unknown>([-1, 1.5, 'x', null]) }, [400]],
      [{ method: 'create', uri: '/resources', anonymous: 101 + int(1000) }, [413]],
      [{ method: 'create', uri: '/resources', keyUris: pick<unknown>([['nope'], 'x', [5], [`/resources/${u}`]]) }, [400]],
      [{ method: 'create', uri: '/resources', keyUris: [`kms://kms.z.example/keys/${u}`] }, [404]],
      [{ method: 'create', uri: '/resources', keyUris: [`/keys/${u}`] }, [404]],
      [{ method: 'update', uri: `/keys/${u}` }, [400]],
      [{ method: 'update', uri: `/keys/${u}`, resourceUri: pick<unknown>([5, '', 'x', null]) }, [400]],
      [{ method: 'update', uri: `/keys/${u}`, resourceUri: `/resources/${uuid()}` }, [404]],
      [{ method: 'retrieve', uri: `/keys/${u}` }, [404]],
      [{ method: 'retrieve', uri: `/resources/${u}` }, [404]],
      [{ method: 'retrieve', uri: `/resources/${u}/keys`, boundAfter: pick<unknown>(['yesterday', 5, '2026-13-45T00:00:00Z', null]) }, [400]],
      [{ method: 'retrieve', uri: `/resources/${u}/keys`, count: pick<unknown>([0, -3, 'x', 1.25]) }, [400]],
      [{ method: 'retrieve', uri: `/resources/${u}/keys`, count: 5 }, [404]],
      [{ method: 'retrieve', uri: `/resources/${u}/authorizations` }, [404]],
      [{ method: 'create', uri: '/authorizations', resourceUri: `/resources/${u}`, authIds: ['bob@a.example'] }, [404]],
      [{ method: 'create', uri: '/authorizations', authIds: ['bob@a.example'] }, [400]],
      [{ method: 'delete', uri: `/authorizations/${u}` }, [404]],
      [{ method: 'delete', uri: '/authorizations', resourceUri: `/resources/${u}`, authIds: [] }, [400]],
      [{ method: 'delete', uri: '/authorizations', resourceUri: `/resources/${u}`, authIds: many(101) }, [413]],
      [{ method: 'retrieve', uri: `kms://kms.z.example/keys/${u}` }, [404]],
      [{ method: 'delete', uri: `/ecdhe/${u}` }, [404]],
      [{ method: 'create', uri: '/cmk' }, [403]],
      [{ method: 'update', uri: `/cmk/${u}`, state: 'bogus' }, [400]],
      [{ method: 'update', uri: `/cmk/${u}`, state: 'inactive' }, [404]],
      [{ method: 'update', uri: '/ping', client: client(ctx.tokens.other) }, [403]],
      [{ method: 'update', uri: '/ping', client: client(ctx.tokens.foreign) }, [403]],
      [{ method: 'update', uri: '/ping', client: client(pick(['x', 'a.b.c', `${b64u({ alg: 'none' })}.${b64u({ sub: 'alice@a.example' })}.`, `${b64u({ alg: 'PS256' })}.${b64u({ iss: 'kms://kms.a.example' })}.${randB64u(40)}`, randB64u(200)])) }, [401]],
      [{ method: 'update', uri: '/ping', client: client(junk(20)) }, [400, 401]], // 400 when the junk is not plain text
      [{ method: 'update', uri: '/ping', client: { clientId: 'c', credential: {} } }, [401]],
      [{ method: 'update', uri: '/ping', client: { clientId: 'c', credential: { jwk: ctx.staticJwk } } }, [401]],
    ];
    const [patch, expect] = pick(options);
    return { body: { ...base, ...patch }, expect };
  }

  /** Hand-written JSON texts with prototype keys (JSON.stringify would not emit "__proto__"). */
  function protoText(): { text: string; rid?: string | number; expect: readonly number[] } {
    const rid = ctx.nextRid();
    const ping = JSON.stringify(validPing());
    const c = JSON.stringify(client());
    const r = JSON.stringify(rid);
    const texts: [string, string | undefined, readonly number[]][] = [
      [`{"__proto__":${ping}}`, undefined, [400]],
      [`{"constructor":{"prototype":${ping}}}`, undefined, [400]],
      [`{"requestId":${r},"__proto__":{"client":${c},"method":"update","uri":"/ping"}}`, rid, [400]],
      [`{"requestId":${r},"client":{"__proto__":${c}},"method":"update","uri":"/ping"}`, rid, [400]],
      [`{"requestId":${r},"client":{"clientId":"c","credential":{"__proto__":{"bearer":${JSON.stringify(ctx.tokens.own)}}}},"method":"update","uri":"/ping"}`, rid, [401]],
      [`{"requestId":${r},"client":${c},"method":"update","uri":"/nope","__proto__":{"polluted":"yes","status":200},"constructor":{"prototype":{"polluted":"yes"}}}`, rid, [400]],
      [`{"requestId":${r},"client":${c},"method":"__proto__","uri":"/ping"}`, rid, [400]],
      [`{"requestId":${r},"client":${c},"method":"constructor","uri":"/ping"}`, rid, [400]],
      [`{"requestId":${r},"client":${c},"method":"create","uri":"/resources","authIds":{"__proto__":[]}}`, rid, [400]],
      [`{"requestId":${r},"client":${c},"method":"create","uri":"/keys","count":{"__proto__":{"valueOf":1}}}`, rid, [400]],
      [`{"requestId":${r},"client":${c},"method":"create","uri":"/keys","__proto__":{"count":5}}`, rid, [400]],
      [`{"requestId":{"__proto__":${r}},"client":${c},"method":"update","uri":"/ping"}`, undefined, [400]],
      [`[${ping}]`, undefined, [400]],
    ];
    const [text, echo, expect] = pick(texts);
    return { text, rid: echo, expect };
  }

  /** Deeply nested arrays/objects, huge numbers, long digit strings. */
  function pathological(): { text: string; rid?: string | number; expect: readonly number[] } {
    const rid = ctx.nextRid();
    const c = JSON.stringify(client());
    const r = JSON.stringify(rid);
    const depth = 1000 + int(60_000);
    const deepArray = '['.repeat(depth) + ']'.repeat(depth);
    const deepObject = '{"a":'.repeat(depth / 10) + '1' + '}'.repeat(depth / 10);
    const digits = '9'.repeat(300 + int(3000));
    const options: [string, string | number | undefined, readonly number[]][] = [
      [deepArray, undefined, [400]],
      [deepObject, undefined, [400]],
      [`{"requestId":${r},"client":${deepArray},"method":"update","uri":"/ping"}`, rid, [400]],
      [`{"requestId":${r},"client":${c},"method":${deepArray},"uri":"/ping"}`, rid, [400]],
      [`{"requestId":${r},"client":${c},"method":"update","uri":"/nope","extra":${deepArray}}`, rid, [400]],
      [`{"requestId":${r},"client":${c},"method":"create","uri":"/resources","authIds":${deepArray}}`, rid, [400]],
      // Refused for its nesting before the bearer is looked at (Limits.maxJsonDepth).
      [`{"requestId":${r},"client":{"clientId":"c","credential":{"bearer":"x","jwk":${deepObject}}},"method":"update","uri":"/ping"}`, rid, [400]],
      [`{"requestId":${digits},"client":${c},"method":"update","uri":"/ping"}`, undefined, [400]],
      [`{"requestId":1e400,"client":${c},"method":"update","uri":"/ping"}`, undefined, [400]],
      [`{"requestId":-1e400,"client":${c},"method":"update","uri":"/ping"}`, undefined, [400]],
      [`{"requestId":1e-400,"client":${c},"method":"nope","uri":"/ping"}`, undefined, [400]],
      [`{"requestId":${r},"client":${c},"method":"create","uri":"/keys","count":${digits}}`, rid, [400]],
      [`{"requestId":${r},"client":${c},"method":"create","uri":"/keys","count":1e400}`, rid, [400]],
      [`{"requestId":${r},"client":${c},"method":"create","uri":"/resources","ttl":${digits}}`, rid, [400]],
      [`{"requestId":${r},"client":${c},"method":"create","uri":"/resources","anonymous":1e21}`, rid, [400, 413]],
      [`{"requestId":${r},"client":${c},"method":"retrieve","uri":"/resources/${uuid()}/keys","count":${digits}}`, rid, [400, 404]],
      [`{"requestId":${r},"requestId":5,"client":${c},"method":"update","uri":"/nope"}`, 5, [400]],
      [`{"requestId":${r},"client":${c},"method":"update","uri":"/ping"`, undefined, [400]],
      [`{"requestId":${r},"client":${c},"method":"update","uri":"/ping"}}`, undefined, [400]],
      [`{"requestId":${r},"client":${c},"method":"update","uri":"/ping",}`, undefined, [400]],
      [`{'requestId':${r}}`, undefined, [400]],
    ];
    const [text, echo, expect] = pick(options);
    return { text, rid: echo, expect };
  }


  /** Structural mutations of a valid compact JWE: none of them may decrypt. */
  function mutateCompact(good: string): string {
    const parts = good.split('.');
    for (let attempt = 0; attempt < 10; attempt++) {
      const p = [...parts];
      let out: string;
      switch (int(14)) {
        case 0:
          p.splice(int(p.length), 1);
          out = p.join('.');
          break;
        case 1: {
          const i = int(p.length);
          p.splice(i, 0, p[i]!);
          out = p.join('.');
          break;
        }
        case 2: {
          const i = int(p.length);
          let j = int(p.length);
          if (j === i) j = (i + 1) % p.length;
          [p[i], p[j]] = [p[j]!, p[i]!];
          out = p.join('.');
          break;
        }
        case 3:
          p[int(p.length)] = pick([
            randB64u(int(60)),
            bytes(int(40)).toString('base64'),
            `${randB64u(8)}==`,
            `${randB64u(6)} ${randB64u(6)}`,
            `${randB64u(6)}\n${randB64u(6)}`,
            '%%%',
            junk(5),
            '',
            '=',
          ]);
          out = p.join('.');
          break;
        case 4:
          p[0] = b64u(randomJson());
          out = p.join('.');
          break;
        case 5:
          p[0] = b64u(
            pick<unknown>([
              { alg: 'dir', enc: 'A256GCM', kid: junk(8) },
              { alg: 'dir', enc: 'A256GCM', kid: ctx.channelUri, zip: 'DEF' },
              { alg: 'dir', enc: 'A256GCM', kid: ctx.channelUri, crit: ['exp'], exp: 1 },
              { alg: 'dir', enc: 'A256GCM', kid: ctx.channelUri, jwk: ctx.staticJwk },
              { alg: 'dir', enc: 'A256GCM', kid: [ctx.channelUri] },
              { alg: 'dir', enc: 'A256GCM', kid: 5 },
              { alg: 'dir', enc: 'A256GCM', kid: ctx.staticKid },
              { alg: 'dir', enc: 'A256GCM', kid: `kms://kms.a.example/ecdhe/${uuid()}` },
              { alg: 'dir', enc: 'A256GCM', kid: 'kms://kms.a.example/ecdhe/../keys' },
              { alg: 'RSA-OAEP', enc: 'A256GCM', kid: ctx.staticKid },
              { alg: 'RSA-OAEP-256', enc: 'A256GCM', kid: ctx.channelUri },
              { alg: 'RSA1_5', enc: 'A256GCM', kid: ctx.staticKid },
              { alg: 'ECDH-ES', enc: 'A256GCM', kid: ctx.channelUri },
              { alg: 'A256GCMKW', enc: 'A256GCM', kid: ctx.channelUri },
              { alg: 'PBES2-HS256+A128KW', enc: 'A256GCM', kid: ctx.channelUri, p2c: 1e9, p2s: 'AAAA' },
              { alg: 'dir', enc: 'A128CBC-HS256', kid: ctx.channelUri },
              { alg: 'dir', kid: ctx.channelUri },
              { enc: 'A256GCM', kid: ctx.channelUri },
              { alg: 'none', enc: 'none', kid: ctx.channelUri },
            ]),
          );
          out = p.join('.');
          break;
        case 6:
          out = good.slice(0, int(good.length));
          break;
        case 7:
          out = chance(0.5) ? good + pick(['.', '..', 'A', '=', ' ', '\n', junk(3), `.${randB64u(10)}`]) : pick([' ', '\ufeff', '.', 'A', junk(2)]) + good;
          break;
        case 8: {
          const nonEmpty = p.map((s, i) => [s, i] as const).filter(([s]) => s.length > 0);
          const [seg, i] = pick(nonEmpty);
          const k = int(seg.length);
          let ch = B64URL[int(64)]!;
          if (ch === seg[k]) ch = ch === 'A' ? 'B' : 'A';
          p[i] = seg.slice(0, k) + ch + seg.slice(k + 1);
          out = p.join('.');
          break;
        }
        case 9:
          out = p.map((s) => (s.length % 4 === 0 ? s : s + '='.repeat(4 - (s.length % 4)))).join('.');
          break;
        case 10:
          out = good.replace(/-/g, '+').replace(/_/g, '/');
          break;
        case 11:
          out = good.replace(/\./g, pick([',', ':', '..', ' ', '\u2024']));
          break;
        case 12:
          out = good + '.' + good;
          break;
        default:
          out = [...good].map((ch) => (chance(0.5) ? ch.toUpperCase() : ch.toLowerCase())).join('');
      }
      if (out !== good) return out;
    }
    return good.slice(0, -1);
  }
  return { randB64u, b64u, junk, randomJson, client, brokenBasic, badText, validPing, brokenOperation, protoText, pathological, mutateCompact };
}
