/**
 * The one error vocabulary of tether. Every error we raise on purpose is a `TetherError` with a
 * stable string `code` (documented in README "Error codes"); callers branch on `code`, never on
 * message text. Foreign values caught from libraries are normalised with `TetherError.from()`.
 */
export class TetherError extends Error {
  /** Stable, documented machine-readable code, e.g. `CERT_EXPIRED`. */
  readonly code: string;
  /** Extra structured facts for logs (never secrets). */
  readonly details: Readonly<Record<string, unknown>> | undefined;

  constructor(code: string, message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
    super(`[${code}] ${message}`, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'TetherError';
    this.code = code;
    this.details = options?.details;
  }

  /** The message without the `[CODE]` prefix. */
  get rawMessage(): string {
    const prefix = `[${this.code}] `;
    return this.message.startsWith(prefix) ? this.message.slice(prefix.length) : this.message;
  }

  /**
   * Normalise any thrown value. A `TetherError` passes through unchanged; anything else is wrapped
   * with `fallbackCode`, keeping the original as `cause`.
   */
  static from(reason: unknown, fallbackCode = 'INTERNAL'): TetherError {
    if (reason instanceof TetherError) return reason;
    return new TetherError(fallbackCode, getErrorMessage(reason), { cause: reason });
  }
}

/** True when `reason` is a TetherError, optionally with the given code. */
export function isTetherError(reason: unknown, code?: string): reason is TetherError {
  return reason instanceof TetherError && (code === undefined || reason.code === code);
}

/** A message for any caught value; never assumes it is an `Error`. */
export function getErrorMessage(reason: unknown): string {
  if (reason instanceof Error) return reason.message;
  if (typeof reason === 'string') return reason;
  try {
    return JSON.stringify(reason) ?? String(reason);
  } catch {
    return String(reason);
  }
}

/** The Node errno-style `code` of a caught value (`ECONNREFUSED`, `ERR_TLS_…`), or null. */
export function getErrorCode(reason: unknown): string | null {
  if (typeof reason === 'object' && reason !== null && 'code' in reason) {
    const code = (reason as { code: unknown }).code;
    if (typeof code === 'string') return code;
  }
  return null;
}
