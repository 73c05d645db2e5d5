/**
 * The console's own refusals (its pages and actions also pass on the control plane's codes, with
 * the API's HTTP statuses). Each code has one HTTP status.
 */
export const ConsoleErrorCode = {
  /** No console session (no cookie, an unknown or an expired one): log in again. */
  NO_SESSION: 'CONSOLE_NO_SESSION',
  /** A POST without the session's CSRF token (or the login form's nonce), or from another origin. */
  CSRF_REFUSED: 'CONSOLE_CSRF_REFUSED',
  /** A malformed console request: unknown action, body not JSON, a missing field. */
  BAD_REQUEST: 'CONSOLE_BAD_REQUEST',
  /** No such console page. */
  NOT_FOUND: 'CONSOLE_NOT_FOUND',
  /** The method is not one this path answers. */
  METHOD_NOT_ALLOWED: 'CONSOLE_METHOD_NOT_ALLOWED',
  /** The agent's identity was revoked from the console: its channel and its certificate exchanges are refused. */
  AGENT_REVOKED: 'AGENT_REVOKED',
  /** Revoke or reinstate named an agent the control plane has never seen and that is not revoked. */
  AGENT_UNKNOWN: 'CONSOLE_AGENT_UNKNOWN',
} as const;

export type ConsoleErrorCodeValue = (typeof ConsoleErrorCode)[keyof typeof ConsoleErrorCode];

const STATUS: Readonly<Record<ConsoleErrorCodeValue, number>> = {
  CONSOLE_NO_SESSION: 401,
  CONSOLE_CSRF_REFUSED: 403,
  CONSOLE_BAD_REQUEST: 400,
  CONSOLE_NOT_FOUND: 404,
  CONSOLE_METHOD_NOT_ALLOWED: 405,
  AGENT_REVOKED: 403,
  CONSOLE_AGENT_UNKNOWN: 404,
};

export function consoleStatusFor(code: string): number | undefined {
  return (STATUS as Readonly<Record<string, number>>)[code];
}
