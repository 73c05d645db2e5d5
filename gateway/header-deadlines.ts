/**
 * The time an HTTP/1.1 client connection gets to send a complete request head: from the moment it
 * opens, and again each time it has no request in progress. A client that trickles header bytes
 * (each byte resets a socket's idle timer) is answered 408 `HEADERS_TIMEOUT` and closed.
 *
 * Node's own `headersTimeout` only works for an `http.Server` that listens itself; the gateway's
 * servers are handed their sockets (TLS with ALPN, or the plain port's preface sniffing), so the
 * front door keeps these deadlines instead: one sweep timer, running only while there is a
 * deadline to watch.
 */
import type { Socket } from 'node:net';

interface SocketState {
  /** Requests whose head arrived and whose response has not finished. */
  active: number;
  /** When the next head must be complete (ms since epoch); Infinity while a request is active. */
  deadline: number;
}

export class HeaderDeadlines {
  private readonly states = new Map<Socket, SocketState>();
  private sweeper: NodeJS.Timeout | null = null;

  constructor(
    private readonly timeoutMs: number,
    private readonly onExpired: (socket: Socket) => void,
    private readonly now: () => number = Date.now,
  ) {}

  /** A connection opened: its first head is due within the timeout. */
  opened(socket: Socket): void {
    this.states.set(socket, { active: 0, deadline: this.now() + this.timeoutMs });
    this.startSweeper();
  }

  /** A request head arrived on `socket`. */
  requestStarted(socket: Socket): void {
    const state = this.states.get(socket);
    if (state === undefined) return;
    state.active++;
    state.deadline = Infinity;
  }

  /** A response finished: with nothing else in progress, the next head is due within the timeout. */
  requestFinished(socket: Socket): void {
    const state = this.states.get(socket);
    if (state === undefined) return;
    state.active = Math.max(0, state.active - 1);
    if (state.active === 0 && !socket.destroyed) state.deadline = this.now() + this.timeoutMs;
  }

  /** The socket closed or was taken over (WebSocket upgrade, CONNECT): no more deadlines. */
  forget(socket: Socket): void {
    this.states.delete(socket);
    if (this.states.size === 0) this.stopSweeper();
  }

  get size(): number {
    return this.states.size;
  }

  /** Check now (the sweep timer calls this; tests may too). */
  sweep(): void {
    const now = this.now();
    for (const [socket, state] of this.states) {
      if (state.deadline > now) continue;
      this.forget(socket);
      this.onExpired(socket);
    }
  }

  close(): void {
    this.states.clear();
    this.stopSweeper();
  }

  private startSweeper(): void {
    if (this.sweeper !== null) return;
    this.sweeper = setInterval(() => this.sweep(), Math.max(50, Math.min(1_000, this.timeoutMs / 4)));
    this.sweeper.unref();
  }

  private stopSweeper(): void {
    if (this.sweeper !== null) clearInterval(this.sweeper);
    this.sweeper = null;
  }
}
