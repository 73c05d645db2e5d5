/**
 * Verifier for workload tokens: OIDC JWTs such as Kubernetes projected service-account tokens,
 * checked as in research/architecture.md §4.5: compact JWS only, `alg` from an explicit
 * asymmetric allow-list, exact `iss`, keys from the issuer's discovered JWKS (cached, refetched on
 * an unknown `kid` at most once per cooldown), `aud` and `exp` required, `nbf`/`iat` with a small
 * leeway, and `sub` from an allow-list. Each refusal is a `TetherError` with its own `TOKEN_*`
 * code (see workload-token-errors.ts).
 *
 * Before any key is looked up, the unverified header and claims are read to refuse a disallowed
 * `alg` or a foreign `iss` cheaply, so that tokens of other issuers never cause a JWKS fetch.
 * Every claim is checked again after the signature verifies.
 */
import { decodeJwt, decodeProtectedHeader, jwtVerify } from 'jose';
import type { JSONWebKeySet, JWTPayload } from 'jose';
import { z } from 'zod';
import { parseOptions } from '../common/options.js';
import { TokenErrorCode, toTokenError, tokenError } from './workload-token-errors.js';
import { IssuerKeySource, unfetchableReason } from './workload-token-keys.js';
import { compileSubjectMatcher, describeSubjectPatterns } from './workload-token-subjects.js';
import type { SubjectPattern } from './workload-token-subjects.js';

/** Signature algorithms a verifier may be configured with: asymmetric only. */
export const ASYMMETRIC_JWS_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519'] as const;

export const DEFAULT_TOKEN_ALGORITHMS = ['RS256', 'ES256'];

/** Tokens longer than this are refused before parsing. */
const MAX_TOKEN_LENGTH = 16 * 1024;

export interface WorkloadTokenVerifierOptions {
  /** The exact `iss` accepted; its discovery document is at `<issuer>/.well-known/openid-configuration`. */
  issuer: string;
  /** Our identifier; the token's `aud` must contain it. */
  audience: string;
  /** Allowed `alg` values; default RS256 and ES256. `none` and HMAC are refused as options. */
  algorithms?: string[];
  /** `sub` allow-list: exact strings, globs (`*` = any run without `:`), or RegExps (anchored). */
  allowedSubjects: string | SubjectPattern[];
  /** Leeway for `exp`, `nbf`, `iat`; default 30, at most 60. */
  clockToleranceSec?: number;
  /** Refuse tokens whose `iat` is older than this (and tokens without `iat`). */
  maxTokenAgeSec?: number;
  /** JWKS cache lifetime; default 10 min. */
  jwksCacheMaxAgeMs?: number;
  /** Minimum time between JWKS refetches on an unknown `kid` (and between failed discoveries); default 30 s. */
  jwksCooldownMs?: number;
  /** Timeout for the discovery and JWKS fetches; default 5 s. */
  fetchTimeoutMs?: number;
  /** How long a discovered `jwks_uri` is trusted before discovery is read again; default 1 h. */
  discoveryCacheMaxAgeMs?: number;
  /** A fixed key set instead of discovery (an issuer we cannot reach). */
  jwks?: JSONWebKeySet;
}

export interface VerifiedWorkload {
  issuer: string;
  subject: string;
  /** Our audience, which the token's `aud` contains. */
  audience: string;
  expiresAt: Date;
  claims: JWTPayload;
}

export interface WorkloadTokenVerifier {
  readonly issuer: string;
  readonly audience: string;
  verify(token: string): Promise<VerifiedWorkload>;
}

const subjectPattern = z.union([z.string().min(1), z.instanceof(RegExp)]);

const jwkSetSchema = z.looseObject({ keys: z.array(z.record(z.string(), z.unknown())).min(1) });

const optionsSchema = z.object({
  issuer: z.string().superRefine((issuer, ctx) => {
    const bad = unfetchableReason(issuer);
    if (bad !== null) ctx.addIssue({ code: 'custom', message: `issuer ${bad}` });
  }),
  audience: z.string().min(1),
  algorithms: z
    .array(z.string())
    .min(1)
    .superRefine((list, ctx) => {
      list.forEach((alg, index) => {
        if (alg.toLowerCase() === 'none' || /^HS/i.test(alg)) {
          ctx.addIssue({ code: 'custom', path: [index], message: `"${alg}" is never allowed (unsigned or shared-secret tokens)` });
        } else if (!(ASYMMETRIC_JWS_ALGORITHMS as readonly string[]).includes(alg)) {
          ctx.addIssue({ code: 'custom', path: [index], message: `unsupported algorithm "${alg}" (one of ${ASYMMETRIC_JWS_ALGORITHMS.join(', ')})` });
        }
      });
    })
    .default(DEFAULT_TOKEN_ALGORITHMS),
  allowedSubjects: z.union([z.string().min(1), z.array(subjectPattern).min(1)]),
  clockToleranceSec: z.number().min(0).max(60).default(30),
  maxTokenAgeSec: z.number().positive().optional(),
  jwksCacheMaxAgeMs: z.number().int().min(0).default(10 * 60_000),
  jwksCooldownMs: z.number().int().min(0).default(30_000),
  fetchTimeoutMs: z.number().int().positive().default(5_000),
  discoveryCacheMaxAgeMs: z.number().int().min(0).default(60 * 60_000),
  jwks: jwkSetSchema.optional(),
});

function epochSeconds(): number {
  return Math.floor(Date.now() / 1000);
}

export function createWorkloadTokenVerifier(input: WorkloadTokenVerifierOptions): WorkloadTokenVerifier {
  const options = parseOptions(optionsSchema, input, 'workloadTokenVerifier');
  const { issuer, audience, algorithms, clockToleranceSec, maxTokenAgeSec } = options;
  const allowedAlgorithms = new Set(algorithms);
  const subjectAllowed = compileSubjectMatcher(options.allowedSubjects);
  const keys = new IssuerKeySource({
    issuer,
    jwks: options.jwks as JSONWebKeySet | undefined,
    jwksCacheMaxAgeMs: options.jwksCacheMaxAgeMs,
    jwksCooldownMs: options.jwksCooldownMs,
    fetchTimeoutMs: options.fetchTimeoutMs,
    discoveryCacheMaxAgeMs: options.discoveryCacheMaxAgeMs,
  });

  /** Cheap checks on the unverified token, before any key is fetched. */
  function precheck(token: unknown): void {
    if (typeof token !== 'string' || token.length === 0) throw tokenError(TokenErrorCode.MALFORMED, 'no token');
    if (token.length > MAX_TOKEN_LENGTH) throw tokenError(TokenErrorCode.MALFORMED, `token longer than ${MAX_TOKEN_LENGTH} characters`);
    if (token.split('.').length !== 3) throw tokenError(TokenErrorCode.MALFORMED, 'not a compact JWS (three dot-separated parts)');
    const header = decodeProtectedHeader(token);
    const { alg } = header;
    if (typeof alg !== 'string' || !allowedAlgorithms.has(alg)) {
      throw tokenError(TokenErrorCode.ALG_NOT_ALLOWED, `"alg" ${JSON.stringify(alg ?? null)} is not allowed (allowed: ${[...allowedAlgorithms].join(', ')})`);
    }
    const claims = decodeJwt(token);
    if (claims.iss !== issuer) {
      throw tokenError(TokenErrorCode.WRONG_ISSUER, `"iss" ${JSON.stringify(claims.iss ?? null)} is not the configured issuer ${JSON.stringify(issuer)}`);
    }
  }

  async function verify(token: string): Promise<VerifiedWorkload> {
    try {
      precheck(token);
      const { payload } = await jwtVerify(token, keys.getKey, {
        issuer,
        audience,
        algorithms: [...allowedAlgorithms],
        clockTolerance: clockToleranceSec,
        requiredClaims: ['exp'],
        ...(maxTokenAgeSec === undefined ? {} : { maxTokenAge: maxTokenAgeSec }),
      });
      const { iat, sub, exp } = payload;
      if (iat !== undefined) {
        if (typeof iat !== 'number' || !Number.isFinite(iat)) throw tokenError(TokenErrorCode.MALFORMED, '"iat" claim must be a number');
        if (iat > epochSeconds() + clockToleranceSec) throw tokenError(TokenErrorCode.IAT_IN_FUTURE, '"iat" claim is in the future');
      }
      if (typeof sub !== 'string' || sub === '') throw tokenError(TokenErrorCode.SUBJECT_NOT_ALLOWED, 'token has no "sub" claim');
      if (!subjectAllowed(sub)) {
        throw tokenError(TokenErrorCode.SUBJECT_NOT_ALLOWED, `subject ${JSON.stringify(sub)} is not allowed (allowed: ${describeSubjectPatterns(options.allowedSubjects)})`, undefined, { subject: sub });
      }
      return { issuer, subject: sub, audience, expiresAt: new Date((exp as number) * 1000), claims: payload };
    } catch (reason) {
      throw toTokenError(reason);
    }
  }

  return { issuer, audience, verify };
}

export { TokenErrorCode } from './workload-token-errors.js';
export type { SubjectPattern } from './workload-token-subjects.js';
