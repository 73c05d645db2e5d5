/**
 * Carrying one client request into a tunnel: admission (authenticate, route to a cluster,
 * authorize, size limits), one HTTP/2 stream on the least-loaded connection, and the response
 * (headers, body, trailers; or a raw byte stream for WebSocket and CONNECT) back to the client.
 * Every failure answers with a status and a stable `tether-error` code, counted in a metric.
 */
import { createHash, randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import * as http2 from 'node:http2';
import type { ClientHttp2Stream, IncomingHttpHeaders, OutgoingHttpHeaders, ServerHttp2Stream } from 'node:http2';
import type { Duplex, Readable } from 'node:stream';
import { isTetherError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import type { Authorizer, ClientAuthenticator, ClientIdentity } from './client-auth.js';
import type { GatewayMetrics } from './metrics.js';
import type { GatewayConfig } from './options.js';
import type { AgentTunnel, TunnelRegistry } from './tunnel-registry.js';
import {
  H_CLIENT_ADDRESS,
  H_CLIENT_PROTOCOL,
  H_CLUSTER,
  H_CLUSTER_MODE,
  H_ERROR,
  H_IDENTITY,
  H_ISSUER,
  H_REQUEST_ID,
  H_SUBJECT,
  filterHeaders,
  filterResponseHeaders,
  headerListSize,
  relay,
  statusOf,
  TunnelCodes,
  type ByteCounter,
} from './tunnel/index.js';

const { NGHTTP2_CANCEL, NGHTTP2_NO_ERROR, NGHTTP2_REFUSED_STREAM, NGHTTP2_FLAG_END_STREAM } = http2.constants;
const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const MAX_ATTEMPTS = 3;
/** Distinct error codes from agents, beyond the gateway's own, that get a series of their own. */
const MAX_FOREIGN_CODES = 32;

/**
 * The error listener of sockets and streams whose failures are handled by their 'close'. One
 * module-level function: an arrow written inside a handler would keep that handler's whole scope
 * (request headers, the upgrade's head buffer) alive for as long as the socket lives.
 */
function ignoreError(): void {}

/**
 * Node keeps the headers given to `session.request()` on the stream for its `sentHeaders` getter,
 * for the stream's whole life: ~1.3 KiB per idle WebSocket (the object is in dictionary mode).
 * Nothing reads them after the response arrives, so drop them then. The property is internal
 * (`Symbol(sent-headers)`); when a Node version names it otherwise this does nothing.
 */
let sentHeadersKey: symbol | null | undefined;
function releaseSentHeaders(stream: ClientHttp2Stream): void {
  if (sentHeadersKey === undefined) sentHeadersKey = Object.getOwnPropertySymbols(stream).find((key) => key.description === 'sent-headers') ?? null;
  if (sentHeadersKey !== null) Reflect.set(stream, sentHeadersKey, undefined);
}

/** The tunnels a retry must skip: `tunnel` added to those skipped so far (the set is made only when a retry happens). */
function excluding(skipped: Set<AgentTunnel> | null, tunnel: AgentTunnel): Set<AgentTunnel> {
  const set = skipped ?? new Set<AgentTunnel>();
  set.add(tunnel);
  return set;
}

type Kind = 'http1' | 'http2' | 'grpc' | 'websocket' | 'tcp';

export interface Admitted {
  clusterId: string;
  identity: ClientIdentity;
}

/** The client side of one exchange, whatever protocol the client speaks. */
interface ClientSide {
  kind: Kind;
  /** Request body source (or the client's byte stream for WebSocket/CONNECT); null when bodyless. */
  body: Readable | null;
  /** The body ended without all of it (HTTP/1.1: aborted or malformed). */
  bodyIncomplete?: () => boolean;
  respondError(code: string, message: string, extra?: OutgoingHttpHeaders): void;
  /** Relay the response to the client, counting its body bytes in `bytesToClient`. */
  onResponse(tunnelStream: ClientHttp2Stream, headers: IncomingHttpHeaders, flags: number): void;
  /** Tear the client side down after the response started. */
  abort(): void;
  onGone(callback: () => void): void;
}

export class RequestRejected extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly extra: OutgoingHttpHeaders = {},
  ) {
    super(message);
  }
}

export class ClientProxy {
  /** The `tether-identity` value per verified identity, computed once (identities are reused per token). */
  private readonly identityHeaders = new WeakMap<ClientIdentity, string>();
  readonly bytesToClient: ByteCounter;
  readonly bytesToAgent: ByteCounter;

  constructor(
    private readonly config: GatewayConfig,
    private readonly registry: TunnelRegistry,
    private readonly auth: ClientAuthenticator,
    readonly authorize: Authorizer,
    private readonly metrics: GatewayMetrics,
    private readonly logger: Logger,
  ) {
    this.clusters = new Set(config.clusters);
    this.sovereign = new Set(config.sovereignClusters);
    this.bytesToClient = metrics.bytesToClient;
    this.bytesToAgent = metrics.bytesToAgent;
  }

  /** The cluster a request is for: `tether-cluster` (when allowed), else `<cluster>.<baseDomain>`. */
  clusterFor(authority: string | undefined, headers: IncomingHttpHeaders): string | null {
    const header = headers[H_CLUSTER];
    if (this.config.allowClusterHeader && typeof header === 'string' && header !== '') return header;
    const base = this.config.baseDomain;
    if (base === undefined || authority === undefined) return null;
    const host = authority.replace(/:\d+$/, '').toLowerCase().replace(/\.$/, '');
    const suffix = `.${base.toLowerCase()}`;
    if (!host.endsWith(suffix)) return null;
    const cluster = host.slice(0, -suffix.length);
    return cluster === '' || cluster.includes('.') ? null : cluster;
  }

  /**
   * Requests accepted but not yet admitted (authentication and authorisation may wait on a key
   * fetch or the access service). A graceful drain waits for them as well as for tunnel streams.
   */
  admitting = 0;

  /** Registered clusters (`Gateway.setClusters` replaces them). */
  clusters: ReadonlySet<string>;
  /** Clusters in sovereign mode (`Gateway.setSovereignClusters`): requests get `CLUSTER_SOVEREIGN`. */
  sovereign: ReadonlySet<string>;
  /** Subjects refused from now on (`Gateway.revokeSubjects`), whatever their tokens say. */
  revokedSubjects: ReadonlySet<string> = new Set();

  async admit(headers: IncomingHttpHeaders, authority: string | undefined): Promise<Admitted> {
    this.admitting++;
    try {
      return await this.admitNow(headers, authority);
    } finally {
      this.admitting--;
    }
  }

  private async admitNow(headers: IncomingHttpHeaders, authority: string | undefined): Promise<Admitted> {
    if (headerListSize(headers) > this.config.limits.maxClientHeaderBytes) {
      throw new RequestRejected('HEADERS_TOO_LARGE', 'request headers exceed the limit');
    }
    let identity: ClientIdentity;
    try {
      identity = await this.auth.authenticate(typeof headers.authorization === 'string' ? headers.authorization : undefined);
    } catch (reason) {
      const message = isTetherError(reason) ? reason.rawMessage : 'authentication failed';
      throw new RequestRejected('UNAUTHENTICATED', message, { 'www-authenticate': 'Bearer' });
    }
    if (this.revokedSubjects.has(identity.subject)) throw new RequestRejected('IDENTITY_REVOKED', `${identity.subject} has been revoked`, { 'www-authenticate': 'Bearer' });
    const clusterId = this.clusterFor(authority, headers);
    if (clusterId === null) throw new RequestRejected('UNKNOWN_CLUSTER', 'the request names no cluster');
    if (!this.clusters.has(clusterId) && !this.sovereign.has(clusterId)) throw new RequestRejected('UNKNOWN_CLUSTER', `unknown cluster ${clusterId}`);
    let allowed = false;
    try {
      allowed = await this.authorize(identity, clusterId);
    } catch (reason) {
      this.logger.warn({ err: reason }, 'authorizer failed; denying');
    }
    if (!allowed) throw new RequestRejected('FORBIDDEN', `${identity.subject} may not reach cluster ${clusterId}`);
    // Told only to identities that may reach the cluster; the same answer in both binding modes.
    if (this.sovereign.has(clusterId)) {
      throw new RequestRejected('CLUSTER_SOVEREIGN', `cluster ${clusterId} is in sovereign mode: it is reached only through the customer's own load balancer, not through this gateway`, { [H_CLUSTER_MODE]: 'sovereign' });
    }
    const max = this.config.limits.maxRequestBodyBytes;
    const length = Number(headers['content-length'] ?? 0);
    if (max !== undefined && length > max) throw new RequestRejected('BODY_TOO_LARGE', `request body exceeds ${max} bytes`);
    return { clusterId, identity };
  }

  tunnelHeaders(client: IncomingHttpHeaders, admitted: Admitted, remote: string | undefined, protocol: 'http1' | 'http2', pseudo: OutgoingHttpHeaders): OutgoingHttpHeaders {
    // One object, built in one pass. Its keys differ from request to request, so it starts as the
    // dictionary V8 would turn it into anyway (and Node copies it into one of those).
    const headers = Object.create(null) as OutgoingHttpHeaders;
    for (const name in pseudo) headers[name] = pseudo[name];
    filterHeaders(client, { stripTether: true }, headers);
    headers[H_CLUSTER] = admitted.clusterId;
    headers[H_SUBJECT] = admitted.identity.subject;
    headers[H_ISSUER] = admitted.identity.issuer;
    let identity = this.identityHeaders.get(admitted.identity);
    if (identity === undefined) {
      identity = Buffer.from(JSON.stringify({ sub: admitted.identity.subject, iss: admitted.identity.issuer })).toString('base64url');
      this.identityHeaders.set(admitted.identity, identity);
    }
    headers[H_IDENTITY] = identity;
    headers[H_CLIENT_ADDRESS] = remote ?? '';
    headers[H_CLIENT_PROTOCOL] = protocol;
    headers[H_REQUEST_ID] = randomUUID();
    return headers;
  }

  private rejected(client: ClientSide, reason: unknown): void {
    if (reason instanceof RequestRejected) {
      client.respondError(reason.code, reason.message, reason.extra);
      return;
    }
    this.logger.error({ err: reason }, 'gateway request failed');
    client.respondError('TUNNEL_STREAM_RESET', 'internal error');
  }

  /** Codes outside `TunnelCodes` seen in answers from agents (their dataproxy's, say), kept as label values. */
  private readonly foreignCodes = new Set<string>();

  /**
   * The error metric's label for a code an agent answered with (its own, or an upstream's it
   * passed on): the gateway's codes as they are; others while fewer than `MAX_FOREIGN_CODES`
   * have been seen and they look like codes; anything else is `UNRECOGNIZED`. A peer cannot grow
   * the series without bound.
   */
  private errorLabel(code: string): string {
    if (Object.hasOwn(TunnelCodes, code) || this.foreignCodes.has(code)) return code;
    if (this.foreignCodes.size >= MAX_FOREIGN_CODES || !/^[A-Z][A-Z0-9_]{0,63}$/.test(code)) return 'UNRECOGNIZED';
    this.foreignCodes.add(code);
    return code;
  }

  /** Open a tunnel stream for the exchange and wire both sides; retries refused streams elsewhere. */
  private forward(clusterId: string, headers: OutgoingHttpHeaders, client: ClientSide, attempt = 0, exclude: Set<AgentTunnel> | null = null): void {
    const busy = { full: false };
    const tunnel = this.registry.pick(clusterId, exclude ?? undefined, busy);
    if (tunnel === null && busy.full) {
      client.respondError('TUNNEL_BUSY', `every tunnel of cluster ${clusterId} is at its stream limit`, { 'retry-after': String(this.config.noTunnelRetryAfterSec) });
      return;
    }
    if (tunnel === null) {
      client.respondError('NO_TUNNEL', `no live tunnel for cluster ${clusterId}`, { 'retry-after': String(this.config.noTunnelRetryAfterSec) });
      return;
    }
    let stream: ClientHttp2Stream;
    try {
      stream = tunnel.session.request(headers, { endStream: client.body === null });
    } catch {
      if (attempt + 1 < MAX_ATTEMPTS + this.registry.count(clusterId)) this.forward(clusterId, headers, client, attempt + 1, excluding(exclude, tunnel));
      else client.respondError('NO_TUNNEL', `no usable tunnel for cluster ${clusterId}`, { 'retry-after': String(this.config.noTunnelRetryAfterSec) });
      return;
    }
    // What a retry needs, released once a response arrives (a WebSocket or CONNECT stream can live
    // for hours; the request headers need not).
    let retry: { headers: OutgoingHttpHeaders; exclude: Set<AgentTunnel> | null } | null = { headers, exclude };
    let detachBody = (): void => undefined;
    const started = process.hrtime.bigint();
    tunnel.activeStreams++;
    this.metrics.requestsActive.inc({ cluster: clusterId });
    if (attempt === 0) this.metrics.requestsTotal.inc({ cluster: clusterId, protocol: client.kind });
    let responded = false;
    let gone = false;
    let timer: NodeJS.Timeout | undefined = setTimeout(() => {
      if (responded) return;
      stream.close(NGHTTP2_CANCEL);
      client.respondError('TUNNEL_TIMEOUT', `no response within ${this.config.responseTimeoutMs} ms`);
    }, this.config.responseTimeoutMs);
    stream.on('error', ignoreError);
    stream.on('response', (responseHeaders: IncomingHttpHeaders, flags: number) => {
      clearTimeout(timer);
      timer = undefined;
      responded = true;
      retry = null;
      releaseSentHeaders(stream);
      this.metrics.streamSetup.observe({ protocol: client.kind }, Number(process.hrtime.bigint() - started) / 1e9);
      const code = responseHeaders[H_ERROR];
      if (typeof code === 'string') this.metrics.errors.inc({ code: this.errorLabel(code) });
      if (gone) return;
      client.onResponse(stream, responseHeaders, flags);
    });
    stream.on('close', () => {
      clearTimeout(timer);
      tunnel.activeStreams--;
      this.metrics.requestsActive.dec({ cluster: clusterId });
      detachBody();
      if (gone) return;
      if (!responded) {
        const untouched = client.body === null || !client.body.readableDidRead;
        if (stream.rstCode === NGHTTP2_REFUSED_STREAM && untouched && attempt + 1 < MAX_ATTEMPTS && retry !== null) {
          this.metrics.streamRetries.inc();
          this.forward(clusterId, retry.headers, client, attempt + 1, excluding(retry.exclude, tunnel));
          return;
        }
        client.respondError('TUNNEL_STREAM_RESET', 'the tunnel stream ended before a response');
      } else if (stream.rstCode !== undefined && stream.rstCode !== NGHTTP2_NO_ERROR) {
        client.abort();
      }
    });
    client.onGone(() => {
      gone = true;
      if (!stream.closed) stream.close(NGHTTP2_CANCEL);
    });
    if (client.body !== null) {
      // The body goes into the stream as with pipe(), but with one data listener doing the
      // counting, the size limit and the write (three listeners in all instead of pipe's eight
      // plus one: thousands of idle WebSockets hold these). Once detached (limit hit, or the tunnel
      // stream closed) the body is still consumed, and discarded.
      const body = client.body;
      const max = this.config.limits.maxRequestBodyBytes;
      const toAgent = this.bytesToAgent;
      let received = 0;
      let attached = true;
      const onDrain = (): void => {
        body.resume();
      };
      const onEnd = (): void => {
        if (!attached) return;
        // An HTTP/1.1 body cut short by a parse error or a lost connection also ends its stream:
        // the upstream must not take what arrived as the whole body.
        if (client.bodyIncomplete?.() === true) stream.close(NGHTTP2_CANCEL);
        else stream.end();
      };
      detachBody = (): void => {
        if (!attached) return;
        attached = false;
        stream.off('drain', onDrain);
        body.off('end', onEnd);
      };
      body.on('data', (chunk: Buffer) => {
        received += chunk.length;
        toAgent.inc(chunk.length);
        if (!attached) return;
        if (max !== undefined && received > max) {
          detachBody();
          if (stream.closed) return;
          stream.close(NGHTTP2_CANCEL);
          if (!responded) {
            responded = true;
            client.respondError('BODY_TOO_LARGE', `request body exceeds ${max} bytes`);
          } else client.abort();
          return;
        }
        if (!stream.write(chunk)) body.pause();
      });
      stream.on('drain', onDrain);
      body.on('end', onEnd);
    }
  }

  // ---- HTTP/1.1 clients -------------------------------------------------------------------

  handleHttp1(req: IncomingMessage, res: ServerResponse): void {
    res.on('error', ignoreError);
    const headers = req.headers;
    const bodyless = headers['content-length'] === undefined && headers['transfer-encoding'] === undefined;
    const client: ClientSide = {
      kind: isGrpc(headers) ? 'grpc' : 'http1',
      body: bodyless || headers['content-length'] === '0' ? null : req,
      bodyIncomplete: () => !req.complete,
      respondError: (code, message, extra = {}) => {
        this.metrics.errors.inc({ code });
        if (res.headersSent || res.destroyed) {
          res.destroy();
          return;
        }
        res.writeHead(statusOf(code), { ...extra, 'content-type': 'text/plain; charset=utf-8', [H_ERROR]: code });
        res.end(`${code}: ${message}\n`);
        if (!req.complete) req.resume();
      },
      onResponse: (stream, responseHeaders, flags) => {
        const status = Number(responseHeaders[':status'] ?? 502);
        res.writeHead(status, filterResponseHeaders(responseHeaders) as Record<string, string | string[]>);
        if ((flags & NGHTTP2_FLAG_END_STREAM) !== 0) {
          res.end();
          return;
        }
        stream.on('trailers', (trailers: IncomingHttpHeaders) => {
          if (res.getHeader('content-length') === undefined) res.addTrailers(filterResponseHeaders(trailers) as Record<string, string>);
        });
        pipeCorked(stream, res, this.bytesToClient);
      },
      abort: () => res.destroy(),
      onGone: (callback) =>
        res.once('close', () => {
          if (!res.writableFinished) callback();
          else if (!req.complete) {
            // The upstream answered before the body was complete. If the client leaves before
            // sending the rest, the tunnel stream must go too: its request side would never end
            // (Node no longer tells this request that its connection closed).
            const socket = req.socket;
            if (socket.destroyed) return callback();
            socket.once('close', callback);
            req.once('end', () => socket.off('close', callback));
          }
        }),
    };
    const target = requestTarget(req.url ?? '/', headers.host);
    if (target === null) {
      client.respondError('BAD_REQUEST', 'the request-target is neither origin-form nor an http(s) absolute URI');
      return;
    }
    this.admit(headers, target.authority).then(
      (admitted) => {
        // The client may be gone by now, or answered 400 and closing (the parser refused the body
        // while admission ran): a request it will never see answered must not reach the upstream.
        if (req.destroyed || res.writableEnded || res.destroyed || req.socket.writableEnded) return;
        const pseudo = { ':method': req.method ?? 'GET', ':path': target.path, ':authority': target.authority ?? admitted.clusterId, ':scheme': 'https' };
        this.forward(admitted.clusterId, this.tunnelHeaders(headers, admitted, req.socket.remoteAddress, 'http1', pseudo), client);
      },
      (reason: unknown) => this.rejected(client, reason),
    );
  }

  /** HTTP/1.1 `Upgrade: websocket` → RFC 8441 extended CONNECT on the tunnel. */
  handleHttp1Upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', ignoreError);
    const headers = req.headers;
    const key = headers['sec-websocket-key'];
    const raw = rawResponder(socket, this.metrics);
    if (String(headers.upgrade).toLowerCase() !== 'websocket' || typeof key !== 'string') {
      raw.error('BAD_REQUEST', 'only WebSocket upgrades are supported');
      return;
    }
    const client = webSocketClient(socket, key, raw, this.bytesToClient);
    const path = req.url ?? '/';
    const remote = req.socket.remoteAddress;
    this.admit(headers, headers.host).then(
      (admitted) => {
        // A client gone while admission ran: its 'close' has fired, so `onGone` would never run and
        // the tunnel stream (and its upstream connection) would stay open for nobody.
        if (socket.destroyed) return;
        const pseudo = { ':method': 'CONNECT', ':protocol': 'websocket', ':path': path, ':authority': headers.host ?? admitted.clusterId, ':scheme': 'https' };
        const out = this.tunnelHeaders(headers, admitted, remote, 'http1', pseudo);
        delete out['sec-websocket-key'];
        if (head.length > 0) socket.unshift(head);
        this.forward(admitted.clusterId, out, client);
      },
      (reason: unknown) => this.rejected(client, reason),
    );
  }

  /** HTTP/1.1 `CONNECT host:port` → HTTP/2 CONNECT on the tunnel (raw TCP at the agent). */
  handleHttp1Connect(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', ignoreError);
    const headers = req.headers;
    const raw = rawResponder(socket, this.metrics);
    const target = req.url ?? '';
    const client: ClientSide = {
      kind: 'tcp',
      body: socket,
      respondError: (code, message, extra) => raw.error(code, message, extra),
      onResponse: (stream, responseHeaders) => {
        const status = Number(responseHeaders[':status'] ?? 502);
        if (status !== 200) raw.head(status, filterResponseHeaders(responseHeaders));
        else socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
        relay(stream, socket, this.bytesToClient);
      },
      abort: () => socket.destroy(),
      onGone: (callback) => socket.on('close', callback),
    };
    this.admit(headers, undefined).then(
      (admitted) => {
        if (socket.destroyed) return; // gone while admission ran (see handleHttp1Upgrade)
        const out = this.tunnelHeaders(headers, admitted, req.socket.remoteAddress, 'http1', { ':method': 'CONNECT', ':authority': target });
        if (head.length > 0) socket.unshift(head);
        this.forward(admitted.clusterId, out, client);
      },
      (reason: unknown) => this.rejected(client, reason),
    );
  }

  // ---- HTTP/2 clients ---------------------------------------------------------------------

  handleHttp2(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, flags: number): void {
    stream.on('error', ignoreError);
    const method = headers[':method'];
    const connect = method === 'CONNECT';
    const protocol = headers[':protocol'];
    const ended = (flags & NGHTTP2_FLAG_END_STREAM) !== 0;
    const wantTrailers = isGrpc(headers) || (typeof headers.te === 'string' && /trailers/i.test(headers.te));
    const client: ClientSide = {
      kind: connect ? (protocol === 'websocket' ? 'websocket' : 'tcp') : isGrpc(headers) ? 'grpc' : 'http2',
      body: ended ? null : stream,
      respondError: (code, message, extra = {}) => {
        this.metrics.errors.inc({ code });
        if (stream.destroyed || stream.closed) return;
        if (stream.headersSent) {
          stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
          return;
        }
        stream.respond({ ...extra, ':status': statusOf(code), 'content-type': 'text/plain; charset=utf-8', [H_ERROR]: code });
        stream.end(`${code}: ${message}\n`);
      },
      onResponse: (tunnelStream, responseHeaders, responseFlags) => {
        if (stream.destroyed || stream.closed) return;
        const endStream = (responseFlags & NGHTTP2_FLAG_END_STREAM) !== 0;
        const trailers = !endStream && !connect && (wantTrailers || isGrpc(responseHeaders));
        stream.respond({ ':status': Number(responseHeaders[':status'] ?? 502), ...filterResponseHeaders(responseHeaders) }, { endStream, waitForTrailers: trailers });
        if (trailers) {
          let saved: IncomingHttpHeaders | null = null;
          tunnelStream.on('trailers', (t: IncomingHttpHeaders) => {
            saved = t;
          });
          stream.once('wantTrailers', () => {
            if (saved !== null) stream.sendTrailers(filterResponseHeaders(saved));
            else stream.close();
          });
        }
        if (!endStream) relay(tunnelStream, stream, this.bytesToClient);
      },
      abort: () => {
        if (!stream.closed) stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
      },
      onGone: (callback) =>
        stream.once('close', () => {
          if (stream.rstCode !== NGHTTP2_NO_ERROR || !stream.writableFinished) callback();
        }),
    };
    const authority = headers[':authority'];
    this.admit(headers, connect && protocol === undefined ? undefined : authority).then(
      (admitted) => {
        // The tunnel stream is opened once the frames read with the request's HEADERS have been
        // processed: rapid reset (CVE-2023-44487) sends each stream's RST_STREAM right behind its
        // HEADERS, and admission (a cached token) completes in between. Opened at once, each such
        // stream went into the tunnel only to be reset there, and the agent's nghttp2 answers more
        // than 1,000 resets (then 33 a second) with GOAWAY: two bursts cost the cluster its tunnels.
        setImmediate(() => {
          // A stream the client reset meanwhile has already emitted 'close': `onGone` would never
          // run, and its tunnel stream would stay open with the response unread.
          if (stream.destroyed || stream.closed) return;
          const pseudo: OutgoingHttpHeaders = connect && protocol === undefined
            ? { ':method': 'CONNECT', ':authority': authority ?? '' }
            : {
                ':method': method ?? 'GET',
                ':path': headers[':path'] ?? '/',
                ':authority': authority ?? admitted.clusterId,
                ':scheme': 'https',
                ...(protocol === undefined ? {} : { ':protocol': protocol }),
              };
          this.forward(admitted.clusterId, this.tunnelHeaders(headers, admitted, stream.session?.socket?.remoteAddress, 'http2', pseudo), client);
        });
      },
      (reason: unknown) => this.rejected(client, reason),
    );
  }
}


/**
 * `source.pipe(res)`, but the writes of one tick go out in one syscall: the tunnel delivers a
 * download as many ≤16 KiB DATA frames per socket read, and writing each alone costs a syscall
 * apiece. The client socket is corked at the first chunk of a tick and uncorked on the next tick
 * (cork and uncork on the same socket object, which may move on to the next keep-alive response).
 * Backpressure as with pipe: pause on a full buffer, resume on drain.
 */
function pipeCorked(source: Readable, res: ServerResponse, counter: ByteCounter): void {
  const socket = res.socket;
  if (socket === null) {
    relay(source, res, counter);
    return;
  }
  let corked = false;
  const uncork = (): void => {
    corked = false;
    socket.uncork();
  };
  const resume = (): void => {
    source.resume();
  };
  const onData = (chunk: Buffer): void => {
    counter.inc(chunk.length);
    if (!corked) {
      corked = true;
      socket.cork();
      process.nextTick(uncork);
    }
    if (!res.write(chunk)) {
      source.pause();
      res.once('drain', resume);
    }
  };
  const onEnd = (): void => {
    res.end();
  };
  source.on('data', onData);
  source.once('end', onEnd);
  res.once('close', () => {
    source.off('data', onData);
    source.off('end', onEnd);
    res.off('drain', resume);
  });
}

/**
 * The client side of an HTTP/1.1 WebSocket upgrade. Built apart from the request handler so that
 * its closures (alive as long as the WebSocket) hold the socket, not the request and its headers.
 */
function webSocketClient(socket: Duplex, key: string, raw: ReturnType<typeof rawResponder>, toClient: ByteCounter): ClientSide {
  const client: ClientSide = {
    kind: 'websocket',
    body: socket,
    respondError: (code, message, extra) => raw.error(code, message, extra),
    onResponse: (stream, responseHeaders) => {
      const status = Number(responseHeaders[':status'] ?? 502);
      if (status !== 200) {
        raw.head(status, filterResponseHeaders(responseHeaders));
        relay(stream, socket, toClient);
        return;
      }
      const accept = createHash('sha1').update(`${key}${WS_GUID}`).digest('base64');
      const lines = ['HTTP/1.1 101 Switching Protocols', 'Upgrade: websocket', 'Connection: Upgrade', `Sec-WebSocket-Accept: ${accept}`];
      for (const name of ['sec-websocket-protocol', 'sec-websocket-extensions']) {
        const value = responseHeaders[name];
        if (typeof value === 'string') lines.push(`${name}: ${value}`);
      }
      socket.write(`${lines.join('\r\n')}\r\n\r\n`);
      relay(stream, socket, toClient);
    },
    abort: () => socket.destroy(),
    onGone: (callback) => socket.on('close', callback),
  };
  return client;
}

/**
 * The `:path` and authority of an HTTP/1.1 request-target: origin-form as it is; absolute-form
 * (RFC 9112 §3.2.2) by its own authority, which replaces Host; `*` for OPTIONS. Null otherwise.
 */
function requestTarget(url: string, host: string | undefined): { path: string; authority: string | undefined } | null {
  if (url.startsWith('/') || url === '*') return { path: url, authority: host };
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return null;
  }
  if ((parsed.protocol !== 'http:' && parsed.protocol !== 'https:') || parsed.username !== '' || parsed.password !== '') return null;
  return { path: `${parsed.pathname}${parsed.search}`, authority: parsed.host };
}

function isGrpc(headers: IncomingHttpHeaders): boolean {
  const type = headers['content-type'];
  return typeof type === 'string' && type.startsWith('application/grpc');
}

/** Writes an HTTP/1.1 response by hand on a socket taken over by `upgrade`/`connect`. */
function rawResponder(socket: Duplex, metrics: GatewayMetrics): {
  error(code: string, message: string, extra?: OutgoingHttpHeaders): void;
  head(status: number, headers: OutgoingHttpHeaders): void;
} {
  const head = (status: number, headers: OutgoingHttpHeaders): void => {
    const lines = [`HTTP/1.1 ${status} ${httpReason(status)}`];
    for (const [name, value] of Object.entries(headers)) {
      if (value === undefined) continue;
      for (const v of Array.isArray(value) ? value : [value]) lines.push(`${name}: ${String(v).replace(/[\r\n]/g, '')}`);
    }
    lines.push('connection: close');
    socket.write(`${lines.join('\r\n')}\r\n\r\n`);
  };
  return {
    head,
    error(code, message, extra = {}) {
      metrics.errors.inc({ code });
      if (socket.destroyed) return;
      const body = `${code}: ${message}\n`;
      head(statusOf(code), { ...extra, 'content-type': 'text/plain; charset=utf-8', 'content-length': String(Buffer.byteLength(body)), [H_ERROR]: code });
      socket.end(body);
      // Taken from the HTTP parser (upgrade, CONNECT), the socket reads nothing by itself: what
      // the client still sends would sit unread, its close would never be seen, and the
      // connection would stay open for good. Read on, and drop what comes.
      socket.resume();
    },
  };
}

export function httpReason(status: number): string {
  const reasons: Record<number, string> = { 200: 'OK', 400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 408: 'Request Timeout', 413: 'Content Too Large', 431: 'Request Header Fields Too Large', 502: 'Bad Gateway', 503: 'Service Unavailable', 504: 'Gateway Timeout' };
  return reasons[status] ?? 'Status';
}
