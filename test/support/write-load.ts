/**
 * A write load for the crash and failover tests: SDK clients that keep creating keys, resources
 * binding them and authorizations, several requests at once each, recording every write the KMS
 * acknowledged (a 2xx answer reached the client) — what a node killed at any moment must not lose
 * (OPERATING.md, "Failures an operator sees") — and what was in flight when it was killed.
 *
 * Each worker repeats one cycle: create 2 keys, create a resource binding the first (authorizing
 * another user), add an authorization to it, bind the second key to it. A step that fails ends
 * its cycle (the next step needs its result) and the worker starts a new one; afterwards
 * `verify` reads every acknowledged write back through the client that made it (the creator may
 * read its unbound keys and is authorized on its resources) and names what is missing or changed,
 * and `unaudited` names the acknowledged requests (by requestId) the audit log has no 2xx record of.
 */
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { KmsError, type AuthorizationRep, type KeyRep, type KmsClient, type ResourceRep } from '@openkms/client';
import type { KmsResponse } from '@openkms/protocol';

/** One write a client was told succeeded. */
interface Acknowledged {
  /** Key URI → its jwk.k, as the create answered it. */
  keys: Map<string, string>;
  /** Key URI → the resource the KMS bound it to (by createResource or a bind). */
  bound: Map<string, string>;
  /** Resource URI → the authorization URIs acknowledged on it (its creation's and the later ones). */
  authorizations: Map<string, Set<string>>;
}

/** A failed request: when it was sent and settled (relative to the kill) and what it ended with. */
export interface Failure {
  op: string;
  /** Sent before the kill, failed after it: it was in flight at the kill. */
  inFlightAtKill: boolean;
  /** Sent after the kill. */
  afterKill: boolean;
  error: unknown;
}

/** Reads under way at once per client while verifying. */
const VERIFY_CONCURRENCY = 8;
/** Tries of a read answered 503 before it counts as missing. */
const VERIFY_ATTEMPTS = 5;

export class WriteLoad {
  private readonly acked: Acknowledged[];
  private stopping = false;
  private running: Promise<void> | undefined;
  private killedAt: number | undefined;
  /** Requests under way now. */
  inFlight = 0;
  /** Requests that were under way when `markKill` was called. */
  inFlightAtKill = 0;
  /** Of those, how many were acknowledged after all (answered before the process died, or their retry was). */
  inFlightAcknowledged = 0;
  /** Acknowledged requests (writes) so far. */
  acknowledged = 0;
  /** Acknowledged after the kill (only requests sent after it count). */
  acknowledgedAfterKill = 0;
  /** How long after the kill the first request sent after it was acknowledged (ms). */
  firstAcknowledgedAfterKillMs: number | undefined;
  private killedAtMs = 0;
  /** The requestIds of the acknowledged requests. */
  readonly acknowledgedRequestIds = new Set<string>();
  readonly failures: Failure[] = [];
  /** Reads of `verify` answered 503 and asked again. */
  verifyRetries = 0;
  private sequence = 0;

  /**
   * `workers` cycles run at once on each client (their requests share its channel and its HTTP
   * batches). `authorizeDomain`: the domain of the users the resources authorize.
   */
  constructor(
    private readonly clients: KmsClient[],
    private readonly workers: number,
    private readonly authorizeDomain: string,
  ) {
    this.acked = clients.map(() => ({ keys: new Map(), bound: new Map(), authorizations: new Map() }));
  }

  /** Starts the workers; `stop()` ends them. */
  start(): void {
    this.running = Promise.all(this.clients.flatMap((c, i) => Array.from({ length: this.workers }, () => this.worker(c, i)))).then(() => undefined);
  }

  /** The moment of the kill: what is under way now was in flight at it. */
  markKill(): void {
    this.killedAt = ++this.sequence;
    this.killedAtMs = performance.now();
    this.inFlightAtKill = this.inFlight;
  }

  /** Stops starting requests at once; resolves once every request under way has settled. */
  async stop(): Promise<void> {
    this.stopping = true;
    await this.running;
  }

  /**
   * Sends one request through the SDK (`client.request`: the answer's payload, its requestId
   * echoed, so the audit record of each acknowledged write can be found), counting it in flight,
   * and records its outcome.
   */
  private async call(client: KmsClient, op: string, body: { method: string; uri: string; [member: string]: unknown }): Promise<KmsResponse | undefined> {
    const sentAt = ++this.sequence;
    this.inFlight++;
    try {
      const answer = await client.request(body);
      this.acknowledged++;
      this.acknowledgedRequestIds.add(String(answer.requestId));
      if (this.killedAt !== undefined) {
        if (sentAt < this.killedAt) this.inFlightAcknowledged++;
        else {
          this.acknowledgedAfterKill++;
          this.firstAcknowledgedAfterKillMs ??= performance.now() - this.killedAtMs;
        }
      }
      return answer;
    } catch (error) {
      const afterKill = this.killedAt !== undefined && sentAt > this.killedAt;
      this.failures.push({ op, inFlightAtKill: this.killedAt !== undefined && !afterKill, afterKill, error });
      return undefined;
    } finally {
      this.inFlight--;
    }
  }

  private async worker(client: KmsClient, i: number): Promise<void> {
    const acked = this.acked[i]!;
    while (!this.stopping) {
      const created = await this.call(client, 'create keys', { method: 'create', uri: '/keys', count: 2 });
      if (!created) continue;
      const keys = created.keys as KeyRep[];
      for (const k of keys) acked.keys.set(k.uri, k.jwk.k);
      const [first, second] = keys as [KeyRep, KeyRep];
      if (this.stopping) break;
      const n = this.sequence;
      const made = await this.call(client, 'create resource', { method: 'create', uri: '/resources', keyUris: [first.uri], authIds: [`reader-${n}@${this.authorizeDomain}`] });
      if (!made) continue;
      const resource = (made.resource as ResourceRep).uri;
      acked.bound.set(first.uri, resource);
      acked.authorizations.set(resource, new Set((made.resource as ResourceRep).authorizationUris));
      if (this.stopping) break;
      const added = await this.call(client, 'create authorizations', { method: 'create', uri: '/authorizations', resourceUri: resource, authIds: [`added-${n}@${this.authorizeDomain}`] });
      if (!added) continue;
      for (const a of added.authorizations as AuthorizationRep[]) acked.authorizations.get(resource)!.add(a.uri);
      if (this.stopping) break;
      const bound = await this.call(client, 'bind key', { method: 'update', uri: second.uri, resourceUri: resource });
      if (bound) acked.bound.set(second.uri, resource);
    }
  }

  /**
   * The acknowledged requests missing from the audit log: `audited` are the requestIds of its
   * 2xx records. Each answer is sent only once its record is committed, so none may be missing.
   */
  unaudited(audited: Iterable<string>): string[] {
    const inLog = new Set(audited);
    return [...this.acknowledgedRequestIds].filter((id) => !inLog.has(id));
  }

  /** How many writes of each kind were acknowledged. */
  counts(): { keys: number; resources: number; authorizations: number; binds: number } {
    const sum = (f: (a: Acknowledged) => number) => this.acked.reduce((n, a) => n + f(a), 0);
    return {
      keys: sum((a) => a.keys.size),
      resources: sum((a) => a.authorizations.size),
      authorizations: sum((a) => [...a.authorizations.values()].reduce((n, s) => n + s.size, 0)),
      binds: sum((a) => a.bound.size),
    };
  }

  /**
   * Reads every acknowledged write back through the client that made it (`readers[i]` for
   * `clients[i]`: the same client, or one of the same user and clientId): each key with the same
   * jwk.k, bound where it was bound; each resource with its acknowledged keys and authorizations.
   * A few reads at a time per client (hundreds at once would only measure the node's queue), and
   * a read answered 503 (storage too slow: retry later) is asked again. Returns one line per
   * write that is missing or changed.
   */
  async verify(readers: KmsClient[] = this.clients): Promise<string[]> {
    const lost: string[] = [];
    const read = async <T>(what: string, work: () => Promise<T>): Promise<T | undefined> => {
      for (let attempt = 1; ; attempt++) {
        try {
          return await work();
        } catch (err) {
          if (err instanceof KmsError && err.code === 'STORAGE_UNAVAILABLE' && attempt < VERIFY_ATTEMPTS) {
            this.verifyRetries++;
            await sleep(200);
            continue;
          }
          lost.push(`${what}: ${err instanceof KmsError ? `${err.code} ${err.message}` : String(err)}`);
          return undefined;
        }
      }
    };
    await Promise.all(
      this.acked.map(async (acked, i) => {
        const reader = readers[i]!;
        const checks = [
          ...[...acked.keys].map(([uri, k]) => async () => {
            const key = await read(`key ${uri}`, () => reader.retrieveKey(uri));
            if (!key) return;
            if (key.jwk.k !== k) lost.push(`key ${uri}: another jwk.k`);
            const resource = acked.bound.get(uri);
            if (resource !== undefined && key.resourceUri !== resource) lost.push(`key ${uri}: bound to ${key.resourceUri ?? 'nothing'}, acknowledged bound to ${resource}`);
          }),
          ...[...acked.authorizations].map(([uri, authorizations]) => async () => {
            const resource = await read(`resource ${uri}`, () => reader.retrieveResource(uri));
            if (!resource) return;
            const keys = [...acked.bound].filter(([, r]) => r === uri).map(([k]) => k);
            for (const k of keys) if (!resource.keyUris.includes(k)) lost.push(`resource ${uri}: key ${k} missing`);
            for (const a of authorizations) if (!resource.authorizationUris.includes(a)) lost.push(`resource ${uri}: authorization ${a} missing`);
            const listed = await read(`authorizations of ${uri}`, () => reader.listAuthorizations(uri));
            if (!listed) return;
            const uris = new Set(listed.map((l) => l.uri));
            for (const a of authorizations) if (!uris.has(a)) lost.push(`authorizations of ${uri}: ${a} missing`);
          }),
        ];
        // VERIFY_CONCURRENCY lanes, each taking the next check.
        await Promise.all(
          Array.from({ length: VERIFY_CONCURRENCY }, async () => {
            for (let check = checks.shift(); check; check = checks.shift()) await check();
          }),
        );
      }),
    );
    return lost;
  }
}
