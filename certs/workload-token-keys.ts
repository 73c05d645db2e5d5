/**
 * Where a token verifier gets the issuer's public keys: OIDC discovery
 * (`<iss>/.well-known/openid-configuration` → `jwks_uri`), then a cached remote key set that
 * keeps the JWKS for `jwksCacheMaxAgeMs` and refetches it on an unknown `kid` no more often than
 * `jwksCooldownMs` (jose's `createRemoteJWKSet` semantics; jose's local key set does the key
 * selection). The JWKS location always comes from our configuration of the issuer,
 * never from a token. A static JWKS can stand in for discovery (issuers we cannot reach).
 */
import { createLocalJWKSet, errors as joseErrors } from 'jose';
import type { JSONWebKeySet, JWTVerifyGetKey } from 'jose';
import { getErrorMessage } from '../common/errors.js';
import { TokenErrorCode, isKeyFetchFailure, tokenError } from './workload-token-errors.js';

/** Discovery documents and key sets larger than this are refused. */
const MAX_DOCUMENT_BYTES = 256 * 1024;

export interface IssuerKeySourceOptions {
  issuer: string;
  jwks?: JSONWebKeySet | undefined;
  jwksCacheMaxAgeMs: number;
  jwksCooldownMs: number;
  fetchTimeoutMs: number;
  /** How long a discovered `jwks_uri` is used before discovery is read again. */
  discoveryCacheMaxAgeMs: number;
}

export function isLoopbackHostname(hostname: string): boolean {
  const host = hostname.replace(/^\[|\]$/g, '').toLowerCase();
  if (host === 'localhost' || host === '::1') return true;
  return /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

/**
 * Why `url` may not be fetched for keys, or null when it may: https only, except plain http to a
 * loopback host (the dev issuer and tests). No credentials, query or fragment.
 */
export function unfetchableReason(url: string): string | null {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return 'is not a URL';
  }
  if (parsed.username !== '' || parsed.password !== '') return 'must not carry credentials';
  if (parsed.search !== '' || parsed.hash !== '') return 'must not have a query or fragment';
  if (parsed.protocol === 'https:') return null;
  if (parsed.protocol === 'http:' && isLoopbackHostname(parsed.hostname)) return null;
  return 'must be https (plain http only to a loopback address)';
}

export function discoveryUrlFor(issuer: string): string {
  return `${issuer.replace(/\/+$/, '')}/.well-known/openid-configuration`;
}

async function readCappedText(response: Response, limit: number): Promise<string> {
  const body = response.body;
  if (body === null) return '';
  const reader = body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel();
      throw new Error(`response larger than ${limit} bytes`);
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function fetchJson(url: string, timeoutMs: number): Promise<unknown> {
  // An owned timer, cleared as soon as the fetch settles (AbortSignal.timeout() would leave one
  // running for the whole timeout after every fetch).
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs);
  try {
    const response = await fetch(url, {
      method: 'GET',
      redirect: 'manual',
      signal: controller.signal,
      headers: { accept: 'application/json, application/jwk-set+json' },
    });
    if (response.status !== 200) {
      await response.body?.cancel();
      throw new Error(`HTTP ${response.status} (expected 200; redirects are not followed)`);
    }
    return JSON.parse(await readCappedText(response, MAX_DOCUMENT_BYTES)) as unknown;
  } catch (reason) {
    throw controller.signal.aborted ? (controller.signal.reason as Error) : reason;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * A remote JWKS with the semantics of jose's `createRemoteJWKSet`: the set is cached for
 * `cacheMaxAgeMs`; a `kid` it does not hold triggers a refetch unless the last fetch was less than
 * `cooldownMs` ago; concurrent reloads share one fetch. Differences: the fetch timeout is a timer
 * we clear, the response size is capped, and a failed fetch is not retried within the cooldown.
 */
export class CachedRemoteKeySet {
  readonly url: string;
  readonly #cacheMaxAgeMs: number;
  readonly #cooldownMs: number;
  readonly #timeoutMs: number;
  #local: ReturnType<typeof createLocalJWKSet> | null = null;
  #fetchedAt = Number.NEGATIVE_INFINITY;
  #pending: Promise<void> | null = null;
  #lastFailure: { at: number; error: unknown } | null = null;
  /** Completed fetches (successful or not). */
  fetches = 0;

  constructor(url: string, options: { cacheMaxAgeMs: number; cooldownMs: number; timeoutMs: number }) {
    this.url = url;
    this.#cacheMaxAgeMs = options.cacheMaxAgeMs;
    this.#cooldownMs = options.cooldownMs;
    this.#timeoutMs = options.timeoutMs;
  }

  readonly getKey: JWTVerifyGetKey = async (header, token) => {
    if (this.#local === null || !this.#fetchedWithin(this.#cacheMaxAgeMs)) await this.#reload();
    const local = this.#local as ReturnType<typeof createLocalJWKSet>;
    try {
      return await local(header, token);
    } catch (reason) {
      if (reason instanceof joseErrors.JWKSNoMatchingKey && !this.#fetchedWithin(this.#cooldownMs)) {
        await this.#reload();
        return (this.#local as ReturnType<typeof createLocalJWKSet>)(header, token);
      }
      throw reason;
    }
  };

  #fetchedWithin(ms: number): boolean {
    return Date.now() < this.#fetchedAt + ms;
  }

  #reload(): Promise<void> {
    const failure = this.#lastFailure;
    if (failure && Date.now() < failure.at + this.#cooldownMs) return Promise.reject(failure.error);
    this.#pending ??= (async () => {
      try {
        const document = await fetchJson(this.url, this.#timeoutMs);
        this.#local = createLocalJWKSet(document as JSONWebKeySet);
        this.#fetchedAt = Date.now();
        this.#lastFailure = null;
      } catch (error) {
        this.#lastFailure = { at: Date.now(), error };
        throw error;
      } finally {
        this.fetches += 1;
        this.#pending = null;
      }
    })();
    return this.#pending;
  }
}

export class IssuerKeySource {
  readonly #options: IssuerKeySourceOptions;
  readonly #static: JWTVerifyGetKey | null;
  #remote: CachedRemoteKeySet | null = null;
  #jwksUri: string | null = null;
  #discoveredAt = Number.NEGATIVE_INFINITY;
  #discovering: Promise<CachedRemoteKeySet> | null = null;
  #lastFailure: { at: number; message: string } | null = null;

  constructor(options: IssuerKeySourceOptions) {
    this.#options = options;
    this.#static = options.jwks ? createLocalJWKSet(options.jwks) : null;
  }

  /** The `jwks_uri` found by discovery, once known. */
  get jwksUri(): string | null {
    return this.#jwksUri;
  }

  /** jose key resolver; fetch failures become `TOKEN_ISSUER_UNREACHABLE`. */
  readonly getKey: JWTVerifyGetKey = async (header, token) => {
    if (this.#static) return this.#static(header, token);
    const remote = await this.#remoteKeys();
    try {
      return await remote.getKey(header, token);
    } catch (reason) {
      if (isKeyFetchFailure(reason)) {
        throw tokenError(
          TokenErrorCode.ISSUER_UNREACHABLE,
          `could not fetch the key set of ${this.#options.issuer} from ${this.#jwksUri ?? '?'}: ${getErrorMessage(reason)}`,
          reason,
        );
      }
      throw reason;
    }
  };

  async #remoteKeys(): Promise<CachedRemoteKeySet> {
    const fresh = Date.now() - this.#discoveredAt < this.#options.discoveryCacheMaxAgeMs;
    if (this.#remote && fresh) return this.#remote;
    if (this.#discovering) return this.#discovering;
    const failure = this.#lastFailure;
    if (failure && Date.now() - failure.at < this.#options.jwksCooldownMs) {
      // Failed a moment ago: do not hammer the issuer; a stale key set still serves if we have one.
      if (this.#remote) return this.#remote;
      throw tokenError(TokenErrorCode.ISSUER_UNREACHABLE, `${failure.message} (not retried for ${this.#options.jwksCooldownMs} ms)`);
    }
    const attempt = this.#discover().finally(() => {
      this.#discovering = null;
    });
    this.#discovering = attempt;
    try {
      return await attempt;
    } catch (reason) {
      if (this.#remote) return this.#remote;
      throw reason;
    }
  }

  async #discover(): Promise<CachedRemoteKeySet> {
    const { issuer } = this.#options;
    const url = discoveryUrlFor(issuer);
    const fail = (why: string, cause?: unknown): never => {
      const message = `OIDC discovery for ${issuer} failed: ${why}`;
      this.#lastFailure = { at: Date.now(), message };
      throw tokenError(TokenErrorCode.ISSUER_UNREACHABLE, message, cause, { url });
    };
    let document: unknown;
    try {
      document = await fetchJson(url, this.#options.fetchTimeoutMs);
    } catch (reason) {
      return fail(`GET ${url}: ${getErrorMessage(reason)}`, reason);
    }
    if (typeof document !== 'object' || document === null) return fail('the discovery document is not a JSON object');
    const { issuer: announced, jwks_uri: jwksUri } = document as { issuer?: unknown; jwks_uri?: unknown };
    if (announced !== issuer) return fail(`the discovery document names issuer ${JSON.stringify(announced)}, not ${JSON.stringify(issuer)}`);
    if (typeof jwksUri !== 'string') return fail('the discovery document has no jwks_uri');
    const bad = unfetchableReason(jwksUri);
    if (bad !== null) return fail(`jwks_uri ${JSON.stringify(jwksUri)} ${bad}`);
    if (this.#remote === null || jwksUri !== this.#jwksUri) {
      this.#remote = new CachedRemoteKeySet(jwksUri, {
        cacheMaxAgeMs: this.#options.jwksCacheMaxAgeMs,
        cooldownMs: this.#options.jwksCooldownMs,
        timeoutMs: this.#options.fetchTimeoutMs,
      });
      this.#jwksUri = jwksUri;
    }
    this.#discoveredAt = Date.now();
    this.#lastFailure = null;
    return this.#remote;
  }
}
