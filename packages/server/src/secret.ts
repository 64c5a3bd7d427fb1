/**
 * Key material in memory. The wrapper redacts itself wherever it could leak by accident (JSON,
 * util.inspect, string conversion, so loggers and error printers see "[redacted]"); code that
 * really needs the bytes says so with `reveal()`.
 */
import { inspect } from 'node:util';

export class Secret {
  readonly #bytes: Uint8Array;

  constructor(bytes: Uint8Array) {
    this.#bytes = bytes;
  }

  reveal(): Uint8Array {
    return this.#bytes;
  }

  get length(): number {
    return this.#bytes.length;
  }

  /** Overwrites the bytes: for ephemeral material whose lifetime is over. */
  wipe(): void {
    this.#bytes.fill(0);
  }

  toJSON(): string {
    return '[redacted]';
  }

  toString(): string {
    return '[redacted]';
  }

  [inspect.custom](): string {
    return 'Secret([redacted])';
  }
}
