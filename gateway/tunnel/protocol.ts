/**
 * The tunnel's wire conventions, shared by the gateway and the agent (the agent imports only
 * `gateway/tunnel/`). The transport is HTTP/2 over an agent-dialed mutual TLS connection whose ALPN
 * is `tether-tunnel/1`; the gateway is the HTTP/2 client, the agent the HTTP/2 server.
 */
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http2';

export const TUNNEL_ALPN = 'tether-tunnel/1';

/** The control stream the gateway opens on every tunnel connection right after the handshake. */
export const CONTROL_PATH = '/.tether/control';

/** Headers the gateway sets and that clients can never send (every `tether-*` header is stripped). */
export const HEADER_PREFIX = 'tether-';
export const H_CLUSTER = 'tether-cluster';
export const H_SUBJECT = 'tether-subject';
export const H_ISSUER = 'tether-issuer';
export const H_IDENTITY = 'tether-identity';
export const H_CLIENT_ADDRESS = 'tether-client-address';
export const H_CLIENT_PROTOCOL = 'tether-client-protocol';
export const H_REQUEST_ID = 'tether-request-id';
export const H_ERROR = 'tether-error';
/** On a `CLUSTER_SOVEREIGN` answer: the mode that keeps the gateway out (`sovereign`). */
export const H_CLUSTER_MODE = 'tether-cluster-mode';
export const H_CONTROL = 'tether-control';

/**
 * Connection binding (README: connection binding): the gateway opens an extended CONNECT stream
 * with this `:protocol` for an HTTP/1.1 client connection whose first request it authorized; the
 * agent answers 200 with `tether-bind-scope` and relays the stream to one upstream connection, or
 * refuses (any other status) and the gateway carries the connection's requests one by one.
 */
export const BIND_PROTOCOL = 'tether-bind-h1';
/**
 * The same for an HTTP/2 client connection: the stream carries the client's HTTP/2 frames (its
 * header blocks re-encoded by the gateway) to an upstream that speaks HTTP/2 (an `h2c://` route).
 */
export const BIND_PROTOCOL_H2 = 'tether-bind-h2';
/** JSON `BindScope`: the request paths the bound upstream serves, and the path prefix it adds. */
export const H_BIND_SCOPE = 'tether-bind-scope';

export interface BindScope {
  /** Paths that start with `prefix` and with none of `exclude` reach the bound route. */
  prefix: string;
  exclude: string[];
  /** Prepended to every request-target (the route's upstream path). */
  base: string;
  /** The agent's upstream timeout: a response head later than this is answered 504 UPSTREAM_TIMEOUT. */
  timeoutMs?: number;
  /** The route forwards the client's `authorization` to the upstream (default: the gateway drops it). */
  forwardCredential?: boolean;
}

/** `path` is served by the bound route. */
export function inBindScope(scope: BindScope, path: string): boolean {
  if (!path.startsWith(scope.prefix)) return false;
  for (const other of scope.exclude) if (path.startsWith(other)) return false;
  return true;
}

export function parseBindScope(value: unknown): BindScope | null {
  if (typeof value !== 'string') return null;
  try {
    const parsed = JSON.parse(value) as Partial<BindScope>;
    if (typeof parsed.prefix !== 'string' || typeof parsed.base !== 'string' || !Array.isArray(parsed.exclude) || !parsed.exclude.every((e) => typeof e === 'string')) return null;
    if (!parsed.prefix.startsWith('/') || /[\s\x00-\x1f\x7f]/.test(parsed.base)) return null;
    const timeoutMs = typeof parsed.timeoutMs === 'number' && parsed.timeoutMs > 0 ? { timeoutMs: parsed.timeoutMs } : {};
    return { prefix: parsed.prefix, exclude: parsed.exclude, base: parsed.base, ...timeoutMs, forwardCredential: parsed.forwardCredential === true };
  } catch {
    return null;
  }
}

/** Hop-by-hop and connection-specific headers (RFC 9110 §7.6.1, RFC 9113 §8.2.2). */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'transfer-encoding',
  'upgrade',
  'te',
  'trailer',
  'http2-settings',
  'host',
]);

export interface HeaderFilterOptions {
  /** Drop every `tether-*` header (what the gateway does to client headers). */
  stripTether?: boolean;
  /** Drop `te` as well (responses, and requests to HTTP/1.1 upstreams); by default `te: trailers` is kept. */
  dropTe?: boolean;
  /**
   * Drop `authorization`: the client's credential, which the gateway consumed (the agent's routes
   * forward it only when they say so; README: the client's credential stays at the edge).
   */
  stripCredential?: boolean;
}

/**
 * Copy regular headers, dropping pseudo-headers, hop-by-hop headers, headers named by `Connection`,
 * and (optionally) `tether-*` headers. `te: trailers` is the one `te` value HTTP/2 allows; it is
 * kept. Copies into `into` when given (one object per request instead of two).
 */
export function filterHeaders(headers: IncomingHttpHeaders, options: HeaderFilterOptions = {}, into: OutgoingHttpHeaders = {}): OutgoingHttpHeaders {
  // Runs for every request and response on both ends: no Set unless `Connection` names headers,
  // no entry arrays, and never `delete` on the result (that turns it into a slow dictionary).
  let named: Set<string> | null = null;
  const connection = headers.connection;
  if (connection !== undefined) {
    named = new Set<string>();
    for (const value of Array.isArray(connection) ? connection : [connection]) {
      for (const token of value.split(',')) named.add(token.trim().toLowerCase());
    }
  }
  const stripTether = options.stripTether === true;
  const stripCredential = options.stripCredential === true;
  const out = into;
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined || name.charCodeAt(0) === 58 /* ':' */) continue;
    if (HOP_BY_HOP.has(name) || (named !== null && named.has(name))) continue;
    if (stripTether && name.startsWith(HEADER_PREFIX)) continue;
    if (stripCredential && name === 'authorization') continue;
    out[name] = value;
  }
  if (options.dropTe !== true) {
    const te = headers.te;
    if (typeof te === 'string' && /(^|,)\s*trailers\s*(;|,|$)/i.test(te)) out.te = 'trailers';
  }
  return out;
}

/** Headers of a response that must not be copied into an HTTP/2 response. */
export function filterResponseHeaders(headers: IncomingHttpHeaders): OutgoingHttpHeaders {
  return filterHeaders(headers, { dropTe: true });
}

/** Byte size of a header block as HTTP/2 counts it (name + value + 32 per field). */
export function headerListSize(headers: IncomingHttpHeaders): number {
  let size = 0;
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    for (const v of Array.isArray(value) ? value : [value]) size += name.length + String(v).length + 32;
  }
  return size;
}

/** HTTP/2 flow-control and limit settings used on both ends of a tunnel. */
export interface TunnelLimits {
  /** Per-stream receive window, bytes. */
  streamWindowBytes: number;
  /** Per-connection receive window, bytes; must exceed the stream window. */
  connectionWindowBytes: number;
  /** Concurrent streams the agent accepts per connection. */
  maxConcurrentStreams: number;
  /** Largest header block accepted, bytes. */
  maxHeaderListBytes: number;
  /** Node's per-session memory budget, MiB (outgoing buffers and header tables). */
  maxSessionMemoryMiB: number;
}

/** Header entries (pseudo-headers included) one tunnel stream carries; both ends refuse more. */
export const TUNNEL_HEADER_PAIRS = 256;

/**
 * Header fields a client request may carry into the tunnel: the gateway adds its own (the
 * pseudo-headers and seven `tether-*` fields), and the request must still fit `TUNNEL_HEADER_PAIRS`.
 */
export const CLIENT_HEADER_PAIRS = TUNNEL_HEADER_PAIRS - 16;

export const DEFAULT_TUNNEL_LIMITS: TunnelLimits = {
  streamWindowBytes: 4 * 1024 * 1024,
  connectionWindowBytes: 64 * 1024 * 1024,
  maxConcurrentStreams: 1000,
  maxHeaderListBytes: 64 * 1024,
  maxSessionMemoryMiB: 256,
};

/** HTTP/2 settings for one end of the tunnel. `server` = the agent. */
export function tunnelSettings(limits: TunnelLimits, server: boolean): import('node:http2').Settings {
  return {
    initialWindowSize: limits.streamWindowBytes,
    maxHeaderListSize: limits.maxHeaderListBytes * 2,
    maxFrameSize: 64 * 1024,
    enablePush: false,
    ...(server ? { maxConcurrentStreams: limits.maxConcurrentStreams, enableConnectProtocol: true } : {}),
  };
}
