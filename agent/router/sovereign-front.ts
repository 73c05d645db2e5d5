/**
 * The sovereign front: the built-in router's listener for clients that reach a cluster's data
 * plane through the customer's load balancer (DESIGN.md §7). It serves the listener its router's
 * ADS client compiled with `downstream: true` (see downstream.ts), in Envoy's order:
 *
 * 1. listen on the listener's socket address (loopback or an in-cluster address only);
 * 2. read the PROXY protocol header first (v1 or v2, bounded by a deadline): a connection without
 *    a valid one is closed and counted (`PROXY_PROTOCOL_*`); its source is the client address;
 * 3. TLS with the customer's certificate (inline or SDS), TLS 1.2 or later, ALPN http/1.1;
 * 4. HTTP/1.1, and per request the HTTP filters in order: jwt_authn (401 `UNAUTHENTICATED` without a
 *    token, `TOKEN_*` for a refused one), rbac (403 `RBAC_DENIED`); then the route, forwarded by the
 *    router's `RouterProxy` (its retries and timeouts).
 *
 * Every refusal answers with a `tether-error` header (connections refused before TLS are closed),
 * counts in `tether_sovereign_*`, and writes one access-log line with the real client address
 * (also emitted as `access`, for tests and status). Configuration updates apply to new connections
 * (TLS) and new requests (filters, routes); a changed address is bound before the old one closes.
 */
import { EventEmitter } from 'node:events';
import * as http from 'node:http';
import * as net from 'node:net';
import type { AddressInfo, Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import * as tls from 'node:tls';
import { Counter, Gauge } from 'prom-client';
import type { Registry } from 'prom-client';
import { TetherError, getErrorMessage } from '../../common/errors.js';
import type { Closable } from '../../common/lifecycle.js';
import { formatHostPort, listenAs } from '../../common/listen.js';
import { silentLogger } from '../../common/log.js';
import type { Logger } from '../../common/log.js';
import { createRegistry } from '../../common/metrics.js';
import type { RouteRequest } from './compile.js';
import type { CompiledDownstream } from './downstream.js';
import { listenAddressProblem } from './downstream.js';
import type { CertificatePair } from './downstream-tls.js';
import { RouterProxy, answerError, routeFailureStatus } from './http-proxy.js';
import { JwtAuthenticator, claimHeaderValue } from './jwt-authn.js';
import type { ProxyHeader } from './proxy-protocol.js';
import { readProxyHeader } from './proxy-protocol.js';
import { plainIp } from './rbac.js';
import type { Router, RouterConfig } from './router.js';

/** Codes of this front (besides the PROXY protocol ones, the token ones and the router's). */
export const SovereignCode = {
  /** The TLS handshake failed (wrong version, no shared cipher or ALPN, not TLS at all). */
  TLS_HANDSHAKE_FAILED: 'TLS_HANDSHAKE_FAILED',
  /** No completed TLS handshake within the deadline. */
  TLS_HANDSHAKE_TIMEOUT: 'TLS_HANDSHAKE_TIMEOUT',
  /** RBAC refused the request (403). */
  RBAC_DENIED: 'RBAC_DENIED',
  /** No listener with downstream security, or its certificate has not arrived (start, or a connection meanwhile). */
  NOT_READY: 'SOVEREIGN_NOT_READY',
  /** The listener's address is not loopback or in-cluster (checked again before binding). */
  LISTEN_ADDRESS_REFUSED: 'SOVEREIGN_LISTEN_ADDRESS_REFUSED',
  /** start() after close(). */
  CLOSED: 'SOVEREIGN_FRONT_CLOSED',
} as const;

export interface SovereignFrontOptions {
  /** A router whose ADS client compiles with `downstream: true`: its listener says what to enforce. */
  router: Router;
  logger?: Logger;
  /** Where `tether_sovereign_*` go (default: a registry of its own). */
  registry?: Registry;
  /** Deadline for a complete PROXY header (default 5 s). */
  proxyHeaderTimeoutMs?: number;
  /** Deadline for the TLS handshake after it (default 10 s). */
  handshakeTimeoutMs?: number;
  /** A connection with no bytes either way for this long is closed (default 120 s). */
  idleTimeoutMs?: number;
  maxHeaderBytes?: number;
  /** How long start() waits for a servable configuration (default 5 s). */
  readyTimeoutMs?: number;
  /** Upstream timeout when the route sets none (default 30 s). */
  defaultTimeoutMs?: number;
}

export interface Endpoint {
  address: string;
  port: number;
}

/** One access-log line: a refused connection (`stage: 'connection'`) or a request. */
export interface AccessRecord {
  stage: 'connection' | 'request';
  listener: string;
  /** `OK`, or the refusal/error code (also in the `tether-error` header of the answer). */
  code: string;
  status: number | null;
  /** The real client: the PROXY header's source, else the connected peer. */
  client: Endpoint | null;
  /** The connected peer (the load balancer). */
  peer: Endpoint;
  /** PROXY protocol version of the connection (null: none, or refused before one was read). */
  proxy: 1 | 2 | null;
  tls: string | null;
  method: string | null;
  path: string | null;
  authority: string | null;
  /** `sub` and `iss` of the verified token, when one was. */
  subject: string | null;
  issuer: string | null;
  /** The RBAC policy that matched (ALLOW: the one that admitted; DENY: the one that refused). */
  policy: string | null;
  cluster: string | null;
  upstream: string | null;
  durationMs: number;
  message?: string;
}

export interface SovereignFrontEvents {
  access: [AccessRecord];
  /** The front listens on a (new) address. */
  listening: [AddressInfo];
}

/** What one configuration means for new connections. */
interface Serving {
  listener: string;
  downstream: CompiledDownstream;
  context: tls.SecureContext;
  contextKey: string;
}

interface Connection {
  peer: Endpoint;
  client: Endpoint;
  proxy: ProxyHeader | null;
  tls: string | null;
  /** Requests in progress on this connection. */
  active: number;
}

interface SovereignMetrics {
  connections: Counter<'result'>;
  open: Gauge;
  requests: Counter<'code'>;
  jwtCache: Counter<'result'>;
}

const SOVEREIGN_METRICS = ['tether_sovereign_connections_total', 'tether_sovereign_connections_open', 'tether_sovereign_requests_total', 'tether_sovereign_jwt_cache_lookups_total'] as const;

function createMetrics(registry: Registry): SovereignMetrics {
  const registers = [registry];
  return {
    connections: new Counter({
      name: 'tether_sovereign_connections_total',
      help: 'Connections to the sovereign listener: accepted (PROXY header and TLS done), or the refusal code (PROXY_PROTOCOL_*, TLS_HANDSHAKE_*, SOVEREIGN_NOT_READY).',
      labelNames: ['result'],
      registers,
    }),
    open: new Gauge({ name: 'tether_sovereign_connections_open', help: 'Open connections to the sovereign listener.', registers }),
    requests: new Counter({
      name: 'tether_sovereign_requests_total',
      help: 'Requests on the sovereign listener by outcome: OK, or the code answered (UNAUTHENTICATED, TOKEN_*, RBAC_DENIED, NO_ROUTE, UPSTREAM_*, ...).',
      labelNames: ['code'],
      registers,
    }),
    jwtCache: new Counter({
      name: 'tether_sovereign_jwt_cache_lookups_total',
      help: 'Lookups in the jwt_authn providers\' verified-token caches (jwt_cache_config): hit (no signature check) or miss.',
      labelNames: ['result'],
      registers,
    }),
  };
}

function endpointOf(address: string | undefined, port: number | undefined): Endpoint {
  return { address: plainIp(address ?? ''), port: port ?? 0 };
}

function pathOnly(path: string): string {
  const q = path.search(/[?#]/);
  return q < 0 ? path : path.slice(0, q);
}

export class SovereignFront extends EventEmitter<SovereignFrontEvents> implements Closable {
  readonly registry: Registry;
  readonly #router: Router;
  readonly #logger: Logger;
  readonly #metrics: SovereignMetrics;
  readonly #proxy: RouterProxy;
  readonly #authenticator: JwtAuthenticator;
  readonly #h1: http.Server;
  readonly #options: Required<Pick<SovereignFrontOptions, 'proxyHeaderTimeoutMs' | 'handshakeTimeoutMs' | 'idleTimeoutMs' | 'readyTimeoutMs'>>;
  /** Raw connections (until closed), with what is known of them. */
  readonly #sockets = new Set<Socket>();
  readonly #connections = new WeakMap<Socket, Connection>();
  /** Raw connections whose TLS handshake completed (their TLS socket is in #sockets too). */
  readonly #upgraded = new WeakSet<Socket>();
  readonly #servers = new Set<net.Server>();
  #server: net.Server | null = null;
  #address: AddressInfo | null = null;
  #serving: Serving | null = null;
  #draining = false;
  #closed = false;
  #closing: Promise<void> | null = null;
  readonly #onUpdate = (config: RouterConfig): void => this.#apply(config);

  constructor(options: SovereignFrontOptions) {
    super();
    this.#router = options.router;
    this.#logger = options.logger ?? silentLogger();
    this.registry = options.registry ?? createRegistry();
    this.#metrics = createMetrics(this.registry);
    const jwtCache = this.#metrics.jwtCache;
    this.#authenticator = new JwtAuthenticator({ onCacheLookup: (result) => jwtCache.inc({ result }) });
    this.#proxy = new RouterProxy({ router: options.router, ...(options.defaultTimeoutMs === undefined ? {} : { defaultTimeoutMs: options.defaultTimeoutMs }) });
    this.#options = {
      proxyHeaderTimeoutMs: options.proxyHeaderTimeoutMs ?? 5_000,
      handshakeTimeoutMs: options.handshakeTimeoutMs ?? 10_000,
      idleTimeoutMs: options.idleTimeoutMs ?? 120_000,
      readyTimeoutMs: options.readyTimeoutMs ?? 5_000,
    };
    // Never listens: this front hands it TLS sockets. Its socket timeout closes idle connections.
    this.#h1 = http.createServer({ maxHeaderSize: options.maxHeaderBytes ?? 16 * 1024, requestTimeout: 0 });
    this.#h1.timeout = this.#options.idleTimeoutMs;
    this.#h1.on('request', (req, res) => void this.#request(req, res));
    this.#h1.on('clientError', (error: Error, socket: Socket) => {
      if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\ntether-error: BAD_REQUEST\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
      else socket.destroy();
      this.#logger.debug({ err: error }, 'sovereign front: bad HTTP request');
    });
    this.#router.on('updated', this.#onUpdate);
  }

  /** Where the front listens (null before start()). */
  get address(): AddressInfo | null {
    return this.#address;
  }

  /** The JWT verifier (remote JWKS fetch counts, for tests and status). */
  get authenticator(): JwtAuthenticator {
    return this.#authenticator;
  }

  /** Wait for a servable configuration (listener with downstream security, certificate present) and listen on its address. */
  async start(): Promise<AddressInfo> {
    if (this.#closed) throw new TetherError(SovereignCode.CLOSED, 'this sovereign front is closed');
    const config = this.#router.config;
    if (config !== null) this.#apply(config);
    if (this.#serving === null) await this.#ready();
    const address = this.#address ?? (await this.#bind());
    return address;
  }

  #ready(): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (this.#serving === null) return;
        clearTimeout(timer);
        this.#router.off('updated', check);
        resolve();
      };
      const timer = setTimeout(() => {
        this.#router.off('updated', check);
        const why = this.#router.config === null ? 'no configuration from xDS' : this.#notServable(this.#router.config) ?? 'not servable';
        reject(new TetherError(SovereignCode.NOT_READY, `no servable sovereign listener within ${this.#options.readyTimeoutMs} ms: ${why}`));
      }, this.#options.readyTimeoutMs);
      // Registered after #onUpdate, so #serving is current when this runs.
      this.#router.on('updated', check);
    });
  }

  /** Why a configuration cannot be served, or null. */
  #notServable(config: RouterConfig): string | null {
    const downstream = config.listener.downstream;
    if (downstream === null) return `listener "${config.listener.name}" has no downstream part (its ADS client needs downstream: true)`;
    const certificate = downstream.tls.certificate;
    if ('sds' in certificate && config.secrets?.get(certificate.sds) === undefined) return `secret "${certificate.sds}" not received yet`;
    return null;
  }

  /** A new router configuration: new TLS context (when it changed) and, when the address moved, a new socket. */
  #apply(config: RouterConfig): void {
    if (this.#closed || this.#notServable(config) !== null) return;
    const downstream = config.listener.downstream as CompiledDownstream;
    const certificate = downstream.tls.certificate;
    const pair: CertificatePair = 'sds' in certificate ? (config.secrets?.get(certificate.sds)?.certificate as CertificatePair) : certificate;
    const { minVersion, maxVersion } = downstream.tls;
    const contextKey = `${minVersion} ${maxVersion}\n${pair.cert}\n${pair.key}`;
    const previous = this.#serving;
    const context = previous?.contextKey === contextKey ? previous.context : tls.createSecureContext({ cert: pair.cert, key: pair.key, minVersion, maxVersion });
    this.#serving = { listener: config.listener.name, downstream, context, contextKey };
    const bound = this.#address;
    if (bound !== null && !this.#draining && (downstream.address.host !== bound.address || (downstream.address.port !== 0 && downstream.address.port !== bound.port))) {
      this.#bind().catch((reason: unknown) => this.#logger.error({ err: reason }, 'sovereign front: cannot move to the new listener address; still serving the old one'));
    }
  }

  async #bind(): Promise<AddressInfo> {
    const serving = this.#serving;
    if (serving === null) throw new TetherError(SovereignCode.NOT_READY, 'no servable sovereign listener');
    const { host, port } = serving.downstream.address;
    const problem = listenAddressProblem(host);
    if (problem !== null) throw new TetherError(SovereignCode.LISTEN_ADDRESS_REFUSED, `listener "${serving.listener}" address ${problem}`);
    const server = net.createServer({ noDelay: true, pauseOnConnect: false }, (socket) => this.#accept(socket));
    await listenAs(
      new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, host, () => {
          server.off('error', reject);
          resolve();
        });
      }),
      { host, port, flag: `listener "${serving.listener}" address` },
    );
    server.on('error', (reason: unknown) => this.#logger.error({ err: reason }, 'sovereign front: listening socket error'));
    const old = this.#server;
    this.#server = server;
    this.#servers.add(server);
    this.#address = server.address() as AddressInfo;
    if (old !== null) this.#stopListening(old);
    if (this.#closed) this.#stopListening(server);
    this.#logger.info({ listener: serving.listener, address: formatHostPort(this.#address.address, this.#address.port) }, 'sovereign front listening');
    this.emit('listening', this.#address);
    return this.#address;
  }

  #stopListening(server: net.Server): void {
    server.close(() => this.#servers.delete(server));
  }

  #accept(raw: Socket): void {
    const started = performance.now();
    this.#sockets.add(raw);
    this.#metrics.open.inc();
    raw.once('close', () => {
      this.#sockets.delete(raw);
      this.#metrics.open.dec();
    });
    raw.on('error', (reason: unknown) => this.#logger.debug({ err: reason }, 'sovereign front: connection error'));
    const peer = endpointOf(raw.remoteAddress, raw.remotePort);
    const serving = this.#serving;
    if (serving === null || this.#draining) {
      this.#refuseConnection(raw, serving?.listener ?? '', SovereignCode.NOT_READY, peer, null, started, this.#draining ? 'draining' : 'no servable configuration');
      return;
    }
    const policy = serving.downstream.proxyProtocol;
    const header = policy === null ? Promise.resolve({ ok: true as const, header: null, rest: Buffer.alloc(0) }) : readProxyHeader(raw, policy, this.#options.proxyHeaderTimeoutMs);
    void header.then((read) => {
      if (raw.destroyed) return;
      if (!read.ok) {
        this.#refuseConnection(raw, serving.listener, read.code, peer, null, started, read.message);
        return;
      }
      if (read.rest.length > 0) raw.unshift(read.rest);
      const source = read.header?.source;
      const client = source === null || source === undefined ? peer : { address: plainIp(source.address), port: source.port };
      this.#handshake(raw, serving, { peer, client, proxy: read.header, tls: null, active: 0 }, started);
    });
  }

  #handshake(raw: Socket, serving: Serving, connection: Connection, started: number): void {
    const alpn = serving.downstream.tls.alpn;
    const secure = new tls.TLSSocket(raw, { isServer: true, secureContext: serving.context, ...(alpn.length > 0 ? { ALPNProtocols: alpn } : {}) });
    let done = false;
    const timer = setTimeout(() => fail(SovereignCode.TLS_HANDSHAKE_TIMEOUT, `no TLS handshake within ${this.#options.handshakeTimeoutMs} ms`), this.#options.handshakeTimeoutMs);
    const fail = (code: string, message: string): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      secure.destroy();
      this.#refuseConnection(raw, serving.listener, code, connection.peer, connection, started, message);
    };
    const closed = (): void => fail(SovereignCode.TLS_HANDSHAKE_FAILED, 'the connection closed during the TLS handshake');
    secure.once('error', (reason: unknown) => fail(SovereignCode.TLS_HANDSHAKE_FAILED, getErrorMessage(reason)));
    secure.once('close', closed);
    secure.once('secure', () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      secure.off('close', closed);
      secure.on('error', (reason: unknown) => this.#logger.debug({ err: reason }, 'sovereign front: TLS connection error'));
      connection.tls = secure.getProtocol();
      this.#connections.set(secure, connection);
      this.#upgraded.add(raw);
      this.#sockets.add(secure);
      secure.once('close', () => this.#sockets.delete(secure));
      this.#metrics.connections.inc({ result: 'accepted' });
      this.#h1.emit('connection', secure);
    });
  }

  #refuseConnection(raw: Socket, listener: string, code: string, peer: Endpoint, connection: Connection | null, started: number, message: string): void {
    raw.destroy();
    this.#metrics.connections.inc({ result: code });
    this.#log({
      stage: 'connection',
      listener,
      code,
      status: null,
      client: connection?.client ?? null,
      peer,
      proxy: connection?.proxy?.version ?? null,
      tls: null,
      method: null,
      path: null,
      authority: null,
      subject: null,
      issuer: null,
      policy: null,
      cluster: null,
      upstream: null,
      durationMs: performance.now() - started,
      message,
    });
  }

  async #request(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const started = performance.now();
    const connection = this.#connections.get(req.socket) ?? { peer: endpointOf(req.socket.remoteAddress, req.socket.remotePort), client: endpointOf(req.socket.remoteAddress, req.socket.remotePort), proxy: null, tls: null, active: 0 };
    connection.active++;
    if (this.#draining) res.setHeader('connection', 'close');
    const record: AccessRecord = {
      stage: 'request',
      listener: this.#serving?.listener ?? '',
      code: 'OK',
      status: null,
      client: connection.client,
      peer: connection.peer,
      proxy: connection.proxy?.version ?? null,
      tls: connection.tls,
      method: req.method ?? null,
      path: req.url ?? null,
      authority: req.headers.host ?? null,
      subject: null,
      issuer: null,
      policy: null,
      cluster: null,
      upstream: null,
      durationMs: 0,
    };
    let logged = false;
    const finish = (): void => {
      if (logged) return;
      logged = true;
      connection.active--;
      record.status = res.statusCode;
      const code = res.getHeader('tether-error');
      if (typeof code === 'string') record.code = code;
      record.durationMs = performance.now() - started;
      this.#metrics.requests.inc({ code: record.code });
      this.#log(record);
      if (this.#draining && connection.active === 0 && !req.socket.destroyed) req.socket.end();
    };
    res.once('finish', finish);
    res.once('close', finish);
    try {
      await this.#filterAndForward(req, res, connection, record);
    } catch (reason) {
      this.#logger.error({ err: reason }, 'sovereign front: request failed');
      if (!res.headersSent) this.#refuse(res, 500, 'INTERNAL', 'internal error');
      else res.destroy();
    }
  }

  async #filterAndForward(req: http.IncomingMessage, res: http.ServerResponse, connection: Connection, record: AccessRecord): Promise<void> {
    const config = this.#router.config;
    const downstream = config?.listener.downstream ?? null;
    if (config === null || downstream === null) {
      this.#refuse(res, 503, SovereignCode.NOT_READY, 'no servable configuration');
      return;
    }
    const headers = req.headers;
    // Headers this front sets itself are never taken from the client.
    for (const filter of downstream.filters) {
      if (filter.kind !== 'jwt_authn') continue;
      for (const provider of filter.config.providers.values()) for (const { header } of provider.claimToHeaders) delete headers[header];
    }
    const request: RouteRequest = { method: req.method ?? 'GET', path: req.url ?? '/', authority: headers.host ?? '', headers };
    const path = pathOnly(request.path);
    const payloads = new Map<string, Record<string, unknown>>();
    for (const filter of downstream.filters) {
      if (filter.kind === 'jwt_authn') {
        const outcome = await this.#authenticator.authenticate(filter.config, request, path);
        if (!outcome.ok) {
          record.message = outcome.error.rawMessage;
          res.setHeader('www-authenticate', `Bearer error="invalid_token"`);
          this.#refuse(res, 401, outcome.error.code, outcome.error.rawMessage);
          return;
        }
        let forward = outcome.verified.length === 0;
        for (const { provider, payload } of outcome.verified) {
          record.subject ??= typeof payload.sub === 'string' ? payload.sub : null;
          record.issuer ??= provider.issuer;
          forward ||= provider.forward;
          if (provider.payloadKey !== null) payloads.set(provider.payloadKey, payload);
          for (const { claim, header } of provider.claimToHeaders) {
            const value = claimHeaderValue(payload, claim);
            if (value !== null) headers[header] = value;
          }
        }
        if (!forward) delete headers.authorization;
      } else {
        const decision = filter.config.decide({ request, path, remoteIp: connection.client.address, directRemoteIp: connection.peer.address, jwtPayloads: payloads });
        record.policy = decision.policy;
        if (!decision.allowed) {
          this.#refuse(res, 403, SovereignCode.RBAC_DENIED, decision.policy === null ? 'no RBAC policy admits this request' : `RBAC policy "${decision.policy}" refuses this request`);
          return;
        }
      }
    }
    const resolution = this.#router.resolve(request);
    if (!resolution.ok) {
      this.#refuse(res, routeFailureStatus(resolution.reason), resolution.reason, resolution.message);
      return;
    }
    const { decision } = resolution;
    record.cluster = decision.cluster;
    record.upstream = decision.upstream.host;
    // As Envoy with use_remote_address: the client address (from PROXY protocol) is appended.
    const forwarded = headers['x-forwarded-for'];
    headers['x-forwarded-for'] = forwarded === undefined ? connection.client.address : `${String(forwarded)}, ${connection.client.address}`;
    headers['x-forwarded-proto'] = 'https';
    await this.#proxy.forward(req, res, decision);
  }

  #refuse(res: http.ServerResponse, status: number, code: string, message: string): void {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    answerError(res, status, code, message);
  }

  #log(record: AccessRecord): void {
    const level = record.code === 'OK' ? 'info' : 'warn';
    this.#logger[level]({ access: record }, record.stage === 'connection' ? 'sovereign connection refused' : 'sovereign request');
    this.emit('access', record);
  }

  /** Stop listening, let requests in progress finish (idle connections close now), then close. */
  async drain(graceMs = 10_000): Promise<void> {
    if (this.#closed) return this.close();
    this.#draining = true;
    for (const server of this.#servers) this.#stopListening(server);
    for (const socket of this.#sockets) {
      const connection = this.#connections.get(socket);
      // Raw sockets still reading a PROXY header or handshaking have no request to finish; a raw
      // socket under an established TLS socket closes with it.
      if (connection === undefined ? !this.#upgraded.has(socket) : connection.active === 0) socket.destroy();
    }
    const deadline = Date.now() + graceMs;
    while (this.#sockets.size > 0 && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(50, Math.max(0, deadline - Date.now())));
        timer.unref();
      });
    }
    await this.close();
  }

  /** Close everything now. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#closed = true;
      this.#draining = true;
      this.#router.off('updated', this.#onUpdate);
      const servers = [...this.#servers];
      for (const socket of this.#sockets) socket.destroy();
      await Promise.all(servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve()))));
      this.#servers.clear();
      this.#server = null;
      await this.#proxy.close();
      this.#authenticator.clear();
      // Release the series, so that a later front can register them on a shared (agent) registry.
      for (const name of SOVEREIGN_METRICS) this.registry.removeSingleMetric(name);
    })();
    return this.#closing;
  }
}
