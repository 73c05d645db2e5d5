/** Upstream servers for tunnel tests: HTTP/1.1 echo, h2c echo, TCP echo; all on 127.0.0.1:0. */
import * as http from 'node:http';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import type { AddressInfo } from 'node:net';

export interface Upstream {
  url: string;
  port: number;
  /** Request headers seen, most recent last. */
  seen: http.IncomingHttpHeaders[];
  close(): Promise<void>;
}

function closer(server: net.Server, sockets: Set<net.Socket>): () => Promise<void> {
  return () =>
    new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    });
}

function track(server: net.Server): Set<net.Socket> {
  const sockets = new Set<net.Socket>();
  server.on('connection', (s: net.Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  return sockets;
}

async function listen(server: net.Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as AddressInfo).port;
}

/**
 * HTTP/1.1 test upstream. Routes: `/echo` (body back, request headers as JSON in `x-seen`),
 * `/headers` (request headers as JSON body), `/bytes?n=N` (N bytes), `/chunked` (3 chunks),
 * `/trailers` (chunked with a trailer), `/sse` (3 events), `/slow?ms=N`, anything else: `hello`.
 */
export async function startHttp1Upstream(handler?: http.RequestListener): Promise<Upstream> {
  const seen: http.IncomingHttpHeaders[] = [];
  const server = http.createServer((req, res) => {
    seen.push(req.headers);
    if (handler !== undefined) return handler(req, res);
    const url = new URL(req.url ?? '/', 'http://x');
    switch (url.pathname) {
      case '/echo':
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        req.pipe(res);
        return;
      case '/headers':
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(req.headers));
        return;
      case '/bytes': {
        const n = Number(url.searchParams.get('n') ?? '0');
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(n) });
        const chunk = Buffer.alloc(64 * 1024, 120);
        let left = n;
        const pump = (): void => {
          while (left > 0) {
            const piece = left >= chunk.length ? chunk : chunk.subarray(0, left);
            left -= piece.length;
            if (!res.write(piece)) {
              res.once('drain', pump);
              return;
            }
          }
          res.end();
        };
        pump();
        return;
      }
      case '/chunked':
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.write('one,');
        res.write('two,');
        res.end('three');
        return;
      case '/trailers':
        res.writeHead(200, { 'content-type': 'text/plain', trailer: 'x-checksum' });
        res.write('body');
        res.addTrailers({ 'x-checksum': 'abc123' });
        res.end();
        return;
      case '/sse': {
        res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
        let n = 0;
        const tick = (): void => {
          n++;
          res.write(`data: event ${n}\n\n`);
          if (n === 3) res.end();
          else setImmediate(tick);
        };
        tick();
        return;
      }
      default:
        req.resume();
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end('hello');
    }
  });
  const sockets = track(server);
  const port = await listen(server);
  return { url: `http://127.0.0.1:${port}`, port, seen, close: closer(server, sockets) };
}

/** h2c upstream: echoes `:path` and request body; `/trailers` answers with a trailer. */
export async function startH2cUpstream(): Promise<Upstream> {
  const seen: http.IncomingHttpHeaders[] = [];
  const server = http2.createServer();
  server.on('stream', (stream, headers) => {
    seen.push(headers);
    if (String(headers[':path']).endsWith('/trailers')) {
      stream.respond({ ':status': 200, 'content-type': 'text/plain' }, { waitForTrailers: true });
      stream.once('wantTrailers', () => stream.sendTrailers({ 'x-checksum': 'h2' }));
      stream.end('body');
      return;
    }
    stream.respond({ ':status': 200, 'content-type': 'application/octet-stream', 'x-path': String(headers[':path']) });
    stream.pipe(stream);
  });
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on('session', (s) => {
    sessions.add(s);
    s.once('close', () => sessions.delete(s));
  });
  const port = await listen(server);
  return {
    url: `h2c://127.0.0.1:${port}`,
    port,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sessions) s.destroy();
        server.close(() => resolve());
      }),
  };
}

export async function startTcpEcho(): Promise<Upstream> {
  const server = net.createServer((socket) => {
    socket.on('error', () => undefined);
    socket.pipe(socket);
  });
  const sockets = track(server);
  const port = await listen(server);
  return { url: `127.0.0.1:${port}`, port, seen: [], close: closer(server, sockets) };
}
