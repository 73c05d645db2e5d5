/**
 * Retries on the tunnel path: a tunnelled request the built-in router gave a retry policy (so an
 * idempotent method) and that carries no body (its HTTP/2 stream ended with the headers) is held
 * back until an upstream answers. A try that fails before response headers (connect failure,
 * refused stream, reset, per-try timeout) or answers 5xx is retried on `next()`'s endpoint when
 * the policy's `retry_on` covers it, up to `attempts` tries within the route's timeout; a retried
 * 5xx's body is discarded. Nothing is retried once response headers went to the tunnel stream,
 * nor for requests with a body, gRPC, WebSocket or CONNECT (the stream handler only calls this
 * for plain HTTP), nor for https upstreams (left to the streaming forwarder).
 */
import * as http from 'node:http';
import * as http2 from 'node:http2';
import type { ClientHttp2Session, IncomingHttpHeaders, OutgoingHttpHeaders, ServerHttp2Stream } from 'node:http2';
import type { Readable } from 'node:stream';
import { TetherError, getErrorCode, getErrorMessage } from '../../common/errors.js';
import { filterHeaders, filterResponseHeaders, relay as relayBytes } from '../../gateway/tunnel/index.js';
import type { Route } from '../routes.js';
import { fail, type StreamContext } from '../stream-context.js';
import type { StreamRoute } from './stream-routing.js';

const { NGHTTP2_CANCEL, NGHTTP2_INTERNAL_ERROR, NGHTTP2_REFUSED_STREAM, NGHTTP2_FLAG_END_STREAM } = http2.constants;

/** Why a try failed before response headers (also the `reason` label of the retry metric, with `5xx`). */
export type TryCondition = 'connect-failure' | 'refused-stream' | 'reset' | 'timeout';

interface UpstreamResponse {
  status: number;
  headers: IncomingHttpHeaders;
  /** The response ended with its headers (h2c); nothing to pipe. */
  endStream: boolean;
  /** Whether trailers may follow the body. */
  mayTrail: boolean;
  body: Readable;
  trailers(): IncomingHttpHeaders | null;
  /** Drop the response (retried, or nobody left to receive it). */
  discard(): void;
}

type TryOutcome = { ok: true; response: UpstreamResponse } | { ok: false; condition: TryCondition; code: string; message: string };

interface Try {
  outcome: Promise<TryOutcome>;
  abort(): void;
}

/** Whether the stream handler should hand this plain-HTTP stream to `forwardWithRetries`. */
export function retriesApply(stream: ServerHttp2Stream, decided: StreamRoute): boolean {
  if (decided.retry === undefined || decided.retry.attempts < 2) return false;
  if (decided.route.kind === 'https') return false;
  const type = decided.headers['content-type'];
  if (typeof type === 'string' && type.startsWith('application/grpc')) return false;
  return stream.endAfterHeaders;
}

/** The `retry_on` condition that makes this outcome retried, or null (same rules as the HTTP front). */
export function retryReason(on: ReadonlySet<string>, outcome: TryOutcome): TryCondition | '5xx' | null {
  if (outcome.ok) {
    const s = outcome.response.status;
    if ((on.has('5xx') && s >= 500) || (on.has('gateway-error') && (s === 502 || s === 503 || s === 504))) return '5xx';
    return null;
  }
  const c = outcome.condition;
  switch (c) {
    case 'connect-failure':
      return on.has('connect-failure') || on.has('5xx') || on.has('gateway-error') ? c : null;
    case 'refused-stream':
      return on.has('refused-stream') || on.has('5xx') ? c : null;
    case 'reset':
      return on.has('reset') || on.has('5xx') ? c : null;
    case 'timeout':
      return on.has('5xx') || on.has('gateway-error') ? c : null;
  }
}

/** Forward a bodyless idempotent request, retrying per `decided.retry`; the route's timeout bounds all tries. */
export function forwardWithRetries(stream: ServerHttp2Stream, decided: StreamRoute, ctx: StreamContext, setupDone: () => void): void {
  const retry = decided.retry;
  if (retry === undefined) throw new TypeError('forwardWithRetries needs a retry policy');
  const deadline = Date.now() + ctx.upstreamTimeoutMs;
  let current: Try | null = null;
  let gone = false;
  stream.once('close', () => {
    gone = true;
    current?.abort();
  });
  const run = async (): Promise<void> => {
    let route: Route | null = decided.route;
    let last: TryOutcome = { ok: false, condition: 'timeout', code: 'UPSTREAM_TIMEOUT', message: 'upstream did not answer in time' };
    for (let attempt = 1; route !== null && !gone; attempt++) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) break;
      current = tryOnce(route, decided.headers, ctx, Math.min(remaining, retry.perTryTimeoutMs ?? remaining));
      last = await current.outcome;
      current = null;
      const reason = gone ? null : retryReason(retry.on, last);
      if (reason === null || attempt >= retry.attempts) break;
      const next = decided.next();
      if (next === null) break;
      if (last.ok) last.response.discard();
      ctx.metrics.upstreamRetries.inc({ reason });
      route = next;
    }
    if (gone || stream.destroyed || stream.closed) {
      if (last.ok) last.response.discard();
      return;
    }
    if (!last.ok) return fail(stream, ctx, last.code, last.message);
    setupDone();
    relay(stream, last.response, ctx);
  };
  run().catch((reason: unknown) => fail(stream, ctx, 'UPSTREAM_ERROR', getErrorMessage(reason)));
}

function relay(stream: ServerHttp2Stream, response: UpstreamResponse, ctx: StreamContext): void {
  const withTrailers = response.mayTrail && !response.endStream;
  stream.respond({ ':status': response.status, ...filterResponseHeaders(response.headers) }, { endStream: response.endStream, waitForTrailers: withTrailers });
  if (withTrailers) {
    stream.once('wantTrailers', () => {
      const trailers = response.trailers();
      if (trailers !== null) stream.sendTrailers(filterResponseHeaders(trailers));
      else stream.close();
    });
  }
  if (response.endStream) return;
  let complete = false;
  const broken = (): void => {
    if (!stream.closed) stream.close(NGHTTP2_INTERNAL_ERROR);
  };
  response.body.once('end', () => (complete = true));
  response.body.on('error', broken);
  response.body.on('aborted', broken);
  stream.once('close', () => {
    if (!complete) response.discard();
  });
  relayBytes(response.body, stream, ctx.metrics.bytesToGateway);
}

function wantsTrailers(headers: IncomingHttpHeaders): boolean {
  return typeof headers.te === 'string' && /trailers/i.test(headers.te);
}

function codeOf(reason: unknown): string {
  if (reason instanceof TetherError) return reason.code;
  const errno = getErrorCode(reason);
  if (errno === 'ECONNREFUSED' || errno === 'EHOSTUNREACH' || errno === 'ENETUNREACH' || errno === 'ENOTFOUND' || errno === 'EAI_AGAIN') return 'UPSTREAM_REFUSED';
  if (errno === 'ETIMEDOUT') return 'UPSTREAM_TIMEOUT';
  return 'UPSTREAM_ERROR';
}

function failure(reason: unknown, connected: boolean, refused = false): TryOutcome {
  const code = codeOf(reason);
  const condition: TryCondition = code === 'UPSTREAM_TIMEOUT' ? 'timeout' : refused ? 'refused-stream' : !connected || code === 'UPSTREAM_REFUSED' ? 'connect-failure' : 'reset';
  return { ok: false, condition, code, message: `upstream try failed: ${getErrorMessage(reason)}` };
}

function timeoutError(ms: number): TetherError {
  return new TetherError('UPSTREAM_TIMEOUT', `upstream did not answer within ${ms} ms`);
}

function tryOnce(route: Route, headers: IncomingHttpHeaders, ctx: StreamContext, timeoutMs: number): Try {
  return route.kind === 'h2c' ? tryH2c(route, headers, ctx, timeoutMs) : tryHttp1(route, headers, ctx, timeoutMs);
}

function tryHttp1(route: Route, headers: IncomingHttpHeaders, ctx: StreamContext, timeoutMs: number): Try {
  const outHeaders = filterHeaders(headers, { stripCredential: !route.forwardCredential });
  delete outHeaders.te;
  outHeaders.host = headers[':authority'] ?? route.upstream.host;
  const req = http.request({
    method: headers[':method'] ?? 'GET',
    path: `${route.upstream.pathname.replace(/\/$/, '')}${headers[':path'] ?? '/'}`,
    headers: outHeaders,
    host: route.upstream.hostname.replace(/^\[|\]$/g, ''),
    port: route.upstream.port === '' ? 80 : Number(route.upstream.port),
    agent: ctx.pools.http1,
  });
  const outcome = new Promise<TryOutcome>((resolve) => {
    let connected = false;
    let settled = false;
    const settle = (result: TryOutcome): void => {
      clearTimeout(timer);
      if (settled) return;
      settled = true;
      resolve(result);
    };
    const timer = setTimeout(() => req.destroy(timeoutError(timeoutMs)), timeoutMs);
    req.on('socket', (socket) => {
      if (!socket.connecting) connected = true;
      else socket.once('connect', () => (connected = true));
    });
    req.on('response', (res: http.IncomingMessage) => {
      settle({
        ok: true,
        response: {
          status: res.statusCode ?? 502,
          headers: res.headers,
          endStream: false,
          mayTrail: wantsTrailers(headers) && res.headers.trailer !== undefined,
          body: res,
          trailers: () => res.trailers,
          // A retried 5xx: read it to the end so the keep-alive connection stays usable.
          discard: () => {
            if (!res.complete) res.resume();
          },
        },
      });
    });
    req.on('error', (reason: unknown) => settle(failure(reason, connected)));
    req.on('close', () => settle({ ok: false, condition: 'reset', code: 'UPSTREAM_ERROR', message: 'upstream closed before a response' }));
  });
  req.end();
  return { outcome, abort: () => req.destroy() };
}

/** Let an idle h2c session stop holding the process open. */
function maybeUnref(session: ClientHttp2Session): void {
  const state = session.state as { streamsOpen?: number } | undefined;
  if (state?.streamsOpen === undefined || state.streamsOpen <= 1) session.unref();
}

function tryH2c(route: Route, headers: IncomingHttpHeaders, ctx: StreamContext, timeoutMs: number): Try {
  let session: ClientHttp2Session;
  let upstream: http2.ClientHttp2Stream;
  let connected = false;
  try {
    session = ctx.pools.h2cSession(`http://${route.upstream.host}`);
    connected = !session.connecting;
    if (!connected) session.once('connect', () => (connected = true));
    const outHeaders: OutgoingHttpHeaders = {
      ...filterHeaders(headers, { stripCredential: !route.forwardCredential }),
      ':method': headers[':method'] ?? 'GET',
      ':path': `${route.upstream.pathname.replace(/\/$/, '')}${headers[':path'] ?? '/'}`,
      ':authority': headers[':authority'] ?? route.upstream.host,
      ':scheme': 'http',
    };
    upstream = session.request(outHeaders, { endStream: true });
  } catch (reason) {
    return { outcome: Promise.resolve(failure(reason, connected)), abort: () => undefined };
  }
  session.ref();
  const cancel = (): void => {
    if (!upstream.closed) upstream.close(NGHTTP2_CANCEL);
  };
  const outcome = new Promise<TryOutcome>((resolve) => {
    let settled = false;
    let trailers: IncomingHttpHeaders | null = null;
    const settle = (result: TryOutcome): void => {
      clearTimeout(timer);
      if (settled) return;
      settled = true;
      resolve(result);
    };
    const timer = setTimeout(() => upstream.destroy(timeoutError(timeoutMs)), timeoutMs);
    upstream.on('response', (responseHeaders: IncomingHttpHeaders, flags: number) => {
      settle({
        ok: true,
        response: {
          status: Number(responseHeaders[':status'] ?? 502),
          headers: responseHeaders,
          endStream: (flags & NGHTTP2_FLAG_END_STREAM) !== 0,
          mayTrail: wantsTrailers(headers),
          body: upstream,
          trailers: () => trailers,
          discard: cancel,
        },
      });
    });
    upstream.on('trailers', (t: IncomingHttpHeaders) => (trailers = t));
    upstream.on('error', (reason: unknown) => settle(failure(reason, connected, upstream.rstCode === NGHTTP2_REFUSED_STREAM)));
    upstream.on('close', () => {
      const refused = upstream.rstCode === NGHTTP2_REFUSED_STREAM;
      const condition: TryCondition = refused ? 'refused-stream' : connected ? 'reset' : 'connect-failure';
      settle({ ok: false, condition, code: condition === 'connect-failure' ? 'UPSTREAM_REFUSED' : 'UPSTREAM_ERROR', message: `upstream stream closed (${upstream.rstCode ?? 0})` });
      maybeUnref(session);
    });
  });
  return { outcome, abort: cancel };
}
