/**
 * Table rows as the Store contract's objects, shared by both backends. Numbers go through
 * Number() because pg returns BIGINT as strings; byte columns arrive as Buffers from both.
 */
import type { AuditHead, AuditRow, AuthorizationRow, ChangeRow, ChannelRow, CmkRow, ArchivedCopy, CopyRow, KeyRow, NodeRow, PushRow, ResourceRow } from '../model.js';
import type { AnswerState } from './rules.js';

export type Row = Record<string, unknown>;

export const num = (v: unknown): number => Number(v);
export const numOrNull = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v));
export const str = (v: unknown): string | null => (v as string | null) ?? null;
export const keyFromRow = (r: Row): KeyRow => ({
  id: r.id as string,
  userId: r.user_id as string,
  clientId: r.client_id as string,
  createdAt: num(r.created_at),
  expiresAt: num(r.expires_at),
  resourceId: str(r.resource_id),
  bindDate: numOrNull(r.bind_date),
  bindSeq: numOrNull(r.bind_seq),
  cmkId: r.cmk_id as string,
  sealed: r.sealed as Uint8Array,
});

export const resourceFromRow = (r: Row): ResourceRow => ({
  id: r.id as string,
  creator: r.creator as string,
  createdAt: num(r.created_at),
  expiresAt: numOrNull(r.expires_at),
});

export const authorizationFromRow = (r: Row): AuthorizationRow => ({
  id: r.id as string,
  resourceId: r.resource_id as string,
  authId: str(r.auth_id),
  roleUri: str(r.role_uri),
  createdAt: num(r.created_at),
});

export const channelFromRow = (r: Row): ChannelRow => ({
  id: r.id as string,
  owner: r.owner as string,
  clientId: r.client_id as string,
  createdAt: num(r.created_at),
  expiresAt: num(r.expires_at),
  cmkId: r.cmk_id as string,
  sealed: r.sealed as Uint8Array,
});

export const cmkFromRow = (r: Row): CmkRow => ({
  id: r.id as string,
  state: r.state as CmkRow['state'],
  assignedOrgId: str(r.assigned_org_id),
  createdAt: num(r.created_at),
  sealed: r.sealed as Uint8Array,
});

export const auditFromRow = (r: Row): AuditRow => ({
  seq: num(r.seq),
  time: num(r.time),
  principal: str(r.principal),
  onBehalfOf: str(r.on_behalf_of),
  clientId: str(r.client_id),
  method: str(r.method),
  uri: str(r.uri),
  status: num(r.status),
  peer: str(r.peer),
  requestId: str(r.request_id),
  node: str(r.node),
  prevHash: r.prev_hash as string,
  hash: r.hash as string,
});

export const auditHeadFromRow = (r: Row): AuditHead => ({ seq: num(r.seq), hash: r.hash as string });

export const copyFromRow = (r: Row): CopyRow => ({
  resourceUri: r.resource_uri as string,
  authority: r.authority as string,
  fetchedAt: num(r.fetched_at),
  cmkId: r.cmk_id as string,
  sealed: r.sealed as Uint8Array,
});

export const archivedFromRow = (r: Row): ArchivedCopy => ({ ...copyFromRow(r), version: num(r.version) });

export const pushFromRow = (r: Row): PushRow => ({
  id: r.id as string,
  createdAt: num(r.created_at),
  resourceIds: JSON.parse(r.resource_ids as string) as string[],
  userIds: JSON.parse(r.user_ids as string) as string[],
  targets: r.targets === null || r.targets === undefined ? null : (JSON.parse(r.targets as string) as Record<string, string[]>),
  attempts: num(r.attempts),
  nextAttemptAt: num(r.next_attempt_at),
});

export const nodeFromRow = (r: Row): NodeRow => ({
  id: r.id as string,
  host: r.host as string,
  pid: num(r.pid),
  version: r.version as string,
  startedAt: num(r.started_at),
  seenAt: num(r.seen_at),
  leading: num(r.is_leader) === 1,
});
export const changeFromRow = (r: Row): ChangeRow => ({ seq: num(r.seq), kind: r.kind as ChangeRow['kind'], subject: r.subject as string, at: num(r.at) });

/** A retry_answers row as a claim decision reads it (rules.ts answerClaimDecision). */
export const answerStateFromRow = (r: Row): AnswerState => ({
  digest: r.digest as string,
  leaseUntil: num(r.lease_until),
  answerUntil: num(r.answer_until),
  expiresAt: num(r.expires_at),
  answered: num(r.answered) === 1,
  answer: r.sealed === null || r.sealed === undefined ? undefined : { cmkId: r.cmk_id as string, sealed: r.sealed as Uint8Array },
});
