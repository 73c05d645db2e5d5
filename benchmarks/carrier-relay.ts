/**
 * One end of `benchmarks/carrier.ts`'s bare relays: what carrying a bound connection costs on the
 * tunnel's shape (agent-dialed TLS 1.3, two Node processes) with nothing of tether's own work, for
 * two carriers:
 *
 * - `h2`: the agent dials, the roles reverse (gateway = HTTP/2 client), one CONNECT stream per
 *   client connection (what tether uses);
 * - `frames`: the lightest mux that could replace it: 9-byte frames `[u32 channel][u8 type][u32
 *   length]` (OPEN, DATA, CLOSE) written straight to the TLS socket, no flow control;
 * - `pipe`: no mux at all: the agent keeps a pool of dialed TLS connections, the gateway joins each
 *   client connection to one of them and the agent joins it to an upstream connection (the floor
 *   of a design where every bound connection gets an agent-dialed connection of its own).
 *
 *   node --import ./bin/typescript.js benchmarks/carrier-relay.ts gateway MODE CONFIG.json
 *   node --import ./bin/typescript.js benchmarks/carrier-relay.ts agent MODE CONFIG.json
 *
 * Each sends `{ type: 'ready', port }` (the gateway: its client port) over IPC and exits on SIGTERM
 * or when the channel closes.
 */
import { readFileSync } from 'node:fs';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import * as tls from 'node:tls';

export interface CarrierConfig {
  key: string;
  cert: string;
  ca: string;
  /** Agent: the gateway's TLS port and the upstream's port. */
  tunnelPort?: number;
  upstreamPort?: number;
}

const OPEN = 1;
const DATA = 2;
const CLOSE = 3;

function frame(channel: number, type: number, payload?: Buffer): Buffer {
  const length = payload?.length ?? 0;
  const out = Buffer.allocUnsafe(9 + length);
  out.writeUInt32BE(channel, 0);
  out[4] = type;
  out.writeUInt32BE(length, 5);
  payload?.copy(out, 9);
  return out;
}

function frameReader(onFrame: (channel: number, type: number, payload: Buffer) => void): (chunk: Buffer) => void {
  let pending: Buffer | null = null;
  return (chunk) => {
    const buffer = pending === null ? chunk : Buffer.concat([pending, chunk]);
    let at = 0;
    while (buffer.length - at >= 9) {
      const length = buffer.readUInt32BE(at + 5);
      if (buffer.length - at < 9 + length) break;
      onFrame(buffer.readUInt32BE(at), buffer[at + 4] ?? 0, buffer.subarray(at + 9, at + 9 + length));
      at += 9 + length;
    }
    pending = at === buffer.length ? null : buffer.subarray(at);
  };
}

function ignore(): void {}

/** Relay two byte streams into each other with backpressure; either closing closes both. */
function join(a: Duplex, b: Duplex): void {
  a.on('data', (chunk: Buffer) => {
    if (!b.write(chunk)) a.pause();
  });
  b.on('drain', () => a.resume());
  b.on('data', (chunk: Buffer) => {
    if (!a.write(chunk)) b.pause();
  });
  a.on('drain', () => b.resume());
  a.on('close', () => b.destroy());
  b.on('close', () => a.destroy());
  a.on('error', ignore);
  b.on('error', ignore);
}

function gateway(mode: string, config: CarrierConfig): void {
  const tunnelServer = tls.createServer({ key: config.key, cert: config.cert, minVersion: 'TLSv1.3' });
  let h2: http2.ClientHttp2Session | null = null;
  let raw: tls.TLSSocket | null = null;
  const channels = new Map<number, net.Socket>();
  let next = 1;
  const pool: tls.TLSSocket[] = [];
  tunnelServer.on('secureConnection', (socket: tls.TLSSocket) => {
    socket.setNoDelay(true);
    if (mode === 'pipe') {
      socket.on('error', ignore);
      pool.push(socket);
      return;
    }
    if (mode === 'h2') {
      h2 = http2.connect('http://tunnel', { createConnection: () => socket, settings: { initialWindowSize: 4 << 20 } });
      h2.on('connect', () => h2?.setLocalWindowSize(64 << 20));
      h2.on('error', ignore);
      return;
    }
    raw = socket;
    socket.on(
      'data',
      frameReader((channel, type, payload) => {
        const client = channels.get(channel);
        if (client === undefined) return;
        if (type === DATA) client.write(payload);
        else if (type === CLOSE) {
          channels.delete(channel);
          client.destroy();
        }
      }),
    );
  });
  const clients = net.createServer({ noDelay: true }, (client) => {
    if (mode === 'pipe') {
      const socket = pool.shift();
      if (socket === undefined) return void client.destroy();
      join(client, socket);
      return;
    }
    if (mode === 'h2') {
      if (h2 === null) return void client.destroy();
      join(client, h2.request({ ':method': 'CONNECT', ':authority': 'upstream:1' }));
      return;
    }
    const tunnel = raw;
    if (tunnel === null) return void client.destroy();
    const channel = next++;
    channels.set(channel, client);
    tunnel.write(frame(channel, OPEN));
    client.on('data', (chunk: Buffer) => tunnel.write(frame(channel, DATA, chunk)));
    client.on('close', () => {
      if (channels.delete(channel)) tunnel.write(frame(channel, CLOSE));
    });
    client.on('error', ignore);
  });
  tunnelServer.listen(0, '127.0.0.1', () => {
    clients.listen(0, '127.0.0.1', () => {
      process.send?.({ type: 'ready', port: (clients.address() as AddressInfo).port, tunnelPort: (tunnelServer.address() as AddressInfo).port });
    });
  });
}

/** Connections the `pipe` agent keeps dialed (wrk's 64, and spares). */
const PIPE_POOL = 96;

function pipeAgent(config: CarrierConfig): void {
  const upstreamPort = config.upstreamPort ?? 0;
  let ready = 0;
  const dial = (): void => {
    const socket = tls.connect({ host: '127.0.0.1', port: config.tunnelPort ?? 0, ca: config.ca, servername: 'localhost', minVersion: 'TLSv1.3' });
    socket.setNoDelay(true);
    socket.on('error', ignore);
    socket.once('secureConnect', () => {
      if (++ready === PIPE_POOL) process.send?.({ type: 'ready', port: 0 });
    });
    // The upstream connection opens with the first bytes (and a spare is dialed in its place);
    // what comes before it is connected waits.
    socket.once('data', (first: Buffer) => {
      dial();
      socket.pause();
      const upstream = net.connect({ host: '127.0.0.1', port: upstreamPort, noDelay: true });
      upstream.once('connect', () => {
        upstream.write(first);
        join(socket, upstream);
        socket.resume();
      });
      upstream.on('error', ignore);
    });
  };
  for (let i = 0; i < PIPE_POOL; i++) dial();
}

function agent(mode: string, config: CarrierConfig): void {
  if (mode === 'pipe') return pipeAgent(config);
  const upstreamPort = config.upstreamPort ?? 0;
  const socket = tls.connect({ host: '127.0.0.1', port: config.tunnelPort ?? 0, ca: config.ca, servername: 'localhost', minVersion: 'TLSv1.3' });
  socket.setNoDelay(true);
  socket.on('error', ignore);
  socket.once('secureConnect', () => {
    if (mode === 'h2') {
      const session = http2.performServerHandshake(socket, { settings: { initialWindowSize: 4 << 20, maxConcurrentStreams: 10_000 } });
      session.on('error', ignore);
      session.on('stream', (stream: http2.ServerHttp2Stream) => {
        stream.respond({ ':status': 200 });
        const upstream = net.connect({ host: '127.0.0.1', port: upstreamPort, noDelay: true });
        join(stream, upstream);
      });
    } else {
      const upstreams = new Map<number, net.Socket>();
      socket.on(
        'data',
        frameReader((channel, type, payload) => {
          if (type === OPEN) {
            const upstream = net.connect({ host: '127.0.0.1', port: upstreamPort, noDelay: true });
            upstreams.set(channel, upstream);
            upstream.on('data', (chunk: Buffer) => socket.write(frame(channel, DATA, chunk)));
            upstream.on('close', () => {
              if (upstreams.delete(channel)) socket.write(frame(channel, CLOSE));
            });
            upstream.on('error', ignore);
          } else if (type === DATA) upstreams.get(channel)?.write(payload);
          else {
            upstreams.get(channel)?.destroy();
            upstreams.delete(channel);
          }
        }),
      );
    }
    process.send?.({ type: 'ready', port: 0 });
  });
}

const [role, mode, file] = process.argv.slice(2);
const config = JSON.parse(readFileSync(file ?? '', 'utf8')) as CarrierConfig;
process.on('SIGTERM', () => process.exit(0));
process.on('disconnect', () => process.exit(0));
if (role === 'gateway') gateway(mode ?? 'h2', config);
else agent(mode ?? 'h2', config);
