/**
 * What every forwarder of a tunnel stream is handed (`StreamContext`), and how any of them gives
 * up on a stream (`fail`). The stream handler and the router's retrying forwarder both use these.
 */
import * as http2 from 'node:http2';
import * as net from 'node:net';
import * as tls from 'node:tls';
import type { ServerHttp2Stream } from 'node:http2';
import { TetherError, getErrorCode } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { H_ERROR, statusOf } from '../gateway/tunnel/index.js';
import type { AgentMetrics } from './metrics.js';
import type { BoundStreams } from './bound-stream.js';
import type { Route, RouteTable } from './routes.js';
import type { StreamRouting } from './router/stream-routing.js';
import type { UpstreamPools } from './upstreams.js';

const { NGHTTP2_INTERNAL_ERROR } = http2.constants;

export interface StreamContext {
  routes: RouteTable;
  pools: UpstreamPools;
  upstreamTimeoutMs: number;
  /** Trust bundle for `https://` upstreams. */
  upstreamCa?: string;
  metrics: AgentMetrics;
  logger: Logger;
  /** The built-in router (xDS); when set it replaces `routes` for HTTP and WebSocket streams. */
  routing?: StreamRouting | null;
  /** Bound connections by route (closed when `Agent.setRoutes` removes theirs). */
  bound?: BoundStreams;
}

/** Answer the stream with an error status and code, or reset it when a response already started. */
export function fail(stream: ServerHttp2Stream, ctx: StreamContext, code: string, message: string): void {
  ctx.metrics.upstreamErrors.inc({ code });
  if (stream.destroyed || stream.closed) return;
  // Whatever of the request body is still coming is read and dropped, so the stream can close
  // (a relay to a failed upstream may have paused it).
  stream.resume();
  if (stream.headersSent) {
    stream.close(NGHTTP2_INTERNAL_ERROR);
    return;
  }
  stream.respond({ ':status': statusOf(code), [H_ERROR]: code, 'content-type': 'text/plain; charset=utf-8' });
  stream.end(`${code}: ${message}\n`);
}

/** The tunnel code for a failure to reach or hear from an upstream. */
export function upstreamCode(reason: unknown): string {
  if (reason instanceof TetherError) return reason.code;
  const errno = getErrorCode(reason);
  if (errno === 'ECONNREFUSED' || errno === 'EHOSTUNREACH' || errno === 'ENETUNREACH' || errno === 'ENOTFOUND' || errno === 'EAI_AGAIN') return 'UPSTREAM_REFUSED';
  if (errno !== null && errno.startsWith('ERR_TLS')) return 'UPSTREAM_REFUSED';
  if (errno === 'ETIMEDOUT' || errno === 'UND_ERR_CONNECT_TIMEOUT') return 'UPSTREAM_TIMEOUT';
  return 'UPSTREAM_ERROR';
}

/**
 * TLS options for an `https://` upstream: verify against `upstreamCa` and the upstream URL's host
 * (the client's host travels in x-forwarded-host).
 */
export function upstreamTls(route: Route, ctx: StreamContext): Pick<tls.ConnectionOptions, 'rejectUnauthorized' | 'ca' | 'servername' | 'checkServerIdentity'> {
  const host = route.upstream.hostname.replace(/^\[|\]$/g, '');
  return {
    rejectUnauthorized: true,
    ...(ctx.upstreamCa === undefined ? {} : { ca: ctx.upstreamCa }),
    ...(net.isIP(host) === 0 ? { servername: host } : {}),
    checkServerIdentity: (_name, cert) => tls.checkServerIdentity(host, cert),
  };
}
