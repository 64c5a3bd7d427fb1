/**
 * Payload schemas. Every request is validated after decryption, first against the basic request
 * (draft 4.6.1) and then against its operation's members. Unknown members are ignored (clients in
 * the field send extras), missing or mistyped ones are refused with a reason that names the field.
 */
import { z } from 'zod';
import { KmsError } from './errors.js';
import { parseDate } from './dates.js';
import { Limits } from './limits.js';
import { isPlainText, textProblem } from './text.js';

/**
 * Every string member of a request goes through one of these two (PROTOCOL.md §4 "Strings"):
 * `text` refuses lone surrogates and U+0000, `plain` (identifiers, URIs, tokens, request ids)
 * control characters too. The refusal names the field like any other.
 */
const withText = (plain: boolean) => (value: string, ctx: z.RefinementCtx) => {
  const problem = textProblem(value, plain);
  if (problem !== undefined) ctx.addIssue({ code: 'custom', message: problem });
};
const text = () => z.string().superRefine(withText(false));
const plain = (min: number, max: number) => z.string().min(min).max(max).superRefine(withText(true));

const id = plain(1, Limits.maxIdChars);
const uri = plain(1, Limits.maxUriChars);
/**
 * Any whole number: counts over their limit are the operations' to refuse with 413, which a
 * bounded integer type here would turn into a 400.
 */
const whole = z.number().refine(Number.isInteger, 'not an integer');
const date = plain(0, 64).refine((v) => parseDate(v) !== undefined, 'not an RFC 3339 date-time');

export const requestIdSchema = z.union([plain(0, Limits.maxIdChars), z.number().int().safe()]);

export const credentialSchema = z.object({
  userId: plain(0, Limits.maxIdChars).optional(),
  bearer: plain(1, Limits.maxBearerChars).optional(),
  jwk: z.record(text(), z.unknown()).optional(),
  /** Compliance access (PROTOCOL.md §4): the user an `orgAgent` reads for. */
  onBehalfOf: plain(1, Limits.maxIdChars).optional(),
});

export const basicRequestSchema = z.object({
  requestId: requestIdSchema,
  client: z.object({ clientId: id, credential: credentialSchema }),
  method: z.enum(['create', 'retrieve', 'update', 'delete']),
  uri,
});

export type BasicRequest = z.infer<typeof basicRequestSchema>;

const METHODS: ReadonlySet<unknown> = new Set(['create', 'retrieve', 'update', 'delete']);
const isRecord = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);
/** What `plain(min, max)` accepts. */
const isPlain = (value: unknown, min: number, max: number): value is string =>
  typeof value === 'string' && value.length >= min && value.length <= max && isPlainText(value);

/**
 * The basic request, validated exactly as `validate(basicRequestSchema, value)` validates it and
 * with the same result. Every request takes this step, so its common shape — each member of the
 * type the schema wants, and a credential of `userId`, `bearer`, `onBehalfOf` only (nothing for
 * zod to strip, no `jwk`) — is checked by hand, at a fraction of zod's cost; anything else goes to
 * zod itself, so every refusal is zod's own, naming the field. test/schemas.test.ts holds the two
 * to agreeing over generated requests.
 */
export function readBasicRequest(value: unknown): BasicRequest {
  return basicByHand(value) ?? validate(basicRequestSchema, value);
}

function basicByHand(value: unknown): BasicRequest | undefined {
  if (!isRecord(value)) return undefined;
  const { requestId, client, method, uri } = value;
  if (!isPlain(requestId, 0, Limits.maxIdChars) && !(typeof requestId === 'number' && Number.isSafeInteger(requestId))) return undefined;
  if (!METHODS.has(method) || !isPlain(uri, 1, Limits.maxUriChars) || !isRecord(client)) return undefined;
  const { clientId, credential } = client;
  if (!isPlain(clientId, 1, Limits.maxIdChars) || !isRecord(credential)) return undefined;
  for (const name of Object.keys(credential)) {
    const member = credential[name];
    switch (name) {
      case 'userId':
        if (!isPlain(member, 0, Limits.maxIdChars)) return undefined;
        break;
      case 'bearer':
        if (!isPlain(member, 1, Limits.maxBearerChars)) return undefined;
        break;
      case 'onBehalfOf':
        if (!isPlain(member, 1, Limits.maxIdChars)) return undefined;
        break;
      default:
        return undefined;
    }
  }
  // Members in the schema's order, as zod gives them.
  const checked: BasicRequest['client']['credential'] = {};
  if (credential.userId !== undefined) checked.userId = credential.userId as string;
  if (credential.bearer !== undefined) checked.bearer = credential.bearer as string;
  if (credential.onBehalfOf !== undefined) checked.onBehalfOf = credential.onBehalfOf as string;
  return { requestId, client: { clientId, credential: checked }, method: method as BasicRequest['method'], uri };
}

/**
 * A list of identifiers whose length over the limit is a 413, not a 400. The length is checked
 * before any entry: a list of thousands of entries (a few hundred KiB inside the body limit) is
 * refused at once, not after each entry was validated and its failure reported — which held the
 * event loop for a third of a second per message, long enough for other requests to time out.
 */
function boundedList(item: z.ZodType<string>, min = 0) {
  return z
    .array(z.unknown())
    .superRefine((list, ctx) => {
      if (list.length > Limits.maxListLength) ctx.addIssue({ code: 'custom', message: 'over the limit', params: { tooLarge: true } });
    })
    .pipe(z.array(item).min(min));
}

export const ecdheSchema = z.object({
  jwk: z.object({ kty: plain(0, 64), crv: plain(0, 64).optional(), x: plain(0, 128).optional(), y: plain(0, 128).optional() }),
});

const authIds = boundedList(id);

export const createResourceSchema = z.object({
  authIds: authIds.optional(),
  userIds: authIds.optional(),
  keyUris: boundedList(plain(0, Limits.maxUriChars)).optional(),
  anonymous: whole.pipe(z.number().min(0)).optional(),
  ttl: whole.pipe(z.number().min(0)).optional(),
});

export const createKeysSchema = z.object({ count: whole.pipe(z.number().min(1)) });

export const bindKeySchema = z.object({ resourceUri: uri });

export const retrieveKeysSchema = z.object({
  boundAfter: date.optional(),
  boundBefore: date.optional(),
  count: whole.pipe(z.number().min(1)).optional(),
});

export const createAuthorizationsSchema = z.object({
  resourceUri: uri,
  authIds: authIds.optional(),
  userIds: authIds.optional(),
  anonymous: whole.pipe(z.number().min(0)).optional(),
  roleUri: uri.optional(),
});

export const bulkDeleteAuthorizationsSchema = z.object({
  resourceUri: uri,
  authIds: boundedList(id, 1),
});

/** A peer's invalidations (PROTOCOL.md §6): the KROs whose copies must be refreshed. */
export const invalidationsSchema = z.object({ resourceUris: boundedList(plain(0, Limits.maxUriChars), 1) });

export const createCmkSchema = z.object({ assignedOrgId: id.optional() });
export const updateCmkSchema = z.object({ state: z.enum(['active', 'inactive']) });
export const listCmksSchema = z.object({ assignedOrgId: id.optional() });

/**
 * Validates `value` against `schema`; a failure becomes KmsError 400 naming the first offending
 * field (or 413 when a list or count is over its limit).
 */
export function validate<T>(schema: z.ZodType<T>, value: unknown): T {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const issue = result.error.issues[0]!;
  const field = issue.path.length ? issue.path.join('.') : 'payload';
  const params = (issue as { params?: { tooLarge?: boolean } }).params;
  if (params?.tooLarge) throw new KmsError('TOO_LARGE', `${field}: more than ${Limits.maxListLength} entries`);
  const message = issue.code === 'invalid_type' && issue.message.includes('undefined') ? 'missing' : issue.message;
  throw new KmsError('INVALID_FIELD', `invalid field ${field}: ${message}`);
}
