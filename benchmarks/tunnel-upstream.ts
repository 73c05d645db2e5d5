/**
 * The tunnel benchmark's upstream, run as its own child process (`benchmarks/tunnel.ts` starts it
 * through an IPC channel): an HTTP/1.1 server answering `GET /1k` with 1 KiB, `GET /256m` with a
 * 256 MiB streamed body (backpressure honoured) and WebSocket upgrades that it accepts and then
 * holds idle; and an h2c (HTTP/2 prior knowledge) server answering every path with 1 KiB. It sends
 * `{ type: 'ready', http, h2c }` (ports on 127.0.0.1) and exits when the IPC channel closes.
 */
import { createHash } from 'node:crypto';
import * as http from 'node:http';
import * as http2 from 'node:http2';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';

const KIB = Buffer.alloc(1024, 'x');
export const DOWNLOAD_BYTES = 256 * 1024 * 1024;
const CHUNK = Buffer.alloc(64 * 1024, 'y');
const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

function streamBody(res: http.ServerResponse, total: number): void {
  let left = total;
  const pump = (): void => {
    while (left > 0) {
      const chunk = left >= CHUNK.length ? CHUNK : CHUNK.subarray(0, left);
      left -= chunk.length;
      if (left === 0) {
        res.end(chunk);
        return;
      }
      if (!res.write(chunk)) {
        res.once('drain', pump);
        return;
      }
    }
  };
  pump();
}

const held = new Set<Duplex>();

const h1 = http.createServer({ keepAliveTimeout: 60_000, requestTimeout: 0 }, (req, res) => {
  req.resume();
  if (req.url === '/256m') {
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(DOWNLOAD_BYTES) });
    streamBody(res, DOWNLOAD_BYTES);
    return;
  }
  res.writeHead(200, { 'content-type': 'text/plain', 'content-length': String(KIB.length) });
  res.end(KIB);
});
h1.on('upgrade', (req: http.IncomingMessage, socket: Duplex) => {
  const key = req.headers['sec-websocket-key'];
  if (typeof key !== 'string') {
    socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n');
    return;
  }
  const accept = createHash('sha1').update(`${key}${WS_GUID}`).digest('base64');
  socket.on('error', () => undefined);
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
  held.add(socket);
  socket.once('close', () => held.delete(socket));
  // Like a WebSocket server: the peer's FIN ends the connection.
  socket.once('end', () => socket.end());
  socket.resume();
});

const h2c = http2.createServer({ settings: { initialWindowSize: 4 * 1024 * 1024, maxConcurrentStreams: 1000 } });
h2c.on('stream', (stream: http2.ServerHttp2Stream) => {
  stream.on('error', () => undefined);
  stream.respond({ ':status': 200, 'content-type': 'text/plain', 'content-length': String(KIB.length) });
  stream.end(KIB);
});
h2c.on('session', (session: http2.ServerHttp2Session) => session.on('error', () => undefined));

function listen(server: http.Server | http2.Http2Server): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port));
  });
}

const sockets = new Set<Socket>();
h1.on('connection', (socket: Socket) => {
  socket.setNoDelay(true);
  sockets.add(socket);
  socket.once('close', () => sockets.delete(socket));
});

const [httpPort, h2cPort] = await Promise.all([listen(h1), listen(h2c)]);
process.on('disconnect', () => process.exit(0));
process.on('message', (message: { type?: string }) => {
  if (message.type === 'count') process.send?.({ type: 'count', webSockets: held.size });
});
process.send?.({ type: 'ready', http: httpPort, h2c: h2cPort });
