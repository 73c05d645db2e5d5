/**
 * The operator console, served by the control plane on its JSON/HTTP API port under `/console/`
 * (the API's server hands it every request whose path is `/console` or below; no other process,
 * no other port).
 *
 * - `GET /console/login` shows a form for a bearer token and sets a login nonce cookie; `POST
 *   /console/login` needs that nonce back (so another site cannot log a browser in), verifies the
 *   token with the API's Authenticator and starts a session (sessions.ts). `POST /console/logout`
 *   ends it (CSRF token as a form field).
 * - `GET /console/<page>` renders a page for the session's caller; with `x-tether-fragment: 1` only
 *   its live region, which the script fetches every `refreshMs`.
 * - `POST /console/actions/<name>` runs an action (actions.ts). It needs the session cookie, the
 *   session's CSRF token in the `x-tether-csrf` header, a JSON body, and an Origin (when the browser
 *   sends one) equal to this server's; otherwise 403 `CONSOLE_CSRF_REFUSED`, before anything runs.
 * - `GET /console/static/console.{js,css}`: the only script and stylesheet.
 *
 * Every response carries the security headers (security-headers.ts). Reads are authorised against
 * the RBAC graph with the session's caller; actions are authorised (and audited) by the service.
 */
import { readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { decodeJwt } from 'jose';
import { getErrorMessage, isTetherError, TetherError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import { httpStatusFor, isClientError } from '../api-status.js';
import type { Authenticator } from '../auth.js';
import type { Operation, ResourceScope } from '../rbac.js';
import type { ControlService } from '../service.js';
import { ACTIONS } from './actions.js';
import { AgentTracker } from './agent-tracker.js';
import { consoleStatusFor, ConsoleErrorCode } from './errors.js';
import { GatewayMetricsBoard, urlSource } from './gateway-metrics.js';
import { utc } from './format.js';
import type { SafeHtml } from './html.js';
import { loginPage, shell } from './layout.js';
import type { PageName } from './layout.js';
import type { PageContext, RenderedPage } from './page-context.js';
import { auditPage } from './pages/audit.js';
import { clustersPage } from './pages/clusters.js';
import { runPage, runsPage } from './pages/runs.js';
import { schedulesPage } from './pages/schedules.js';
import { tunnelsPage } from './pages/tunnels.js';
import { setSecurityHeaders } from './security-headers.js';
import { cookie, CSRF_HEADER, LOGIN_NONCE_COOKIE, parseCookies, randomToken, sameToken, SESSION_COOKIE, SessionStore } from './sessions.js';
import type { ConsoleSession } from './sessions.js';

export const FRAGMENT_HEADER = 'x-tether-fragment';
const FORM_LIMIT_BYTES = 16 * 1024;
const LOGIN_NONCE_MAX_AGE_SEC = 600;

export interface ConsoleSettings {
  /** How often pages refresh their live region. */
  refreshMs: number;
  /** How often gateway metrics are sampled for the last hour's chart. */
  sampleMs: number;
  /** Longest session, whatever the token's expiry. */
  sessionTtlMs: number;
  /** Gateway replicas' metrics URLs. */
  gateways: ReadonlyArray<{ name: string; metricsUrl: string }>;
}

export interface OperatorConsoleOptions extends ConsoleSettings {
  service: ControlService;
  authenticator: Authenticator;
  /** The org this control plane serves. */
  org: string;
  /** The identity CA's trust domain: agents on the channel are tracked (and revocable) only with it. */
  trustDomain?: string;
  /** Served over TLS: cookies get `Secure`. */
  secure: boolean;
  logger: Logger;
  now?: () => number;
  maxSessions?: number;
}

const STATIC_FILES: ReadonlyArray<[name: string, type: string]> = [
  ['console.js', 'text/javascript; charset=utf-8'],
  ['console.css', 'text/css; charset=utf-8'],
  ['favicon.svg', 'image/svg+xml'],
];

const PAGE_RENDERERS: Readonly<Record<PageName, (context: PageContext) => Promise<RenderedPage>>> = {
  clusters: clustersPage,
  tunnels: tunnelsPage,
  runs: runsPage,
  schedules: schedulesPage,
  audit: auditPage,
};

function isPageName(name: string): name is PageName {
  return Object.hasOwn(PAGE_RENDERERS, name);
}

async function readBody(request: IncomingMessage, limit: number): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of request) {
    const buffer = chunk as Buffer;
    size += buffer.length;
    if (size > limit) throw new TetherError(ConsoleErrorCode.BAD_REQUEST, `request body is over ${limit} bytes`);
    chunks.push(buffer);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** A percent-encoded path segment, decoded; a malformed one names no page (404, not a server error). */
function decodeSegment(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    throw new TetherError(ConsoleErrorCode.NOT_FOUND, 'malformed percent-encoding in the path');
  }
}

function statusOf(error: TetherError): number {
  return consoleStatusFor(error.code) ?? httpStatusFor(error.code);
}

function publicText(error: TetherError): string {
  return consoleStatusFor(error.code) !== undefined || isClientError(error.code) ? error.rawMessage : 'internal error';
}

export class OperatorConsole {
  readonly agents: AgentTracker | null;
  readonly gateways: GatewayMetricsBoard;
  readonly sessions: SessionStore;
  readonly #options: OperatorConsoleOptions;
  readonly #now: () => number;
  readonly #static = new Map<string, { type: string; body: Buffer }>();

  private constructor(options: OperatorConsoleOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
    this.sessions = new SessionStore({ ttlMs: options.sessionTtlMs, maxSessions: options.maxSessions ?? 1000, now: this.#now });
    this.agents =
      options.trustDomain === undefined ? null : new AgentTracker({ service: options.service, org: options.org, trustDomain: options.trustDomain, logger: options.logger, now: this.#now });
    this.gateways = new GatewayMetricsBoard({ sampleMs: options.sampleMs, now: this.#now });
    for (const [name, type] of STATIC_FILES) this.#static.set(name, { type, body: readFileSync(new URL(`./static/${name}`, import.meta.url)) });
  }

  /** Build the console and replay agent revocations from the audit log. */
  static async create(options: OperatorConsoleOptions): Promise<OperatorConsole> {
    const instance = new OperatorConsole(options);
    await instance.agents?.restore();
    for (const gateway of options.gateways) instance.gateways.add(urlSource(gateway.name, gateway.metricsUrl));
    return instance;
  }

  /** Is this request path the console's? */
  handles(path: string): boolean {
    return path === '/console' || path.startsWith('/console/');
  }

  /** Answer a console request (never rejects). */
  async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    setSecurityHeaders(response);
    try {
      await this.#route(request, response);
    } catch (reason) {
      const error = TetherError.from(reason);
      if (!isClientError(error.code) && consoleStatusFor(error.code) === undefined) this.#options.logger.error({ err: reason }, 'console request failed');
      if (response.headersSent) {
        response.destroy();
        return;
      }
      this.#sendJson(response, statusOf(error), { code: error.code, message: publicText(error) });
    }
  }

  close(): void {
    this.gateways.close();
  }

  async #route(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const url = new URL(request.url ?? '/', 'http://console.invalid');
    const path = url.pathname;
    const method = request.method ?? 'GET';
    if (path === '/console' || path === '/console/') return this.#redirect(response, '/console/clusters');
    if (path.startsWith('/console/static/')) return this.#sendStatic(method, path.slice('/console/static/'.length), response);
    if (path === '/console/login') {
      if (method === 'GET') return this.#showLogin(request, response);
      if (method === 'POST') return this.#login(request, response);
      return this.#methodNotAllowed(response, 'GET, POST');
    }
    const cookies = parseCookies(request.headers.cookie);
    const sessionId = cookies.get(SESSION_COOKIE);
    const session = this.sessions.get(sessionId);
    if (path === '/console/logout') {
      if (method !== 'POST') return this.#methodNotAllowed(response, 'POST');
      return this.#logout(request, response, sessionId, session);
    }
    if (path.startsWith('/console/actions/')) {
      if (method !== 'POST') return this.#methodNotAllowed(response, 'POST');
      if (session === undefined) throw new TetherError(ConsoleErrorCode.NO_SESSION, 'no console session: log in at /console/login');
      this.#checkCsrf(request, session, request.headers[CSRF_HEADER]);
      return this.#action(request, response, session, decodeSegment(path.slice('/console/actions/'.length)));
    }
    if (method !== 'GET' && method !== 'HEAD') return this.#methodNotAllowed(response, 'GET');
    const fragment = request.headers[FRAGMENT_HEADER] === '1';
    if (session === undefined) {
      if (fragment) throw new TetherError(ConsoleErrorCode.NO_SESSION, 'no console session: log in at /console/login');
      return this.#redirect(response, '/console/login');
    }
    const segments = path.slice('/console/'.length).split('/');
    const name = segments[0] ?? '';
    let page: PageName;
    let rendered: RenderedPage;
    const context = this.#context(session, url);
    if (name === 'runs' && segments.length === 2 && segments[1] !== '') {
      page = 'runs';
      rendered = await runPage(context, decodeSegment(segments[1] ?? ''));
    } else if (segments.length === 1 && isPageName(name)) {
      page = name;
      rendered = await PAGE_RENDERERS[name](context);
    } else {
      throw new TetherError(ConsoleErrorCode.NOT_FOUND, `no console page ${path}`);
    }
    if (fragment) return this.#sendHtml(response, rendered.status, rendered.live);
    const roles = (await this.#options.service.whoAmI(session.caller, { org: this.#options.org })).roles;
    this.#sendHtml(
      response,
      rendered.status,
      shell({
        page,
        title: rendered.title,
        who: { name: session.caller.name, roles },
        csrfToken: session.csrfToken,
        refreshMs: this.#options.refreshMs,
        ...(rendered.controls === undefined ? {} : { controls: rendered.controls }),
        live: rendered.live,
        renderedAt: utc(context.now),
      }),
    );
  }

  #context(session: ConsoleSession, url: URL): PageContext {
    const service = this.#options.service;
    return {
      service,
      org: this.#options.org,
      caller: session.caller,
      now: this.#now(),
      url,
      agents: this.agents,
      gateways: this.gateways,
      may: (operation: Operation, scope: ResourceScope) => service.authorize(session.caller, operation, { org: scope.org, ...(scope.project === undefined ? {} : { project: scope.project }), ...(scope.domain === undefined ? {} : { domain: scope.domain }) }),
    };
  }

  /** The session's token, and no sign of another site (see `#foreignOrigin`). */
  #checkCsrf(request: IncomingMessage, session: ConsoleSession, token: string | string[] | undefined): void {
    const foreign = this.#foreignOrigin(request);
    if (foreign !== null) throw new TetherError(ConsoleErrorCode.CSRF_REFUSED, foreign);
    if (typeof token !== 'string' || !sameToken(token, session.csrfToken)) throw new TetherError(ConsoleErrorCode.CSRF_REFUSED, `missing or wrong ${CSRF_HEADER} token`);
  }

  /**
   * Why the request comes from another site, or null. Browsers say so in `Sec-Fetch-Site`, and in
   * `Origin` unless the referrer policy (ours is no-referrer) makes it `null`. The tokens are the
   * protection; this refuses what a browser already labels foreign.
   */
  #foreignOrigin(request: IncomingMessage): string | null {
    const site = request.headers['sec-fetch-site'];
    if (site !== undefined && site !== 'same-origin' && site !== 'none') return `sec-fetch-site ${site}: not sent from this console`;
    const origin = request.headers.origin;
    const own = `${this.#options.secure ? 'https' : 'http'}://${request.headers.host ?? ''}`;
    if (origin !== undefined && origin !== 'null' && origin !== own) return `origin ${origin} is not this console's`;
    return null;
  }

  async #action(request: IncomingMessage, response: ServerResponse, session: ConsoleSession, name: string): Promise<void> {
    const action = Object.hasOwn(ACTIONS, name) ? ACTIONS[name] : undefined;
    if (action === undefined) throw new TetherError(ConsoleErrorCode.NOT_FOUND, `no console action ${name}`);
    if (!/^application\/json\b/i.test(request.headers['content-type'] ?? '')) throw new TetherError(ConsoleErrorCode.BAD_REQUEST, 'send the action as application/json');
    let body: unknown;
    try {
      body = JSON.parse(await readBody(request, FORM_LIMIT_BYTES));
    } catch (reason) {
      if (isTetherError(reason)) throw reason;
      throw new TetherError(ConsoleErrorCode.BAD_REQUEST, `body is not JSON: ${getErrorMessage(reason)}`);
    }
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new TetherError(ConsoleErrorCode.BAD_REQUEST, 'body must be a JSON object');
    const result = await action({ service: this.#options.service, org: this.#options.org, caller: session.caller, agents: this.agents }, body as Record<string, unknown>);
    this.#sendJson(response, 200, result);
  }

  #showLogin(request: IncomingMessage, response: ServerResponse, error?: string, status = 200): void {
    // Keep a nonce the browser already holds (several tabs), else make one.
    const held = parseCookies(request.headers.cookie).get(LOGIN_NONCE_COOKIE);
    const nonce = held !== undefined && /^[A-Za-z0-9_-]{43}$/.test(held) ? held : randomToken();
    response.setHeader('set-cookie', cookie(LOGIN_NONCE_COOKIE, nonce, { secure: this.#options.secure, maxAgeSec: LOGIN_NONCE_MAX_AGE_SEC }));
    this.#sendHtml(response, status, loginPage({ nonce, ...(error === undefined ? {} : { error }) }));
  }

  async #login(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const form = new URLSearchParams(await readBody(request, FORM_LIMIT_BYTES));
    const held = parseCookies(request.headers.cookie).get(LOGIN_NONCE_COOKIE);
    if (this.#foreignOrigin(request) !== null || !sameToken(form.get('nonce') ?? undefined, held)) {
      await this.#audit('anonymous', 'console.login', ConsoleErrorCode.CSRF_REFUSED);
      throw new TetherError(ConsoleErrorCode.CSRF_REFUSED, 'the login form was not sent from this console (nonce cookie missing or different): reload /console/login');
    }
    const token = (form.get('token') ?? '').trim().replace(/^Bearer\s+/i, '');
    let caller;
    try {
      caller = await this.#options.authenticator.authenticate(`Bearer ${token}`);
    } catch (reason) {
      const error = TetherError.from(reason);
      await this.#audit('anonymous', 'console.login', error.code);
      const detail = typeof error.details?.reason === 'string' ? ` (${error.details.reason})` : '';
      return this.#showLogin(request, response, `Token refused${detail}: ${publicText(error)}`, 401);
    }
    let expiresAt: number | undefined;
    try {
      const exp = decodeJwt(token).exp;
      expiresAt = typeof exp === 'number' ? exp * 1000 : undefined;
    } catch {
      expiresAt = undefined;
    }
    const { id } = this.sessions.create(caller, expiresAt);
    await this.#audit(caller.name, 'console.login', 'OK');
    response.setHeader('set-cookie', [
      cookie(SESSION_COOKIE, id, { secure: this.#options.secure }),
      cookie(LOGIN_NONCE_COOKIE, '', { secure: this.#options.secure, maxAgeSec: 0 }),
    ]);
    this.#redirect(response, '/console/clusters');
  }

  async #logout(request: IncomingMessage, response: ServerResponse, sessionId: string | undefined, session: ConsoleSession | undefined): Promise<void> {
    if (session !== undefined) {
      const form = new URLSearchParams(await readBody(request, FORM_LIMIT_BYTES));
      this.#checkCsrf(request, session, form.get('csrf') ?? undefined);
      this.sessions.delete(sessionId);
      await this.#audit(session.caller.name, 'console.logout', 'OK');
    }
    response.setHeader('set-cookie', cookie(SESSION_COOKIE, '', { secure: this.#options.secure, maxAgeSec: 0 }));
    this.#redirect(response, '/console/login');
  }

  async #audit(principal: string, operation: string, result: string): Promise<void> {
    await this.#options.service
      .audit({ principal, operation, resource: `org/${this.#options.org}/console`, result })
      .catch((reason: unknown) => this.#options.logger.error({ err: reason }, 'audit write failed'));
  }

  #sendStatic(method: string, name: string, response: ServerResponse): void {
    const file = this.#static.get(name);
    if (file === undefined) throw new TetherError(ConsoleErrorCode.NOT_FOUND, `no static file ${name}`);
    if (method !== 'GET' && method !== 'HEAD') return this.#methodNotAllowed(response, 'GET');
    response.writeHead(200, { 'content-type': file.type, 'content-length': file.body.length });
    response.end(method === 'HEAD' ? undefined : file.body);
  }

  #sendHtml(response: ServerResponse, status: number, body: SafeHtml): void {
    const text = body.toString();
    response.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'content-length': Buffer.byteLength(text) });
    response.end(text);
  }

  #sendJson(response: ServerResponse, status: number, body: unknown): void {
    const text = `${JSON.stringify(body)}\n`;
    response.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    response.end(text);
  }

  #redirect(response: ServerResponse, location: string): void {
    response.writeHead(303, { location, 'content-length': 0 });
    response.end();
  }

  #methodNotAllowed(response: ServerResponse, allow: string): void {
    response.setHeader('allow', allow);
    throw new TetherError(ConsoleErrorCode.METHOD_NOT_ALLOWED, `use ${allow}`);
  }
}
