/**
 * Bearer tokens the gateway has already verified, so that a client sending the same token on every
 * request pays one signature check, not one per request (an ES256 check costs ~60 µs here, a third
 * of the tunnel's whole CPU budget per request; `npm run bench -- identity`).
 *
 * What makes a hit safe:
 * - the key is the SHA-256 of the whole compact token (header, payload and signature), so a hit
 *   means these exact bytes passed `jwtVerify` under this authenticator's issuers before; a token
 *   differing in any byte is a miss and is verified;
 * - an entry lives until the token's `exp` (without the clock tolerance verification allows) and at
 *   most `maxAgeMs`: that bounds how long a token stays accepted after its signing key is withdrawn
 *   from the issuer's key set;
 * - only successes are cached; the cache belongs to one authenticator (new issuer settings, new
 *   cache); tokens longer than `maxTokenBytes` are not cached, and `maxEntries` bounds the rest
 *   (least recently used evicted first).
 */
import { createHash } from 'node:crypto';

export interface VerifiedTokenCacheOptions {
  /** Entries kept at most; 0 turns the cache off. */
  maxEntries: number;
  /** Longest time an entry is trusted, ms. */
  maxAgeMs: number;
  /** Longer tokens are verified every time (their claims would make entries large). */
  maxTokenBytes: number;
  now?: () => number;
}

export const DEFAULT_TOKEN_CACHE: VerifiedTokenCacheOptions = { maxEntries: 10_000, maxAgeMs: 60_000, maxTokenBytes: 4096 };

interface Entry<T> {
  value: T;
  expiresAt: number;
}

export class VerifiedTokenCache<T> {
  private readonly entries = new Map<string, Entry<T>>();
  private readonly now: () => number;
  hits = 0;
  misses = 0;

  constructor(private readonly options: VerifiedTokenCacheOptions = DEFAULT_TOKEN_CACHE) {
    this.now = options.now ?? Date.now;
  }

  get size(): number {
    return this.entries.size;
  }

  /** The cache key of a token, or null when the token is not to be cached. */
  keyOf(token: string): string | null {
    if (this.options.maxEntries === 0 || token.length > this.options.maxTokenBytes) return null;
    return createHash('sha256').update(token).digest('base64');
  }

  get(key: string | null): T | undefined {
    if (key === null) return undefined;
    const entry = this.entries.get(key);
    if (entry === undefined) {
      this.misses++;
      return undefined;
    }
    if (entry.expiresAt <= this.now()) {
      this.entries.delete(key);
      this.misses++;
      return undefined;
    }
    // Most recently used last: eviction takes from the front.
    this.entries.delete(key);
    this.entries.set(key, entry);
    this.hits++;
    return entry.value;
  }

  /** Remember a verified token until `expSec` (its `exp` claim) or `maxAgeMs` from now, whichever is first. */
  set(key: string | null, value: T, expSec: number | undefined): void {
    if (key === null || expSec === undefined) return;
    const now = this.now();
    const expiresAt = Math.min(expSec * 1000, now + this.options.maxAgeMs);
    if (expiresAt <= now) return;
    this.entries.delete(key);
    this.entries.set(key, { value, expiresAt });
    while (this.entries.size > this.options.maxEntries) {
      const oldest = this.entries.keys().next();
      if (oldest.done === true) break;
      this.entries.delete(oldest.value);
    }
  }

  clear(): void {
    this.entries.clear();
  }
}
