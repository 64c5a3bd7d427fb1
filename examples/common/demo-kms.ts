/**
 * The KMS both examples run against: a real server (real keys, certificate, SQLite database, HTTP
 * and WebSocket endpoints) on a loopback ephemeral port, with its development token issuer
 * standing in for the organisation's identity provider.
 *
 * It is what `kms init` + `kms serve` do, in-process: `initKmsDir` writes a KMS folder (config,
 * static key and certificate, the CA users trust as `ca.pem`, the root key, the dev issuer key)
 * into a temporary folder, and `startKms` serves it. The folder is removed on close.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KmsClient, KmsError, type KmsClientOptions } from '@openkms/client';
import { devIssuerOf, initKmsDir, loadConfig, startKms } from '@openkms/server';

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
  const dir = mkdtempSync(join(tmpdir(), 'kms-example-'));
  try {
    const configFile = await initKmsDir({ dir, authority: `kms.${DOMAIN}`, domains: [DOMAIN] });
    // Quiet server logs, so the example's own lines are what one reads.
    const config = { ...loadConfig(configFile), log: { level: 'warn' as const } };
    const running = await startKms(config, { port: 0, host: '127.0.0.1', db: `sqlite:${join(dir, 'kms.db')}` });
    const issuer = devIssuerOf(config);
    if (!issuer) throw new Error('the KMS folder has no development token issuer');
    const trustAnchors = [readFileSync(join(dir, 'ca.pem'), 'utf8')];
    const clients: KmsClient[] = [];
    return {
      url: running.url,
      authority: config.authority,
      trustAnchors,
      async client(user, extra = {}) {
        const client = new KmsClient({
          url: running.url,
          authority: config.authority,
          trustAnchors,
          token: await issuer.issue(user),
          clientId: `${user.split('@')[0]}-laptop`,
          ...extra,
        });
        clients.push(client);
        return client;
      },
      async close() {
        await Promise.allSettled(clients.map((c) => c.close()));
        await running.close();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
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
