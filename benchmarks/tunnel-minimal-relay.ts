/**
 * The tunnel benchmark's minimal Node relay: the plainest Node.js program that carries requests the
 * way issue 3 fixes the design, run as two child processes like `tunnel-stack.ts`:
 *
 *   node --import ./bin/typescript.js benchmarks/tunnel-minimal-relay.ts gateway CONFIG.json
 *   node --import ./bin/typescript.js benchmarks/tunnel-minimal-relay.ts agent CONFIG.json
 *
 * The agent dials the gateway over TLS 1.3 with client certificates and ALPN `tether-tunnel/1`; the
 * gateway becomes the HTTP/2 client on that socket (`http2.connect` + `createConnection`), the agent
 * the HTTP/2 server (`http2.performServerHandshake`), with the tunnel's own window settings. One
 * client request is one HTTP/2 stream; the agent forwards it over a keep-alive HTTP/1.1 pool (or
 * one h2c session for `/h2/`), and a WebSocket as extended CONNECT to an HTTP/1.1 Upgrade, each
 * with plain `pipe`. Nothing else: no authentication, routing table, header rewriting,
 * limits, timeouts, retries, metrics, logging, drain or error answers, and no tuning (plain
 * `pipe`, no corking). It exists only to measure what Node's `http`/`http2` machinery costs on two
 * hops, so that the tether column can be read against what a Node implementation of this design
 * pays before doing any of its work. Never use it for anything else.
 */
import { createHash, randomBytes } from 'node:crypto';
import * as http from 'node:http';
import * as http2 from 'node:http2';
import { readFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import * as tls from 'node:tls';
import { DEFAULT_TUNNEL_LIMITS, TUNNEL_ALPN, filterHeaders, filterResponseHeaders, tunnelSettings } from '../gateway/tunnel/index.js';
import { answerMemoryRequests } from './tunnel-memory.js';
import type { StackConfig } from './tunnel-stack.js';

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

export type MinimalRelayMessage =
  | { type: 'ready'; role: 'gateway'; plainUrl: string; h2cUrl: string; address: string; pid: number }
  | { type: 'ready'; role: 'agent'; connections: number; pid: number }
  | { type: 'error'; message: string };

function listen(server: tls.Server | http.Server | http2.Http2Server): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port));
  });
}

async function gateway(config: StackConfig): Promise<MinimalRelayMessage> {
  const sessions: http2.ClientHttp2Session[] = [];
  let next = 0;
  const pick = (): http2.ClientHttp2Session | undefined => sessions[next++ % sessions.length];
  const agents = tls.createServer({ ...config.gatewayTls, ca: config.ca, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3', ALPNProtocols: [TUNNEL_ALPN] }, (socket) => {
    socket.setNoDelay(true);
    const session = http2.connect('https://agent', { createConnection: () => socket, settings: tunnelSettings(DEFAULT_TUNNEL_LIMITS, false) });
    session.on('error', () => undefined);
    session.once('remoteSettings', () => sessions.push(session));
    session.once('close', () => sessions.splice(sessions.indexOf(session), 1));
  });
  const h1 = http.createServer({ keepAliveTimeout: 60_000, requestTimeout: 0 }, (req, res) => {
    const session = pick();
    if (session === undefined) {
      res.writeHead(503).end();
      return;
    }
    const headers = { ...filterHeaders(req.headers), ':method': req.method ?? 'GET', ':path': req.url ?? '/', ':authority': req.headers.host ?? 'agent', ':scheme': 'https' };
    const bodyless = req.headers['content-length'] === undefined && req.headers['transfer-encoding'] === undefined;
    const stream = session.request(headers, { endStream: bodyless });
    stream.on('error', () => res.destroy());
    stream.on('response', (responseHeaders) => {
      if (res.destroyed) return void stream.close(http2.constants.NGHTTP2_CANCEL);
      res.writeHead(Number(responseHeaders[':status']), filterResponseHeaders(responseHeaders) as http.OutgoingHttpHeaders);
      stream.pipe(res);
    });
    if (bodyless) req.resume();
    else req.pipe(stream);
  });
  h1.on('connection', (socket) => socket.setNoDelay(true));
  // WebSocket: HTTP/1.1 Upgrade from the client, RFC 8441 extended CONNECT on the tunnel.
  h1.on('upgrade', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on('error', () => undefined);
    const session = pick();
    const key = req.headers['sec-websocket-key'];
    if (session === undefined || typeof key !== 'string') {
      socket.destroy();
      return;
    }
    const headers = { ...filterHeaders(req.headers), ':method': 'CONNECT', ':protocol': 'websocket', ':path': req.url ?? '/', ':authority': req.headers.host ?? 'agent', ':scheme': 'https' };
    delete headers['sec-websocket-key'];
    const stream = session.request(headers);
    stream.on('error', () => socket.destroy());
    stream.on('response', (responseHeaders) => {
      if (responseHeaders[':status'] !== 200) return void socket.destroy();
      const accept = createHash('sha1').update(`${key}${WS_GUID}`).digest('base64');
      socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
      if (head.length > 0) stream.write(head);
      socket.pipe(stream);
      stream.pipe(socket);
    });
  });
  const h2c = http2.createServer({ settings: { maxConcurrentStreams: 1000, initialWindowSize: DEFAULT_TUNNEL_LIMITS.streamWindowBytes } });
  h2c.on('stream', (client, headers, flags) => {
    client.on('error', () => undefined);
    const session = pick();
    if (session === undefined) {
      client.respond({ ':status': 503 }, { endStream: true });
      return;
    }
    const ended = (flags & http2.constants.NGHTTP2_FLAG_END_STREAM) !== 0;
    const out = { ...filterHeaders(headers), ':method': headers[':method'], ':path': headers[':path'], ':authority': headers[':authority'], ':scheme': 'https' };
    const stream = session.request(out, { endStream: ended });
    stream.on('error', () => {
      if (!client.closed) client.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
    });
    stream.on('response', (responseHeaders) => {
      if (client.closed) return void stream.close(http2.constants.NGHTTP2_CANCEL);
      client.respond({ ':status': responseHeaders[':status'], ...filterResponseHeaders(responseHeaders) });
      stream.pipe(client);
    });
    if (!ended) client.pipe(stream);
  });
  const [agentPort, plainPort, h2cPort] = await Promise.all([listen(agents), listen(h1), listen(h2c)]);
  return { type: 'ready', role: 'gateway', plainUrl: `http://127.0.0.1:${plainPort}`, h2cUrl: `http://127.0.0.1:${h2cPort}`, address: `127.0.0.1:${agentPort}`, pid: process.pid };
}

async function agent(config: StackConfig): Promise<MinimalRelayMessage> {
  const [host, port] = (config.gatewayAddress ?? '').split(':');
  const routes = config.routes ?? [];
  const h1Upstream = new URL(routes.find((r) => r.upstream.startsWith('http:'))?.upstream ?? 'http://127.0.0.1:1');
  const h2Route = routes.find((r) => r.upstream.startsWith('h2c:'));
  const pool = new http.Agent({ keepAlive: true, maxSockets: 256 });
  const h2Upstream = h2Route === undefined ? null : http2.connect(h2Route.upstream.replace(/^h2c:/, 'http:'));
  h2Upstream?.on('error', () => undefined);
  const connections = config.connectionsPerGateway ?? 2;
  const ready: Array<Promise<void>> = [];
  for (let i = 0; i < connections; i++) {
    ready.push(
      new Promise((resolve, reject) => {
        const socket = tls.connect({ host, port: Number(port), servername: 'localhost', ...config.agentTls, ca: config.ca, minVersion: 'TLSv1.3', ALPNProtocols: [TUNNEL_ALPN] }, () => {
          socket.setNoDelay(true);
          const session = http2.performServerHandshake(socket, { settings: tunnelSettings({ ...DEFAULT_TUNNEL_LIMITS, maxConcurrentStreams: config.maxConcurrentStreams ?? DEFAULT_TUNNEL_LIMITS.maxConcurrentStreams }, true) });
          session.on('error', () => undefined);
          session.on('stream', (stream, headers) => {
            stream.on('error', () => undefined);
            const path = headers[':path'] ?? '/';
            if (headers[':method'] === 'CONNECT' && headers[':protocol'] === 'websocket') {
              const req = http.request({ host: h1Upstream.hostname, port: Number(h1Upstream.port), path, headers: { ...filterHeaders(headers), host: headers[':authority'], connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': randomBytes(16).toString('base64') } });
              req.on('error', () => {
                if (!stream.closed) stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
              });
              req.on('upgrade', (_res, upstreamSocket: Duplex) => {
                upstreamSocket.on('error', () => stream.destroy());
                stream.on('close', () => upstreamSocket.destroy());
                stream.respond({ ':status': 200 });
                stream.pipe(upstreamSocket);
                upstreamSocket.pipe(stream);
              });
              req.end();
              return;
            }
            if (h2Upstream !== null && h2Route !== undefined && path.startsWith(h2Route.prefix)) {
              const up = h2Upstream.request({ ...filterHeaders(headers), ':method': headers[':method'], ':path': path.slice(h2Route.prefix.length - 1), ':authority': headers[':authority'], ':scheme': 'http' }, { endStream: stream.endAfterHeaders });
              up.on('error', () => {
                if (!stream.closed) stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
              });
              up.on('response', (responseHeaders) => {
                if (stream.closed) return void up.close(http2.constants.NGHTTP2_CANCEL);
                stream.respond({ ':status': responseHeaders[':status'], ...filterResponseHeaders(responseHeaders) });
                up.pipe(stream);
              });
              if (!stream.endAfterHeaders) stream.pipe(up);
              return;
            }
            const req = http.request({ host: h1Upstream.hostname, port: Number(h1Upstream.port), method: headers[':method'], path, headers: { ...filterHeaders(headers, { dropTe: true }), host: headers[':authority'] }, agent: pool }, (res) => {
              if (stream.closed) return void res.destroy();
              stream.respond({ ':status': res.statusCode ?? 502, ...filterResponseHeaders(res.headers) });
              res.pipe(stream);
            });
            req.on('error', () => {
              if (!stream.closed) stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
            });
            if (stream.endAfterHeaders) req.end();
            else stream.pipe(req);
          });
          session.once('remoteSettings', () => resolve());
        });
        socket.once('error', reject);
      }),
    );
  }
  await Promise.all(ready);
  return { type: 'ready', role: 'agent', connections, pid: process.pid };
}

async function main(): Promise<void> {
  const [role, configPath] = process.argv.slice(2);
  if ((role !== 'gateway' && role !== 'agent') || configPath === undefined) throw new Error('usage: tunnel-minimal-relay.ts gateway|agent CONFIG.json');
  const config = JSON.parse(await readFile(configPath, 'utf8')) as StackConfig;
  const ready = role === 'gateway' ? await gateway(config) : await agent(config);
  // The benchmark stops its children with SIGTERM or by closing the IPC channel.
  process.once('disconnect', () => process.exit(0));
  process.once('SIGTERM', () => process.exit(0));
  answerMemoryRequests(`minimal-${role}`);
  process.send?.(ready);
}

main().catch((reason: unknown) => {
  process.send?.({ type: 'error', message: reason instanceof Error ? reason.message : String(reason) } satisfies MinimalRelayMessage);
  process.exitCode = 1;
  setTimeout(() => process.exit(1), 100);
});
