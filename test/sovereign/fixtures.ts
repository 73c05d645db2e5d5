/**
 * The pieces of a sovereign data plane for the tests, all real and on 127.0.0.1: the customer's
 * identity provider (jose ES256 keys, a JWKS endpoint that counts its fetches, tokens minted on
 * demand), the customer's certificate (test PKI), a recording upstream, an xDS server serving the
 * sovereign listener (xds/builders.ts) with the router's ADS client (`downstream: true`) and the
 * `SovereignFront`, and a client that writes a PROXY header before its TLS handshake.
 */
import { once } from 'node:events';
import * as http from 'node:http';
import * as net from 'node:net';
import type { AddressInfo } from 'node:net';
import * as tls from 'node:tls';
import { SignJWT, exportJWK, generateKeyPair } from 'jose';
import type { CryptoKey, JWK, JWTPayload } from 'jose';
import { AdsClient } from '../../agent/router/ads-client.js';
import { Router } from '../../agent/router/router.js';
import { SovereignFront } from '../../agent/router/sovereign-front.js';
import type { AccessRecord, SovereignFrontOptions } from '../../agent/router/sovereign-front.js';
import { V2_SIGNATURE } from '../../agent/router/proxy-protocol.js';
import { edsCluster, loadAssignment, routeConfiguration, sovereignListener, tlsSecret } from '../../xds/builders.js';
import type { SovereignListenerSpec } from '../../xds/builders.js';
import { XdsServer } from '../../xds/server.js';
import type { SnapshotInput } from '../../xds/snapshot.js';
import { createTestPki } from '../helpers/pki.js';
import type { TestPki, TlsMaterial } from '../helpers/pki.js';

export const ISSUER = 'https://idp.customer.test';
export const AUDIENCE = 'tether-data';

/** The customer's IdP: an ES256 key pair, its JWKS served over http on 127.0.0.1, and a minter. */
export interface CustomerIdp {
  jwksUri: string;
  /** JWKS documents served so far. */
  fetches: number;
  jwks: { keys: JWK[] };
  /** A token of this IdP; `claims` and `options` override the defaults (sub alice, roles [reader], 5 min). */
  mint(claims?: JWTPayload, options?: { expiresInSec?: number; audience?: string | string[]; issuer?: string; notBeforeSec?: number }): Promise<string>;
  close(): Promise<void>;
}

export async function customerIdp(): Promise<CustomerIdp> {
  const { publicKey, privateKey } = await generateKeyPair('ES256');
  const jwks = { keys: [{ ...(await exportJWK(publicKey)), kid: 'customer-1', alg: 'ES256', use: 'sig' }] };
  const sockets = new Set<net.Socket>();
  const idp: CustomerIdp = {
    jwksUri: '',
    fetches: 0,
    jwks,
    mint: (claims: JWTPayload = {}, options: { expiresInSec?: number; audience?: string | string[]; issuer?: string; notBeforeSec?: number } = {}) =>
      signWith(privateKey, 'customer-1', { sub: 'alice', roles: ['reader'], ...claims }, { issuer: ISSUER, audience: AUDIENCE, ...options }),
    close: () => Promise.resolve(),
  };
  const server = http.createServer((req, res) => {
    if (req.url !== '/jwks.json') return void res.writeHead(404).end();
    idp.fetches++;
    res.writeHead(200, { 'content-type': 'application/jwk-set+json' }).end(JSON.stringify(jwks));
  });
  server.on('connection', (socket: net.Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  idp.jwksUri = `http://127.0.0.1:${(server.address() as AddressInfo).port}/jwks.json`;
  idp.close = () =>
    new Promise<void>((resolve) => {
      for (const socket of sockets) socket.destroy();
      server.close(() => resolve());
    });
  return idp;
}

/** Sign `claims` (ES256 unless the key says otherwise) with `iat`, `exp` (5 min) and the given iss/aud. */
export async function signWith(
  key: CryptoKey | Uint8Array,
  kid: string,
  claims: JWTPayload,
  options: { issuer: string; audience: string | string[]; expiresInSec?: number; notBeforeSec?: number; alg?: string },
): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  let jwt = new SignJWT(claims)
    .setProtectedHeader({ alg: options.alg ?? 'ES256', kid, typ: 'JWT' })
    .setIssuer(options.issuer)
    .setAudience(options.audience)
    .setIssuedAt(now)
    .setExpirationTime(now + (options.expiresInSec ?? 300));
  if (options.notBeforeSec !== undefined) jwt = jwt.setNotBefore(now + options.notBeforeSec);
  return jwt.sign(key);
}

/** An upstream answering 200 with what it received as JSON: method, path, headers. `/data/hold` waits for release(). */
export interface RecordingUpstream {
  port: number;
  hits: number;
  /** Resolves when a `/data/hold` request has arrived (and is being held). */
  held(): Promise<void>;
  /** Answer the held requests. */
  release(): void;
  close(): Promise<void>;
}

export interface Echo {
  method: string;
  path: string;
  headers: http.IncomingHttpHeaders;
}

export async function recordingUpstream(): Promise<RecordingUpstream> {
  const sockets = new Set<net.Socket>();
  const holding: Array<() => void> = [];
  let arrived: (() => void) | null = null;
  let arrival = new Promise<void>((resolve) => (arrived = resolve));
  const upstream: RecordingUpstream = {
    port: 0,
    hits: 0,
    held: () => arrival,
    release: () => {
      for (const answer of holding.splice(0)) answer();
      arrival = new Promise<void>((resolve) => (arrived = resolve));
    },
    close: () => Promise.resolve(),
  };
  const server = http.createServer((req, res) => {
    upstream.hits++;
    req.resume();
    const echo: Echo = { method: req.method ?? '', path: req.url ?? '', headers: req.headers };
    const answer = (): void => void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(echo));
    if (req.url !== '/data/hold') answer();
    else {
      holding.push(answer);
      arrived?.();
    }
  });
  server.on('connection', (socket: net.Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  upstream.port = (server.address() as AddressInfo).port;
  upstream.close = () =>
    new Promise<void>((resolve) => {
      for (const socket of sockets) socket.destroy();
      server.close(() => resolve());
    });
  return upstream;
}

export const LISTENER = 'sovereign';
export const ROUTES = 'sovereign-routes';
export const SECRET = 'customer-cert';

/** The customer's policy in these tests: readers from 10/8 and 127/8 may read /data/, alice may do anything. */
export function listenerSpec(idp: CustomerIdp, overrides: Partial<SovereignListenerSpec> = {}): SovereignListenerSpec {
  return {
    name: LISTENER,
    address: '127.0.0.1',
    port: 0,
    routeConfigName: ROUTES,
    tls: { sdsSecretName: SECRET },
    jwt: {
      issuer: ISSUER,
      audiences: [AUDIENCE],
      jwks: { remote: { uri: idp.jwksUri, cluster: 'customer-idp', cacheDurationMs: 600_000 } },
      claimToHeaders: [{ claim: 'sub', header: 'x-customer-subject' }],
    },
    rbac: {
      policies: {
        readers: { principals: [{ and: [{ claim: 'roles', includes: 'reader' }, { or: [{ remoteIp: '10.0.0.0/8' }, { remoteIp: '127.0.0.0/8' }] }] }], permissions: [{ pathPrefix: '/data/' }] },
      },
    },
    ...overrides,
  };
}

export function sovereignSnapshot(spec: SovereignListenerSpec, upstreamPort: number, certificate: TlsMaterial): SnapshotInput {
  const jwks = 'remote' in spec.jwt.jwks ? [edsCluster({ name: spec.jwt.jwks.remote.cluster })] : [];
  const jwksEndpoints = 'remote' in spec.jwt.jwks ? [loadAssignment(spec.jwt.jwks.remote.cluster, [{ address: '127.0.0.1', port: Number(new URL(spec.jwt.jwks.remote.uri).port) }])] : [];
  return {
    listeners: [sovereignListener(spec)],
    routes: [routeConfiguration(ROUTES, [{ name: 'data', domains: ['*'], routes: [{ prefix: '/', cluster: 'data' }] }])],
    clusters: [edsCluster({ name: 'data', connectTimeoutMs: 1000 }), ...jwks],
    endpoints: [loadAssignment('data', [{ address: '127.0.0.1', port: upstreamPort }]), ...jwksEndpoints],
    secrets: [tlsSecret(SECRET, certificate.cert, certificate.key)],
  };
}

export interface SovereignRig {
  pki: TestPki;
  certificate: TlsMaterial;
  idp: CustomerIdp;
  upstream: RecordingUpstream;
  server: XdsServer;
  client: AdsClient;
  router: Router;
  front: SovereignFront;
  port: number;
  /** Access records seen so far, in order. */
  records: AccessRecord[];
  /** The next access record for which `when` holds (records already seen count). */
  access(when: (record: AccessRecord) => boolean, what: string, ms?: number): Promise<AccessRecord>;
  close(): Promise<void>;
}

export async function startSovereign(options: { spec?: (idp: CustomerIdp) => SovereignListenerSpec; front?: Partial<SovereignFrontOptions> } = {}): Promise<SovereignRig> {
  const pki = await createTestPki({ trustDomain: 'customer.test' });
  const certificate = await pki.gatewayCert({ dnsNames: ['localhost', 'data.customer.test'], ipAddresses: ['127.0.0.1'] });
  const idp = await customerIdp();
  const upstream = await recordingUpstream();
  const server = new XdsServer({ validateFor: ['envoy'] });
  const router = new Router();
  let client: AdsClient | null = null;
  let front: SovereignFront | null = null;
  const close = async (): Promise<void> => {
    await front?.close();
    await client?.close();
    await server.close();
    await upstream.close();
    await idp.close();
  };
  try {
    server.setSnapshot(sovereignSnapshot((options.spec ?? listenerSpec)(idp), upstream.port, certificate));
    const { port: xdsPort } = await server.listen({ host: '127.0.0.1', port: 0 });
    client = new AdsClient({ target: `127.0.0.1:${xdsPort}`, router, nodeId: 'sovereign-router', listenerName: LISTENER, downstream: true });
    front = new SovereignFront({ router, ...options.front });
    const records: AccessRecord[] = [];
    const waiters = new Set<{ when: (r: AccessRecord) => boolean; resolve: (r: AccessRecord) => void }>();
    front.on('access', (record) => {
      records.push(record);
      for (const waiter of waiters) if (waiter.when(record)) waiter.resolve(record);
    });
    client.start();
    const { port } = await front.start();
    const access = (when: (record: AccessRecord) => boolean, what: string, ms = 5000): Promise<AccessRecord> => {
      const seen = records.find(when);
      if (seen !== undefined) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const waiter = {
          when,
          resolve: (record: AccessRecord) => {
            clearTimeout(timer);
            waiters.delete(waiter);
            resolve(record);
          },
        };
        const timer = setTimeout(() => {
          waiters.delete(waiter);
          reject(new Error(`no access record for ${what} within ${ms} ms`));
        }, ms);
        waiters.add(waiter);
      });
    };
    return { pki, certificate, idp, upstream, server, client, router, front, port, records, access, close };
  } catch (reason) {
    await close();
    throw reason;
  }
}

/** A PROXY protocol v1 line. */
export function proxyV1(source: { address: string; port: number }, destination: { address: string; port: number }): Buffer {
  const family = net.isIP(source.address) === 6 ? 'TCP6' : 'TCP4';
  return Buffer.from(`PROXY ${family} ${source.address} ${destination.address} ${source.port} ${destination.port}\r\n`, 'latin1');
}

/** A PROXY protocol v2 header (PROXY command, TCP over IPv4). */
export function proxyV2(source: { address: string; port: number }, destination: { address: string; port: number }): Buffer {
  const body = Buffer.alloc(12);
  source.address.split('.').forEach((octet, i) => (body[i] = Number(octet)));
  destination.address.split('.').forEach((octet, i) => (body[4 + i] = Number(octet)));
  body.writeUInt16BE(source.port, 8);
  body.writeUInt16BE(destination.port, 10);
  const head = Buffer.alloc(16);
  V2_SIGNATURE.copy(head);
  head[12] = 0x21;
  head[13] = 0x11;
  head.writeUInt16BE(body.length, 14);
  return Buffer.concat([head, body]);
}

export interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
  /** The client's local port (what a PROXY-less peer address would show). */
  localPort: number;
}

/**
 * One HTTP/1.1 request over TLS to `port` (on `host`, default 127.0.0.1), after writing
 * `preamble` (a PROXY header) in clear. Rejects when the connection is closed before a response
 * (a refused connection).
 */
export function sovereignRequest(port: number, ca: string, options: { host?: string; preamble?: Buffer; path?: string; headers?: Record<string, string>; servername?: string; tls?: tls.ConnectionOptions } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const raw = net.connect(port, options.host ?? '127.0.0.1');
    raw.once('error', reject);
    raw.once('connect', () => {
      if (options.preamble !== undefined) raw.write(options.preamble);
      const req = http.request({
        method: 'GET',
        path: options.path ?? '/data/x',
        headers: { host: 'data.customer.test', connection: 'close', ...options.headers },
        // No agent: with createConnection, the request uses this one connection.
        createConnection: () => tls.connect({ socket: raw, ca, servername: options.servername ?? 'localhost', ALPNProtocols: ['http/1.1'], ...options.tls }),
      });
      req.once('response', (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.once('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString(), localPort: raw.localPort ?? 0 }));
        res.once('error', reject);
      });
      req.once('error', (reason) => {
        raw.destroy();
        reject(reason);
      });
      req.end();
    });
  });
}
