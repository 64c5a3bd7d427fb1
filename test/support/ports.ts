/** Loopback ports: for tests of failures to connect, and to name before a server binds them. */
import { randomInt } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';

/** A loopback port that was just closed: connecting to it is refused (ECONNREFUSED). */
export async function closedPort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Where the kernel takes the local ports of outgoing connections (Linux; elsewhere its default). */
function ephemeralStart(): number {
  try {
    const first = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    if (Number.isInteger(first) && first > 2048) return first;
  } catch {
    // not Linux: its default
  }
  return 32768;
}

async function bindable(port: number): Promise<boolean> {
  const server = createServer();
  try {
    server.listen(port, '127.0.0.1');
    await once(server, 'listening');
  } catch {
    return false;
  }
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return true;
}

/**
 * A free loopback port to name before a server binds it (a peer's endpoint in another KMS's
 * configuration, written before that KMS starts). A port the kernel hands out for `listen(0)` is
 * one of its ephemeral ports, which any outgoing connection of a test running alongside may take
 * in the seconds before the server binds it; this one is drawn below that range, at random, and
 * checked free.
 */
export async function reservablePort(): Promise<number> {
  const top = ephemeralStart();
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = randomInt(Math.max(1025, top - 12_000), top);
    if (await bindable(port)) return port;
  }
  throw new Error('no free loopback port below the ephemeral range');
}
