/**
 * A `node:http` server that owns its sockets: `listen()` on a configured address (loopback by
 * default), `drain(graceMs)` stops accepting and lets in-flight requests finish (then cuts what is
 * left), `close()` cuts everything now.
 */
import { createServer } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Closable } from '../../common/lifecycle.js';

export type RequestHandler = (req: IncomingMessage, res: ServerResponse) => void;

export class OwnedHttpServer implements Closable {
  readonly server: Server;
  readonly #sockets = new Set<Socket>();
  #listening = false;

  /** `checkContinue` handles requests that carry `Expect: 100-continue` (default: 100 sent at once). */
  readonly #tls: boolean;

  constructor(handler: RequestHandler, checkContinue?: RequestHandler, options: { requestTimeoutMs?: number; tls?: { key: string; cert: string } } = {}) {
    // Node's default request timeout (5 min) would cut long uploads; headers keep their own timeout.
    const requestTimeout = options.requestTimeoutMs ?? 300_000;
    this.#tls = options.tls !== undefined;
    this.server = options.tls === undefined ? createServer({ requestTimeout }, handler) : createTlsServer({ requestTimeout, key: options.tls.key, cert: options.tls.cert, minVersion: 'TLSv1.2' }, handler);
    if (checkContinue !== undefined) this.server.on('checkContinue', checkContinue);
    this.server.on(this.#tls ? 'secureConnection' : 'connection', (socket: Socket) => {
      this.#sockets.add(socket);
      socket.once('close', () => this.#sockets.delete(socket));
    });
  }

  async listen(port = 0, host = '127.0.0.1'): Promise<AddressInfo> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    this.#listening = true;
    return this.address();
  }

  address(): AddressInfo {
    const address = this.server.address();
    if (address === null || typeof address === 'string') throw new Error('server is not listening on TCP');
    return address;
  }

  /** `http(s)://host:port` of the listening socket. */
  get url(): string {
    const { address, port, family } = this.address();
    return `${this.#tls ? 'https' : 'http'}://${family === 'IPv6' ? `[${address}]` : address}:${port}`;
  }

  #stopping: Promise<void> | null = null;

  /** Stop accepting; in-flight requests get `graceMs`, then their connections are cut. */
  drain(graceMs = 5_000): Promise<void> {
    this.#stopping ??= this.#stop(graceMs);
    return this.#stopping;
  }

  close(): Promise<void> {
    if (this.#stopping !== null) {
      for (const socket of this.#sockets) socket.destroy();
      return this.#stopping;
    }
    this.#stopping = this.#stop(0);
    return this.#stopping;
  }

  async #stop(graceMs: number): Promise<void> {
    if (!this.#listening) return;
    this.#listening = false;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeIdleConnections();
    let timer: NodeJS.Timeout | undefined;
    if (graceMs > 0) {
      await Promise.race([closed, new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs)))]);
      clearTimeout(timer);
    }
    for (const socket of this.#sockets) socket.destroy();
    await closed;
  }
}
