/**
 * The seam between the tunnel agent's stream handler and the built-in router: per tunnelled
 * request (its HTTP/2 headers), the `Route` the handler's forwarders already understand
 * (agent/routes.ts: upstream URL + kind), the headers to forward (`:path` rewritten by the
 * route), the timeout and the retry decision. Refusals come with the handler's error codes.
 */
import type { IncomingHttpHeaders } from 'node:http2';
import type { Route, UpstreamKind } from '../routes.js';
import type { RetrySpec } from './compile.js';
import type { RouteFailure, Router } from './router.js';

/** Error codes for refusals (the stream handler's `fail(stream, ctx, code, message)`). */
export const ROUTER_ERROR: Record<RouteFailure, string> = {
  NOT_READY: 'ROUTER_NOT_READY',
  NO_ROUTE: 'NO_ROUTE',
  NO_CLUSTER: 'NO_UPSTREAM',
  NO_HEALTHY_UPSTREAM: 'NO_UPSTREAM',
};

export interface StreamRoute {
  ok: true;
  /** For the forwarders: `upstream` is the endpoint's origin (no base path), `kind` its protocol. */
  route: Route;
  /** The request headers with `:path` set to the path to send upstream. */
  headers: IncomingHttpHeaders;
  cluster: string;
  /** The route's timeout, else undefined (use the agent's upstreamTimeoutMs). */
  timeoutMs?: number;
  /** Present when the method is idempotent and the route has a retry policy. */
  retry?: RetrySpec;
  /** The next endpoint of the cluster as a Route, for a retry; null when none is left. */
  next(): Route | null;
}

export type StreamRouteResult = StreamRoute | { ok: false; code: string; message: string };

function kindOf(url: URL): UpstreamKind {
  if (url.protocol === 'h2c:') return 'h2c';
  if (url.protocol === 'https:') return 'https';
  return 'http1';
}

function asRoute(url: URL): Route {
  // Routed per request by the router (xDS routes carry per-request policy): never bound.
  return { prefix: '/', upstream: url, kind: kindOf(url), binding: 'request', forwardCredential: false };
}

export class StreamRouting {
  constructor(readonly router: Router) {}

  /** Route one tunnelled request by its HTTP/2 request headers. */
  decide(headers: IncomingHttpHeaders): StreamRouteResult {
    const resolution = this.router.resolve({
      method: headers[':method'] ?? 'GET',
      path: headers[':path'] ?? '/',
      authority: headers[':authority'] ?? (typeof headers.host === 'string' ? headers.host : ''),
      headers,
    });
    if (!resolution.ok) return { ok: false, code: ROUTER_ERROR[resolution.reason], message: resolution.message };
    const d = resolution.decision;
    return {
      ok: true,
      route: asRoute(d.upstream),
      headers: d.path === headers[':path'] ? headers : { ...headers, ':path': d.path },
      cluster: d.cluster,
      ...(d.timeoutMs === undefined ? {} : { timeoutMs: d.timeoutMs }),
      ...(d.retry === undefined ? {} : { retry: d.retry }),
      next: () => {
        const url = d.next();
        return url === null ? null : asRoute(url);
      },
    };
  }
}
