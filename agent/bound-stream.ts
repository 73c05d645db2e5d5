/**
 * The agent's end of a bound client connection (`BIND_PROTOCOL` streams): the gateway admitted the
 * connection's first request and reads every head on it; the agent picks the route of the first
 * request's path, connects to its upstream, answers 200 with the paths that route serves
 * (`tether-bind-scope`), and relays bytes both ways until either side closes. A route that binds
 * per request (or the built-in router, whose routes carry per-request policy) refuses with 421, and
 * the gateway carries that connection's requests one by one. An HTTP/2 client connection
 * (`BIND_PROTOCOL_H2`) binds only to an `h2c://` route, an HTTP/1.1 one only to the others.
 *
 * `BoundStreams` remembers which route each bound stream took, so that a route removed or changed
 * by `Agent.setRoutes` closes its bound connections.
 */
import * as net from 'node:net';
import type { IncomingHttpHeaders, ServerHttp2Stream } from 'node:http2';
import * as http2 from 'node:http2';
import * as tls from 'node:tls';
import { TetherError } from '../common/errors.js';
import { BIND_PROTOCOL_H2, H_BIND_SCOPE } from '../gateway/tunnel/index.js';
import type { Route, RouteTable } from './routes.js';
import { fail, upstreamCode, upstreamTls, type StreamContext } from './stream-context.js';
import { splice } from './splice.js';

const { NGHTTP2_CANCEL } = http2.constants;

export class BoundStreams {
  private readonly byStream = new Map<ServerHttp2Stream, Route>();

  add(stream: ServerHttp2Stream, route: Route): void {
    this.byStream.set(stream, route);
    stream.once('close', () => this.byStream.delete(stream));
  }

  get size(): number {
    return this.byStream.size;
  }

  /** Close the bound streams whose route `routes` no longer holds; returns how many. */
  closeMissingFrom(routes: RouteTable): number {
    let closed = 0;
    for (const [stream, route] of this.byStream) {
      if (routes.has(route)) continue;
      closed++;
      if (!stream.closed) stream.close(NGHTTP2_CANCEL);
    }
    return closed;
  }
}

export function handleBindStream(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, ctx: StreamContext, setupDone: () => void): void {
  const path = headers[':path'] ?? '/';
  const route = ctx.routing ? null : ctx.routes.match(path);
  // HTTP/2 frames go to an upstream that speaks HTTP/2 (h2c), HTTP/1.1 bytes to one that does not.
  const h2 = headers[':protocol'] === BIND_PROTOCOL_H2;
  if (route === null || route.binding !== 'connection' || (route.kind === 'h2c') !== h2) {
    // Not an error: the gateway answers this connection per request (and a missing route there).
    stream.respond({ ':status': 421 }, { endStream: true });
    return;
  }
  const port = route.upstream.port === '' ? (route.kind === 'https' ? 443 : 80) : Number(route.upstream.port);
  const host = route.upstream.hostname.replace(/^\[|\]$/g, '');
  const socket =
    route.kind === 'https'
      ? tls.connect({ host, port, ALPNProtocols: ['http/1.1'], ...upstreamTls(route, ctx) })
      : net.connect({ host, port });
  socket.setNoDelay(true);
  let connected = false;
  const timer = setTimeout(() => socket.destroy(new TetherError('UPSTREAM_TIMEOUT', 'upstream connect timed out')), ctx.upstreamTimeoutMs);
  socket.once(route.kind === 'https' ? 'secureConnect' : 'connect', () => {
    clearTimeout(timer);
    setupDone();
    connected = true;
    if (stream.destroyed || stream.closed) return void socket.destroy();
    ctx.bound?.add(stream, route);
    stream.respond({ ':status': 200, [H_BIND_SCOPE]: JSON.stringify({ ...ctx.routes.scopeOf(route), timeoutMs: ctx.upstreamTimeoutMs }) });
    splice(stream, socket, { bytesToUpstream: ctx.metrics.boundToUpstream, bytesToGateway: ctx.metrics.boundToGateway });
  });
  socket.once('error', (reason: unknown) => {
    clearTimeout(timer);
    if (!connected) fail(stream, ctx, upstreamCode(reason), `connect to ${route.upstream.host} failed`);
  });
  stream.once('close', () => {
    clearTimeout(timer);
    if (!connected) socket.destroy();
  });
}
