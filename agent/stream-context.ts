/**
 * What every forwarder of a tunnel stream is handed (`StreamContext`), and how any of them gives
 * up on a stream (`fail`). The stream handler and the router's retrying forwarder both use these.
 */
import * as http2 from 'node:http2';
import type { ServerHttp2Stream } from 'node:http2';
import type { Logger } from '../common/log.js';
import { H_ERROR, statusOf } from '../gateway/tunnel/index.js';
import type { AgentMetrics } from './metrics.js';
import type { RouteTable } from './routes.js';
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
