/**
 * `envoy.filters.http.jwt_authn` for the sovereign front: the filter's configuration compiled
 * (providers, requirement rules) and a `JwtAuthenticator` that enforces it per request with jose,
 * by the same rules as the gateway's and the workload-token checks: a compact JWS of at most
 * 16 KiB, `alg` from the asymmetric allow-list (never `none` or HMAC), exact `iss`, `aud` required
 * and matched against the provider's audiences, `exp` required, `exp`/`nbf` with the provider's
 * clock skew (at most 60 s). Remote JWKS are cached for `cache_duration` (refetched on an unknown
 * `kid` at most every 30 s); their URI must be https (plain http only to loopback).
 *
 * A provider with `jwt_cache_config` remembers the tokens it verified (`jwt_cache_size` of them,
 * Envoy's default 100), as Envoy does: a hit skips the signature check but still checks the
 * requirement's audiences against the token's `aud`; an entry lasts until the token's `exp` and
 * at most 60 s (so a key withdrawn from the JWKS stops being honoured within the JWKS cache
 * duration plus 60 s); only successes are cached (common/verified-token-cache.ts). The token
 * must be byte-for-byte the one verified (the key is the SHA-256 of the whole compact token).
 *
 * Where this differs from Envoy: the token is read from `Authorization: Bearer` only (Envoy also
 * reads an `access_token` query parameter by default); `iss` and `audiences` may not be empty (Envoy
 * then skips those checks); `exp` is always required; a remote JWKS is fetched from its URI
 * directly, not through `http_uri.cluster`.
 */
import { createLocalJWKSet, decodeJwt, decodeProtectedHeader, jwtVerify } from 'jose';
import type { JSONWebKeySet, JWTPayload, JWTVerifyGetKey } from 'jose';
import { fromBinary } from '@bufbuild/protobuf';
import type { Any } from '@bufbuild/protobuf/wkt';
import { TetherError, getErrorMessage } from '../../common/errors.js';
import { ASYMMETRIC_JWS_ALGORITHMS } from '../../certs/workload-token.js';
import { TokenErrorCode, isKeyFetchFailure, toTokenError, tokenError } from '../../certs/workload-token-errors.js';
import { CachedRemoteKeySet, unfetchableReason } from '../../certs/workload-token-keys.js';
import { VerifiedTokenCache } from '../../common/verified-token-cache.js';
import {
  JwtAuthenticationSchema,
  JwtCacheConfigSchema,
  JwtHeaderSchema,
  JwtProviderSchema,
  RemoteJwksSchema,
  RequirementRuleSchema,
} from '../../xds/gen/envoy/extensions/filters/http/jwt_authn/v3/config_pb.js';
import type { JwtProvider, JwtRequirement } from '../../xds/gen/envoy/extensions/filters/http/jwt_authn/v3/config_pb.js';
import { JWT_AUTHN_TYPE_URL } from '../../xds/references.js';
import type { RouteRequest } from './compile.js';
import { compileRouteMatch } from './matchers.js';
import type { CompiledMatch } from './matchers.js';
import { durationMs, join, onlyFields } from './fields.js';
import type { Problem } from './fields.js';

/** A request without a bearer token where one is required. */
export const UNAUTHENTICATED = 'UNAUTHENTICATED';
const MAX_TOKEN_LENGTH = 16 * 1024;
const MAX_CLOCK_SKEW_SEC = 60;
/** Envoy's defaults: clock skew 60 s, JWKS cache 10 min. */
const DEFAULT_CLOCK_SKEW_SEC = 60;
const DEFAULT_JWKS_CACHE_MS = 600_000;
const DEFAULT_JWKS_TIMEOUT_MS = 5_000;
const JWKS_COOLDOWN_MS = 30_000;
/** Envoy's `jwt_cache_size` default, and the most we accept (entries are at most 16 KiB of claims each). */
const DEFAULT_JWT_CACHE_SIZE = 100;
const MAX_JWT_CACHE_SIZE = 100_000;
/** Longest a verification is reused: bounds how long a token passes after its key leaves the JWKS. */
const JWT_CACHE_MAX_AGE_MS = 60_000;
const ALGORITHMS: readonly string[] = ASYMMETRIC_JWS_ALGORITHMS;

export type JwksSource = { kind: 'remote'; uri: string; cacheMs: number; timeoutMs: number } | { kind: 'local'; getKey: JWTVerifyGetKey };

export interface JwtProviderConfig {
  name: string;
  issuer: string;
  audiences: string[];
  jwks: JwksSource;
  forward: boolean;
  /** Key of the verified payload in the filter's metadata (RBAC reads it), or null. */
  payloadKey: string | null;
  claimToHeaders: Array<{ claim: string; header: string }>;
  clockSkewSec: number;
  /** Verified tokens remembered (`jwt_cache_config.jwt_cache_size`); 0 when the provider has no cache. */
  cacheSize: number;
}

export type Requirement =
  | { kind: 'provider'; name: string; audiences: string[] | null }
  | { kind: 'any'; of: Requirement[] }
  | { kind: 'all'; of: Requirement[] }
  | { kind: 'allow-missing' }
  | { kind: 'allow-missing-or-failed' };

export interface JwtAuthnConfig {
  providers: ReadonlyMap<string, JwtProviderConfig>;
  /** Every provider's `payload_in_metadata` key (what RBAC may read after this filter). */
  payloadKeys: ReadonlySet<string>;
  /** First match decides; a request no rule matches needs no token. */
  rules: Array<{ match: CompiledMatch; requirement: Requirement }>;
}

// ---- compile ------------------------------------------------------------------------------

function localKeys(jwks: string, at: string, problems: Problem[]): JWTVerifyGetKey | null {
  let parsed: unknown;
  try {
    parsed = JSON.parse(jwks);
  } catch {
    problems.push({ field: at, message: 'is not JSON' });
    return null;
  }
  const keys = (parsed as { keys?: unknown } | null)?.keys;
  if (!Array.isArray(keys) || keys.length === 0) {
    problems.push({ field: at, message: 'is not a JWKS (needs a non-empty "keys" array)' });
    return null;
  }
  for (const key of keys as Array<Record<string, unknown>>) {
    if (key.kty === 'oct' || (typeof key.alg === 'string' && !ALGORITHMS.includes(key.alg))) {
      problems.push({ field: at, message: `key ${JSON.stringify(key.kid ?? null)} refused: only asymmetric keys (${ALGORITHMS.join(', ')})` });
      return null;
    }
  }
  try {
    return createLocalJWKSet(parsed as JSONWebKeySet);
  } catch (reason) {
    problems.push({ field: at, message: `is not a usable JWKS: ${getErrorMessage(reason)}` });
    return null;
  }
}

function compileProvider(name: string, provider: JwtProvider, at: string, problems: Problem[]): JwtProviderConfig | null {
  onlyFields(
    JwtProviderSchema,
    provider,
    ['issuer', 'audiences', 'remote_jwks', 'local_jwks', 'forward', 'payload_in_metadata', 'claim_to_headers', 'clock_skew_seconds', 'require_expiration', 'from_headers', 'jwt_cache_config', 'pad_forward_payload_header', 'clear_route_cache'],
    at,
    problems,
  );
  if (provider.issuer === '') problems.push({ field: join(at, 'issuer'), message: 'is required (tokens are matched by their exact iss)' });
  if (provider.audiences.length === 0) problems.push({ field: join(at, 'audiences'), message: 'at least one audience is required' });
  // The default token location only: Authorization with the Bearer prefix.
  provider.fromHeaders.forEach((header, k) => {
    onlyFields(JwtHeaderSchema, header, ['name', 'value_prefix'], join(at, `from_headers[${k}]`), problems);
    if (header.name.toLowerCase() !== 'authorization' || header.valuePrefix !== 'Bearer ') problems.push({ field: join(at, `from_headers[${k}]`), message: 'only "authorization" with value_prefix "Bearer " is supported' });
  });
  const skew = provider.clockSkewSeconds === 0 ? DEFAULT_CLOCK_SKEW_SEC : provider.clockSkewSeconds;
  if (skew > MAX_CLOCK_SKEW_SEC) problems.push({ field: join(at, 'clock_skew_seconds'), message: `${skew} is more than the ${MAX_CLOCK_SKEW_SEC} s allowed` });
  provider.claimToHeaders.forEach((c, k) => {
    if (c.claimName === '' || c.headerName === '') problems.push({ field: join(at, `claim_to_headers[${k}]`), message: 'claim_name and header_name are required' });
  });
  let cacheSize = 0;
  if (provider.jwtCacheConfig !== undefined) {
    const cat = join(at, 'jwt_cache_config');
    onlyFields(JwtCacheConfigSchema, provider.jwtCacheConfig, ['jwt_cache_size'], cat, problems);
    cacheSize = provider.jwtCacheConfig.jwtCacheSize === 0 ? DEFAULT_JWT_CACHE_SIZE : provider.jwtCacheConfig.jwtCacheSize;
    if (cacheSize > MAX_JWT_CACHE_SIZE) problems.push({ field: join(cat, 'jwt_cache_size'), message: `${cacheSize} is more than the ${MAX_JWT_CACHE_SIZE} allowed` });
  }
  let jwks: JwksSource | null = null;
  const source = provider.jwksSourceSpecifier;
  if (source.case === 'remoteJwks') {
    const rat = join(at, 'remote_jwks');
    onlyFields(RemoteJwksSchema, source.value, ['http_uri', 'cache_duration', 'retry_policy'], rat, problems);
    const uri = source.value.httpUri?.uri ?? '';
    const bad = unfetchableReason(uri);
    if (bad !== null) problems.push({ field: join(rat, 'http_uri.uri'), message: `${JSON.stringify(uri)} ${bad}` });
    else {
      jwks = {
        kind: 'remote',
        uri,
        cacheMs: durationMs(source.value.cacheDuration) || DEFAULT_JWKS_CACHE_MS,
        timeoutMs: durationMs(source.value.httpUri?.timeout) || DEFAULT_JWKS_TIMEOUT_MS,
      };
    }
  } else if (source.case === 'localJwks') {
    const data = source.value.specifier;
    const lat = join(at, 'local_jwks');
    if (data.case === 'inlineString' || data.case === 'inlineBytes') {
      const getKey = localKeys(data.case === 'inlineString' ? data.value : Buffer.from(data.value).toString('utf8'), lat, problems);
      if (getKey !== null) jwks = { kind: 'local', getKey };
    } else problems.push({ field: lat, message: 'only inline_string or inline_bytes is supported' });
  } else {
    problems.push({ field: at, message: 'needs remote_jwks or local_jwks' });
  }
  if (jwks === null) return null;
  return {
    name,
    issuer: provider.issuer,
    audiences: [...provider.audiences],
    jwks,
    forward: provider.forward,
    payloadKey: provider.payloadInMetadata === '' ? null : provider.payloadInMetadata,
    claimToHeaders: provider.claimToHeaders.map((c) => ({ claim: c.claimName, header: c.headerName.toLowerCase() })),
    clockSkewSec: skew,
    cacheSize,
  };
}

function compileRequirement(requirement: JwtRequirement, at: string, providers: ReadonlySet<string>, problems: Problem[]): Requirement | null {
  const type = requirement.requiresType;
  switch (type.case) {
    case 'providerName':
      if (!providers.has(type.value)) problems.push({ field: join(at, 'provider_name'), message: `provider "${type.value}" is not in providers` });
      return { kind: 'provider', name: type.value, audiences: null };
    case 'providerAndAudiences':
      if (!providers.has(type.value.providerName)) problems.push({ field: join(at, 'provider_and_audiences.provider_name'), message: `provider "${type.value.providerName}" is not in providers` });
      if (type.value.audiences.length === 0) problems.push({ field: join(at, 'provider_and_audiences.audiences'), message: 'at least one audience is required' });
      return { kind: 'provider', name: type.value.providerName, audiences: [...type.value.audiences] };
    case 'requiresAny':
    case 'requiresAll': {
      const field = type.case === 'requiresAny' ? 'requires_any' : 'requires_all';
      const of = type.value.requirements.map((r, k) => compileRequirement(r, join(at, `${field}.requirements[${k}]`), providers, problems));
      if (of.some((r) => r === null)) return null;
      return { kind: type.case === 'requiresAny' ? 'any' : 'all', of: of as Requirement[] };
    }
    case 'allowMissing':
      return { kind: 'allow-missing' };
    case 'allowMissingOrFailed':
      return { kind: 'allow-missing-or-failed' };
    default:
      problems.push({ field: at, message: 'needs a requirement' });
      return null;
  }
}

export function compileJwtAuthn(any: Any, at: string, problems: Problem[]): JwtAuthnConfig | null {
  if (any.typeUrl !== JWT_AUTHN_TYPE_URL) return null;
  let config;
  try {
    config = fromBinary(JwtAuthenticationSchema, any.value);
  } catch {
    problems.push({ field: at, message: 'cannot be decoded' });
    return null;
  }
  onlyFields(JwtAuthenticationSchema, config, ['providers', 'rules', 'strip_failure_response'], at, problems);
  const providers = new Map<string, JwtProviderConfig>();
  for (const [name, provider] of Object.entries(config.providers)) {
    const compiled = compileProvider(name, provider, join(at, `providers["${name}"]`), problems);
    if (compiled !== null) providers.set(name, compiled);
  }
  const names = new Set(Object.keys(config.providers));
  const rules: JwtAuthnConfig['rules'] = [];
  config.rules.forEach((rule, k) => {
    const rat = join(at, `rules[${k}]`);
    onlyFields(RequirementRuleSchema, rule, ['match', 'requires'], rat, problems);
    if (rule.match === undefined) {
      problems.push({ field: join(rat, 'match'), message: 'is required' });
      return;
    }
    const match = compileRouteMatch(rule.match, join(rat, 'match'), problems);
    // A rule without `requires` lets matching requests through without a token (Envoy's meaning).
    const requirement = rule.requirementType.case === 'requires' ? compileRequirement(rule.requirementType.value, join(rat, 'requires'), names, problems) : { kind: 'allow-missing-or-failed' as const };
    if (match !== null && requirement !== null) rules.push({ match, requirement });
  });
  const payloadKeys = new Set(Object.values(config.providers).flatMap((p) => (p.payloadInMetadata === '' ? [] : [p.payloadInMetadata])));
  return { providers, payloadKeys, rules };
}

// ---- enforce ------------------------------------------------------------------------------

export interface VerifiedToken {
  provider: JwtProviderConfig;
  payload: JWTPayload;
}

export type AuthnOutcome =
  /** No rule matched, or the requirement was met (possibly with no token: `verified` empty). */
  | { ok: true; verified: VerifiedToken[]; rule: number | null }
  | { ok: false; error: TetherError; rule: number };

export type JwtCacheLookup = 'hit' | 'miss';

export interface JwtAuthenticatorOptions {
  /** Called on every lookup in a provider's verified-token cache (for a metric). */
  onCacheLookup?: (result: JwtCacheLookup) => void;
  now?: () => number;
}

/**
 * Enforces compiled jwt_authn configurations; owns the remote key sets (kept across updates) and
 * the providers' verified-token caches (a new configuration starts with empty ones).
 */
export class JwtAuthenticator {
  readonly #remote = new Map<string, CachedRemoteKeySet>();
  #caches = new WeakMap<JwtProviderConfig, VerifiedTokenCache<JWTPayload>>();
  readonly #onCacheLookup: (result: JwtCacheLookup) => void;
  readonly #now: () => number;

  constructor(options: JwtAuthenticatorOptions = {}) {
    this.#onCacheLookup = options.onCacheLookup ?? (() => undefined);
    this.#now = options.now ?? Date.now;
  }

  #cacheOf(provider: JwtProviderConfig): VerifiedTokenCache<JWTPayload> | null {
    if (provider.cacheSize === 0) return null;
    let cache = this.#caches.get(provider);
    if (cache === undefined) {
      cache = new VerifiedTokenCache<JWTPayload>({ maxEntries: provider.cacheSize, maxAgeMs: JWT_CACHE_MAX_AGE_MS, maxTokenBytes: MAX_TOKEN_LENGTH, now: this.#now });
      this.#caches.set(provider, cache);
    }
    return cache;
  }

  /** Remote JWKS fetches so far, per URI (for tests and status). */
  fetches(uri: string): number {
    let total = 0;
    for (const set of this.#remote.values()) if (set.url === uri) total += set.fetches;
    return total;
  }

  #keysOf(provider: JwtProviderConfig): JWTVerifyGetKey {
    const source = provider.jwks;
    if (source.kind === 'local') return source.getKey;
    const key = `${source.uri} ${source.cacheMs} ${source.timeoutMs}`;
    let set = this.#remote.get(key);
    if (set === undefined) {
      set = new CachedRemoteKeySet(source.uri, { cacheMaxAgeMs: source.cacheMs, cooldownMs: JWKS_COOLDOWN_MS, timeoutMs: source.timeoutMs });
      this.#remote.set(key, set);
    }
    return set.getKey;
  }

  /** Verify `token` for one provider (audiences optionally overridden by the requirement). */
  async verify(provider: JwtProviderConfig, token: string, audiences: string[] | null = null): Promise<VerifiedToken> {
    const cache = this.#cacheOf(provider);
    const key = cache?.keyOf(token) ?? null;
    if (cache !== null) {
      const payload = cache.get(key);
      this.#onCacheLookup(payload === undefined ? 'miss' : 'hit');
      if (payload !== undefined) {
        // The signature, issuer, exp and nbf passed for these exact bytes; the audiences asked for may differ.
        if (!audienceMatches(payload.aud, audiences ?? provider.audiences)) throw tokenError(TokenErrorCode.WRONG_AUDIENCE, `"aud" is not one of ${JSON.stringify(audiences ?? provider.audiences)}`);
        return { provider, payload };
      }
    }
    const verified = await this.#verifySignature(provider, token, audiences);
    cache?.set(key, verified.payload, verified.payload.exp);
    return verified;
  }

  async #verifySignature(provider: JwtProviderConfig, token: string, audiences: string[] | null): Promise<VerifiedToken> {
    try {
      if (token.length > MAX_TOKEN_LENGTH) throw tokenError(TokenErrorCode.MALFORMED, `token longer than ${MAX_TOKEN_LENGTH} characters`);
      if (token.split('.').length !== 3) throw tokenError(TokenErrorCode.MALFORMED, 'not a compact JWS (three dot-separated parts)');
      const { alg } = decodeProtectedHeader(token);
      if (typeof alg !== 'string' || !ALGORITHMS.includes(alg)) throw tokenError(TokenErrorCode.ALG_NOT_ALLOWED, `"alg" ${JSON.stringify(alg ?? null)} is not allowed`);
      const { iss } = decodeJwt(token);
      if (iss !== provider.issuer) throw tokenError(TokenErrorCode.WRONG_ISSUER, `"iss" ${JSON.stringify(iss ?? null)} is not ${JSON.stringify(provider.issuer)}`);
      const keys = this.#keysOf(provider);
      const getKey: JWTVerifyGetKey = async (header, input) => {
        try {
          return await keys(header, input);
        } catch (reason) {
          if (provider.jwks.kind === 'remote' && !(reason instanceof TetherError) && isKeyFetchFailure(reason)) {
            throw tokenError(TokenErrorCode.ISSUER_UNREACHABLE, `could not fetch the key set from ${provider.jwks.uri}: ${getErrorMessage(reason)}`, reason);
          }
          throw reason;
        }
      };
      const { payload } = await jwtVerify(token, getKey, {
        issuer: provider.issuer,
        audience: audiences ?? provider.audiences,
        algorithms: [...ALGORITHMS],
        clockTolerance: provider.clockSkewSec,
        requiredClaims: ['exp', 'aud'],
      });
      return { provider, payload };
    } catch (reason) {
      throw toTokenError(reason);
    }
  }

  /** Apply the first matching rule to a request (header names lower case). */
  async authenticate(config: JwtAuthnConfig, request: RouteRequest, path: string): Promise<AuthnOutcome> {
    const index = config.rules.findIndex((rule) => rule.match.matches(request, path));
    const rule = config.rules[index];
    if (rule === undefined) return { ok: true, verified: [], rule: null };
    const token = bearerToken(request.headers.authorization);
    const memo = new Map<string, Promise<VerifiedToken>>();
    const verifyWith = (name: string, audiences: string[] | null): Promise<VerifiedToken> => {
      const provider = config.providers.get(name);
      if (provider === undefined) return Promise.reject(new TetherError(UNAUTHENTICATED, `provider "${name}" unknown`));
      if (token === null) return Promise.reject(new TetherError(UNAUTHENTICATED, 'a bearer token is required'));
      const key = `${name} ${audiences?.join(',') ?? ''}`;
      let pending = memo.get(key);
      if (pending === undefined) {
        pending = this.verify(provider, token, audiences);
        memo.set(key, pending);
      }
      return pending;
    };
    const everyProvider = async (): Promise<{ verified: VerifiedToken[]; errors: TetherError[] }> => {
      const verified: VerifiedToken[] = [];
      const errors: TetherError[] = [];
      for (const name of config.providers.keys()) {
        try {
          verified.push(await verifyWith(name, null));
        } catch (reason) {
          errors.push(TetherError.from(reason));
        }
      }
      return { verified, errors };
    };
    const evaluate = async (requirement: Requirement): Promise<VerifiedToken[]> => {
      switch (requirement.kind) {
        case 'provider':
          return [await verifyWith(requirement.name, requirement.audiences)];
        case 'all': {
          const all: VerifiedToken[] = [];
          for (const inner of requirement.of) all.push(...(await evaluate(inner)));
          return all;
        }
        case 'any': {
          const errors: TetherError[] = [];
          for (const inner of requirement.of) {
            try {
              return await evaluate(inner);
            } catch (reason) {
              errors.push(TetherError.from(reason));
            }
          }
          // The most telling refusal: one about this issuer's token rather than "not our issuer".
          throw errors.find((e) => e.code !== TokenErrorCode.WRONG_ISSUER) ?? errors[0] ?? new TetherError(UNAUTHENTICATED, 'no requirement met');
        }
        case 'allow-missing': {
          if (token === null) return [];
          const { verified, errors } = await everyProvider();
          if (verified.length > 0) return verified;
          throw errors.find((e) => e.code !== TokenErrorCode.WRONG_ISSUER) ?? errors[0] ?? new TetherError(UNAUTHENTICATED, 'the token was not verified');
        }
        case 'allow-missing-or-failed':
          return token === null ? [] : (await everyProvider()).verified;
      }
    };
    try {
      return { ok: true, verified: await evaluate(rule.requirement), rule: index };
    } catch (reason) {
      return { ok: false, error: TetherError.from(reason), rule: index };
    }
  }

  /** Forget the cached key sets and verified tokens. */
  clear(): void {
    this.#remote.clear();
    this.#caches = new WeakMap();
  }
}

function audienceMatches(aud: unknown, allowed: readonly string[]): boolean {
  const values = typeof aud === 'string' ? [aud] : Array.isArray(aud) ? aud : [];
  return values.some((value) => typeof value === 'string' && allowed.includes(value));
}

/** The token of `Authorization: Bearer <token>`, or null. */
export function bearerToken(value: string | readonly string[] | undefined): string | null {
  const header = typeof value === 'string' ? value : value?.[0];
  const match = /^Bearer +([A-Za-z0-9_\-.~+/]+=*) *$/i.exec(header ?? '');
  return match?.[1] ?? null;
}

/** A claim's value as a header value: strings as they are, numbers and booleans printed, lists of those joined with `,`. */
export function claimHeaderValue(payload: JWTPayload, claim: string): string | null {
  let value: unknown = payload;
  for (const key of claim.split('.')) value = typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>)[key] : undefined;
  const scalar = (v: unknown): string | null => (typeof v === 'string' ? v : typeof v === 'number' || typeof v === 'boolean' ? String(v) : null);
  if (Array.isArray(value)) {
    const parts = value.map(scalar);
    return parts.some((p) => p === null) ? null : parts.join(',');
  }
  return scalar(value);
}
