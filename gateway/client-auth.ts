/**
 * Client authentication at the gateway: a bearer JWT verified with `jose` against the configured
 * issuers (exact `iss`, required `aud`, algorithm allow-list, small clock tolerance), and an
 * authorizer deciding whether that identity may reach a cluster.
 */
import { createLocalJWKSet, createRemoteJWKSet, decodeJwt, jwtVerify, type JSONWebKeySet, type JWTPayload, type JWTVerifyGetKey } from 'jose';
import { TetherError } from '../common/errors.js';
import type { GatewayConfig } from './options.js';
import { DEFAULT_TOKEN_CACHE, VerifiedTokenCache } from '../common/verified-token-cache.js';

export interface ClientIdentity {
  subject: string;
  issuer: string;
  claims: JWTPayload;
}

/** Decides whether `identity` may reach `clusterId`. */
export type Authorizer = (identity: ClientIdentity, clusterId: string) => boolean | Promise<boolean>;

/** Default authorizer: the token's `claim` (array, or space-separated string) lists the cluster or `*`. */
export function claimAuthorizer(claim = 'clusters'): Authorizer {
  return (identity, clusterId) => {
    const value = identity.claims[claim];
    const list = Array.isArray(value) ? value : typeof value === 'string' ? value.split(/\s+/) : [];
    return list.some((entry) => entry === clusterId || entry === '*');
  };
}

export const ANONYMOUS: ClientIdentity = { subject: 'anonymous', issuer: 'none', claims: {} };

interface IssuerVerifier {
  audiences: string[];
  algorithms: string[];
  clockToleranceSec: number;
  keys: JWTVerifyGetKey;
}

export class ClientAuthenticator {
  private readonly issuers = new Map<string, IssuerVerifier>();
  readonly anonymous: boolean;
  /** Tokens verified before (see verified-token-cache.ts for why a hit is safe). */
  readonly cache: VerifiedTokenCache<ClientIdentity>;

  constructor(config: GatewayConfig['auth']) {
    this.anonymous = config.mode === 'none';
    this.cache = new VerifiedTokenCache(config.mode === 'jwt' ? config.tokenCache : DEFAULT_TOKEN_CACHE);
    if (config.mode !== 'jwt') return;
    for (const issuer of config.issuers) {
      const keys =
        issuer.jwksUrl !== undefined
          ? createRemoteJWKSet(new URL(issuer.jwksUrl), { cooldownDuration: 30_000, timeoutDuration: 5_000 })
          : createLocalJWKSet(issuer.jwks as unknown as JSONWebKeySet);
      this.issuers.set(issuer.issuer, {
        audiences: issuer.audiences,
        algorithms: issuer.algorithms,
        clockToleranceSec: issuer.clockToleranceSec,
        keys,
      });
    }
  }

  /** Verify the `authorization` header; throws `UNAUTHENTICATED`. */
  async authenticate(authorization: string | undefined): Promise<ClientIdentity> {
    if (this.anonymous) return ANONYMOUS;
    const match = /^Bearer\s+([A-Za-z0-9_\-.~+/]+=*)$/i.exec(authorization ?? '');
    if (match === null) throw new TetherError('UNAUTHENTICATED', 'a bearer token is required');
    const token = match[1] as string;
    const key = this.cache.keyOf(token);
    const cached = this.cache.get(key);
    if (cached !== undefined) return cached;
    let iss: string | undefined;
    try {
      iss = decodeJwt(token).iss;
    } catch {
      throw new TetherError('UNAUTHENTICATED', 'the bearer token is not a JWT');
    }
    const verifier = iss === undefined ? undefined : this.issuers.get(iss);
    if (verifier === undefined || iss === undefined) throw new TetherError('UNAUTHENTICATED', 'the token issuer is not trusted');
    try {
      const { payload } = await jwtVerify(token, verifier.keys, {
        issuer: iss,
        audience: verifier.audiences,
        algorithms: verifier.algorithms,
        clockTolerance: verifier.clockToleranceSec,
        requiredClaims: ['exp', 'sub'],
      });
      // One identity object per verified token: requests share it, so nobody may change it.
      const identity: ClientIdentity = Object.freeze({ subject: payload.sub ?? '', issuer: iss, claims: Object.freeze(payload) });
      this.cache.set(key, identity, payload.exp);
      return identity;
    } catch (reason) {
      throw new TetherError('UNAUTHENTICATED', `the bearer token was refused: ${(reason as { code?: string }).code ?? 'invalid'}`, { cause: reason });
    }
  }
}
