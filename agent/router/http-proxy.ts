/**
 * A small HTTP/1.1 front that proxies by the built-in router: route, then forward to the chosen
 * endpoint over HTTP/1.1 (keep-alive), h2c or https, applying the decision's timeout and retry
 * policy (the next try goes to another endpoint of the cluster). Request bodies are buffered (up to
 * `maxBodyBytes`) so a retry can replay them. Used to exercise the router end to end without the
 * tunnel, and as a local development front.
 */
import * as http from 'node:http';
import * as http2 from 'node:http2';
import * as https from 'node:https';
import type { AddressInfo } from 'node:net';
import { getErrorCode } from '../../common/errors.js';
import type { Closable } from '../../common/lifecycle.js';
import type { RouteDecision, RouteFailure, Router } from './router.js';

const EMPTY = Buffer.alloc(0);
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer', 'host', 'http2-settings']);

export interface ProxyOptions {
  router: Router;
  /** Used when the decision has no timeout (default 30 s). */
  defaultTimeoutMs?: number;
  maxBodyBytes?: number;
}

interface Answer {
  status: number;
  headers: Record<string, string | string[]>;
  body: NodeJS.ReadableStream & { destroy(): void; resume(): unknown };
}

type TryOutcome = { ok: true; answer: Answer } | { ok: false; condition: string; message: string };

export class RouterProxy implements Closable {
  readonly server: http.Server;
  /** Per outcome: requests answered (`ok`), failed (`error`), and tries retried. */
  readonly counts = { ok: 0, error: 0, retries: 0 };
  readonly #router: Router;
  readonly #agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
  readonly #tlsAgent = new https.Agent({ keepAlive: true, maxSockets: 256 });
  readonly #h2 = new Map<string, http2.ClientHttp2Session>();
  readonly #timeoutMs: number;
  readonly #maxBody: number;

  constructor(options: ProxyOptions) {
    this.#router = options.router;
    this.#timeoutMs = options.defaultTimeoutMs ?? 30_000;
    this.#maxBody = options.maxBodyBytes ?? 8 * 1024 * 1024;
    this.server = http.createServer((req, res) => void this.#handle(req, res));
  }

  async listen(port = 0, host = '127.0.0.1'): Promise<AddressInfo> {
    await new Promise<void>((resolve) => this.server.listen(port, host, resolve));
    return this.server.address() as AddressInfo;
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const headers: Record<string, string | string[] | undefined> = { ...req.headers };
    const resolution = this.#router.resolve({ method: req.method ?? 'GET', path: req.url ?? '/', authority: req.headers.host ?? '', headers });
    if (!resolution.ok) {
      this.counts.error++;
      answerError(res, routeFailureStatus(resolution.reason), resolution.reason, resolution.message);
      return;
    }
    await this.forward(req, res, resolution.decision);
  }

  /**
   * Forward a request the router decided on (its body buffered up to `maxBodyBytes` so a retry can
   * replay it) and answer the client: the upstream's response, or 504 `UPSTREAM_TIMEOUT` / 503
   * `UPSTREAM_ERROR`. The request's headers go upstream as they are now, minus hop-by-hop ones.
   */
  async forward(req: http.IncomingMessage, res: http.ServerResponse, decision: RouteDecision): Promise<void> {
    let body = EMPTY;
    // A request that declares no body (no Transfer-Encoding, no or a zero Content-Length) has none
    // to read: Node's parser has framed it already, and waiting for its 'end' costs a turn per request.
    const length = req.headers['content-length'];
    if (req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0')) {
      const chunks: Buffer[] = [];
      let size = 0;
      for await (const chunk of req) {
        size += (chunk as Buffer).length;
        if (size > this.#maxBody) {
          this.counts.error++;
          answerError(res, 413, 'REQUEST_BODY_TOO_LARGE', `request body over ${this.#maxBody} bytes`);
          return;
        }
        chunks.push(chunk as Buffer);
      }
      body = Buffer.concat(chunks);
    }
    const deadline = Date.now() + (decision.timeoutMs ?? this.#timeoutMs);
    const attempts = decision.retry?.attempts ?? 1;
    let upstream: URL | null = decision.upstream;
    let last: TryOutcome = { ok: false, condition: 'none', message: 'no try made' };
    for (let attempt = 1; attempt <= attempts && upstream !== null; attempt++) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) break;
      const tryMs = Math.min(remaining, decision.retry?.perTryTimeoutMs ?? remaining);
      last = await this.#try(upstream, decision, req, body, tryMs);
      const retryable = attempt < attempts && decision.retry !== undefined && retries(decision.retry.on, last);
      if (last.ok && !retryable) {
        this.counts.ok++;
        res.writeHead(last.answer.status, last.answer.headers);
        last.answer.body.pipe(res);
        return;
      }
      if (!retryable) break;
      const next = decision.next();
      if (next === null) break;
      if (last.ok) last.answer.body.resume();
      this.counts.retries++;
      upstream = next;
    }
    this.counts.error++;
    if (last.ok) {
      res.writeHead(last.answer.status, last.answer.headers);
      last.answer.body.pipe(res);
      return;
    }
    const timeout = last.condition === 'timeout';
    answerError(res, timeout ? 504 : 503, timeout ? 'UPSTREAM_TIMEOUT' : 'UPSTREAM_ERROR', `${last.condition}: ${last.message}`);
  }

  #try(upstream: URL, decision: RouteDecision, req: http.IncomingMessage, body: Buffer, timeoutMs: number): Promise<TryOutcome> {
    const outHeaders: Record<string, string | string[]> = {};
    for (const [name, value] of Object.entries(req.headers)) if (value !== undefined && !HOP_BY_HOP.has(name)) outHeaders[name] = value;
    if (upstream.protocol === 'h2c:') return this.#tryH2c(upstream, decision, req, outHeaders, body, timeoutMs);
    return new Promise<TryOutcome>((resolve) => {
      const secure = upstream.protocol === 'https:';
      const options: https.RequestOptions = {
        host: upstream.hostname.replace(/^\[|\]$/g, ''),
        port: Number(upstream.port),
        method: req.method ?? 'GET',
        path: decision.path,
        headers: { ...outHeaders, host: req.headers.host ?? upstream.host, 'content-length': String(body.length) },
        agent: secure ? this.#tlsAgent : this.#agent,
        ...(secure && decision.sni !== undefined ? { servername: decision.sni } : {}),
      };
      const outgoing = (secure ? https.request : http.request)(options);
      let connected = false;
      const timer = setTimeout(() => {
        outgoing.destroy();
        resolve({ ok: false, condition: 'timeout', message: `no response within ${timeoutMs} ms` });
      }, timeoutMs);
      outgoing.on('socket', (socket) => {
        if (!socket.connecting) connected = true;
        else socket.once('connect', () => (connected = true));
      });
      outgoing.on('response', (res) => {
        clearTimeout(timer);
        const headers: Record<string, string | string[]> = {};
        for (const [name, value] of Object.entries(res.headers)) if (value !== undefined && !HOP_BY_HOP.has(name)) headers[name] = value;
        resolve({ ok: true, answer: { status: res.statusCode ?? 502, headers, body: res } });
      });
      outgoing.on('error', (reason) => {
        clearTimeout(timer);
        const code = getErrorCode(reason);
        const condition = !connected && (code === 'ECONNREFUSED' || code === 'EHOSTUNREACH' || code === 'ENETUNREACH') ? 'connect-failure' : 'reset';
        resolve({ ok: false, condition, message: reason.message });
      });
      outgoing.end(body);
    });
  }

  #session(origin: string): http2.ClientHttp2Session {
    const existing = this.#h2.get(origin);
    if (existing !== undefined && !existing.closed && !existing.destroyed) return existing;
    const session = http2.connect(origin);
    session.on('error', () => undefined);
    const drop = () => {
      if (this.#h2.get(origin) === session) this.#h2.delete(origin);
    };
    session.on('close', drop);
    session.on('goaway', drop);
    this.#h2.set(origin, session);
    return session;
  }

  #tryH2c(upstream: URL, decision: RouteDecision, req: http.IncomingMessage, headers: Record<string, string | string[]>, body: Buffer, timeoutMs: number): Promise<TryOutcome> {
    return new Promise<TryOutcome>((resolve) => {
      const session = this.#session(`http://${upstream.host}`);
      let connected = session.connecting === false;
      session.once('connect', () => (connected = true));
      const empty = body.length === 0;
      const stream = session.request({ ...headers, ':method': req.method ?? 'GET', ':path': decision.path, ':authority': req.headers.host ?? upstream.host, ':scheme': 'http' }, { endStream: empty });
      const timer = setTimeout(() => {
        stream.close(http2.constants.NGHTTP2_CANCEL);
        resolve({ ok: false, condition: 'timeout', message: `no response within ${timeoutMs} ms` });
      }, timeoutMs);
      stream.on('response', (h) => {
        clearTimeout(timer);
        const out: Record<string, string | string[]> = {};
        for (const [name, value] of Object.entries(h)) if (value !== undefined && !name.startsWith(':') && !HOP_BY_HOP.has(name)) out[name] = value;
        resolve({ ok: true, answer: { status: Number(h[':status'] ?? 502), headers: out, body: stream } });
      });
      stream.on('error', (reason: Error) => {
        clearTimeout(timer);
        const refused = stream.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM;
        resolve({ ok: false, condition: refused ? 'refused-stream' : connected ? 'reset' : 'connect-failure', message: reason.message });
      });
      stream.on('close', () => {
        clearTimeout(timer);
        const refused = stream.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM;
        resolve({ ok: false, condition: refused ? 'refused-stream' : 'reset', message: `stream closed (${stream.rstCode ?? 0})` });
      });
      if (!empty) stream.end(body);
    });
  }

  drain(): Promise<void> {
    return this.close();
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.#agent.destroy();
    this.#tlsAgent.destroy();
    for (const session of this.#h2.values()) session.destroy();
    this.#h2.clear();
  }
}

/**
 * Answer a request this proxy (or a front using it) refuses or fails: `status`, a `tether-error`
 * header with the code (set with setHeader, so the caller's access log can read it back), and
 * `<code>: <message>` as the body.
 */
export function answerError(res: http.ServerResponse, status: number, code: string, message: string): void {
  res.setHeader('tether-error', code);
  res.setHeader('content-type', 'text/plain');
  res.writeHead(status);
  res.end(`${code}: ${message}\n`);
}

/** The status a request gets when the router has no decision: 404 without a route, else 503. */
export function routeFailureStatus(reason: RouteFailure): number {
  return reason === 'NO_ROUTE' ? 404 : 503;
}

/** Whether a failed or 5xx try is retried under `on`. */
export function retries(on: ReadonlySet<string>, outcome: TryOutcome): boolean {
  if (outcome.ok) {
    const s = outcome.answer.status;
    return (on.has('5xx') && s >= 500) || (on.has('gateway-error') && (s === 502 || s === 503 || s === 504));
  }
  switch (outcome.condition) {
    case 'connect-failure':
      return on.has('connect-failure') || on.has('5xx') || on.has('gateway-error');
    case 'refused-stream':
      return on.has('refused-stream') || on.has('5xx');
    case 'reset':
      return on.has('reset') || on.has('5xx');
    case 'timeout':
      return on.has('5xx') || on.has('gateway-error');
    default:
      return false;
  }
}
