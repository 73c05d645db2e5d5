/**
 * The tiny HTTP server each process exposes for operators: `/metrics` (Prometheus text from the
 * component's own registry), `/healthz` (the process is alive) and `/readyz` (the component is
 * ready: a live tunnel, a live control stream, …, with details as JSON). It binds to a configured
 * local address only (DESIGN I1: never an address reachable from outside the cluster by default).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Registry } from 'prom-client';
import type { Closable } from './lifecycle.js';
import { once } from './lifecycle.js';

export interface Readiness {
  ready: boolean;
  /** Anything useful to an operator: counts, states, reasons. */
  details?: Record<string, unknown>;
}

export interface AdminServerOptions {
  registry: Registry;
  /** Called on every `/readyz`. Default: always ready. */
  readiness?: () => Readiness;
  host?: string;
  /** 0 picks a free port. */
  port?: number;
}

export class AdminServer implements Closable {
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private readonly options: AdminServerOptions;
  private listening = false;

  constructor(options: AdminServerOptions) {
    this.options = options;
    this.server = createServer((req, res) => {
      this.handle(req, res).catch((reason: unknown) => {
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(`internal error: ${String(reason)}\n`);
      });
    });
    this.server.on('connection', (socket: Socket) => {
      this.sockets.add(socket);
      socket.once('close', () => this.sockets.delete(socket));
    });
  }

  async listen(): Promise<AddressInfo> {
    const { host = '127.0.0.1', port = 0 } = this.options;
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    this.listening = true;
    return this.address();
  }

  address(): AddressInfo {
    const address = this.server.address();
    if (address === null || typeof address === 'string') throw new Error('admin server is not listening');
    return address;
  }

  get url(): string {
    const { address, port } = this.address();
    return `http://${address.includes(':') ? `[${address}]` : address}:${port}`;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    switch (path) {
      case '/metrics': {
        const body = await this.options.registry.metrics();
        res.writeHead(200, { 'content-type': this.options.registry.contentType }).end(body);
        return;
      }
      case '/healthz':
        res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
        return;
      case '/readyz': {
        const state = this.options.readiness?.() ?? { ready: true };
        res
          .writeHead(state.ready ? 200 : 503, { 'content-type': 'application/json' })
          .end(`${JSON.stringify({ ready: state.ready, ...state.details })}\n`);
        return;
      }
      default:
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    }
  }

  /** Stop accepting; let open scrapes finish (they are short), then close idle keep-alives. */
  readonly drain = once(async (): Promise<void> => {
    await this.stop(false);
  });

  readonly close = once(async (): Promise<void> => {
    await this.stop(true);
  });

  private async stop(force: boolean): Promise<void> {
    if (!this.listening) return;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeIdleConnections();
    if (force) for (const socket of this.sockets) socket.destroy();
    await closed;
    this.listening = false;
  }
}
