/**
 * Payload schemas. Every request is validated after decryption, first against the basic request
 * (draft 4.6.1) and then against its operation's members. Unknown members are ignored (clients in
 * the field send extras), missing or mistyped ones are refused with a reason that names the field.
 */
import { z } from 'zod';
import { KmsError } from './errors.js';
import { parseDate } from './dates.js';
import { Limits } from './limits.js';

const id = z.string().min(1).max(Limits.maxIdChars);
/**
 * Any whole number: counts over their limit are the operations' to refuse with 413, which a
 * bounded integer type here would turn into a 400.
 */
const whole = z.number().refine(Number.isInteger, 'not an integer');
const date = z.string().max(64).refine((v) => parseDate(v) !== undefined, 'not an RFC 3339 date-time');

export const requestIdSchema = z.union([z.string().max(Limits.maxIdChars), z.number().int().safe()]);

export const credentialSchema = z.object({
  userId: z.string().max(Limits.maxIdChars).optional(),
  bearer: z.string().min(1).max(Limits.maxBearerChars).optional(),
  jwk: z.record(z.string(), z.unknown()).optional(),
});

export const basicRequestSchema = z.object({
  requestId: requestIdSchema,
  client: z.object({ clientId: id, credential: credentialSchema }),
  method: z.enum(['create', 'retrieve', 'update', 'delete']),
  uri: z.string().min(1).max(2048),
});

/** A list of identifiers whose length over the limit is a 413, not a 400. */
function boundedList(item: z.ZodType<string>) {
  return z.array(item).superRefine((list, ctx) => {
    if (list.length > Limits.maxListLength) ctx.addIssue({ code: 'custom', message: 'over the limit', params: { tooLarge: true } });
  });
}

export const ecdheSchema = z.object({
  jwk: z.object({ kty: z.string(), crv: z.string().optional(), x: z.string().max(128).optional(), y: z.string().max(128).optional() }),
});

const authIds = boundedList(id);

export const createResourceSchema = z.object({
  authIds: authIds.optional(),
  userIds: authIds.optional(),
  keyUris: boundedList(z.string().max(2048)).optional(),
  anonymous: whole.pipe(z.number().min(0)).optional(),
  ttl: whole.pipe(z.number().min(0)).optional(),
});

export const createKeysSchema = z.object({ count: whole.pipe(z.number().min(1)) });

export const bindKeySchema = z.object({ resourceUri: z.string().min(1).max(2048) });

export const retrieveKeysSchema = z.object({
  boundAfter: date.optional(),
  boundBefore: date.optional(),
  count: whole.pipe(z.number().min(1)).optional(),
});

export const createAuthorizationsSchema = z.object({
  resourceUri: z.string().min(1).max(2048),
  authIds: authIds.optional(),
  userIds: authIds.optional(),
  anonymous: whole.pipe(z.number().min(0)).optional(),
  roleUri: z.string().min(1).max(2048).optional(),
});

export const bulkDeleteAuthorizationsSchema = z.object({
  resourceUri: z.string().min(1).max(2048),
  authIds: authIds.min(1),
});

/** A peer's invalidations (PROTOCOL.md §6): the KROs whose copies must be refreshed. */
export const invalidationsSchema = z.object({ resourceUris: boundedList(z.string().max(2048)).min(1) });

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
