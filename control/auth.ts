/**
 * Authentication of API callers: a bearer JWT from one of the configured OIDC issuers, verified
 * with the same relying-party checks as workload tokens (certs/workload-token.ts: asymmetric
 * algorithm allow-list, exact issuer, discovered or fixed JWKS, audience and expiry required).
 * The issuer is picked by the token's unverified `iss`; the signature is then checked against
 * that issuer's keys only. Every refusal is CONTROL_UNAUTHENTICATED, with the verifier's own code
 * (TOKEN_EXPIRED, TOKEN_WRONG_AUDIENCE, …) in `details.reason`.
 */
import { decodeJwt } from 'jose';
import { isTetherError, TetherError } from '../common/errors.js';
import { createWorkloadTokenVerifier } from '../certs/workload-token.js';
import type { WorkloadTokenVerifier } from '../certs/workload-token.js';
import type { JSONWebKeySet } from 'jose';
import { ControlErrorCode } from './errors.js';
import type { Caller } from './service.js';

export interface UserIssuerConfig {
  issuer: string;
  audience: string;
  /** Claim with the user's groups (an array of strings); default `groups`. */
  groupsClaim?: string;
  /** A fixed key set instead of discovery. */
  jwks?: JSONWebKeySet;
  algorithms?: string[];
}

export interface Authenticator {
  authenticate(authorization: string | undefined): Promise<Caller>;
}

function unauthenticated(message: string, reason?: string, cause?: unknown): TetherError {
  return new TetherError(ControlErrorCode.UNAUTHENTICATED, message, { cause, details: reason === undefined ? undefined : { reason } });
}

export function createAuthenticator(issuers: readonly UserIssuerConfig[]): Authenticator {
  const verifiers = new Map<string, { verifier: WorkloadTokenVerifier; groupsClaim: string }>();
  for (const config of issuers) {
    verifiers.set(config.issuer, {
      verifier: createWorkloadTokenVerifier({
        issuer: config.issuer,
        audience: config.audience,
        allowedSubjects: [/.+/],
        ...(config.jwks === undefined ? {} : { jwks: config.jwks }),
        ...(config.algorithms === undefined ? {} : { algorithms: config.algorithms }),
      }),
      groupsClaim: config.groupsClaim ?? 'groups',
    });
  }

  async function authenticate(authorization: string | undefined): Promise<Caller> {
    if (authorization === undefined || authorization === '') throw unauthenticated('no bearer token (authorization: Bearer <token>)');
    const match = /^Bearer\s+(\S+)$/i.exec(authorization.trim());
    if (match === null) throw unauthenticated('authorization must be "Bearer <token>"');
    const token = match[1]!;
    let issuer: unknown;
    try {
      issuer = decodeJwt(token).iss;
    } catch (reason) {
      throw unauthenticated('bearer token is not a JWT', 'TOKEN_MALFORMED', reason);
    }
    const entry = typeof issuer === 'string' ? verifiers.get(issuer) : undefined;
    if (entry === undefined) throw unauthenticated(`token issuer ${JSON.stringify(issuer ?? null)} is not configured`, 'TOKEN_WRONG_ISSUER');
    try {
      const verified = await entry.verifier.verify(token);
      const claim = verified.claims[entry.groupsClaim];
      const groups = Array.isArray(claim) ? claim.filter((group): group is string => typeof group === 'string') : [];
      return { subject: verified.subject, groups, name: `user:${verified.subject}`, expiresAt: verified.expiresAt.getTime() };
    } catch (reason) {
      const code = isTetherError(reason) ? reason.code : 'TOKEN_INVALID';
      throw unauthenticated(`bearer token refused (${code})`, code, reason);
    }
  }

  return { authenticate };
}
