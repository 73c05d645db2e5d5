/**
 * The refusal vocabulary of workload-token verification, and the one place where jose's error
 * classes are translated into it. Every refusal has its own stable code so that a caller (and a
 * metric label) can tell "the issuer rotated its key and we have not seen it yet" from "somebody
 * sent us a token for another audience".
 */
import { errors as joseErrors } from 'jose';
import { TetherError, getErrorMessage } from '../common/errors.js';

export const TokenErrorCode = {
  /** Not a compact JWS with a JSON header and claims set, or a claim has the wrong type. */
  MALFORMED: 'TOKEN_MALFORMED',
  /** `alg` missing or not in the verifier's allow-list (`none` and HMAC never are). */
  ALG_NOT_ALLOWED: 'TOKEN_ALG_NOT_ALLOWED',
  /** The signature does not verify with the issuer's key named by `kid`. */
  BAD_SIGNATURE: 'TOKEN_BAD_SIGNATURE',
  /** `iss` missing or not exactly the configured issuer. */
  WRONG_ISSUER: 'TOKEN_WRONG_ISSUER',
  /** `aud` missing or not containing our audience. */
  WRONG_AUDIENCE: 'TOKEN_WRONG_AUDIENCE',
  /** `exp` missing or in the past (beyond the clock tolerance). */
  EXPIRED: 'TOKEN_EXPIRED',
  /** `nbf` in the future (beyond the clock tolerance). */
  NOT_YET_VALID: 'TOKEN_NOT_YET_VALID',
  /** `iat` in the future (beyond the clock tolerance). */
  IAT_IN_FUTURE: 'TOKEN_IAT_IN_FUTURE',
  /** `iat` older than the verifier's `maxTokenAgeSec` (or missing when that is set). */
  TOO_OLD: 'TOKEN_TOO_OLD',
  /** No single key of the issuer's JWKS matches `kid`/`alg`, even after a refetch. */
  UNKNOWN_KID: 'TOKEN_UNKNOWN_KID',
  /** `sub` missing or not matched by the allow-list. */
  SUBJECT_NOT_ALLOWED: 'TOKEN_SUBJECT_NOT_ALLOWED',
  /** Discovery document or JWKS could not be fetched or was unusable. */
  ISSUER_UNREACHABLE: 'TOKEN_ISSUER_UNREACHABLE',
} as const;

export type TokenErrorCode = (typeof TokenErrorCode)[keyof typeof TokenErrorCode];

export function tokenError(code: TokenErrorCode, message: string, cause?: unknown, details?: Record<string, unknown>): TetherError {
  return new TetherError(code, message, { cause, ...(details ? { details } : {}) });
}

/** Errors thrown while resolving the issuer's keys that mean "we could not get usable keys". */
export function isKeyFetchFailure(reason: unknown): boolean {
  if (reason instanceof joseErrors.JWKSNoMatchingKey || reason instanceof joseErrors.JWKSMultipleMatchingKeys) return false;
  if (reason instanceof joseErrors.JOSENotSupported || reason instanceof joseErrors.JOSEAlgNotAllowed) return false;
  // Timeouts, non-200 answers (a plain JOSEError), bad JSON, a malformed JWKS, and the TypeError
  // that fetch raises when the connection fails.
  return true;
}

/**
 * Map anything thrown during verification to a `TetherError` with a `TOKEN_*` code. TetherErrors
 * pass through; jose errors are classified by class and, for claim failures, by the claim and
 * reason jose reports; anything else is an internal fault, not the token's.
 */
export function toTokenError(reason: unknown): TetherError {
  if (reason instanceof TetherError) return reason;
  const message = getErrorMessage(reason);
  if (reason instanceof joseErrors.JWTExpired) {
    if (reason.claim === 'iat') return tokenError(TokenErrorCode.TOO_OLD, message, reason);
    return tokenError(TokenErrorCode.EXPIRED, message, reason);
  }
  if (reason instanceof joseErrors.JWTClaimValidationFailed) {
    if (reason.reason === 'invalid') return tokenError(TokenErrorCode.MALFORMED, message, reason);
    switch (reason.claim) {
      case 'iss':
        return tokenError(TokenErrorCode.WRONG_ISSUER, message, reason);
      case 'aud':
        return tokenError(TokenErrorCode.WRONG_AUDIENCE, message, reason);
      case 'exp':
        return tokenError(TokenErrorCode.EXPIRED, message, reason);
      case 'nbf':
        return tokenError(TokenErrorCode.NOT_YET_VALID, message, reason);
      case 'iat':
        return reason.reason === 'missing'
          ? tokenError(TokenErrorCode.TOO_OLD, message, reason)
          : tokenError(TokenErrorCode.IAT_IN_FUTURE, message, reason);
      case 'sub':
        return tokenError(TokenErrorCode.SUBJECT_NOT_ALLOWED, message, reason);
      default:
        return tokenError(TokenErrorCode.MALFORMED, message, reason);
    }
  }
  if (reason instanceof joseErrors.JOSEAlgNotAllowed || reason instanceof joseErrors.JOSENotSupported) {
    return tokenError(TokenErrorCode.ALG_NOT_ALLOWED, message, reason);
  }
  if (reason instanceof joseErrors.JWSSignatureVerificationFailed) return tokenError(TokenErrorCode.BAD_SIGNATURE, message, reason);
  if (reason instanceof joseErrors.JWKSNoMatchingKey) return tokenError(TokenErrorCode.UNKNOWN_KID, message, reason);
  if (reason instanceof joseErrors.JWKSMultipleMatchingKeys) {
    return tokenError(TokenErrorCode.UNKNOWN_KID, 'several keys of the issuer match; the token must name one with "kid"', reason);
  }
  if (reason instanceof joseErrors.JWKSTimeout || reason instanceof joseErrors.JWKSInvalid || reason instanceof joseErrors.JWKInvalid) {
    return tokenError(TokenErrorCode.ISSUER_UNREACHABLE, message, reason);
  }
  if (reason instanceof joseErrors.JWSInvalid || reason instanceof joseErrors.JWTInvalid) return tokenError(TokenErrorCode.MALFORMED, message, reason);
  if (reason instanceof joseErrors.JOSEError) return tokenError(TokenErrorCode.MALFORMED, message, reason);
  return TetherError.from(reason, 'INTERNAL');
}
