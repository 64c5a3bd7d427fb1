/** Message payload shapes of draft 4.4/4.6 as this profile fixes them (PROTOCOL.md §4–5). */
export type Method = 'create' | 'retrieve' | 'update' | 'delete';
export type RequestId = string | number;

export interface Credential {
  /** Ignored by the KMS: the principal comes from the bearer alone. */
  userId?: string;
  bearer?: string;
  jwk?: Record<string, unknown>;
  /** Compliance access: an `orgAgent`'s request read as this user of its organisation (PROTOCOL.md §4). */
  onBehalfOf?: string;
}

export interface ClientInfo {
  clientId: string;
  credential: Credential;
}

/** The basic request payload (draft 4.6.1) plus any operation-specific members. */
export interface KmsRequest {
  requestId: RequestId;
  client: ClientInfo;
  method: Method;
  uri: string;
  [member: string]: unknown;
}

/** The basic response payload (draft 4.6.2) plus any operation-specific members. */
export interface KmsResponse {
  status: number;
  reason?: string;
  requestId?: RequestId;
  [member: string]: unknown;
}

export interface SymmetricJwk {
  kty: 'oct';
  kid: string;
  k: string;
}

export interface KeyRep {
  uri: string;
  jwk: SymmetricJwk;
  userId: string;
  clientId: string;
  createDate: string;
  expirationDate: string;
  resourceUri?: string;
  bindDate?: string;
}

export interface AuthorizationRep {
  uri: string;
  authId?: string;
  bearer?: string;
  createDate: string;
  resourceUri: string;
  roleUri?: string;
}

export interface ResourceRep {
  uri: string;
  keyUris: string[];
  authorizationUris: string[];
  createDate?: string;
  expirationDate?: string;
}

export interface EphemeralKeyRep {
  uri: string;
  jwk: { kty: 'EC'; crv: 'P-256'; x: string; y: string };
  userId: string;
  clientId: string;
  createDate: string;
  expirationDate: string;
}

export interface CmkRep {
  uri: string;
  state: string;
  assignedOrgId: string | null;
  createDate?: string;
}
