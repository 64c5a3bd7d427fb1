/**
 * The differential checker of the codec's tests (channel.test.ts, static-signature.test.ts): one
 * tampered input read by `jose` and by one variant, judged by their oracle. A variant accepts ⟺
 * jose accepts ∧ (node variant only) the input is strictly well-formed, with the same plaintext and
 * header; it rejects with a plain Error (answerStep in failures.ts turns exactly the non-KmsErrors
 * into ANSWER_INVALID, with the error as cause); and the code of a message that does not
 * authenticate (`failedCode`) is jose's on either side.
 */
import assert from 'node:assert/strict';
import { KmsError, type Decrypted } from '@openkms/protocol';
import { codeOf, isCanonical, outcome, sameBytes } from './inputs.js';

export type Variant = 'node' | 'web';

export interface Stats {
  cases: number;
  bothAccept: number;
  bothReject: number;
  /** Of bothReject: refused with `failedCode` (decrypts or verifies to nothing authentic). */
  unauthentic: number;
  stricterHeader: number;
  stricterEncoding: number;
}

export interface Case {
  variant: Variant;
  kind: string;
  compact: string;
  strict: boolean;
  reference: () => Promise<Decrypted>;
  mine: () => Promise<Decrypted>;
}

export class Differential {
  readonly stats = new Map<Variant, Stats>();

  constructor(
    private readonly failedCode: string,
    private readonly at: (what: string) => string,
  ) {}

  async check(c: Case): Promise<void> {
    const stats = this.statsOf(c.variant);
    const reference = await outcome(c.reference);
    const mine = await outcome(c.mine);
    const where = this.at(`${c.variant}, ${c.kind}: ${JSON.stringify(c.compact.length > 300 ? c.compact.slice(0, 300) + '…' : c.compact)}`);
    stats.cases++;
    if (reference.ok && (c.variant === 'web' || c.strict)) {
      assert.ok(mine.ok, `rejected what jose accepts: ${where}: ${mine.ok ? '' : String(mine.error)}`);
      assert.ok(sameBytes(mine.plaintext, reference.plaintext), `plaintexts differ: ${where}`);
      assert.deepEqual(mine.header, reference.header, `headers differ: ${where}`);
      stats.bothAccept++;
      return;
    }
    assert.ok(!mine.ok, `accepted (jose ${reference.ok ? 'accepted, but it is not strictly well-formed' : 'rejected'}): ${where}`);
    assert.ok(mine.error instanceof Error && !(mine.error instanceof KmsError), `must reject with a plain Error: ${where}`);
    if (reference.ok) {
      if (c.compact.split('.').every(isCanonical)) stats.stricterHeader++;
      else stats.stricterEncoding++;
      return;
    }
    stats.bothReject++;
    const [referenceCode, code] = [codeOf(reference.error), codeOf(mine.error)];
    if (c.variant === 'web') assert.equal(code, referenceCode, `jose's own code: ${where}`);
    if (code === this.failedCode) assert.equal(referenceCode, this.failedCode, `only what jose finds unauthentic is called so: ${where}`);
    if (referenceCode === this.failedCode && c.strict) assert.equal(code, this.failedCode, `a well-formed input that does not authenticate: ${where}`);
    if (code === this.failedCode) stats.unauthentic++;
  }

  /** Prints the counts, and fails unless every class was exercised: a run that saw no difference proves nothing. */
  report(): void {
    for (const [variant, s] of this.stats) {
      console.log(
        `${variant}: ${s.cases} tampered cases: both accept ${s.bothAccept}, both reject ${s.bothReject} (${s.unauthentic} as ${this.failedCode}), ` +
          `jose accepts but the variant (stricter) rejects ${s.stricterHeader} on header members, ${s.stricterEncoding} on non-canonical base64url`,
      );
      assert.ok(s.bothAccept > 0 && s.bothReject > 0 && s.unauthentic > 0, this.at(`${variant}: every class exercised`));
    }
    const node = this.statsOf('node');
    const web = this.statsOf('web');
    assert.ok(node.stricterHeader > 0 && node.stricterEncoding > 0, this.at('the node variant\'s strictness exercised'));
    assert.equal(web.stricterHeader + web.stricterEncoding, 0, 'the web variant is jose');
  }

  private statsOf(variant: Variant): Stats {
    let stats = this.stats.get(variant);
    if (!stats) this.stats.set(variant, (stats = { cases: 0, bothAccept: 0, bothReject: 0, unauthentic: 0, stricterHeader: 0, stricterEncoding: 0 }));
    return stats;
  }
}
