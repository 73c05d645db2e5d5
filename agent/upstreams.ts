/**
 * Connection pools to upstreams: an undici pool per plain `http://` origin (requests), an HTTP/1.1
 * keep-alive agent (WebSocket upgrades and requests undici will not send), cached h2c sessions per
 * origin, and http2-wrapper's ALPN-deciding client for `https://` upstreams.
 */
import * as http from 'node:http';
import * as http2 from 'node:http2';
import { type ClientHttp2Session } from 'node:http2';
import { Pool } from 'undici';
import type { Closable } from '../common/lifecycle.js';
import { once } from '../common/lifecycle.js';

export class UpstreamPools implements Closable {
  readonly http1 = new http.Agent({ keepAlive: true, maxSockets: 512, maxFreeSockets: 64, scheduling: 'lifo' });
  private readonly h2c = new Map<string, ClientHttp2Session>();
  private readonly pools = new Map<string, Pool>();
  private closed = false;

  /** The undici pool for a plain `http://host:port` origin, created on first use. */
  http1Pool(origin: string): Pool {
    let pool = this.pools.get(origin);
    if (pool === undefined) {
      // The agent's own timer bounds the response head (upstreamTimeoutMs); bodies may stream for
      // as long as they flow (SSE, long polls), so undici's own timeouts are off.
      pool = new Pool(origin, { connections: 512, pipelining: 1, headersTimeout: 0, bodyTimeout: 0, keepAliveTimeout: 4_000 });
      this.pools.set(origin, pool);
    }
    return pool;
  }

  constructor(private readonly streamWindowBytes: number) {}

  /** An open h2c session to `origin` (`http://host:port`), created on first use. */
  h2cSession(origin: string): ClientHttp2Session {
    const existing = this.h2c.get(origin);
    if (existing !== undefined && !existing.closed && !existing.destroyed) return existing;
    const session = http2.connect(origin, {
      settings: { initialWindowSize: this.streamWindowBytes, enablePush: false },
    });
    session.on('connect', () => session.setLocalWindowSize(this.streamWindowBytes * 4));
    session.on('error', () => {
      // Per-request errors surface on the request's stream; the session is dropped below.
    });
    const drop = (): void => {
      if (this.h2c.get(origin) === session) this.h2c.delete(origin);
    };
    session.on('close', drop);
    session.on('goaway', drop);
    // An idle upstream session must not keep the process alive.
    session.unref();
    this.h2c.set(origin, session);
    return session;
  }

  readonly drain = once(async (): Promise<void> => {
    await this.shutdown(false);
  });

  readonly close = once(async (): Promise<void> => {
    await this.shutdown(true);
  });

  private async shutdown(force: boolean): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.http1.destroy();
    const waits: Promise<void>[] = [];
    for (const pool of this.pools.values()) waits.push(force ? pool.destroy() : pool.close());
    this.pools.clear();
    for (const session of this.h2c.values()) {
      waits.push(new Promise<void>((resolve) => {
        if (session.destroyed) return resolve();
        session.once('close', () => resolve());
        if (force) session.destroy();
        else session.close();
      }));
    }
    this.h2c.clear();
    await Promise.all(waits);
  }
}
