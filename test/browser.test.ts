/**
 * The client SDK in a real browser: the package is bundled for the browser with esbuild (which
 * fails on any Node-only import), loaded by headless Chromium from a page of another origin (so
 * the KMS's CORS answer is exercised), and run against a real KMS: Alice over batched HTTP, Bob
 * over the browser's own WebSocket, Carol refused, a wrong CA refused before any message, and a
 * KMS nobody answers for reported as unreachable with the browser's own error as cause.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { build } from 'esbuild';
import { createCa } from '@openkms/server';
import { startDevKms } from '@openkms/server/testing';
import { closedPort } from './support/ports.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const skip = existsSync(CHROMIUM) ? false : process.env.CI === 'true' ? false : `no browser at ${CHROMIUM} (apt-get install chromium)`;

const PAGE_SCRIPT = `
import { KmsClient, KmsError } from '/client.js';
const cfg = JSON.parse(document.getElementById('cfg').textContent);
const out = { userAgent: navigator.userAgent };
const client = (token, extra = {}) => new KmsClient({ url: cfg.kms, token, trustAnchors: [cfg.ca], ...extra });
const codes = {};
const status = async (name, promise) => {
  try { await promise; return 'allowed'; } catch (e) {
    codes[name] = { code: e && e.code, cause: e && e.cause ? String(e.cause) : undefined };
    return e instanceof KmsError ? e.status + ' ' + e.reason : 'other: ' + e;
  }
};
try {
  const alice = client(cfg.alice);
  const [key] = await alice.createKeys(1);
  const { resource } = await alice.createResource({ authIds: ['bob@a.example'], keyUris: [key.uri] });
  out.resource = resource.uri;
  const jwe = await alice.encrypt(key, 'hello from the browser');
  const bob = client(cfg.bob, { transport: 'websocket' });
  out.bobRead = new TextDecoder().decode(await bob.decrypt(jwe));
  out.carol = await status('carol', client(cfg.carol).decrypt(jwe));
  out.wrongCa = await status('wrongCa', new KmsClient({ url: cfg.kms, token: cfg.alice, trustAnchors: [cfg.otherCa] }).ping());
  out.down = await status('down', new KmsClient({ url: cfg.down, token: cfg.alice, trustAnchors: [cfg.ca] }).ping());
  out.codes = codes;
  await Promise.all([alice.close(), bob.close()]);
} catch (e) {
  out.error = String((e && e.stack) || e);
}
await fetch('/result', { method: 'POST', body: JSON.stringify(out) });
`;

test('the client SDK runs in headless Chromium against a real KMS', { skip, timeout: 120_000 }, async (t) => {
  const require = createRequire(import.meta.url);
  const bundle = await build({
    entryPoints: [require.resolve('@openkms/client')],
    bundle: true,
    platform: 'browser',
    format: 'esm',
    write: false,
    logLevel: 'silent',
  });
  const code = bundle.outputFiles[0]!.text;
  t.diagnostic(`browser bundle: ${code.length} bytes`);

  let resolveResult!: (value: Record<string, string>) => void;
  const result = new Promise<Record<string, string>>((r) => (resolveResult = r));
  let html = '';
  const page: Server = createServer((req, res) => {
    if (req.method === 'POST' && req.url === '/result') {
      let body = '';
      req.on('data', (d) => (body += d)).on('end', () => {
        res.end('ok');
        resolveResult(JSON.parse(body));
      });
      return;
    }
    const [type, text] = req.url === '/client.js' ? ['text/javascript', code] : req.url === '/' ? ['text/html', html] : ['text/plain', ''];
    res.writeHead(text ? 200 : 404, { 'content-type': type }).end(text);
  });
  await new Promise<void>((r) => page.listen(0, '127.0.0.1', () => r()));
  const origin = `http://127.0.0.1:${(page.address() as { port: number }).port}`;
  const kms = await startDevKms({ config: { cors: { origins: [origin] } } });
  const profile = mkdtempSync(join(tmpdir(), 'kms-chromium-'));
  try {
    const cfg = {
      kms: kms.url,
      ca: readFileSync(join(kms.dir, 'ca.pem'), 'utf8'),
      otherCa: (await createCa('Another CA')).certPem,
      alice: await kms.token('alice@a.example'),
      bob: await kms.token('bob@a.example'),
      carol: await kms.token('carol@a.example'),
      down: `http://127.0.0.1:${await closedPort()}`,
    };
    html = `<!doctype html><meta charset="utf-8"><script type="application/json" id="cfg">${JSON.stringify(cfg)}</script><script type="module">${PAGE_SCRIPT}</script>`;
    const browser = spawn(
      CHROMIUM,
      ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', `--user-data-dir=${profile}`, origin + '/'],
      { stdio: 'ignore' },
    );
    // A browser that cannot start fails the test at once, and nothing is left waiting for it.
    const failedToStart = new Promise<never>((_, reject) => browser.once('error', reject));
    try {
      let timer: NodeJS.Timeout | undefined;
      const tooLate = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error('the page did not report within 90 s')), 90_000)));
      const out = await Promise.race([result, failedToStart, tooLate]).finally(() => clearTimeout(timer));
      t.diagnostic(out.userAgent ?? '');
      assert.equal(out.error, undefined);
      assert.match(out.userAgent!, /HeadlessChrome|Chrome/);
      assert.equal(out.bobRead, 'hello from the browser');
      assert.match(out.carol!, /^403 /);
      assert.match(out.wrongCa!, /^502 KMS certificate refused/);
      // The codes, and the browser's own error kept as the cause of an unreachable KMS.
      const codes = out.codes as unknown as Record<string, { code?: string; cause?: string }>;
      assert.equal(codes.carol?.code, 'NOT_AUTHORIZED');
      assert.equal(codes.wrongCa?.code, 'CERTIFICATE_REFUSED');
      assert.match(codes.wrongCa?.cause ?? '', /CertificateError/);
      assert.match(out.down!, /^503 KMS unreachable: GET http:\/\/127\.0\.0\.1:\d+\/\.well-known\/kms: /);
      assert.equal(codes.down?.code, 'KMS_UNREACHABLE');
      assert.match(codes.down?.cause ?? '', /^TypeError/);
    } finally {
      if (browser.pid !== undefined && browser.exitCode === null && browser.signalCode === null) {
        const exited = new Promise((r) => browser.once('exit', r));
        browser.kill('SIGKILL');
        await exited;
      }
    }
  } finally {
    await kms.close();
    page.close();
    rmSync(profile, { recursive: true, force: true, maxRetries: 5 });
  }
});
