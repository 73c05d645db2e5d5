/**
 * Console sessions, held in this process's memory. Logging in verifies the bearer token exactly as
 * the API does (the same Authenticator) and creates a session: a random 256-bit id that travels
 * only in an HttpOnly, SameSite=Strict cookie scoped to `/console`, and a separate random CSRF
 * token that the pages carry and the script sends back in a header on every action. The map is
 * keyed by the SHA-256 of the id, and it keeps the verified caller (subject and groups), never
 * the token. A session ends at the token's `exp` (capped at `ttlMs`), at logout, or when the
 * control plane restarts. Authorisation is not cached: every page and action asks the RBAC graph
 * with the session's caller, so a changed binding applies at the next request.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Caller } from '../service.js';

export const SESSION_COOKIE = 'tether_console';
export const LOGIN_NONCE_COOKIE = 'tether_console_login';
export const CSRF_HEADER = 'x-tether-csrf';

export interface ConsoleSession {
  readonly caller: Caller;
  readonly csrfToken: string;
  readonly createdAt: number;
  readonly expiresAt: number;
}

export interface SessionStoreOptions {
  /** Longest a session lives, whatever the token's `exp`. */
  ttlMs: number;
  /** Sessions kept at most; the oldest is dropped beyond it. */
  maxSessions: number;
  now: () => number;
}

const key = (id: string): string => createHash('sha256').update(id).digest('base64url');

export function randomToken(): string {
  return randomBytes(32).toString('base64url');
}

/** Constant-time comparison of two tokens (false when either is missing). */
export function sameToken(a: string | undefined, b: string | undefined): boolean {
  if (a === undefined || b === undefined || a === '' || b === '') return false;
  const left = Buffer.from(a);
  const right = Buffer.from(b);
  return left.length === right.length && timingSafeEqual(left, right);
}

export class SessionStore {
  readonly #sessions = new Map<string, ConsoleSession>();
  readonly #options: SessionStoreOptions;

  constructor(options: SessionStoreOptions) {
    this.#options = options;
  }

  /** A new session for `caller`; `tokenExpiresAt` is the verified token's `exp` (ms), when it has one. */
  create(caller: Caller, tokenExpiresAt: number | undefined): { id: string; session: ConsoleSession } {
    const now = this.#options.now();
    this.#prune(now);
    while (this.#sessions.size >= this.#options.maxSessions) {
      const oldest = this.#sessions.keys().next();
      if (oldest.done === true) break;
      this.#sessions.delete(oldest.value);
    }
    const cap = now + this.#options.ttlMs;
    const session: ConsoleSession = {
      caller: { subject: caller.subject, groups: [...caller.groups], name: caller.name },
      csrfToken: randomToken(),
      createdAt: now,
      expiresAt: tokenExpiresAt === undefined ? cap : Math.min(cap, tokenExpiresAt),
    };
    const id = randomToken();
    this.#sessions.set(key(id), session);
    return { id, session };
  }

  get(id: string | undefined): ConsoleSession | undefined {
    if (id === undefined || id === '') return undefined;
    const hashed = key(id);
    const session = this.#sessions.get(hashed);
    if (session === undefined) return undefined;
    if (session.expiresAt <= this.#options.now()) {
      this.#sessions.delete(hashed);
      return undefined;
    }
    return session;
  }

  delete(id: string | undefined): void {
    if (id !== undefined && id !== '') this.#sessions.delete(key(id));
  }

  get size(): number {
    return this.#sessions.size;
  }

  #prune(now: number): void {
    for (const [id, session] of this.#sessions) if (session.expiresAt <= now) this.#sessions.delete(id);
  }
}

/** The cookies of a request, by name (the first value of a repeated name wins). */
export function parseCookies(header: string | undefined): Map<string, string> {
  const cookies = new Map<string, string>();
  for (const part of (header ?? '').split(';')) {
    const index = part.indexOf('=');
    if (index <= 0) continue;
    const name = part.slice(0, index).trim();
    if (!cookies.has(name)) cookies.set(name, part.slice(index + 1).trim());
  }
  return cookies;
}

export interface CookieOptions {
  secure: boolean;
  /** Seconds; 0 deletes the cookie; absent: a browser-session cookie. */
  maxAgeSec?: number;
}

/** A `Set-Cookie` value: HttpOnly, SameSite=Strict, Path=/console, Secure over TLS. */
export function cookie(name: string, value: string, options: CookieOptions): string {
  const parts = [`${name}=${value}`, 'Path=/console', 'HttpOnly', 'SameSite=Strict'];
  if (options.maxAgeSec !== undefined) parts.push(`Max-Age=${options.maxAgeSec}`);
  if (options.secure) parts.push('Secure');
  return parts.join('; ');
}
