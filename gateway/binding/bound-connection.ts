/**
 * One HTTP/1.1 client connection in binding mode. Its first request is admitted exactly as in
 * per-request mode (token, cluster, authorization, limits); the gateway then opens one tunnel
 * stream (`BIND_PROTOCOL`) that the agent relays to one upstream connection, and from then on
 * every request and response on the connection travels as bytes on that stream.
 *
 * The gateway still reads every head (h1-head.ts, strict) so that each later request is checked
 * against what the first one was authorized for: the same `authorization`, `host` and
 * `tether-cluster` values and a path the bound route serves. It also replaces any `tether-*`
 * header the client sent with its own. A request that differs waits until the connection is idle,
 * and is then admitted afresh as the first request of a new binding. Whatever binding cannot carry
 * (a refused admission, CONNECT, Upgrade, HTTP/1.0, absolute-form targets, a route the agent does
 * not bind, no tunnel) goes to the per-request HTTP/1.1 server with the bytes read so far, so its
 * answer is per-request mode's.
 */
import { randomUUID } from 'node:crypto';
import * as http2 from 'node:http2';
import type { ClientHttp2Stream, IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http2';
import type { Socket } from 'node:net';
import type { Logger } from '../../common/log.js';
import type { HeaderDeadlines } from '../header-deadlines.js';
import type { BoundClient } from './bindings.js';
import type { GatewayMetrics } from '../metrics.js';
import type { GatewayConfig } from '../options.js';
import type { Admitted, ClientProxy } from '../proxy.js';
import { RequestRejected, httpReason } from '../proxy.js';
import type { AgentTunnel, TunnelRegistry } from '../tunnel-registry.js';
import { BIND_PROTOCOL, H_BIND_SCOPE, H_CLUSTER, H_ERROR, HEADER_PREFIX, inBindScope, parseBindScope, statusOf, type BindScope, type ByteCounter } from '../tunnel/index.js';
import { H1Framer, type FramerSink, type HeadDecision } from './h1-framer.js';
import { field, isHeadError, parseRequestHead, parseResponseHead, responseFraming, type HeadError, type RequestHead } from './h1-head.js';

const { NGHTTP2_CANCEL } = http2.constants;
const HEADER_SAFE = /^[\x20-\x7e]*$/;
const CLOSE_TOKEN = /(^|,)\s*close\s*(,|$)/i;
/** Every `authorization` field line of a head (the head parsed strictly: each line ends in CRLF). */
const CREDENTIAL_LINE = /\r\nauthorization:[^\r]*/gi;

export interface BindingContext {
  config: GatewayConfig;
  tunnels: TunnelRegistry;
  proxy: ClientProxy;
  metrics: GatewayMetrics;
  logger: Logger;
  deadlines: HeaderDeadlines;
  /** Hand the socket to the per-request HTTP/1.1 server; `bytes` are read there first. */
  toPerRequest(socket: Socket, bytes: Buffer): void;
  /** The same for the per-request HTTP/2 server. */
  toPerRequestH2(socket: Socket, bytes: Buffer): void;
  /** The gateway is draining: close bound connections after their current exchange. */
  draining(): boolean;
  track(connection: BoundClient): void;
  untrack(connection: BoundClient): void;
}

/** What a bound connection was authorized for, and its tunnel stream. */
interface Binding {
  admitted: Admitted;
  tunnel: AgentTunnel;
  stream: ClientHttp2Stream;
  scope: BindScope;
  authorization: string | undefined;
  host: string | undefined;
  clusterHeader: string | undefined;
  /** The gateway's own `tether-*` lines for every request (all but the request id). */
  injected: string;
  responses: H1Framer;
  /** Methods of requests sent and not yet answered (a HEAD response has no body). */
  methods: string[];
  /** Per-request counter for this binding's cluster. */
  requests: { inc(): void };
  /** When the outstanding request's response head is due (ms since epoch; Infinity: none due). */
  headDue: number;
  /** How long a response head may take, and the code answered after it. */
  headTimeoutMs: number;
  headTimeoutCode: 'TUNNEL_TIMEOUT' | 'UPSTREAM_TIMEOUT';
}

/** What waits for the connection to be idle (no response outstanding). */
type Pending = { kind: 'rebind' } | { kind: 'refuse'; code: string; message: string } | { kind: 'reauthorize' };

export class BoundConnection implements BoundClient {
  private requests: H1Framer;
  private binding: Binding | null = null;
  private pending: Pending | null = null;
  /** Close the connection once the response in flight is complete (drain, expiry). */
  private closeAfterResponse = false;
  /** A forwarded request carried the client's own `connection: close`: it may send no more. */
  private clientClosing = false;
  private done = false;
  private authorizedAt = 0;
  /** Identity expiry in ms (the token's `exp`); the binding ends at it. */
  expiresAt = Infinity;
  /** Body bytes of the request being sent (its limit: `maxRequestBodyBytes`). */
  private requestBodyBytes = 0;
  /** When the client last sent bytes or was last answered (ms since epoch). */
  private lastActive = Date.now();

  constructor(
    readonly socket: Socket,
    private readonly ctx: BindingContext,
  ) {
    this.requests = this.newRequestFramer();
    socket.on('data', this.onClientData);
    socket.on('drain', this.onClientDrain);
    socket.on('close', this.onClientClose);
    ctx.track(this);
  }

  get subject(): string | null {
    return this.binding?.admitted.identity.subject ?? null;
  }

  get clusterId(): string | null {
    return this.binding?.admitted.clusterId ?? null;
  }

  get tunnel(): AgentTunnel | null {
    return this.binding?.tunnel ?? null;
  }

  /** Bound with no response outstanding (the tunnel stream carries nothing now). */
  get idle(): boolean {
    return this.binding !== null && this.binding.methods.length === 0;
  }

  private readonly onClientData = (chunk: Buffer): void => {
    this.lastActive = Date.now();
    // A head and the body after it are forwarded in pieces: one DATA frame for all of them.
    const stream = this.binding?.stream;
    if (stream === undefined) return this.requests.push(chunk);
    stream.cork();
    this.requests.push(chunk);
    stream.uncork();
  };

  private readonly onClientDrain = (): void => {
    this.binding?.stream.resume();
  };

  private readonly onClientClose = (): void => {
    this.shutdown('destroy');
  };

  /**
   * The sweep: a connection with no exchange in progress and no head arriving for
   * `clientKeepAliveTimeoutMs` is closed, as the per-request server closes idle keep-alive
   * connections. (The sweep's timestamps replace a socket timeout, which Node re-arms on every
   * read and write.)
   */
  closeIfIdle(now: number): void {
    if (this.done || now - this.lastActive < this.ctx.config.clientKeepAliveTimeoutMs) return;
    if ((this.binding === null || this.idle) && this.requests.idle) this.end();
  }

  private newRequestFramer(): H1Framer {
    const sink: FramerSink = {
      onHead: (buffer, start, end) => this.onRequestHead(buffer, start, end),
      forward: (bytes, body) => this.toAgent(bytes, body),
      onMessageEnd: () => {
        this.requestBodyBytes = 0;
      },
      onError: (error) => this.onRequestError(error),
    };
    return new H1Framer(sink, this.ctx.config.limits.maxClientHeaderBytes);
  }

  // ---- requests -----------------------------------------------------------------------

  private onRequestHead(buffer: Buffer, start: number, end: number): HeadDecision | null {
    const head = parseRequestHead(buffer, start, end);
    const binding = this.binding;
    if (binding === null) {
      // A first request: admitted asynchronously, everything after it waits.
      this.socket.pause();
      this.ctx.deadlines.requestStarted(this.socket);
      // A head the strict scan refuses is refused here, not handed to a more lenient parser.
      if (isHeadError(head)) queueMicrotask(() => this.onRequestError(head));
      else if (!bindable(head)) queueMicrotask(() => this.perRequest());
      else void this.bindFirst(head);
      return null;
    }
    // After the client's own `connection: close` it may send no further request (RFC 9112 §9.6),
    // and the upstream, told to close, must not get one: it is held, and the connection ends once
    // the response in flight is complete.
    if (this.clientClosing) return this.holdUntilIdle({ kind: 'refuse', code: 'BAD_REQUEST', message: 'a request after connection: close' });
    if (isHeadError(head)) {
      // Refused once the response before it is complete (the connection then closes).
      return this.holdUntilIdle({ kind: 'refuse', code: head.code, message: head.message });
    }
    if (!bindable(head) || !this.sameAuthority(binding, head) || !inBindScope(binding.scope, head.target)) {
      return this.holdUntilIdle({ kind: 'rebind' });
    }
    const max = this.ctx.config.limits.maxRequestBodyBytes;
    if (max !== undefined && head.framing.kind === 'length' && head.framing.length > max) return this.holdUntilIdle({ kind: 'rebind' });
    const now = Date.now();
    if (now >= this.expiresAt) return this.holdUntilIdle({ kind: 'refuse', code: 'BINDING_EXPIRED', message: 'the token that opened this connection has expired' });
    if (this.ctx.proxy.revokedSubjects.has(binding.admitted.identity.subject)) return this.holdUntilIdle({ kind: 'refuse', code: 'IDENTITY_REVOKED', message: 'the identity has been revoked' });
    if (now - this.authorizedAt >= this.ctx.config.bindingReauthorizeMs) return this.holdUntilIdle({ kind: 'reauthorize' });
    return this.send(binding, head, false, buffer.subarray(start, end));
  }

  /**
   * The head as forwarded: the client's `tether-*` fields replaced by the gateway's. When the head
   * has none of those, no hop-by-hop field to drop, no path prefix to add and no `connection:
   * close` to add, its bytes go as received (`raw`) with the gateway's fields before the blank line.
   */
  private send(binding: Binding, head: RequestHead, first = false, raw?: Buffer): HeadDecision {
    const closing = this.closeAfterResponse || this.ctx.draining();
    const { names, values } = head;
    // Hop-by-hop fields go no further (RFC 9110 §7.6.1), except what frames the bytes themselves
    // (Transfer-Encoding) and whether the upstream connection stays open (`connection: close`).
    const hop = hopByHop(head);
    // The client's credential stays at the edge unless the bound route forwards it.
    const dropCredential = binding.scope.forwardCredential !== true;
    let close = closing;
    let tether = false;
    let credential = false;
    for (let i = 0; i < names.length; i++) {
      const name = names[i] as string;
      if (name.startsWith(HEADER_PREFIX)) tether = true;
      else if (name === 'authorization') credential = dropCredential;
      else if (name === 'connection' && CLOSE_TOKEN.test(values[i] as string)) close = this.clientClosing = true;
    }
    const requestId = `tether-request-id: ${randomUUID()}\r\n\r\n`;
    let bytes: Buffer;
    if (raw !== undefined && !closing && !tether && hop === null && binding.scope.base === '') {
      const tail = `${binding.injected}${requestId}`;
      if (credential) {
        bytes = Buffer.from(`${raw.toString('latin1', 0, raw.length - 2).replace(CREDENTIAL_LINE, '')}${tail}`, 'latin1');
      } else {
        bytes = Buffer.allocUnsafe(raw.length - 2 + tail.length);
        raw.copy(bytes, 0, 0, raw.length - 2);
        bytes.write(tail, raw.length - 2, 'latin1');
      }
    } else {
      let text = `${head.method} ${binding.scope.base}${head.target} HTTP/1.1\r\n`;
      for (let i = 0; i < names.length; i++) {
        const name = names[i] as string;
        if (name.startsWith(HEADER_PREFIX) || name === 'connection' || (hop !== null && hop.has(name)) || (dropCredential && name === 'authorization')) continue;
        text += `${name}: ${values[i] as string}\r\n`;
      }
      if (close) text += 'connection: close\r\n';
      bytes = Buffer.from(`${text}${binding.injected}${requestId}`, 'latin1');
    }
    if (close) this.closeAfterResponse = true;
    binding.methods.push(head.method);
    if (binding.methods.length === 1) binding.headDue = Date.now() + binding.headTimeoutMs;
    binding.requests.inc();
    // The first head's deadline was stopped when it arrived.
    if (binding.methods.length === 1 && !first) this.ctx.deadlines.requestStarted(this.socket);
    return { bytes, framing: head.framing };
  }

  private sameAuthority(binding: Binding, head: RequestHead): boolean {
    return (
      field(head, 'authorization') === binding.authorization &&
      field(head, 'host') === binding.host &&
      (!this.ctx.config.allowClusterHeader || field(head, H_CLUSTER) === binding.clusterHeader)
    );
  }

  private holdUntilIdle(pending: Pending): null {
    this.pending = pending;
    this.socket.pause();
    queueMicrotask(() => this.runWhenIdle());
    return null;
  }

  /**
   * A head or body the framer refuses. Nothing after it is forwarded. When no byte of an answer to
   * the current request has reached the client yet, it gets the error; otherwise the connection
   * is cut (its response cannot be completed). Either way the tunnel stream, and with it the
   * upstream connection, is closed.
   */
  private onRequestError(error: HeadError): void {
    this.ctx.metrics.errors.inc({ code: error.code });
    this.socket.pause();
    const binding = this.binding;
    if (binding === null || (binding.responses.idle && binding.methods.length <= 1)) this.respondAndClose(error.code, error.message);
    else this.shutdown('destroy');
  }

  private toAgent(bytes: Buffer, body: boolean): void {
    const binding = this.binding;
    if (binding === null) return;
    if (body) {
      // A Content-Length over the limit never binds (per request answers 413); a chunked body is
      // counted as it goes.
      const max = this.ctx.config.limits.maxRequestBodyBytes;
      this.requestBodyBytes += bytes.length;
      if (max !== undefined && this.requestBodyBytes > max) {
        this.onRequestError({ code: 'BODY_TOO_LARGE', message: `request body exceeds ${max} bytes` });
        return;
      }
      this.ctx.proxy.bytesToAgent.inc(bytes.length);
    }
    if (!binding.stream.write(bytes)) this.socket.pause();
  }

  // ---- binding ------------------------------------------------------------------------

  private async bindFirst(head: RequestHead): Promise<void> {
    const headers = headersOf(head);
    let admitted: Admitted;
    try {
      admitted = await this.ctx.proxy.admit(headers, headers.host);
    } catch (reason) {
      // A refusal is answered here (with its code, then the connection closes): handing the
      // connection on would verify a refused token twice.
      if (!(reason instanceof RequestRejected)) return this.perRequest();
      this.ctx.metrics.errors.inc({ code: reason.code });
      this.respondAndClose(reason.code, reason.message, reason.extra);
      return;
    }
    if (this.done) return;
    const { identity } = admitted;
    const exp = typeof identity.claims.exp === 'number' ? identity.claims.exp * 1000 : Infinity;
    if (exp <= Date.now() || !HEADER_SAFE.test(identity.subject) || !HEADER_SAFE.test(identity.issuer)) return this.perRequest();
    const tunnel = this.ctx.tunnels.pick(admitted.clusterId);
    if (tunnel === null) return this.perRequest();
    const remote = this.socket.remoteAddress;
    const pseudo: OutgoingHttpHeaders = { ':method': 'CONNECT', ':protocol': BIND_PROTOCOL, ':path': head.target, ':authority': headers.host ?? admitted.clusterId, ':scheme': 'https' };
    const out = this.ctx.proxy.tunnelHeaders({}, admitted, remote, 'http1', pseudo);
    let stream: ClientHttp2Stream;
    try {
      stream = tunnel.session.request(out);
    } catch {
      return this.perRequest();
    }
    stream.on('error', ignoreError);
    tunnel.activeStreams++;
    let settled = false;
    const timer = setTimeout(() => {
      if (settled) return;
      settled = true;
      stream.close(NGHTTP2_CANCEL);
      // As per request: no answer through the tunnel in time.
      this.ctx.metrics.errors.inc({ code: 'TUNNEL_TIMEOUT' });
      this.respondAndClose('TUNNEL_TIMEOUT', `no response within ${this.ctx.config.responseTimeoutMs} ms`);
    }, this.ctx.config.responseTimeoutMs);
    stream.once('close', () => {
      clearTimeout(timer);
      tunnel.activeStreams--;
      if (!settled) {
        settled = true;
        this.perRequest();
      }
    });
    stream.once('response', (responseHeaders: IncomingHttpHeaders) => {
      clearTimeout(timer);
      if (settled) return;
      settled = true;
      const scope = Number(responseHeaders[':status']) === 200 ? parseBindScope(responseHeaders[H_BIND_SCOPE]) : null;
      if (scope === null || this.done) {
        stream.close(NGHTTP2_CANCEL);
        if (!this.done) this.perRequest();
        return;
      }
      this.bound(admitted, tunnel, stream, scope, head, out);
    });
  }

  private bound(admitted: Admitted, tunnel: AgentTunnel, stream: ClientHttp2Stream, scope: BindScope, head: RequestHead, out: OutgoingHttpHeaders): void {
    let injected = '';
    for (const name in out) {
      if (name.startsWith(HEADER_PREFIX) && name !== 'tether-request-id') injected += `${name}: ${String(out[name])}\r\n`;
    }
    const responses = new H1Framer(
      {
        onHead: (buffer, start, end) => this.onResponseHead(buffer, start, end),
        forward: (bytes, body) => this.toClient(bytes, body),
        onMessageEnd: () => this.onResponseEnd(),
        onError: (error) => {
          this.ctx.metrics.errors.inc({ code: 'UPSTREAM_ERROR' });
          this.ctx.logger.debug({ error }, 'bound upstream sent a malformed response');
          this.shutdown('destroy');
        },
      },
      this.ctx.config.limits.maxHeaderListBytes,
    );
    const binding: Binding = {
      admitted,
      tunnel,
      stream,
      scope,
      authorization: field(head, 'authorization'),
      host: field(head, 'host'),
      clusterHeader: field(head, H_CLUSTER),
      injected,
      responses,
      methods: [],
      requests: this.ctx.metrics.requestsFor(admitted.clusterId, 'http1-bound'),
      headDue: Infinity,
      ...headTimeout(this.ctx.config.responseTimeoutMs, scope.timeoutMs),
    };
    this.binding = binding;
    this.authorizedAt = Date.now();
    const exp = admitted.identity.claims.exp;
    this.expiresAt = typeof exp === 'number' ? exp * 1000 : Infinity;
    this.ctx.metrics.bindings.inc({ cluster: admitted.clusterId });
    stream.once('close', () => this.onStreamClose(binding));
    stream.on('data', (chunk: Buffer) => {
      // The framer passes a head and the body after it on in pieces; consecutive pieces of the
      // same chunk are written as one (one write, one syscall: the common answer).
      binding.responses.push(chunk);
      this.flushToClient();
    });
    stream.once('end', () => this.onStreamEnd(binding));
    stream.on('drain', () => {
      if (this.binding === binding && this.pending === null && !this.requests.isHeld) this.socket.resume();
    });
    // The first request goes out as every later one does.
    this.requests.release(this.send(binding, head, true));
    if (!this.requests.isHeld && this.pending === null) this.socket.resume();
  }

  /** Give the connection to the per-request server with what it sent so far. */
  private perRequest(): void {
    if (this.done) return;
    this.done = true;
    const bytes = this.requests.isHeld ? this.requests.takeHeld() : Buffer.alloc(0);
    this.detach();
    this.ctx.toPerRequest(this.socket, bytes);
  }

  // ---- responses ----------------------------------------------------------------------

  private onResponseHead(buffer: Buffer, start: number, end: number): HeadDecision {
    const binding = this.binding;
    const head = parseResponseHead(buffer, start, end);
    if (binding === null || isHeadError(head)) {
      // Nothing of it reaches the client: the connection is cut now, and what the framer still
      // passes on finds the socket destroyed.
      this.ctx.metrics.errors.inc({ code: 'UPSTREAM_ERROR' });
      this.shutdown('destroy');
      return { bytes: Buffer.alloc(0), framing: 'raw' };
    }
    if (head.status === 101) {
      binding.headDue = Infinity;
      return { bytes: null, framing: 'raw' };
    }
    if (head.status < 200) return { bytes: null, framing: 'interim' };
    binding.headDue = Infinity;
    const framing = responseFraming(head, binding.methods[0] ?? 'GET');
    if (head.close || framing.kind === 'close') this.closeAfterResponse = true;
    if (this.closeAfterResponse && !head.close) {
      // Tell the client before it sends another request on a connection about to close.
      const text = buffer.toString('latin1', start, end - 2);
      return { bytes: Buffer.from(`${text.replace(/\r\nconnection:[^\r]*/gi, '')}connection: close\r\n\r\n`, 'latin1'), framing };
    }
    return { bytes: null, framing };
  }

  /** Pieces for the client from the tunnel chunk being read; written by `flushToClient`. */
  private toClientPieces: Buffer[] = [];

  private toClient(bytes: Buffer, body: boolean): void {
    if (body) this.ctx.proxy.bytesToClient.inc(bytes.length);
    const pieces = this.toClientPieces;
    const last = pieces[pieces.length - 1];
    if (last !== undefined && last.buffer === bytes.buffer && last.byteOffset + last.length === bytes.byteOffset) {
      pieces[pieces.length - 1] = Buffer.from(last.buffer, last.byteOffset, last.length + bytes.length);
    } else pieces.push(bytes);
  }

  private flushToClient(): void {
    const pieces = this.toClientPieces;
    if (pieces.length === 0) return;
    this.toClientPieces = [];
    const socket = this.socket;
    if (socket.destroyed) return;
    let ok: boolean;
    if (pieces.length === 1) ok = socket.write(pieces[0] as Buffer);
    else {
      socket.cork();
      ok = true;
      for (const piece of pieces) ok = socket.write(piece) && ok;
      socket.uncork();
    }
    if (!ok) this.binding?.stream.pause();
  }

  private onResponseEnd(): void {
    const binding = this.binding;
    if (binding === null) return;
    binding.methods.shift();
    this.lastActive = Date.now();
    if (binding.methods.length > 0) {
      binding.headDue = Date.now() + binding.headTimeoutMs;
      return;
    }
    this.ctx.deadlines.requestFinished(this.socket);
    this.runWhenIdle();
  }

  /** The agent ended the stream: the upstream closed its connection. */
  private onStreamEnd(binding: Binding): void {
    this.afterStream(binding);
  }

  private onStreamClose(binding: Binding): void {
    this.ctx.metrics.bindings.dec({ cluster: binding.admitted.clusterId });
    this.afterStream(binding);
  }

  /**
   * The tunnel stream ended or closed without the gateway asking (the upstream closed its
   * connection, the agent's route went away, the tunnel was lost or its agent revoked): the
   * client connection closes with it, as a keep-alive connection does when its server closes. A
   * response delimited by the close ends with it; a response cut short cuts the connection.
   */
  private afterStream(binding: Binding): void {
    if (this.binding !== binding || this.done) return;
    if (binding.methods.length > 0 && !binding.responses.endsWithClose) this.shutdown('destroy');
    else this.shutdown('end');
  }

  // ---- life cycle ---------------------------------------------------------------------

  /** Once no response is outstanding: act on what waits. */
  private runWhenIdle(): void {
    if (this.done || (this.binding !== null && !this.idle)) return;
    if (this.closeAfterResponse) {
      this.end();
      return;
    }
    const pending = this.pending;
    if (pending === null) {
      if (this.binding !== null && this.binding.tunnel.draining) this.unbind();
      return;
    }
    this.pending = null;
    switch (pending.kind) {
      case 'rebind':
        this.unbind();
        return;
      case 'refuse':
        this.ctx.metrics.errors.inc({ code: pending.code });
        this.respondAndClose(pending.code, pending.message);
        return;
      case 'reauthorize':
        void this.reauthorize();
        return;
    }
  }

  private async reauthorize(): Promise<void> {
    const binding = this.binding;
    if (binding === null) return;
    let allowed = false;
    try {
      allowed = await this.ctx.proxy.authorize(binding.admitted.identity, binding.admitted.clusterId);
    } catch (reason) {
      this.ctx.logger.warn({ err: reason }, 'authorizer failed; denying');
    }
    if (this.done || this.binding !== binding) return;
    if (!allowed) {
      this.ctx.metrics.errors.inc({ code: 'FORBIDDEN' });
      this.respondAndClose('FORBIDDEN', `${binding.admitted.identity.subject} may no longer reach cluster ${binding.admitted.clusterId}`);
      return;
    }
    this.authorizedAt = Date.now();
    this.reread();
  }

  /** Read the held head (and what followed it) again from the start, with a fresh framer. */
  private reread(): void {
    const held = this.requests.isHeld ? this.requests.takeHeld() : null;
    this.requests = this.newRequestFramer();
    if (held !== null) this.requests.push(held);
    if (!this.requests.isHeld && this.pending === null && !this.done) this.socket.resume();
  }

  /** End the binding and read what the client sent next as the first request of a new one. */
  private unbind(): void {
    const binding = this.binding;
    if (binding === null) return;
    this.binding = null;
    if (!binding.stream.closed) binding.stream.close(NGHTTP2_CANCEL);
    this.closeAfterResponse = false;
    this.pending = null;
    this.expiresAt = Infinity;
    this.reread();
  }

  /** The sweep: a response head overdue is answered 504 (or, once a response started, the connection is cut). */
  checkDeadline(now: number): void {
    const binding = this.binding;
    if (binding === null || binding.headDue > now || this.done) return;
    const code = binding.headTimeoutCode;
    this.ctx.metrics.errors.inc({ code });
    if (binding.responses.idle) this.respondAndClose(code, `no response within ${binding.headTimeoutMs} ms`);
    else this.shutdown('destroy');
  }

  /** Close at `exp` (called by the binding registry's sweep) or on revocation: now, mid-response or not. */
  expire(code: string): void {
    if (this.done) return;
    this.ctx.metrics.errors.inc({ code });
    if (this.binding !== null && this.idle && !this.requests.inHead) this.end();
    else this.destroy();
  }

  /**
   * Graceful (drain): the response in flight completes and then the connection closes; a request
   * arriving on an idle connection is carried with `connection: close` (the client may have sent
   * it just before the drain began). An idle connection closes at the keep-alive timeout, which
   * the gateway's drain waits for.
   */
  closeGracefully(): void {
    this.closeAfterResponse = true;
  }

  /** The binding's tunnel is draining: move to another tunnel at the next idle moment. */
  tunnelDraining(): void {
    if (this.idle && this.pending === null) this.unbind();
  }

  private respondAndClose(code: string, message: string, fields: OutgoingHttpHeaders = {}): void {
    const body = `${code}: ${message}\n`;
    let extra = code === 'UNAUTHENTICATED' || code === 'BINDING_EXPIRED' || code === 'IDENTITY_REVOKED' ? 'www-authenticate: Bearer\r\n' : '';
    for (const [name, value] of Object.entries(fields)) {
      if (name !== 'www-authenticate' && value !== undefined) extra += `${name}: ${String(value).replace(/[\r\n]/g, '')}\r\n`;
    }
    const status = statusOf(code);
    this.shutdown('end', `HTTP/1.1 ${status} ${httpReason(status)}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\n${H_ERROR}: ${code}\r\n${extra}connection: close\r\n\r\n${body}`);
  }

  private end(): void {
    this.shutdown('end');
  }

  destroy(): void {
    this.shutdown('destroy');
  }

  /**
   * The connection's last act: close the tunnel stream (and with it the upstream connection), then
   * end the client connection after `last` (what the client reads before the close) or cut it.
   */
  private shutdown(how: 'end' | 'destroy', last?: string): void {
    if (this.done) {
      if (how === 'destroy') this.socket.destroy();
      return;
    }
    // What the client is owed from the chunk being read goes out before the end.
    if (how === 'end') this.flushToClient();
    this.done = true;
    const binding = this.binding;
    this.binding = null;
    if (binding !== null && !binding.stream.closed) binding.stream.close(NGHTTP2_CANCEL);
    this.detach();
    if (how === 'destroy') {
      this.socket.destroy();
      return;
    }
    if (last === undefined) this.socket.end();
    else this.socket.end(last);
    // Whatever the client still sends is read and dropped, so its close is seen.
    this.socket.resume();
  }

  private detach(): void {
    this.socket.off('data', this.onClientData);
    this.socket.off('drain', this.onClientDrain);
    this.socket.off('close', this.onClientClose);
    this.ctx.untrack(this);
  }
}

export function ignoreError(): void {}

/** Requests binding carries; the rest go per request (CONNECT, Upgrade, HTTP/1.0, absolute-form). */
function bindable(head: RequestHead): boolean {
  return head.minor === 1 && head.method !== 'CONNECT' && head.target.charCodeAt(0) === 0x2f && field(head, 'upgrade') === undefined;
}

/** The shorter of the gateway's response timeout and the agent's upstream timeout decides, and names the code. */
export function headTimeout(gatewayMs: number, agentMs: number | undefined): Pick<Binding, 'headTimeoutMs' | 'headTimeoutCode'> {
  if (agentMs !== undefined && agentMs < gatewayMs) return { headTimeoutMs: agentMs, headTimeoutCode: 'UPSTREAM_TIMEOUT' };
  return { headTimeoutMs: gatewayMs, headTimeoutCode: 'TUNNEL_TIMEOUT' };
}

const HOP_BY_HOP = ['keep-alive', 'proxy-connection', 'proxy-authorization', 'proxy-authenticate', 'te', 'trailer', 'upgrade'];

/** Fields this hop must drop: the fixed hop-by-hop ones present and those `Connection` names; null when none. */
function hopByHop(head: RequestHead): Set<string> | null {
  let set: Set<string> | null = null;
  for (let i = 0; i < head.names.length; i++) {
    const name = head.names[i] as string;
    if (name === 'connection') {
      for (const token of (head.values[i] as string).split(',')) {
        const named = token.trim().toLowerCase();
        if (named !== '' && named !== 'close' && named !== 'keep-alive' && named !== 'transfer-encoding' && named !== 'host' && named !== 'content-length') (set ??= new Set()).add(named);
      }
    } else if (HOP_BY_HOP.includes(name)) (set ??= new Set()).add(name);
  }
  return set;
}

function headersOf(head: RequestHead): IncomingHttpHeaders {
  const headers: IncomingHttpHeaders = {};
  for (let i = 0; i < head.names.length; i++) {
    const name = head.names[i] as string;
    if (headers[name] === undefined) headers[name] = head.values[i] as string;
  }
  return headers;
}

export type { ByteCounter };
