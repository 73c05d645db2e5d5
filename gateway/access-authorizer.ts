/**
 * An `Authorizer` backed by an access service: the control plane's RBAC graph decides who may
 * reach which cluster's data plane (DESIGN §6: the gateway's authorizer uses the same graph).
 * Answers are cached per (subject, groups, cluster) for `ttlMs` so the control plane is asked
 * once per client per interval, not per request; a failed check is not cached and refuses.
 * Expiry is lazy (no timers); the cache is bounded by `maxEntries` (oldest evicted first).
 */
import type { Authorizer, ClientIdentity } from './client-auth.js';

/** May this subject (with these groups) reach this cluster's data plane? */
export type AccessCheck = (subject: string, groups: readonly string[], clusterId: string) => Promise<boolean>;

export interface AccessAuthorizerOptions {
  check: AccessCheck;
  /** How long an answer is reused. Default 5000 ms. */
  ttlMs?: number;
  /** Default 10000. */
  maxEntries?: number;
  /** The token claim holding the subject's groups. Default `groups`. */
  groupsClaim?: string;
  now?: () => number;
}

export function accessAuthorizer(options: AccessAuthorizerOptions): Authorizer {
  const { check, ttlMs = 5000, maxEntries = 10_000, groupsClaim = 'groups', now = Date.now } = options;
  const cache = new Map<string, { allowed: boolean; expiresAt: number }>();
  return async (identity: ClientIdentity, clusterId: string) => {
    const claim = identity.claims[groupsClaim];
    const groups = Array.isArray(claim) ? claim.filter((g): g is string => typeof g === 'string').sort() : [];
    const key = JSON.stringify([identity.issuer, identity.subject, groups, clusterId]);
    const hit = cache.get(key);
    if (hit !== undefined && hit.expiresAt > now()) return hit.allowed;
    let allowed: boolean;
    try {
      allowed = await check(identity.subject, groups, clusterId);
    } catch {
      cache.delete(key);
      return false;
    }
    cache.delete(key);
    cache.set(key, { allowed, expiresAt: now() + ttlMs });
    if (cache.size > maxEntries) cache.delete(cache.keys().next().value as string);
    return allowed;
  };
}
