/**
 * Draft §3.2, "Securing an XMPP Multi-User Chat", with a WebSocket relay in place of the XMPP
 * room, end to end on loopback:
 *
 *   1-2. Alice gets a key from the KMS and creates the room's KMS resource object (KRO) with the
 *        key bound to it, authorizing Bob and Carol.
 *   3-4. Alice posts; the relay stores and delivers only ciphertext.
 *   5-6. Bob joins, fetches the room's keys through the KRO and reads the history.
 *   7.   Carol joins later, fetches the keys the same way and reads the whole history.
 *   Then Alice removes Bob from the KRO and rotates the room to a new key (created, then bound to
 *   the KRO). The relay still hands Bob the new ciphertext, but the KMS refuses him the new key
 *   (403); Carol fetches it and reads on.
 *
 * Every user talks to the KMS through its own KmsClient, here over the KMS's WebSocket endpoint.
 */
import { WebSocket } from 'ws';
import { contentKeyUri, type KmsClient } from '@openkms/client';
import { DOMAIN, startDemoKms, statusOf } from '../common/demo-kms.js';
import { ChatMember, type Read } from './member.js';
import { startRelay } from './relay.js';

export interface RunOptions {
  log?: (line: string) => void;
}

export interface ChatResult {
  room: string;
  resourceUri: string;
  firstKeyUri: string;
  secondKeyUri: string;
  /** Every message posted, in order, with the key it was encrypted with. */
  posted: { seq: number; from: string; text: string; keyUri: string }[];
  /** Every frame the relay received or sent. */
  relayFrames: string[];
  /** The key values (base64url) of every key used in the room. */
  keyValues: string[];
  /** What Bob read on joining (the history), and everything he read while a member. */
  bobHistory: Read[];
  bobRead: Read[];
  /** What Carol read on joining (the whole history), and after the rotation. */
  carolHistory: Read[];
  carolAfterRotation: Read[];
  /** What Alice read of the others' posts. */
  aliceRead: Read[];
  /** After his removal: ciphertexts the relay still delivered to Bob, and what the KMS told him. */
  bobAfterRemoval: { delivered: number; newKeyStatus: number | 'ok'; resourceKeysStatus: number | 'ok'; read: number };
}

const user = (name: string) => `${name}@${DOMAIN}`;
const ROOM = 'launch-plan';

export async function run(options: RunOptions = {}): Promise<ChatResult> {
  const log = options.log ?? ((line: string) => console.log(line));
  const kms = await startDemoKms();
  const relay = await startRelay();
  const members: ChatMember[] = [];
  try {
    log(`The KMS ${kms.authority} listens on ${kms.url}; every user's client trusts its CA (ca.pem).`);
    log(`The chat relay listens on ${relay.url}. It stores and delivers messages but is not trusted with what they say.`);
    const member = async (name: string) => {
      const client: KmsClient = await kms.client(user(name), { transport: 'websocket', WebSocket });
      const m = new ChatMember(user(name), client);
      members.push(m);
      return m;
    };
    const [alice, bob, carol] = await Promise.all(['alice', 'bob', 'carol'].map(member));
    const posted: ChatResult['posted'] = [];
    const say = async (who: ChatMember, text: string) => {
      const seq = await who.post(text);
      posted.push({ seq, from: who.user, text, keyUri: contentKeyUri(relay.rooms.get(ROOM)!.history[seq - 1]!.jwe) });
      log(`    ${name(who)} posts #${seq}: "${text}"`);
      return seq;
    };
    const show = (who: ChatMember, reads: Read[]) => {
      for (const r of reads) log(`      ${name(who)} reads #${r.seq} from ${r.from.split('@')[0]}: "${r.text}"`);
    };

    // (1)-(2) The room's first key and its KRO.
    const [first] = await alice!.kms.createKeys(1);
    const { resource } = await alice!.kms.createResource({ authIds: [user('bob'), user('carol')], keyUris: [first!.uri] });
    // Alice posts with the key as now bound (its representation carries the KRO and bind date).
    alice!.useKey(await alice!.kms.retrieveKey(first!.uri));
    log(`(1) Alice gets a fresh key from the KMS: ${first!.uri}.`);
    log(`(2) Alice creates the KMS resource object ${resource.uri} for room "${ROOM}", binds the key to it and authorizes Bob and Carol.`);

    // (3)-(4) Alice opens the room and posts.
    await alice!.join(relay.url, ROOM);
    alice!.setResource(resource.uri);
    log(`(3) Alice opens room "${ROOM}" at the relay, tells it which KMS resource stands for the room, and posts, encrypting each message with the room key:`);
    await say(alice!, 'Welcome to the launch room. The launch date is 12 March.');
    await say(alice!, 'Budget is 1.2M. Please keep it in this room.');

    // (5)-(6) Bob joins: the history arrives as ciphertext; the keys come from the KMS through the KRO.
    const bobJoined = await bob!.join(relay.url, ROOM);
    const bobKeys = await bob!.fetchRoomKeys();
    log(`(4-5) Bob joins: the relay hands him ${bobJoined.length} messages of ciphertext and the room's resource; he asks the KMS for the keys bound to it and gets ${bobKeys.length}.`);
    const bobHistory: Read[] = [];
    for (const m of bobJoined) bobHistory.push(await bob!.read(m));
    log(`(6) Bob decrypts the history:`);
    show(bob!, bobHistory);
    const bobRead = [...bobHistory];
    const aliceRead: Read[] = [];
    const s3 = await say(bob!, "Thanks Alice, I'll draft the press release.");
    aliceRead.push(await alice!.read(await alice!.waitFor(s3)));
    show(alice!, aliceRead.slice(-1));

    // (7) Carol joins later and reads everything said before she came.
    const carolJoined = await carol!.join(relay.url, ROOM);
    const carolKeys = await carol!.fetchRoomKeys();
    const carolHistory: Read[] = [];
    for (const m of carolJoined) carolHistory.push(await carol!.read(m));
    log(`(7) Carol joins later: ${carolJoined.length} messages of ciphertext from the relay, ${carolKeys.length} key from the KMS through the room's resource, and she reads the whole history:`);
    show(carol!, carolHistory);
    const s4 = await say(carol!, 'Hi all, catching up now.');
    aliceRead.push(await alice!.read(await alice!.waitFor(s4)));
    bobRead.push(await bob!.read(await bob!.waitFor(s4)));
    show(bob!, bobRead.slice(-1));

    // Bob leaves the team: remove him from the KRO first, then rotate, so he never sees the new key.
    await alice!.kms.deauthorize(resource.uri, user('bob'));
    const [second] = await alice!.kms.createKeys(1);
    const bound = await alice!.kms.bindKey(second!.uri, resource.uri);
    alice!.useKey(bound);
    log(`Alice removes Bob from the room's resource on the KMS, then rotates the room key: a fresh key ${second!.uri}, bound to the resource. From now on she posts with it:`);
    const s5 = await say(alice!, 'Bob has moved to another project. New launch date: 19 March.');

    // The relay does not enforce membership: Bob still gets the ciphertext — and cannot read it.
    const forBob = await bob!.waitFor(s5);
    const newKeyStatus = await statusOf(bob!.read(forBob));
    const resourceKeysStatus = await statusOf(bob!.kms.retrieveResourceKeys(resource.uri));
    log(`    The relay still delivers #${s5} to Bob as ciphertext, but the KMS refuses him the new key (${newKeyStatus}) and the room's keys (${resourceKeysStatus}): he cannot read it.`);

    // Carol asks the KMS for the key the new message names, reads it, and answers with it.
    const carolAfterRotation: Read[] = [await carol!.read(await carol!.waitFor(s5))];
    log(`    Carol meets a key she does not hold, asks the KMS for it, gets it (she is still authorized) and reads:`);
    show(carol!, carolAfterRotation);
    const s6 = await say(carol!, 'Noted: 19 March.');
    aliceRead.push(await alice!.read(await alice!.waitFor(s6)));
    show(alice!, aliceRead.slice(-1));
    const bobLast = await statusOf(bob!.read(await bob!.waitFor(s6)));
    log(`    Bob receives #${s6} as ciphertext too, and again the KMS refuses him its key (${bobLast}).`);

    const delivered = bob!.inbox.filter((m) => m.seq > s4).length;
    const keyValues = [first!, bound].map((k) => (k.jwk as { k: string }).k);
    const frames = relay.frames.join('\n');
    const leaked = keyValues.some((k) => frames.includes(k)) || posted.some((p) => frames.includes(p.text));
    log(`The relay handled ${relay.frames.length} frames: ${leaked ? 'SOMETHING LEAKED!' : 'no key and no message text among them'}.`);

    return {
      room: ROOM,
      resourceUri: resource.uri,
      firstKeyUri: first!.uri,
      secondKeyUri: second!.uri,
      posted,
      relayFrames: [...relay.frames],
      keyValues,
      bobHistory,
      bobRead,
      carolHistory,
      carolAfterRotation,
      aliceRead,
      bobAfterRemoval: { delivered, newKeyStatus, resourceKeysStatus, read: bobRead.filter((r) => r.seq > s4).length },
    };
  } finally {
    await Promise.allSettled(members.map((m) => m.leave()));
    await relay.close();
    await kms.close();
  }
}

function name(member: ChatMember): string {
  const local = member.user.split('@')[0]!;
  return local[0]!.toUpperCase() + local.slice(1);
}
