/**
 * Slow-header clients (I7): an HTTP/1.1 connection that trickles its request head, each byte
 * resetting any idle timer, is answered 408 HEADERS_TIMEOUT and closed; a response that takes
 * longer than the head timeout is not cut, and a keep-alive connection gets a fresh deadline per
 * request. Node's own headersTimeout does not run for the gateway's servers (they never listen).
 */
import test from 'ava';
import { once } from 'node:events';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { failOnLeaks } from '../helpers/leaks.js';
import { splitHostPort } from '../helpers/tunnel-clients.js';
import { startTunnelEnv, type TunnelEnv } from '../helpers/tunnel-env.js';
import { startHttp1Upstream, type Upstream } from '../helpers/tunnel-upstreams.js';

failOnLeaks(test);

const HEADERS_TIMEOUT_MS = 400;
let env: TunnelEnv;
let upstream: Upstream;
let token: string;
/** Resolves the upstream's held response. */
let release: () => void = () => undefined;

test.before(async () => {
  upstream = await startHttp1Upstream((req, res) => {
    req.resume();
    if (req.url === '/slow') {
      // Answers only when the test says so (after the head timeout has passed).
      release = () => res.end('slow ok');
      return;
    }
    res.end('ok');
  });
  env = await startTunnelEnv({ clusters: ['c1'], gateway: { clientHeadersTimeoutMs: HEADERS_TIMEOUT_MS }, agents: [{ clusterId: 'c1', routes: [{ prefix: '/', upstream: upstream.url }] }] });
  token = await env.token(['c1']);
});

test.after.always(async () => {
  release();
  await env?.close();
  await upstream?.close();
});

/** Send a request head one header line at a time, every `everyMs`, until the socket closes; resolve with what was read. */
async function trickle(socket: net.Socket | tls.TLSSocket, everyMs: number): Promise<{ text: string; lines: number; ms: number }> {
  const started = Date.now();
  let text = '';
  let lines = 0;
  socket.on('data', (chunk: Buffer) => (text += chunk.toString('latin1')));
  socket.on('error', () => undefined);
  socket.write(`GET / HTTP/1.1\r\nhost: c1.tether.localhost\r\nauthorization: Bearer ${token}\r\n`);
  const timer = setInterval(() => {
    lines++;
    // Bounded: without a head deadline the gateway would wait for ever; give up after 3 s.
    if (lines * everyMs > 3_000) socket.destroy();
    else if (!socket.destroyed) socket.write(`x-slow-${lines}: a\r\n`);
  }, everyMs);
  await once(socket, 'close');
  clearInterval(timer);
  return { text, lines, ms: Date.now() - started };
}

test.serial('a client trickling its request head on the plain port gets 408 HEADERS_TIMEOUT and is closed', async (t) => {
  const [host, port] = splitHostPort(new URL(env.gateway.plainUrl ?? '').host);
  const socket = net.connect({ host, port });
  await once(socket, 'connect');
  const result = await trickle(socket, 50);
  t.regex(result.text, /^HTTP\/1\.1 408 /);
  t.regex(result.text, /tether-error: HEADERS_TIMEOUT/);
  t.true(result.lines >= 4, `the trickle kept the socket busy (${result.lines} header lines sent)`);
  t.log(`closed after ${result.ms} ms with a ${HEADERS_TIMEOUT_MS} ms head timeout`);
});

test.serial('the same on the TLS port', async (t) => {
  const [host, port] = splitHostPort(env.gateway.address);
  const socket = tls.connect({ host, port, servername: 'localhost', ca: env.pki.trustBundlePem, ALPNProtocols: ['http/1.1'] });
  await once(socket, 'secureConnect');
  const result = await trickle(socket, 50);
  t.regex(result.text, /^HTTP\/1\.1 408 /);
  t.regex(result.text, /tether-error: HEADERS_TIMEOUT/);
});

test.serial('a response slower than the head timeout is not cut; the keep-alive connection then gets a fresh deadline', async (t) => {
  const [host, port] = splitHostPort(new URL(env.gateway.plainUrl ?? '').host);
  const socket = net.connect({ host, port });
  await once(socket, 'connect');
  let text = '';
  socket.on('data', (chunk: Buffer) => (text += chunk.toString('latin1')));
  const request = (path: string): string => `GET ${path} HTTP/1.1\r\nhost: c1.tether.localhost\r\nauthorization: Bearer ${token}\r\n\r\n`;
  socket.write(request('/slow'));
  // Hold the response for more than two head timeouts (sweeps run meanwhile), then let it go.
  const heldFor = HEADERS_TIMEOUT_MS * 2.5;
  await new Promise<void>((resolve) => setTimeout(resolve, heldFor));
  t.false(socket.destroyed, 'the connection survived a response longer than the head timeout');
  release();
  while (!text.includes('slow ok')) await once(socket, 'data');
  t.regex(text, /^HTTP\/1\.1 200 /);
  // The next request on the same connection is served…
  text = '';
  socket.write(request('/again'));
  while (!text.includes('\r\n\r\nok')) await once(socket, 'data');
  // …and then an idle connection gets its head deadline (408) before the 5 s keep-alive timeout.
  text = '';
  socket.write('GET / HTTP/1.1\r\n');
  await once(socket, 'close');
  t.regex(text, /^HTTP\/1\.1 408 /);
});
