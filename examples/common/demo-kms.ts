/**
 * The KMS both examples run against: a real server (real keys, certificate, SQLite database, HTTP
 * and WebSocket endpoints) on a loopback ephemeral port, with its development token issuer
 * standing in for the organisation's identity provider: `startDevKms` of the server's testing
 * entry point, which does what `kms init` + `kms serve` do, in-process.
 */
import { KmsClient, KmsError, type KmsClientOptions } from '@openkms/client';
import { startDevKms } from '@openkms/server/testing';

export interface DemoKms {
  /** http://127.0.0.1:<port> */
  url: string;
  /** e.g. kms.example.com */
  authority: string;
  /** The KMS folder's ca.pem: what every user's client trusts. */
  trustAnchors: string[];
  /** A KmsClient for `user` (e.g. alice@example.com) with a token from the dev issuer. */
  client(user: string, extra?: Partial<KmsClientOptions>): Promise<KmsClient>;
  close(): Promise<void>;
}

export const DOMAIN = 'example.com';

export async function startDemoKms(): Promise<DemoKms> {
  // Server warnings only, on stdout, so that the example's own lines are what one reads.
  const kms = await startDevKms({ authority: `kms.${DOMAIN}`, domains: [DOMAIN], logLevel: 'warn', logTo: process.stdout });
  const clients: KmsClient[] = [];
  return {
    url: kms.url,
    authority: kms.authority,
    trustAnchors: kms.trustAnchors,
    async client(user, extra = {}) {
      const client = new KmsClient({
        url: kms.url,
        authority: kms.authority,
        trustAnchors: kms.trustAnchors,
        token: await kms.token(user),
        clientId: `${user.split('@')[0]}-laptop`,
        ...extra,
      });
      clients.push(client);
      return client;
    },
    async close() {
      await Promise.allSettled(clients.map((c) => c.close()));
      await kms.close();
    },
  };
}

/** The status of the KmsError a call fails with, or 'ok'. */
export async function statusOf(call: Promise<unknown>): Promise<number | 'ok'> {
  try {
    await call;
    return 'ok';
  } catch (err) {
    if (err instanceof KmsError) return err.status;
    throw err;
  }
}
