/**
 * The agent's static route table: path prefix → upstream URL (longest prefix wins), plus the TCP
 * targets a CONNECT may reach. The xDS-driven router replaces this table in a later issue.
 */
import { TetherError } from '../common/errors.js';

export type UpstreamKind = 'http1' | 'https' | 'h2c';

export interface Route {
  prefix: string;
  upstream: URL;
  kind: UpstreamKind;
}

export interface RouteConfig {
  /** Path prefix, e.g. `/api/`; `/` is the default route. */
  prefix: string;
  /** `http://host:port` (HTTP/1.1, keep-alive pool), `https://…` (ALPN decides h2 or HTTP/1.1), `h2c://host:port` (HTTP/2 prior knowledge, gRPC). */
  upstream: string;
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
        return { prefix: r.prefix, upstream: url, kind };
      })
      .sort((a, b) => b.prefix.length - a.prefix.length);
    this.tcpTargets = new Set(tcpTargets.map((t) => t.toLowerCase()));
  }

  match(path: string): Route | null {
    for (const route of this.routes) if (path.startsWith(route.prefix)) return route;
    return null;
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
