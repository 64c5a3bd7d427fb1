/**
 * The load process's side of the wire: closed loops that keep `concurrency` KMS messages in flight
 * against a `kms serve` process, over HTTP batch (`POST /kms/messages`) or WebSocket (`/kms/ws`),
 * and check every answer (its status and requestId): a throughput of refusals is no figure.
 *
 * How concurrency maps to connections: at most 16 messages in flight per connection. Over HTTP a
 * connection carries its messages as one batch per POST (concurrency 1: one message per POST;
 * 16: one POST of 16; 64: four keep-alive connections, each a POST of 16 at a time). Over WebSocket
 * each socket keeps its share in flight, sending the next message as each answer arrives. A
 * message's latency is from its send to its answer (for a batch: the POST's round trip).
 */
import { Agent, request } from 'node:http';
import { performance } from 'node:perf_hooks';
import WebSocket from 'ws';
import { fastCodec } from '@openkms/server/testing';

const PER_CONNECTION = 16;

export type Transport = 'http' | 'websocket';

export interface Outgoing {
  message: string;
  requestId: string;
}

/** What one scenario sends and expects back. */
export interface Traffic {
  /** The next message to send, or undefined when the scenario's supply ran out (the run ends early). */
  next(seq: number): Outgoing | undefined | Promise<Outgoing | undefined>;
  /** The status every answer must have. */
  status: number;
  /** The channel key the answers are sealed under (none: answers are JWS, e.g. handshakes). */
  key?: Uint8Array;
}

export interface Run {
  /** Messages answered as expected. */
  ops: number;
  seconds: number;
  errors: number;
  firstError?: string;
}

const dec = new TextDecoder();

/** The status and requestId of an answer: a JWS (handshake answers, resets) or a JWE under `key`. */
export async function answerOf(answer: string, key?: Uint8Array): Promise<{ status?: number; requestId?: unknown }> {
  const parts = answer.split('.');
  if (parts.length === 3) return JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8')) as { status?: number };
  if (!key) throw new Error('a channel answer to a message sent without a channel');
  return JSON.parse(dec.decode((await fastCodec.decryptChannel(answer, key)).plaintext)) as { status?: number };
}

export interface Load {
  /** Sends for `ms`, then waits for what is in flight; latencies (ms) go to `latencies` when given. */
  run(ms: number, latencies?: number[]): Promise<Run>;
  close(): Promise<void>;
}

function split(concurrency: number, perConnection = PER_CONNECTION): { connections: number; each: number } {
  const connections = Math.ceil(concurrency / perConnection);
  return { connections, each: Math.ceil(concurrency / connections) };
}

class Tally {
  ops = 0;
  errors = 0;
  firstError: string | undefined;
  fail(message: string): void {
    this.errors++;
    this.firstError ??= message;
  }
  /** Counts an opened answer as done when it is the expected one to `sent`. */
  check(traffic: Traffic, sent: Outgoing, got: { status?: number; requestId?: unknown }): boolean {
    if (got.status !== traffic.status) return (this.fail(`status ${got.status}, not ${traffic.status}: ${JSON.stringify(got).slice(0, 200)}`), false);
    if (got.requestId !== sent.requestId) return (this.fail('an answer with another requestId'), false);
    this.ops++;
    return true;
  }
}

/**
 * One run of `ms`: `drive` sends until `end` (performance.now()) or until the traffic has no more
 * (it sets `exhausted`), and counts in `tally`; what it counted, over the time it took.
 */
async function timedRun(ms: number, drive: (tally: Tally, end: number, run: { exhausted: boolean }) => Promise<void>): Promise<Run> {
  const tally = new Tally();
  const start = performance.now();
  await drive(tally, start + ms, { exhausted: false });
  return { ops: tally.ops, seconds: (performance.now() - start) / 1000, errors: tally.errors, firstError: tally.firstError };
}

function post(agent: Agent, url: URL, body: string): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => {
        if (res.statusCode !== 200) return reject(new Error(`HTTP ${res.statusCode}: ${text.slice(0, 200)}`));
        try {
          resolve((JSON.parse(text) as { kmsMessages: string[] }).kmsMessages);
        } catch (err) {
          reject(err as Error);
        }
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** HTTP batch load: keep-alive connections, each POSTing its share of messages as one batch. */
export function httpLoad(baseUrl: string, concurrency: number, traffic: Traffic, perConnection?: number): Load {
  const { connections, each } = split(concurrency, perConnection);
  const agent = new Agent({ keepAlive: true, maxSockets: connections });
  const url = new URL('/kms/messages', baseUrl);
  let seq = 0;
  return {
    run: (ms, latencies) => timedRun(ms, async (tally, end, run) => {
      const worker = async () => {
        while (!run.exhausted && performance.now() < end) {
          const batch: Outgoing[] = [];
          for (let i = 0; i < each; i++) {
            const m = await traffic.next(seq++);
            if (!m) break;
            batch.push(m);
          }
          if (batch.length < each) run.exhausted = true;
          if (batch.length === 0) return;
          const t0 = performance.now();
          try {
            const answers = await post(agent, url, JSON.stringify({ kmsMessages: batch.map((m) => m.message) }));
            const ms = performance.now() - t0;
            if (answers.length !== batch.length) throw new Error(`${answers.length} answers to ${batch.length} messages`);
            for (let i = 0; i < batch.length; i++) if (tally.check(traffic, batch[i]!, await answerOf(answers[i]!, traffic.key)) && latencies) latencies.push(ms);
          } catch (err) {
            tally.fail(err instanceof Error ? err.message : String(err));
          }
        }
      };
      await Promise.all(Array.from({ length: connections }, worker));
    }),
    async close() {
      agent.destroy();
    },
  };
}

/** WebSocket load: sockets opened once, each keeping its share of messages in flight. */
export async function wsLoad(baseUrl: string, concurrency: number, traffic: Traffic, perConnection?: number): Promise<Load> {
  const { connections, each } = split(concurrency, perConnection);
  const wsUrl = `${baseUrl.replace(/^http/, 'ws')}/kms/ws`;
  const sockets = await Promise.all(
    Array.from({ length: connections }, () =>
      new Promise<WebSocket>((resolve, reject) => {
        const ws = new WebSocket(wsUrl, { perMessageDeflate: false });
        ws.once('open', () => resolve(ws));
        ws.once('error', reject);
      }),
    ),
  );
  let seq = 0;
  return {
    run: (ms, latencies) => timedRun(ms, async (tally, end, run) => {
      await Promise.all(
        sockets.map(
          (ws) =>
            new Promise<void>((resolve) => {
              const pending = new Map<unknown, { sent: Outgoing; at: number }>();
              const send = async () => {
                if (run.exhausted || performance.now() >= end) return;
                const m = await traffic.next(seq++);
                if (!m) {
                  run.exhausted = true;
                  return;
                }
                pending.set(m.requestId, { sent: m, at: performance.now() });
                ws.send(m.message);
              };
              let done = () => {
                ws.off('message', onMessage);
                ws.off('close', onClose);
                resolve();
              };
              const onClose = () => {
                tally.fail(`the WebSocket closed with ${pending.size} messages in flight`);
                done();
              };
              const onMessage = async (data: WebSocket.RawData) => {
                const at = performance.now();
                let got: { requestId?: unknown };
                try {
                  got = await answerOf(data.toString(), traffic.key);
                } catch (err) {
                  tally.fail(err instanceof Error ? err.message : String(err));
                  got = {};
                }
                const entry = pending.get(got.requestId);
                if (entry) {
                  pending.delete(got.requestId);
                  if (tally.check(traffic, entry.sent, got) && latencies) latencies.push(at - entry.at);
                } else {
                  tally.fail('an answer to no message in flight');
                }
                await send();
                if (pending.size === 0) done();
              };
              ws.on('message', onMessage);
              ws.on('close', onClose);
              // An answer that never comes (or cannot be matched) must not hang the benchmark.
              const stuck = setTimeout(() => {
                if (pending.size > 0) tally.fail(`${pending.size} messages unanswered 10 s after the run`);
                done();
              }, ms + 10_000);
              const finish = done;
              done = () => {
                clearTimeout(stuck);
                finish();
              };
              void (async () => {
                for (let i = 0; i < each; i++) await send();
                if (pending.size === 0) done();
              })();
            }),
        ),
      );
    }),
    async close() {
      await Promise.all(
        sockets.map(
          (ws) =>
            new Promise<void>((resolve) => {
              if (ws.readyState === WebSocket.CLOSED) return resolve();
              ws.once('close', () => resolve());
              ws.close();
            }),
        ),
      );
    },
  };
}

/** `perConnection`: messages in flight per connection (default 16; 1: one request per round trip). */
export function load(transport: Transport, baseUrl: string, concurrency: number, traffic: Traffic, perConnection?: number): Promise<Load> {
  return transport === 'http' ? Promise.resolve(httpLoad(baseUrl, concurrency, traffic, perConnection)) : wsLoad(baseUrl, concurrency, traffic, perConnection);
}
