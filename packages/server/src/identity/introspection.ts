import { ProviderError, isRecord, providerFetch, providerUrl } from './provider.js';

export interface IntrospectionConfig {
  endpoint: string;
  clientId: string;
  clientSecret: string;
}

/** Asks the IdP about an opaque token; resolves to the answer's members (checked by the caller). */
export type Introspector = (token: string) => Promise<Record<string, unknown>>;

/**
 * RFC 7662 token introspection. The KMS authenticates as a confidential client with HTTP Basic
 * (RFC 6749 §2.3.1: id and secret are form-urlencoded before base64). The answer's `active`,
 * `exp`, `aud` and `iss` are judged by the caller, which knows the clock and the config.
 */
export function createIntrospector(config: IntrospectionConfig): Introspector {
  const endpoint = providerUrl(config.endpoint, 'introspection.endpoint');
  if (!config.clientId || !config.clientSecret) {
    throw new Error('identity: introspection needs clientId and clientSecret');
  }
  const authorization =
    'Basic ' +
    Buffer.from(`${formEncode(config.clientId)}:${formEncode(config.clientSecret)}`, 'utf8').toString('base64');

  return async (token) => {
    const res = await providerFetch(
      endpoint,
      {
        method: 'POST',
        headers: {
          authorization,
          'content-type': 'application/x-www-form-urlencoded',
          accept: 'application/json',
        },
        body: new URLSearchParams({ token, token_type_hint: 'access_token' }).toString(),
      },
      'introspection',
    );
    // 401/403 mean the IdP refused *our* client credentials: an operator problem, not the user's.
    if (res.status === 401 || res.status === 403) {
      throw new ProviderError('identity provider misconfigured', 'introspection', `KMS client credentials refused (HTTP ${res.status})`);
    }
    if (res.status !== 200) {
      throw new ProviderError('identity provider unreachable', 'introspection', `HTTP ${res.status}`);
    }
    if (!isRecord(res.body)) {
      throw new ProviderError('identity provider unreachable', 'introspection', 'answer is not a JSON object');
    }
    return res.body;
  };
}

/** application/x-www-form-urlencoded encoding of one value (space as '+'). */
function formEncode(value: string): string {
  return new URLSearchParams({ v: value }).toString().slice(2);
}
