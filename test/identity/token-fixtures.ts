/**
 * Shared pieces of the identity tests: a started dev issuer torn down with the test, and tokens
 * that no honest issuer would mint (unsigned, HMAC, signed by a key outside the JWKS).
 */
import type { ExecutionContext } from 'ava';
import { SignJWT, UnsecuredJWT, generateKeyPair } from 'jose';
import type { JWTPayload } from 'jose';
import { DevOidcIssuer } from '../../certs/dev-oidc-issuer.js';
import type { DevOidcIssuerOptions } from '../../certs/dev-oidc-issuer.js';
import { TetherError } from '../../common/errors.js';

export const AUDIENCE = 'tether-control';
export const SUBJECT = 'system:serviceaccount:tether:agent';

export async function startIssuer(t: ExecutionContext, options: DevOidcIssuerOptions = {}): Promise<DevOidcIssuer> {
  const issuer = new DevOidcIssuer(options);
  t.teardown(() => issuer.close());
  await issuer.listen();
  return issuer;
}

export function nowSec(): number {
  return Math.floor(Date.now() / 1000);
}

/** The claims an honest token of `issuer` would carry. */
export function honestClaims(issuer: string, extra: JWTPayload = {}): JWTPayload {
  const now = nowSec();
  return { iss: issuer, sub: SUBJECT, aud: [AUDIENCE], iat: now, nbf: now, exp: now + 600, ...extra };
}

/** `alg: none`, no signature. */
export function unsignedToken(claims: JWTPayload): string {
  return new UnsecuredJWT(claims).encode();
}

/** HS256 with a shared secret, naming a kid the issuer really publishes (key-confusion attempt). */
export async function hmacToken(claims: JWTPayload, kid: string): Promise<string> {
  const secret = new TextEncoder().encode('a shared secret nobody should accept for a workload');
  return new SignJWT(claims).setProtectedHeader({ alg: 'HS256', kid }).sign(secret);
}

/** Signed with a fresh ES256 key that is in no JWKS. */
export async function strangerToken(claims: JWTPayload, kid = 'stranger'): Promise<string> {
  const { privateKey } = await generateKeyPair('ES256');
  return new SignJWT(claims).setProtectedHeader({ alg: 'ES256', kid }).sign(privateKey);
}

/** Await a refusal and return its code (fails the test when it resolves or throws something else). */
export async function refusalCode(t: ExecutionContext, promise: Promise<unknown>): Promise<string> {
  const error = await t.throwsAsync(promise, { instanceOf: TetherError });
  return error?.code ?? '(none)';
}
