/**
 * What the agent does with one tunnel stream: pick the route, forward to the upstream in the
 * stream's protocol (HTTP/1.1, h2c/ALPN, gRPC with trailers, WebSocket via HTTP/1.1 Upgrade, raw
 * TCP via CONNECT), and map failures to a `tether-error` code. Backpressure is per stream: every
 * byte moves through `pipe`, which honours `write()`'s return value.
 */
import { randomBytes } from 'node:crypto';
import * as http from 'node:http';
import { type IncomingMessage } from 'node:http';
import * as https from 'node:https';
import * as http2 from 'node:http2';
import { type IncomingHttpHeaders, type OutgoingHttpHeaders, type ServerHttp2Stream } from 'node:http2';
import * as net from 'node:net';
import * as tls from 'node:tls';
import type { Duplex } from 'node:stream';
import http2wrapper from 'http2-wrapper';
import { TetherError } from '../common/errors.js';
import { BIND_PROTOCOL, BIND_PROTOCOL_H2, filterHeaders, filterResponseHeaders, relay } from '../gateway/tunnel/index.js';
import type { AgentMetrics, StreamProtocol } from './metrics.js';
import type { Route } from './routes.js';
import { forwardWithRetries, retriesApply } from './router/tunnel-retry.js';
import { forwardOverPool } from './http1-upstream.js';
import { fail, upstreamCode, upstreamTls, type StreamContext } from './stream-context.js';
import { splice } from './splice.js';
import { handleBindStream } from './bound-stream.js';

const { NGHTTP2_INTERNAL_ERROR, NGHTTP2_FLAG_END_STREAM } = http2.constants;

/**
 * The error listener of a tunnel stream (reset by the gateway when its client went away, or a
 * protocol error on this stream only; its 'close' does the rest). Module-level so that it does not
 * keep the handler's scope alive for a WebSocket's lifetime.
 */
function ignoreError(): void {}

export function handleTunnelStream(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, ctx: StreamContext): void {
  const method = headers[':method'];
  const protocol = headers[':protocol'];
  const kind: StreamProtocol =
    method === 'CONNECT' ? (protocol === 'websocket' ? 'websocket' : protocol === BIND_PROTOCOL || protocol === BIND_PROTOCOL_H2 ? 'bound' : 'tcp') : isGrpc(headers) ? 'grpc' : 'http';
  ctx.metrics.streamsTotal.inc({ protocol: kind });
  const active = ctx.metrics.streamsActiveFor(kind);
  active.inc();
  stream.on('close', () => active.dec());
  stream.on('error', ignoreError);
  // Nothing to read but the end: consume it so the stream can close. A body is read by the relay
  // to the upstream (which counts it), or discarded by fail().
  if (stream.endAfterHeaders) stream.resume();
  const started = process.hrtime.bigint();
  const setupDone = (): void => {
    ctx.metrics.upstreamSetup.observe({ protocol: kind }, Number(process.hrtime.bigint() - started) / 1e9);
  };

  if (kind === 'tcp') return forwardTcp(stream, headers, ctx, setupDone);
  if (kind === 'bound') return handleBindStream(stream, headers, ctx, setupDone);
  if (method === 'CONNECT' && protocol !== 'websocket') return fail(stream, ctx, 'BAD_REQUEST', 'unsupported :protocol');
  const path = headers[':path'] ?? '/';
  let route: Route | null;
  if (ctx.routing) {
    const decided = ctx.routing.decide(headers);
    if (!decided.ok) return fail(stream, ctx, decided.code, decided.message);
    route = decided.route;
    headers = decided.headers; // `:path` as the route rewrote it
    if (decided.timeoutMs !== undefined) ctx = { ...ctx, upstreamTimeoutMs: decided.timeoutMs };
    if (kind === 'http' && retriesApply(stream, decided)) return forwardWithRetries(stream, decided, ctx, setupDone);
  } else {
    route = ctx.routes.match(path);
  }
  if (route === null) return fail(stream, ctx, 'NO_ROUTE', `no route for ${path}`);
  if (kind === 'websocket') return forwardWebSocket(stream, headers, route, ctx, setupDone);
  if (route.kind === 'h2c') return forwardH2c(stream, headers, route, ctx, setupDone);
  return forwardHttp1(stream, headers, route, ctx, setupDone);
}

function isGrpc(headers: IncomingHttpHeaders): boolean {
  const type = headers['content-type'];
  return typeof type === 'string' && type.startsWith('application/grpc');
}

function wantsTrailers(headers: IncomingHttpHeaders): boolean {
  return isGrpc(headers) || (typeof headers.te === 'string' && /trailers/i.test(headers.te));
}


function upstreamPath(route: Route, path: string): string {
  const base = route.upstream.pathname.replace(/\/$/, '');
  return `${base}${path}`;
}

function forwardHttp1(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, route: Route, ctx: StreamContext, setupDone: () => void): void {
  const outHeaders = filterHeaders(headers, { dropTe: true, stripCredential: !route.forwardCredential });
  // https upstreams are reached by their own name (TLS identity and http2-wrapper's origin check);
  // the client's host goes along as x-forwarded-host.
  const clientHost = headers[':authority'];
  outHeaders.host = route.kind === 'https' ? route.upstream.host : (clientHost ?? route.upstream.host);
  if (route.kind === 'https' && clientHost !== undefined) outHeaders['x-forwarded-host'] = clientHost;
  const method = headers[':method'] ?? 'GET';
  const path = upstreamPath(route, headers[':path'] ?? '/');
  const trailers = wantsTrailers(headers);
  if (route.kind !== 'https' && headers.expect === undefined) {
    // Plain HTTP/1.1 through undici (agent/http1-upstream.ts).
    forwardOverPool(stream, {
      pool: ctx.pools.http1Pool(route.upstream.origin),
      method,
      path,
      headers: outHeaders,
      trailers,
      timeoutMs: ctx.upstreamTimeoutMs,
      toUpstream: ctx.metrics.bytesToUpstream,
      toGateway: ctx.metrics.bytesToGateway,
      setupDone,
      fail: (code, message) => fail(stream, ctx, code, message),
      codeOf: upstreamCode,
    });
    return;
  }
  if (route.kind !== 'https') {
    // `expect: 100-continue`, which undici does not send: Node's client handles it.
    const req = http.request({ method, path, headers: outHeaders, host: route.upstream.hostname, port: route.upstream.port === '' ? 80 : Number(route.upstream.port), agent: ctx.pools.http1 });
    relayHttp1(stream, req, trailers, ctx, setupDone);
    return;
  }
  const request = http2wrapper.auto(new URL(path, route.upstream), { method, path, headers: outHeaders, ...upstreamTls(route, ctx) }) as unknown as Promise<http.ClientRequest>;
  request.then(
    (req) => relayHttp1(stream, req, trailers, ctx, setupDone),
    (reason: unknown) => fail(stream, ctx, upstreamCode(reason), 'upstream connect failed'),
  );
}


function relayHttp1(stream: ServerHttp2Stream, req: http.ClientRequest, trailers: boolean, ctx: StreamContext, setupDone: () => void): void {
  let response: IncomingMessage | null = null;
  const timer = setTimeout(() => req.destroy(new TetherError('UPSTREAM_TIMEOUT', 'upstream did not answer in time')), ctx.upstreamTimeoutMs);
  req.on('error', (reason: unknown) => {
    clearTimeout(timer);
    if (response === null) fail(stream, ctx, upstreamCode(reason), 'upstream request failed');
    else if (!stream.closed) stream.close(NGHTTP2_INTERNAL_ERROR);
  });
  req.on('response', (res: IncomingMessage) => {
    clearTimeout(timer);
    setupDone();
    response = res;
    if (stream.destroyed) {
      res.destroy();
      return;
    }
    const withTrailers = trailers && res.headers.trailer !== undefined;
    stream.respond({ ':status': res.statusCode ?? 502, ...filterResponseHeaders(res.headers) }, { waitForTrailers: withTrailers });
    if (withTrailers) stream.once('wantTrailers', () => stream.sendTrailers(filterResponseHeaders(res.trailers)));
    relay(res, stream, ctx.metrics.bytesToGateway);
    res.on('error', () => {
      if (!stream.closed) stream.close(NGHTTP2_INTERNAL_ERROR);
    });
    res.on('aborted', () => {
      if (!stream.closed) stream.close(NGHTTP2_INTERNAL_ERROR);
    });
  });
  stream.once('close', () => {
    clearTimeout(timer);
    if (response === null || !response.complete) req.destroy();
  });
  // A bodyless request (END_STREAM on the HEADERS frame) needs no pipe, only the end.
  if (stream.endAfterHeaders) req.end();
  else relay(stream, req, ctx.metrics.bytesToUpstream);
}

function forwardH2c(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, route: Route, ctx: StreamContext, setupDone: () => void): void {
  let session: http2.ClientHttp2Session;
  try {
    session = ctx.pools.h2cSession(`http://${route.upstream.host}`);
  } catch (reason) {
    fail(stream, ctx, upstreamCode(reason), 'upstream session failed');
    return;
  }
  const outHeaders: OutgoingHttpHeaders = {
    ...filterHeaders(headers, { stripCredential: !route.forwardCredential }),
    ':method': headers[':method'] ?? 'GET',
    ':path': upstreamPath(route, headers[':path'] ?? '/'),
    ':authority': headers[':authority'] ?? route.upstream.host,
    ':scheme': 'http',
  };
  let upstream: http2.ClientHttp2Stream;
  try {
    // A bodyless request goes out as one HEADERS frame with END_STREAM (no pipe, no empty DATA).
    upstream = session.request(outHeaders, { endStream: stream.endAfterHeaders });
  } catch (reason) {
    fail(stream, ctx, upstreamCode(reason), 'upstream request failed');
    return;
  }
  holdSession(session);
  let responded = false;
  let upstreamTrailers: IncomingHttpHeaders | null = null;
  const timer = setTimeout(() => upstream.destroy(new TetherError('UPSTREAM_TIMEOUT', 'upstream did not answer in time')), ctx.upstreamTimeoutMs);
  upstream.on('response', (responseHeaders: IncomingHttpHeaders, flags: number) => {
    clearTimeout(timer);
    setupDone();
    responded = true;
    if (stream.destroyed) {
      upstream.close(http2.constants.NGHTTP2_CANCEL);
      return;
    }
    const status = Number(responseHeaders[':status'] ?? 502);
    const endStream = (flags & NGHTTP2_FLAG_END_STREAM) !== 0;
    const trailers = !endStream && wantsTrailers(headers);
    stream.respond({ ':status': status, ...filterResponseHeaders(responseHeaders) }, { endStream, waitForTrailers: trailers });
    if (trailers) {
      stream.once('wantTrailers', () => {
        if (upstreamTrailers !== null) stream.sendTrailers(filterResponseHeaders(upstreamTrailers));
        else stream.close();
      });
    }
    if (!endStream) relay(upstream, stream, ctx.metrics.bytesToGateway);
  });
  upstream.on('trailers', (trailers: IncomingHttpHeaders) => {
    upstreamTrailers = trailers;
  });
  const onUpstreamGone = (reason?: unknown): void => {
    clearTimeout(timer);
    if (!responded) fail(stream, ctx, reason === undefined ? 'UPSTREAM_ERROR' : upstreamCode(reason), 'upstream stream failed');
    else if (!stream.closed && upstream.rstCode !== undefined && upstream.rstCode !== http2.constants.NGHTTP2_NO_ERROR) stream.close(upstream.rstCode);
  };
  upstream.on('error', onUpstreamGone);
  upstream.on('close', () => {
    if (upstream.rstCode !== undefined && upstream.rstCode !== http2.constants.NGHTTP2_NO_ERROR) onUpstreamGone();
    else if (!responded) onUpstreamGone();
    releaseSession(session);
  });
  stream.once('close', () => {
    clearTimeout(timer);
    if (!upstream.closed) upstream.close(http2.constants.NGHTTP2_CANCEL);
  });
  if (!stream.endAfterHeaders) relay(stream, upstream, ctx.metrics.bytesToUpstream);
}

/**
 * Streams this handler has open per upstream h2c session: the session holds the process open only
 * while one is. A counter, not `session.state` (a native call building an object) per request.
 */
const openStreams = new WeakMap<http2.ClientHttp2Session, number>();

function holdSession(session: http2.ClientHttp2Session): void {
  const open = openStreams.get(session) ?? 0;
  openStreams.set(session, open + 1);
  if (open === 0) session.ref();
}

/** Let an idle h2c session stop holding the process open. */
function releaseSession(session: http2.ClientHttp2Session): void {
  const open = (openStreams.get(session) ?? 1) - 1;
  openStreams.set(session, open);
  if (open <= 0) session.unref();
}

function forwardWebSocket(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, route: Route, ctx: StreamContext, setupDone: () => void): void {
  if (route.kind === 'h2c') return fail(stream, ctx, 'BAD_REQUEST', 'WebSocket needs an http:// upstream');
  const outHeaders = filterHeaders(headers, { stripCredential: !route.forwardCredential });
  outHeaders.host = headers[':authority'] ?? route.upstream.host;
  outHeaders.connection = 'Upgrade';
  outHeaders.upgrade = 'websocket';
  outHeaders['sec-websocket-version'] = headers['sec-websocket-version'] ?? '13';
  outHeaders['sec-websocket-key'] = randomBytes(16).toString('base64');
  const secure = route.kind === 'https';
  const req = (secure ? https.request : http.request)({
    host: route.upstream.hostname,
    port: route.upstream.port === '' ? (secure ? 443 : 80) : Number(route.upstream.port),
    method: 'GET',
    path: upstreamPath(route, headers[':path'] ?? '/'),
    headers: outHeaders,
    ...(secure ? upstreamTls(route, ctx) : {}),
  });
  let settled = false;
  const timer = setTimeout(() => req.destroy(new TetherError('UPSTREAM_TIMEOUT', 'upstream did not answer in time')), ctx.upstreamTimeoutMs);
  const onStreamClose = (): void => {
    clearTimeout(timer);
    if (!settled) req.destroy();
  };
  req.on('upgrade', (res: IncomingMessage, socket: Duplex, head: Buffer) => {
    clearTimeout(timer);
    setupDone();
    settled = true;
    // Once upgraded only the two byte streams matter: drop the listener that kept the upstream
    // request, its response and this function's headers alive for the life of the WebSocket.
    stream.off('close', onStreamClose);
    if (stream.destroyed) {
      socket.destroy();
      return;
    }
    const answer: OutgoingHttpHeaders = { ':status': 200 };
    for (const name of ['sec-websocket-protocol', 'sec-websocket-extensions']) {
      const value = res.headers[name];
      if (value !== undefined) answer[name] = value;
    }
    stream.respond(answer);
    // The pool's idle timer has no meaning for an upgraded socket (nothing acts on it): drop it.
    if (socket instanceof net.Socket) socket.setTimeout(0);
    if (head.length > 0) stream.write(head);
    splice(stream, socket, ctx.metrics);
  });
  req.on('response', (res: IncomingMessage) => {
    clearTimeout(timer);
    settled = true;
    if (stream.destroyed) return void res.destroy();
    stream.respond({ ':status': res.statusCode ?? 502, ...filterResponseHeaders(res.headers) });
    relay(res, stream, ctx.metrics.bytesToGateway);
  });
  req.on('error', (reason: unknown) => {
    clearTimeout(timer);
    if (!settled) fail(stream, ctx, upstreamCode(reason), 'upstream WebSocket failed');
  });
  stream.once('close', onStreamClose);
  req.end();
}


function parseAuthority(authority: string): { host: string; port: number } | null {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(authority);
  if (match === null) return null;
  const port = Number(match[3]);
  if (port < 1 || port > 65535) return null;
  return { host: match[1] ?? match[2] ?? '', port };
}

function forwardTcp(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, ctx: StreamContext, setupDone: () => void): void {
  const authority = headers[':authority'] ?? '';
  const target = parseAuthority(authority);
  if (target === null) return fail(stream, ctx, 'BAD_REQUEST', 'CONNECT needs host:port');
  if (!ctx.routes.allowsTcp(authority)) return fail(stream, ctx, 'TCP_TARGET_FORBIDDEN', `CONNECT to ${authority} is not allowed`);
  const socket = net.connect({ host: target.host, port: target.port });
  socket.setNoDelay(true);
  let connected = false;
  const timer = setTimeout(() => socket.destroy(new TetherError('UPSTREAM_TIMEOUT', 'connect timed out')), ctx.upstreamTimeoutMs);
  socket.once('connect', () => {
    clearTimeout(timer);
    setupDone();
    connected = true;
    if (stream.destroyed) return void socket.destroy();
    stream.respond({ ':status': 200 });
    splice(stream, socket, ctx.metrics);
  });
  socket.once('error', (reason: unknown) => {
    clearTimeout(timer);
    if (!connected) fail(stream, ctx, upstreamCode(reason), `connect to ${authority} failed`);
  });
  stream.once('close', () => {
    clearTimeout(timer);
    if (!connected) socket.destroy();
  });
}
