/**
 * The gateway's client port: TLS with ALPN choosing `h2`, `http/1.1` or `tether-tunnel/1`
 * (agents), and optionally a cleartext port for local use where the connection preface decides
 * between h2c (prior knowledge) and HTTP/1.1. The HTTP servers below never listen themselves; this
 * class hands them the sockets.
 *
 * With `agentListen` set, agents get a TLS port of their own (ALPN `tether-tunnel/1` only) and the
 * client port stops asking for client certificates: Node cannot ask for one by ALPN, and a browser
 * asked for a certificate prompts its user when any is installed.
 */
import * as http from 'node:http';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import type { AddressInfo, Socket } from 'node:net';
import * as tls from 'node:tls';
import type { TLSSocket } from 'node:tls';
import type { Logger } from '../common/log.js';
import { sessionErrorReason, type GatewayMetrics } from './metrics.js';
import type { GatewayConfig } from './options.js';
import { BoundConnection, type BindingContext } from './binding/bound-connection.js';
import { H2BoundConnection } from './binding/h2-bound-connection.js';
import type { Bindings } from './binding/bindings.js';
import { HeaderDeadlines } from './header-deadlines.js';
import { httpReason, type ClientProxy } from './proxy.js';
import type { TunnelRegistry } from './tunnel-registry.js';
import { CLIENT_HEADER_PAIRS, H_ERROR, TUNNEL_ALPN, statusOf } from './tunnel/index.js';

export interface ServerTls {
  key: string;
  cert: string;
  /** Trust bundle for agents' client certificates. */
  ca: string;
}

export class FrontDoor {
  private readonly h1: http.Server;
  private readonly h2: http2.Http2Server;
  private readonly tlsServer: tls.Server;
  /** The agents' own port, when `agentListen` is set. */
  private readonly agentServer: tls.Server | null = null;
  private plainServer: net.Server | null = null;
  private readonly sockets = new Set<Socket>();
  /**
   * HTTP/1.1 client connections (TLS and plain) until they close. Node's own connection tracking
   * (`closeIdleConnections`, `closeAllConnections`, headers/request timeouts) only starts when an
   * http.Server listens, and this one never does, so the front door counts them itself.
   */
  private readonly h1Sockets = new Set<Socket>();
  /**
   * Per-request HTTP/1.1 answers still being written, by connection; `refused` once the parser
   * refused what the client sent after their requests (see `clientError`).
   */
  private readonly answering = new Map<Socket, { open: number; refused: boolean; req: http.IncomingMessage; res: http.ServerResponse }>();
  /** Node's headersTimeout needs a listening server; these deadlines stand in for it (slow-header clients). */
  private readonly headerDeadlines: HeaderDeadlines;
  private draining = false;
  private readonly sessions = new Set<http2.ServerHttp2Session>();
  private readonly listening = new Set<net.Server>();
  /** Per client session: open streams, when the last one closed, when an unanswered PING went out. */
  private readonly activity = new Map<http2.Http2Session, { open: number; last: number; pinged: number | null }>();
  private reaper: NodeJS.Timeout | null = null;
  /** Binding mode's view of the gateway (null in per-request mode). */
  private readonly binding: BindingContext | null;

  constructor(
    private readonly config: GatewayConfig,
    serverTls: ServerTls,
    proxy: ClientProxy,
    private readonly metrics: GatewayMetrics,
    private readonly logger: Logger,
    onTunnel: (socket: TLSSocket) => void,
    tunnels: TunnelRegistry,
    bindings: Bindings,
  ) {
    const limits = config.limits;
    // requireHostHeader: the Host check is ours (requestProblem), answered with a tether-error code.
    this.h1 = http.createServer({ maxHeaderSize: limits.maxClientHeaderBytes, requestTimeout: 0, headersTimeout: config.clientHeadersTimeoutMs, keepAliveTimeout: config.clientKeepAliveTimeoutMs, requireHostHeader: false });
    this.headerDeadlines = new HeaderDeadlines(config.clientHeadersTimeoutMs, (socket) => this.headersTimedOut(socket));
    const deadlines = this.headerDeadlines;
    this.binding =
      config.binding === 'connection'
        ? {
            config,
            tunnels,
            proxy,
            metrics,
            logger,
            deadlines,
            toPerRequest: (socket, bytes) => this.toPerRequest(socket, bytes),
            toPerRequestH2: (socket, bytes) => this.toPerRequestH2(socket, bytes),
            draining: () => this.draining,
            track: (connection) => bindings.add(connection),
            untrack: (connection) => bindings.delete(connection),
          }
        : null;
    const onRequest = (req: http.IncomingMessage, res: http.ServerResponse): void => {
      // A request that reaches a draining gateway on an open connection is served (its tunnels
      // stay up while client connections are open), and its connection closes after the response.
      if (this.draining) res.setHeader('connection', 'close');
      const socket = req.socket;
      deadlines.requestStarted(socket);
      res.once('finish', () => deadlines.requestFinished(socket));
      const answering = this.answering.get(socket) ?? { open: 0, refused: false, req, res };
      answering.open++;
      answering.req = req;
      answering.res = res;
      this.answering.set(socket, answering);
      res.once('close', () => {
        if (--answering.open > 0) return;
        this.answering.delete(socket);
        if (answering.refused) socket.end();
      });
      const problem = requestProblem(req);
      if (problem !== null) {
        this.metrics.errors.inc({ code: problem.code });
        const body = `${problem.code}: ${problem.message}\n`;
        res.writeHead(statusOf(problem.code), { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(body), [H_ERROR]: problem.code, connection: 'close' });
        res.end(body);
        return;
      }
      proxy.handleHttp1(req, res);
    };
    this.h1.on('request', onRequest);
    // An Expect other than 100-continue goes to the upstream, which decides (as on a bound
    // connection); Node would answer it 417 itself, without a tether-error code.
    this.h1.on('checkExpectation', onRequest);
    this.h1.on('upgrade', (req, socket: Socket, head: Buffer) => {
      deadlines.forget(socket);
      const problem = requestProblem(req);
      if (problem !== null) this.refuseTaken(socket, problem);
      else proxy.handleHttp1Upgrade(req, socket, head);
    });
    this.h1.on('connect', (req, socket: Socket, head: Buffer) => {
      deadlines.forget(socket);
      const problem = requestProblem(req);
      if (problem !== null) this.refuseTaken(socket, problem);
      else proxy.handleHttp1Connect(req, socket, head);
    });
    this.h1.on('clientError', (error: Error & { code?: string }, socket: Socket) => this.clientError(error, socket));

    this.h2 = http2.createServer({
      settings: {
        enableConnectProtocol: true,
        maxConcurrentStreams: limits.maxClientStreams,
        initialWindowSize: limits.streamWindowBytes,
        maxHeaderListSize: limits.maxClientHeaderBytes * 2,
      },
      maxSessionMemory: limits.maxSessionMemoryMiB,
      // Fewer than the tunnel takes: the gateway's own fields must fit beside them (Node resets a
      // stream over it with ENHANCE_YOUR_CALM; the tunnel's refusal answered 502 TUNNEL_STREAM_RESET).
      maxHeaderListPairs: CLIENT_HEADER_PAIRS,
    });
    this.h2.on('session', (session: http2.ServerHttp2Session) => {
      this.sessions.add(session);
      this.activity.set(session, { open: 0, last: Date.now(), pinged: null });
      this.startReaper();
      session.once('close', () => {
        this.sessions.delete(session);
        this.activity.delete(session);
      });
      session.on('error', (reason: unknown) => {
        logger.debug({ err: reason }, 'client HTTP/2 session error');
        const label = sessionErrorReason(reason);
        if (label !== null) metrics.sessionErrors.inc({ peer: 'client', reason: label });
        session.destroy();
      });
      session.once('connect', () => session.setLocalWindowSize(limits.connectionWindowBytes));
    });
    this.h2.on('stream', (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, flags: number) => {
      const session = stream.session;
      if (session !== undefined) {
        const activity = this.activity.get(session);
        if (activity !== undefined) {
          activity.open++;
          stream.once('close', () => {
            activity.open--;
            activity.last = Date.now();
          });
        }
      }
      proxy.handleHttp2(stream, headers, flags);
    });

    const agentsApart = config.agentListen !== undefined;
    const tunnel = (socket: TLSSocket): void => {
      if (socket.getProtocol() !== 'TLSv1.3') {
        socket.destroy();
        return;
      }
      onTunnel(socket);
    };
    // Peer certificates are checked by the tunnel acceptor (with our own codes), not by OpenSSL.
    const common = { key: serverTls.key, cert: serverTls.cert, ca: serverTls.ca, rejectUnauthorized: false, handshakeTimeout: 10_000, noDelay: true };
    this.tlsServer = tls.createServer({
      ...common,
      requestCert: !agentsApart,
      ALPNProtocols: agentsApart ? ['h2', 'http/1.1'] : ['h2', 'http/1.1', TUNNEL_ALPN],
    });
    // Track raw connections, so that close() also ends those still in the TLS handshake.
    this.tlsServer.on('connection', (socket: Socket) => this.track(socket));
    this.tlsServer.on('secureConnection', (socket: TLSSocket) => {
      this.track(socket);
      socket.on('error', () => undefined);
      if (socket.alpnProtocol === TUNNEL_ALPN) tunnel(socket);
      else if (socket.alpnProtocol === 'h2') this.toHttp2(socket);
      else this.toHttp1(socket);
    });
    this.tlsServer.on('tlsClientError', (reason: unknown) => logger.debug({ err: reason }, 'TLS handshake failed'));
    if (agentsApart) {
      const agents = (this.agentServer = tls.createServer({ ...common, requestCert: true, minVersion: 'TLSv1.3', ALPNProtocols: [TUNNEL_ALPN] }));
      agents.on('connection', (socket: Socket) => this.track(socket));
      agents.on('secureConnection', (socket: TLSSocket) => {
        this.track(socket);
        socket.on('error', () => undefined);
        // A client without the tunnel ALPN gets no protocol here (OpenSSL refuses the handshake
        // with no_application_protocol only when the client offered ALPN at all).
        if (socket.alpnProtocol !== TUNNEL_ALPN) socket.destroy();
        else tunnel(socket);
      });
      agents.on('tlsClientError', (reason: unknown) => logger.debug({ err: reason }, 'agent TLS handshake failed'));
    }
  }

  /**
   * Closes client HTTP/2 sessions without open streams for `clientIdleTimeoutMs`, and sessions
   * that leave a PING unanswered for `pingTimeoutMs`. nghttp2 ends a session on a connection error
   * (a malformed frame, rapid reset) with GOAWAY and stops reading it, and Node neither closes it
   * nor says so: its open streams (and their tunnel streams) would wait forever, and the client's
   * close would go unnoticed. Such a session never sends the PING. One timer per gateway (Node's
   * per-session `setTimeout` stays armed after destroy).
   */
  private startReaper(): void {
    if (this.reaper !== null) return;
    const idleMs = this.config.clientIdleTimeoutMs;
    const pingTimeoutMs = this.config.pingTimeoutMs;
    this.reaper = setInterval(() => {
      const now = Date.now();
      for (const [session, state] of this.activity) {
        if (state.pinged !== null && now - state.pinged >= pingTimeoutMs) {
          this.metrics.sessionErrors.inc({ peer: 'client', reason: 'unresponsive' });
          session.destroy();
          continue;
        }
        if (state.open === 0 && now - state.last >= idleMs) {
          session.destroy();
          continue;
        }
        if (state.pinged !== null || session.closed || session.destroyed) continue;
        state.pinged = now;
        try {
          session.ping(() => {
            state.pinged = null;
          });
        } catch {
          session.destroy();
        }
      }
      if (this.sessions.size === 0) this.stopReaper();
    }, Math.max(50, Math.min(idleMs / 2, 5_000)));
    this.reaper.unref();
  }

  private stopReaper(): void {
    if (this.reaper !== null) clearInterval(this.reaper);
    this.reaper = null;
  }

  /**
   * An HTTP/1.1 client connection: counted, and its first head is due. In binding mode it starts
   * as a `BoundConnection`, which hands it to the per-request server when binding cannot carry it.
   */
  private toHttp1(socket: Socket): void {
    this.h1Sockets.add(socket);
    this.headerDeadlines.opened(socket);
    if (this.binding !== null) new BoundConnection(socket, this.binding);
    else this.h1.emit('connection', socket);
  }

  /** An HTTP/2 client connection: bound in binding mode (h2-bound-connection.ts), else per request. */
  private toHttp2(socket: Socket): void {
    if (this.binding === null) {
      this.h2.emit('connection', socket);
      return;
    }
    new H2BoundConnection(socket, this.binding);
    socket.resume();
  }

  /** The per-request HTTP/2 server takes over `socket`, reading `bytes` (already received) first. */
  private toPerRequestH2(socket: Socket, bytes: Buffer): void {
    if (socket.destroyed) return;
    socket.pause();
    if (bytes.length > 0) socket.unshift(bytes);
    this.h2.emit('connection', socket);
  }

  /** The per-request HTTP/1.1 server takes over `socket`, reading `bytes` (already received) first. */
  private toPerRequest(socket: Socket, bytes: Buffer): void {
    if (socket.destroyed) return;
    socket.pause();
    if (bytes.length > 0) socket.unshift(bytes);
    this.headerDeadlines.opened(socket);
    this.h1.emit('connection', socket);
    socket.resume();
  }

  private track(socket: Socket): void {
    this.sockets.add(socket);
    socket.once('close', () => {
      this.sockets.delete(socket);
      this.h1Sockets.delete(socket);
      this.headerDeadlines.forget(socket);
    });
  }

  /** A client that did not complete a request head in time: 408, then the connection closes. */
  private headersTimedOut(socket: Socket): void {
    if (socket.destroyed || !socket.writable) {
      socket.destroy();
      return;
    }
    // The client may never read or close: once the answer is flushed, the socket goes.
    this.endWithError(socket, 'HEADERS_TIMEOUT', `no complete request head within ${this.config.clientHeadersTimeoutMs} ms`, () => socket.destroy());
  }

  private clientError(error: Error & { code?: string }, socket: Socket): void {
    const code = error.code === 'HPE_HEADER_OVERFLOW' ? 'HEADERS_TOO_LARGE' : 'BAD_REQUEST';
    if (error.code === 'ECONNRESET' || !socket.writable) {
      socket.destroy();
      return;
    }
    const answering = this.answering.get(socket);
    if (answering !== undefined && answering.req.complete) {
      // The refused bytes follow requests whose answers are still on their way: a 400 written now
      // would go out before them (the client takes it for its answer) or after a body delimited
      // by the close (the client reads it as more body). They complete; then the connection closes.
      this.metrics.errors.inc({ code });
      answering.refused = true;
      return;
    }
    if (answering !== undefined && (answering.open > 1 || answering.res.headersSent)) {
      // The refused bytes are the body of a request whose answer (or one before it) is being written.
      this.metrics.errors.inc({ code });
      socket.destroy();
      return;
    }
    // Nothing is being answered, or the refused bytes are the body of the request whose answer
    // has not started: the 400 is that answer.
    this.endWithError(socket, code, error.message);
  }

  /**
   * Refuse an upgrade or CONNECT on the socket the HTTP/1.1 parser gave up. Nothing reads that
   * socket any more: what the client still sends would sit unread and its close would never be
   * seen, so the connection would stay open for good. It reads on, dropping what comes.
   */
  private refuseTaken(socket: Socket, problem: { code: string; message: string }): void {
    this.endWithError(socket, problem.code, problem.message);
    socket.resume();
  }

  /** Answer on a raw HTTP/1.1 socket with the code's status and `tether-error`, count it, close. */
  private endWithError(socket: Socket, code: string, message: string, then?: () => void): void {
    this.metrics.errors.inc({ code });
    const body = `${code}: ${message}\n`;
    const head = `HTTP/1.1 ${statusOf(code)} ${httpReason(statusOf(code))}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\n${H_ERROR}: ${code}\r\nconnection: close\r\n\r\n`;
    socket.end(`${head}${body}`, then);
  }

  /** Renewed server certificate or trust bundle: applies to new connections. */
  updateTls(serverTls: ServerTls): void {
    this.tlsServer.setSecureContext({ key: serverTls.key, cert: serverTls.cert, ca: serverTls.ca });
    this.agentServer?.setSecureContext({ key: serverTls.key, cert: serverTls.cert, ca: serverTls.ca });
  }

  async listen(): Promise<{ tls: AddressInfo; plain: AddressInfo | null; agents: AddressInfo | null }> {
    const tlsAddress = await listenOn(this.tlsServer, this.config.listen.host, this.config.listen.port);
    this.listening.add(this.tlsServer);
    let agents: AddressInfo | null = null;
    if (this.agentServer !== null && this.config.agentListen !== undefined) {
      agents = await listenOn(this.agentServer, this.config.agentListen.host, this.config.agentListen.port);
      this.listening.add(this.agentServer);
    }
    let plain: AddressInfo | null = null;
    if (this.config.plainListen !== undefined) {
      // noDelay: the HTTP servers get these sockets by 'connection' events, so their own
      // TCP_NODELAY default never applies; without it small responses wait on delayed ACKs.
      const server = net.createServer({ noDelay: true }, (socket) => {
        this.track(socket);
        socket.on('error', () => undefined);
        socket.once('data', (chunk: Buffer) => {
          socket.pause();
          socket.unshift(chunk);
          if (chunk.subarray(0, 4).toString('latin1') === 'PRI ') {
            // The HTTP/2 session consumes the socket's handle and first feeds itself what is
            // already buffered (the unshifted preface), so the raw socket goes in: no wrapper
            // stream, and TCP_NODELAY (set at accept) applies to its writes.
            this.toHttp2(socket);
            return;
          }
          this.toHttp1(socket);
          socket.resume();
        });
      });
      this.plainServer = server;
      plain = await listenOn(server, this.config.plainListen.host, this.config.plainListen.port);
      this.listening.add(server);
    }
    return { tls: tlsAddress, plain, agents };
  }

  /**
   * Stop accepting connections; GOAWAY client HTTP/2 sessions; HTTP/1.1 responses from now on say
   * `Connection: close`. Open HTTP/1.1 connections are not closed here: a request may already be on
   * its way on one (a keep-alive client sent it just before the drain began; it got 503 NO_TUNNEL
   * once the drain had closed the tunnels). They close after their next response, when the client
   * closes them, or at `keepAliveTimeout`; the drain waits for them (see `keepAliveTimeoutMs`).
   */
  stopAccepting(): Promise<void> {
    this.draining = true;
    const closed = [...this.listening].map((server) => new Promise<void>((resolve) => server.close(() => resolve())));
    this.listening.clear();
    for (const session of this.sessions) session.close();
    return Promise.all(closed).then(() => undefined);
  }

  /**
   * How long an idle HTTP/1.1 connection stays open. A request sent on one before a drain began
   * arrives well within it; after it the connection would have been closed anyway.
   */
  get keepAliveTimeoutMs(): number {
    return this.h1.keepAliveTimeout;
  }

  /** Client connections still open that may carry a request: HTTP/2 sessions and HTTP/1.1 connections (tunnels excluded). */
  get openClientConnections(): number {
    return this.sessions.size + this.h1Sockets.size;
  }

  destroyAll(): void {
    for (const session of this.sessions) session.destroy();
    this.stopReaper();
    this.headerDeadlines.close();
    // Every client socket is in `sockets`; the HTTP servers never listen, so Node's own
    // closeAllConnections() has nothing of its own to close.
    for (const socket of this.sockets) socket.destroy();
  }

  get socketCount(): number {
    return this.sockets.size;
  }
}

/**
 * What the gateway refuses in an HTTP/1.1 request before admission, or null. An HTTP/1.1 request
 * needs exactly one Host field, an HTTP/1.0 one at most one (RFC 9112 §3.2): Node would answer a
 * missing one 400 itself, without a tether-error code, and keeps only the first of several. More
 * fields than a tunnel stream carries beside the gateway's own would be refused by the tunnel
 * (502 TUNNEL_STREAM_RESET): they are the client's 431.
 */
function requestProblem(req: http.IncomingMessage): { code: 'BAD_REQUEST' | 'HEADERS_TOO_LARGE'; message: string } | null {
  const hosts = req.headersDistinct.host?.length ?? 0;
  if (hosts > 1) return { code: 'BAD_REQUEST', message: 'more than one Host field' };
  if (hosts === 0 && req.httpVersionMajor === 1 && req.httpVersionMinor === 1) return { code: 'BAD_REQUEST', message: 'an HTTP/1.1 request without a Host field' };
  if (req.rawHeaders.length / 2 > CLIENT_HEADER_PAIRS) return { code: 'HEADERS_TOO_LARGE', message: `more than ${CLIENT_HEADER_PAIRS} header fields` };
  return null;
}

function listenOn(server: net.Server, host: string, port: number): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve(server.address() as AddressInfo);
    });
  });
}
