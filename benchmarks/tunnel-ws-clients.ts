/**
 * Idle WebSocket clients for `benchmarks/tunnel.ts`, run as their own child process:
 *
 *   node --import ./bin/typescript.js benchmarks/tunnel-ws-clients.ts http://127.0.0.1:PORT COUNT [name:value ...]
 *
 * Opens COUNT WebSocket connections (hand-written HTTP/1.1 upgrade handshakes, a bounded number in
 * flight, each with a deadline), keeps the successful ones open and idle, and sends
 * `{ type: 'opened', ok, failed, firstError, ms }` on the IPC channel. Exits when the channel closes.
 */
import { randomBytes } from 'node:crypto';
import * as net from 'node:net';

const IN_FLIGHT = 200;
const HANDSHAKE_TIMEOUT_MS = 30_000;

export type WsClientsMessage = { type: 'opened'; ok: number; failed: number; firstError: string | null; ms: number } | { type: 'progress'; ok: number; failed: number };

const [target, countArg, ...headerArgs] = process.argv.slice(2);
if (target === undefined || countArg === undefined) throw new Error('usage: tunnel-ws-clients.ts URL COUNT [name:value ...]');
const url = new URL(target);
const count = Number(countArg);
const extraHeaders = headerArgs.map((h) => `${h}\r\n`).join('');
const open: net.Socket[] = [];
let ok = 0;
let failed = 0;
let firstError: string | null = null;

function openOne(): Promise<void> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: url.hostname, port: Number(url.port) });
    let head = '';
    let settled = false;
    const settle = (error: string | null): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (error === null) {
        ok++;
        open.push(socket);
      } else {
        failed++;
        firstError ??= error;
        socket.destroy();
      }
      resolve();
    };
    const timer = setTimeout(() => settle('handshake timed out'), HANDSHAKE_TIMEOUT_MS);
    socket.on('error', (reason: Error) => settle(reason.message));
    socket.once('close', () => settle('closed during the handshake'));
    socket.once('connect', () => {
      socket.write(
        `GET /ws HTTP/1.1\r\nHost: ${url.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\n${extraHeaders}\r\n`,
      );
    });
    socket.on('data', (chunk: Buffer) => {
      if (settled) return;
      head += chunk.toString('latin1');
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      const status = head.slice(0, head.indexOf('\r\n'));
      settle(/^HTTP\/1\.1 101 /.test(status) ? null : `unexpected answer: ${status}`);
    });
  });
}

const started = Date.now();
let next = 0;
const progress = setInterval(() => process.send?.({ type: 'progress', ok, failed } satisfies WsClientsMessage), 2_000);
await Promise.all(
  Array.from({ length: Math.min(IN_FLIGHT, count) }, async () => {
    while (next < count) {
      next++;
      await openOne();
    }
  }),
);
clearInterval(progress);
process.send?.({ type: 'opened', ok, failed, firstError, ms: Date.now() - started } satisfies WsClientsMessage);
process.on('disconnect', () => {
  for (const socket of open) socket.destroy();
  process.exit(0);
});
