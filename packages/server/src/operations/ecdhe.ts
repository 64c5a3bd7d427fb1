/**
 * Draft 4.7.1–4.7.2: create an ephemeral key (the ECDHE handshake) and delete one. The handshake
 * arrives under the static key, before any channel exists; its answer is signed, not sealed.
 */
import { KmsError, Status, ecdheSchema, formatDate, validate } from '@openkms/protocol';
import { agreeChannelKey } from '../codec/fast-codec.js';
import { principalId } from '../identity/principal.js';
import { Secret } from '../secret.js';
import type { Deps, Handler } from './context.js';

export const createEphemeralKey: Handler = async ({ request, principal }, deps) => {
  const { jwk } = validate(ecdheSchema, request);
  if (jwk.kty !== 'EC') throw KmsError.badRequest('invalid field jwk.kty: must be EC');
  if (jwk.crv !== 'P-256') throw KmsError.badRequest('invalid field jwk.crv: only P-256 is supported');
  if (!jwk.x || !jwk.y) throw KmsError.badRequest('invalid field jwk: x and y required');
  let agreed: ReturnType<typeof agreeChannelKey>;
  try {
    // Only x and y are read: private members a client may send (node-kms sends `d`) are ignored.
    agreed = agreeChannelKey({ x: jwk.x, y: jwk.y });
  } catch {
    throw KmsError.badRequest('invalid field jwk: not a P-256 public key');
  }
  const key = new Secret(agreed.key);
  const channel = await deps.channels.create(
    principalId(principal),
    request.client.clientId,
    key,
    deps.config.lifetimes.channel * 1000,
  );
  return {
    status: Status.CREATED,
    key: {
      uri: channel.uri,
      jwk: agreed.publicJwk,
      userId: channel.owner,
      clientId: channel.clientId,
      createDate: formatDate(channel.createdAt),
      expirationDate: formatDate(channel.expiresAt),
    },
  };
};

/** delete /ecdhe/<id>: own channels only; the answer still travels under the channel it came on. */
export const deleteEphemeralKey: Handler = async (ctx, deps) => {
  const channel = await deps.channels.get(ctx.id);
  if (!channel) throw KmsError.notFound('no such ephemeral key');
  if (channel.owner !== principalId(ctx.principal)) throw KmsError.forbidden('not your ephemeral key');
  await deps.channels.delete(ctx.id);
  return { status: Status.NO_CONTENT };
};
