/**
 * The agent's static route table: path prefix → upstream URL (longest prefix wins), plus the TCP
 * targets a CONNECT may reach. The xDS-driven router replaces this table in a later issue.
 */
import { TetherError } from '../common/errors.js';

export type UpstreamKind = 'http1' | 'https' | 'h2c';

/**
 * `connection`: an HTTP/1.1 client connection whose first request takes this route may be bound
 * to one upstream connection (README: connection binding); `request`: every request is carried
 * and forwarded on its own (per-request policy, per-request metrics at the agent).
 */
export type RouteBinding = 'connection' | 'request';

export interface Route {
  prefix: string;
  upstream: URL;
  kind: UpstreamKind;
  binding: RouteBinding;
  /** Send the client's `authorization` on to the upstream (default false: it stays at the edge). */
  forwardCredential: boolean;
}

export interface RouteConfig {
  /** Path prefix, e.g. `/api/`; `/` is the default route. */
  prefix: string;
  /** `http://host:port` (HTTP/1.1, keep-alive pool), `https://…` (ALPN decides h2 or HTTP/1.1), `h2c://host:port` (HTTP/2 prior knowledge, gRPC). */
  upstream: string;
  /** Default `connection`. An `h2c://` route binds HTTP/2 client connections; HTTP/1.1 clients reach it per request. */
  binding?: RouteBinding;
  /** Forward the client's `authorization` header to the upstream (default false). */
  forwardCredential?: boolean;
}

export const INVALID_ROUTE = 'INVALID_ROUTE';

export class RouteTable {
  private readonly routes: Route[];
  private readonly tcpTargets: Set<string>;

  constructor(routes: RouteConfig[], tcpTargets: string[] = []) {
    this.routes = routes
      .map((r) => {
        let url: URL;
        try {
          url = new URL(r.upstream);
        } catch {
          throw new TetherError(INVALID_ROUTE, `route ${r.prefix}: bad upstream URL ${r.upstream}`);
        }
        const kind = kindOf(url);
        if (kind === null) throw new TetherError(INVALID_ROUTE, `route ${r.prefix}: unsupported scheme ${url.protocol}`);
        const binding: RouteBinding = r.binding ?? 'connection';
        return { prefix: r.prefix, upstream: url, kind, binding, forwardCredential: r.forwardCredential === true };
      })
      .sort((a, b) => b.prefix.length - a.prefix.length);
    this.tcpTargets = new Set(tcpTargets.map((t) => t.toLowerCase()));
  }

  match(path: string): Route | null {
    for (const route of this.routes) if (path.startsWith(route.prefix)) return route;
    return null;
  }

  /** Whether this table holds a route equal to `route` (same prefix, upstream and binding). */
  has(route: Route): boolean {
    return this.routes.some((r) => r.prefix === route.prefix && r.upstream.href === route.upstream.href && r.binding === route.binding && r.forwardCredential === route.forwardCredential);
  }

  /**
   * The paths a connection bound through `route` may carry: its prefix, less the longer prefixes
   * of other routes inside it (longest prefix wins, so those paths belong to them).
   */
  scopeOf(route: Route): { prefix: string; exclude: string[]; base: string; forwardCredential: boolean } {
    const exclude = this.routes.filter((r) => r !== route && r.prefix.length > route.prefix.length && r.prefix.startsWith(route.prefix)).map((r) => r.prefix);
    return { prefix: route.prefix, exclude, base: route.upstream.pathname.replace(/\/$/, ''), forwardCredential: route.forwardCredential };
  }

  /** Whether a CONNECT to `authority` (`host:port`) is allowed. */
  allowsTcp(authority: string): boolean {
    return this.tcpTargets.has(authority.toLowerCase());
  }
}

function kindOf(url: URL): UpstreamKind | null {
  switch (url.protocol) {
    case 'http:':
      return 'http1';
    case 'https:':
      return 'https';
    case 'h2c:':
      return 'h2c';
    default:
      return null;
  }
}
