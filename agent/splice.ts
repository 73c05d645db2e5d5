/** Joining a tunnel stream and an upstream socket (CONNECT, WebSocket, bound connections). */
import type { Duplex } from 'node:stream';
import { relay } from '../gateway/tunnel/index.js';
import type { AgentMetrics } from './metrics.js';

/**
 * Pipe a tunnel stream `a` and an upstream socket `b` into each other, counting both directions.
 * An error on either, or the tunnel stream closing, tears down both. The upstream closing cleanly
 * (it sent its last bytes, e.g. a response with `connection: close`) tears down both only once
 * the tunnel stream has written all of them: destroying the stream earlier discarded whatever
 * was still queued in it, and the client got a cut response.
 */
export function splice(a: Duplex, b: Duplex, counters: Pick<AgentMetrics, 'bytesToUpstream' | 'bytesToGateway'>): void {
  let done = false;
  const teardown = (): void => {
    if (done) return;
    done = true;
    a.destroy();
    b.destroy();
  };
  a.on('error', teardown);
  b.on('error', teardown);
  a.on('close', teardown);
  b.on('close', () => {
    if (done) return;
    if (a.writableFinished || a.destroyed || !b.readableEnded) teardown();
    else a.once('finish', teardown);
  });
  relay(a, b, counters.bytesToUpstream);
  relay(b, a, counters.bytesToGateway);
}
