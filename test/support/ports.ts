/** Loopback ports for tests of failures to connect. */
import { once } from 'node:events';
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
