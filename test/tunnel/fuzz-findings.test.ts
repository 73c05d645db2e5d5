/**
 * What the fuzz campaign and the flood tests found, pinned down deterministically.
 *
 * A client that goes away while its request is being admitted (authentication and authorization
 * are asynchronous) must not get a tunnel stream: the client's 'close' has already fired, so the
 * gateway would never cancel that stream, and it stayed open (response unread, or a raw CONNECT
 * or WebSocket relay to nobody), holding one of the agent's concurrent-stream slots for as long as
 * the tunnel lived. HTTP/2 rapid reset (CVE-2023-44487) does exactly this a thousand times per
 * connection (test/tunnel/flood.test.ts).
 *
 * Each test holds admission at a gate (an authorizer that waits), makes the client go away, then
 * opens the gate and sends a normal request through the same gate. When that one's response is
 * back, the first request's admission has finished too; it must have opened nothing: no upstream
 * saw it, and every tunnel stream closes. Runs in both binding modes (`TETHER_TEST_BINDING`).
 */
import test, { type ExecutionContext } from 'ava';
import { TEST_BINDING } from '../helpers/tunnel-env.js';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import * as http from 'node:http';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { PREFACE, RawPeer, SETTINGS_ACK, dataFrame, frame, headerBlock, headersFrame, logPeer, pingFrame, settingsFrame } from '../fuzz/h2-wire.js';
import { startFakeGateway } from '../fuzz/tunnel-cases.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { closeH2, connectH2, h2Request, plainH1Request, splitHostPort } from '../helpers/tunnel-clients.js';
import { startTunnelEnv, type TunnelEnv } from '../helpers/tunnel-env.js';
import type { Upstream } from '../helpers/tunnel-upstreams.js';

failOnLeaks(test);

const WAIT_MS = 5_000;

let env: TunnelEnv;
let upstream: Upstream;
/** Request-targets the upstream received, in order. */
const upstreamPaths: string[] = [];
/** A lenient upstream that records every byte and answers each head, whatever its Connection says. */
let rawServer: net.Server;
let rawReceived = '';
const rawSockets = new Set<net.Socket>();
let tcpServer: net.Server;
let tcpTarget = '';
let tcpConnections = 0;
const tcpSockets = new Set<net.Socket>();
let wsServer: http.Server;
let wsUpgrades = 0;
const wsSockets = new Set<net.Socket>();

/**
 * The HTTP/1.1 upstream: `hello` to every request, and `expected <value>` to a request whose
 * Expect it was asked to judge (Node answers those 417 itself unless told otherwise).
 */
async function startUpstream(): Promise<Upstream> {
  const seen: http.IncomingHttpHeaders[] = [];
  const sockets = new Set<net.Socket>();
  const server = http.createServer((req, res) => {
    seen.push(req.headers);
    upstreamPaths.push(req.url ?? '');
    req.resume();
    const forged = /^\/forged-code\/(\w+)$/.exec(req.url ?? '');
    // An upstream that speaks the tunnel's error vocabulary with words of its own.
    if (forged !== null) res.writeHead(502, { 'tether-error': forged[1] });
    res.end('hello');
  });
  server.on('checkExpectation', (req: http.IncomingMessage, res: http.ServerResponse) => {
    seen.push(req.headers);
    req.resume();
    res.end(`expected ${String(req.headers.expect)}`);
  });
  server.on('connection', (socket: net.Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** One exchange on a fresh cleartext connection: `bytes` out, everything until the gateway closes (after our FIN) back. */
async function exchange(bytes: string): Promise<string> {
  const plain = new URL(env.gateway.plainUrl ?? '');
  const socket = net.connect(Number(plain.port), plain.hostname);
  socket.on('error', () => undefined);
  let received = '';
  socket.on('data', (chunk: Buffer) => {
    received += chunk.toString('latin1');
    // One complete answer (every answer here has a Content-Length or ends the connection): done.
    const end = received.indexOf('\r\n\r\n');
    const length = /\r\ncontent-length: *(\d+)/i.exec(received.slice(0, end));
    if (end !== -1 && length !== null && received.length >= end + 4 + Number(length[1])) socket.end();
  });
  const timer = setTimeout(() => socket.destroy(new Error(`no answer within ${WAIT_MS} ms`)), WAIT_MS);
  socket.write(bytes);
  await new Promise<void>((resolve) => socket.once('close', () => resolve()));
  clearTimeout(timer);
  return received;
}

/** The admission gate: closed while `held` is pending; `calls` counts authorizer calls. */
const gate = {
  held: Promise.resolve(),
  open: (): void => undefined,
  calls: 0,
  called: (): void => undefined,
};

function closeGate(): Promise<void> {
  gate.held = new Promise<void>((resolve) => {
    gate.open = resolve;
  });
  return new Promise<void>((resolve) => {
    gate.called = resolve;
  });
}

test.before(async () => {
  upstream = await startUpstream();
  rawServer = net.createServer((socket) => {
    rawSockets.add(socket);
    socket.once('close', () => rawSockets.delete(socket));
    socket.on('error', () => undefined);
    let pending = '';
    socket.on('data', (chunk: Buffer) => {
      rawReceived += chunk.toString('latin1');
      pending += chunk.toString('latin1');
      for (let end = pending.indexOf('\r\n\r\n'); end !== -1; end = pending.indexOf('\r\n\r\n')) {
        pending = pending.slice(end + 4);
        socket.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok');
      }
    });
  });
  await new Promise<void>((resolve) => rawServer.listen(0, '127.0.0.1', resolve));
  const rawPort = (rawServer.address() as net.AddressInfo).port;
  tcpServer = net.createServer((socket) => {
    tcpConnections++;
    tcpSockets.add(socket);
    socket.once('close', () => tcpSockets.delete(socket));
    socket.on('error', () => undefined);
    socket.pipe(socket);
  });
  await new Promise<void>((resolve) => tcpServer.listen(0, '127.0.0.1', resolve));
  tcpTarget = `127.0.0.1:${(tcpServer.address() as net.AddressInfo).port}`;
  wsServer = http.createServer((_req, res) => res.end('no'));
  wsServer.on('upgrade', (_req: http.IncomingMessage, socket: net.Socket) => {
    wsUpgrades++;
    wsSockets.add(socket);
    socket.once('close', () => wsSockets.delete(socket));
    socket.on('error', () => undefined);
    socket.write('HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: x\r\n\r\n');
    socket.pipe(socket);
  });
  await new Promise<void>((resolve) => wsServer.listen(0, '127.0.0.1', resolve));
  const wsPort = (wsServer.address() as net.AddressInfo).port;
  env = await startTunnelEnv({
    gateway: {
      // HTTP/2 client sessions are checked once a second (the reaper runs at half this).
      clientIdleTimeoutMs: 2_000,
      authorizer: async (identity, clusterId) => {
        gate.calls++;
        gate.called();
        await gate.held;
        return identity.subject === 'alice' && clusterId === 'c1';
      },
    },
    agents: [
      {
        clusterId: 'c1',
        routes: [
          { prefix: '/ws', upstream: `http://127.0.0.1:${wsPort}` },
          { prefix: '/raw/', upstream: `http://127.0.0.1:${rawPort}` },
          { prefix: '/', upstream: upstream.url },
        ],
        tcpTargets: [tcpTarget],
      },
    ],
  });
});

test.after.always(async () => {
  await env?.close();
  await upstream?.close();
  for (const socket of [...wsSockets, ...tcpSockets, ...rawSockets]) socket.destroy();
  await new Promise<void>((resolve) => (rawServer === undefined ? resolve() : rawServer.close(() => resolve())));
  await new Promise<void>((resolve) => (wsServer === undefined ? resolve() : wsServer.close(() => resolve())));
  await new Promise<void>((resolve) => (tcpServer === undefined ? resolve() : tcpServer.close(() => resolve())));
});

const tunnelStreams = (): number => env.gateway.tunnels.all().reduce((n, tunnel) => n + tunnel.activeStreams, 0);

/**
 * Every tunnel stream closed: checked every 20 ms (a stream closes inside the gateway, with no
 * event of its own to wait on); rejects, failing the test, when some are still open after `WAIT_MS`.
 */
async function tunnelStreamsClosed(waitMs = WAIT_MS): Promise<void> {
  const deadline = Date.now() + waitMs;
  while (tunnelStreams() > 0) {
    if (Date.now() > deadline) throw new Error(`${tunnelStreams()} tunnel stream(s) still open after ${waitMs} ms`);
    await new Promise<void>((resolve) => setTimeout(resolve, 20));
  }
}

/** The gateway side of the next accepted connection, whose 'close' tells when the gateway saw the client go. */
function nextAcceptedSocket(): Promise<net.Socket> {
  return new Promise((resolve) => {
    const onSocket = (message: unknown): void => {
      unsubscribe('net.server.socket', onSocket);
      resolve((message as { socket: net.Socket }).socket);
    };
    subscribe('net.server.socket', onSocket);
  });
}

/** A normal request through the (open) gate; its answer means every earlier admission has finished. */
async function followUp(t: ExecutionContext, token: string): Promise<void> {
  const plain = env.gateway.plainUrl;
  if (plain === null) throw new Error('no plain port');
  const reply = await plainH1Request(plain, { cluster: 'c1', token, path: '/after' });
  t.is(reply.status, 200);
}

test.serial('HTTP/2: a stream reset by its client during admission opens no tunnel stream', async (t) => {
  const token = await env.token(['c1'], 'alice');
  const plain = env.gateway.plainUrl;
  if (plain === null) throw new Error('no plain port');
  const seenBefore = upstream.seen.length;
  const session = await connectH2(plain);
  try {
    const called = closeGate();
    const stream = session.request({ ':method': 'GET', ':path': '/reset-me', ':authority': 'c1.tether.localhost', authorization: `Bearer ${token}` });
    stream.on('error', () => undefined);
    await called;
    stream.close(http2.constants.NGHTTP2_CANCEL);
    // The gateway reads frames in order: once it acknowledges this PING, it has processed the
    // RST_STREAM before it and closed its side of the stream.
    await new Promise<void>((resolve, reject) => session.ping((error) => (error === null ? resolve() : reject(error))));
    gate.open();
    const reply = await h2Request(session, { cluster: 'c1', token, path: '/after' });
    t.is(reply.status, 200);
  } finally {
    await closeH2(session);
  }
  await tunnelStreamsClosed();
  t.deepEqual(upstream.seen.slice(seenBefore).length, 1, 'only the follow-up reached the upstream');
});

test.serial('WebSocket upgrade: a client gone during admission gets no tunnel stream', async (t) => {
  const token = await env.token(['c1'], 'alice');
  const plain = new URL(env.gateway.plainUrl ?? '');
  const upgradesBefore = wsUpgrades;
  const accepted = nextAcceptedSocket();
  const called = closeGate();
  const client = net.connect(Number(plain.port), plain.hostname);
  client.on('error', () => undefined);
  client.write(
    `GET /ws HTTP/1.1\r\nhost: c1.tether.localhost\r\nauthorization: Bearer ${token}\r\nupgrade: websocket\r\nconnection: Upgrade\r\n` +
      'sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n',
  );
  const server = await accepted;
  await called;
  const gone = new Promise<void>((resolve) => server.once('close', () => resolve()));
  client.destroy();
  await gone;
  gate.open();
  await followUp(t, token);
  await tunnelStreamsClosed();
  t.is(wsUpgrades, upgradesBefore, 'the upstream got no upgrade');
});

test.serial('CONNECT: a client gone during admission gets no tunnel stream', async (t) => {
  const token = await env.token(['c1'], 'alice');
  const plain = new URL(env.gateway.plainUrl ?? '');
  const accepted = nextAcceptedSocket();
  const called = closeGate();
  const client = net.connect(Number(plain.port), plain.hostname);
  client.on('error', () => undefined);
  client.write(`CONNECT ${tcpTarget} HTTP/1.1\r\nhost: ${tcpTarget}\r\ntether-cluster: c1\r\nauthorization: Bearer ${token}\r\n\r\n`);
  const server = await accepted;
  await called;
  const gone = new Promise<void>((resolve) => server.once('close', () => resolve()));
  client.destroy();
  await gone;
  gate.open();
  await followUp(t, token);
  await tunnelStreamsClosed();
  t.is(tcpConnections, 0);
});

test.serial('an Expect other than 100-continue reaches the upstream, which decides (Node answered 417 without a code)', async (t) => {
  const token = await env.token(['c1'], 'alice');
  const seenBefore = upstream.seen.length;
  const answer = await exchange(`GET /expect HTTP/1.1\r\nhost: c1.tether.localhost\r\nauthorization: Bearer ${token}\r\nexpect: something-else\r\n\r\n`);
  t.regex(answer, /^HTTP\/1\.1 200 /);
  t.true(answer.endsWith('expected something-else'), answer);
  t.is(upstream.seen.length, seenBefore + 1);
});

test.serial('an HTTP/1.1 request without a Host field, or with two, is answered 400 BAD_REQUEST by the gateway (Node answered without a code; binding passed it on)', async (t) => {
  const token = await env.token(['c1'], 'alice');
  const seenBefore = upstream.seen.length;
  const counted = async (): Promise<number> => {
    const metric = env.gateway.registry.getSingleMetric('tether_gateway_request_errors_total');
    const values = metric === undefined ? [] : (await metric.get()).values;
    return values.filter((v) => v.labels.code === 'BAD_REQUEST').reduce((n, v) => n + v.value, 0);
  };
  const before = await counted();
  const heads = [
    `GET /no-host HTTP/1.1\r\ntether-cluster: c1\r\nauthorization: Bearer ${token}\r\n\r\n`,
    `GET /two-hosts HTTP/1.1\r\nhost: c1.tether.localhost\r\nhost: c2.tether.localhost\r\nauthorization: Bearer ${token}\r\n\r\n`,
    `GET /ws HTTP/1.1\r\ntether-cluster: c1\r\nauthorization: Bearer ${token}\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n`,
  ];
  for (const head of heads) {
    const answer = await exchange(head);
    t.regex(answer, /^HTTP\/1\.1 400 /, head.split('\r\n')[0]);
    t.regex(answer, /\r\ntether-error: BAD_REQUEST\r\n/i, head.split('\r\n')[0]);
  }
  t.is(upstream.seen.length, seenBefore, 'nothing reached the upstream');
  t.is(wsUpgrades, 0);
  t.is((await counted()) - before, heads.length);
});

test.serial('a request pipelined after the client\'s connection: close never reaches the upstream (binding passed it on)', async (t) => {
  const token = await env.token(['c1'], 'alice');
  const head = (path: string, extra = ''): string => `GET ${path} HTTP/1.1\r\nhost: c1.tether.localhost\r\nauthorization: Bearer ${token}\r\n${extra}\r\n`;
  const plain = new URL(env.gateway.plainUrl ?? '');
  const socket = net.connect(Number(plain.port), plain.hostname);
  socket.on('error', () => undefined);
  let received = '';
  socket.on('data', (chunk: Buffer) => {
    received += chunk.toString('latin1');
  });
  const timer = setTimeout(() => socket.destroy(new Error(`not closed within ${WAIT_MS} ms`)), WAIT_MS);
  socket.write(head('/raw/closing', 'connection: close\r\n') + head('/raw/after-close'));
  await new Promise<void>((resolve) => socket.once('close', () => resolve()));
  clearTimeout(timer);
  // The client's connection is closed: by now the gateway has forwarded all it ever will.
  t.false(rawReceived.includes('/after-close'), 'the upstream got the request after connection: close');
  // Binding answers the first request and closes; per request, Node refuses the connection (400).
  if (TEST_BINDING === 'connection') {
    t.true(rawReceived.includes('GET /raw/closing '));
    t.regex(received, /^HTTP\/1\.1 200 /);
    t.is(received.match(/HTTP\/1\.1 /g)?.length, 1, received);
  } else t.regex(received, /^HTTP\/1\.1 (200|400) /);
});

test.serial('a client that leaves after an early answer, its request body unfinished, leaves no tunnel stream open', async (t) => {
  const token = await env.token(['c1'], 'alice');
  const plain = new URL(env.gateway.plainUrl ?? '');
  const socket = net.connect(Number(plain.port), plain.hostname);
  socket.on('error', () => undefined);
  let received = '';
  const answered = new Promise<void>((resolve) => {
    socket.on('data', (chunk: Buffer) => {
      received += chunk.toString('latin1');
      // The upstream answers `hello` at once, without reading the body.
      if (received.endsWith('hello')) resolve();
    });
  });
  socket.write(`POST /early HTTP/1.1\r\nhost: c1.tether.localhost\r\nauthorization: Bearer ${token}\r\ncontent-length: 100\r\n\r\n0123456789`);
  await answered;
  t.regex(received, /^HTTP\/1\.1 200 /);
  socket.destroy();
  await tunnelStreamsClosed();
  t.pass();
});

test.serial('bytes the parser refuses after a request whose answer is still due: that answer comes whole, alone, then the connection closes', async (t) => {
  const token = await env.token(['c1'], 'alice');
  // HTTP/1.0 without a token: answered 401 once admission has run, its body delimited by the
  // close. Then the parser refuses what follows the body (data after a request that closes).
  // The gateway's 400 used to go out after the 401's head and body, where a client reads it as
  // more of that body. Then a keep-alive request whose answer is still on its way, and garbage:
  // the 400 went out first, where a client reads it as the answer to its request.
  const cases = [
    'GET /first HTTP/1.0\r\nhost: c1.tether.localhost\r\ncontent-length: 2\r\n\r\nokGARBAGE\r\n',
    `GET /first HTTP/1.1\r\nhost: c1.tether.localhost\r\nauthorization: Bearer ${token}\r\n\r\nGARBAGE\x01\r\n\r\n`,
  ];
  for (const bytes of cases) {
    const plain = new URL(env.gateway.plainUrl ?? '');
    const socket = net.connect(Number(plain.port), plain.hostname);
    socket.on('error', () => undefined);
    let received = '';
    socket.on('data', (chunk: Buffer) => {
      received += chunk.toString('latin1');
    });
    const timer = setTimeout(() => socket.destroy(new Error(`not closed within ${WAIT_MS} ms`)), WAIT_MS);
    socket.write(bytes);
    await new Promise<void>((resolve) => socket.once('close', () => resolve()));
    clearTimeout(timer);
    const statuses = received.match(/HTTP\/1\.1 \d{3}/g) ?? [];
    const what = `${JSON.stringify(bytes.slice(0, 24))}: ${JSON.stringify(received)}`;
    if (bytes.includes('HTTP/1.0')) {
      // Its body ends at the close: nothing may follow it.
      t.regex(received, /^HTTP\/1\.1 401 /, what);
      t.is(statuses.length, 1, what);
    } else {
      // The request's own answer first; a 400 for the garbage may follow it (binding refuses the
      // garbage once the answer is complete), never precede it.
      t.regex(received, /^HTTP\/1\.1 200 /, what);
      t.deepEqual(statuses.slice(1).filter((s) => s !== 'HTTP/1.1 400'), [], what);
    }
  }
});

test.serial('an HTTP/2 session that nghttp2 ended with GOAWAY while a request body was due is closed, with its tunnel stream', async (t) => {
  const token = await env.token(['c1'], 'alice');
  const plain = new URL(env.gateway.plainUrl ?? '');
  const accepted = nextAcceptedSocket();
  const client = net.connect(Number(plain.port), plain.hostname);
  client.on('error', () => undefined);
  const changes = new Set<() => void>();
  const log = logPeer(client, () => {
    for (const change of [...changes]) change();
  });
  const until = (what: string, test: () => boolean, ms: number): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      const check = (): void => {
        if (!test()) return;
        clearTimeout(timer);
        changes.delete(check);
        resolve();
      };
      const timer = setTimeout(() => {
        changes.delete(check);
        reject(new Error(`${what}: not within ${ms} ms`));
      }, ms);
      changes.add(check);
      check();
    });
  const block = headerBlock([
    [':method', 'POST'],
    [':scheme', 'http'],
    [':path', '/early'],
    [':authority', 'c1.tether.localhost'],
    ['authorization', `Bearer ${token}`],
  ]);
  // A POST whose body has begun; the upstream answers at once, the body stays due.
  client.write(Buffer.concat([PREFACE, settingsFrame([]), SETTINGS_ACK, headersFrame(1, block, { endStream: false }), dataFrame(1, 'part of a body')]));
  await until('the answer', () => log.ended.has(1), WAIT_MS);
  t.is(tunnelStreams(), 1, 'the tunnel stream waits for the rest of the body');
  // An RST_STREAM two bytes long: a connection error. nghttp2 sends GOAWAY and stops reading.
  client.write(frame(3, 0, 1, Buffer.from([0, 8])));
  await until('GOAWAY', () => log.goaway !== null, WAIT_MS);
  t.is(log.goaway?.code, 6, 'FRAME_SIZE_ERROR');
  // The client leaves politely; the gateway, no longer reading, would not see it.
  client.end();
  const server = await accepted;
  await tunnelStreamsClosed(10_000);
  if (!server.destroyed) await new Promise<void>((resolve) => server.once('close', () => resolve()));
  t.true(server.destroyed);
  client.destroy();
});

test.serial('error codes from agents beyond the gateway\'s own (an upstream\'s, passed on) get at most 32 series of the error metric', async (t) => {
  const token = await env.token(['c1'], 'alice');
  const plain = env.gateway.plainUrl ?? '';
  for (let i = 0; i < 40; i++) {
    const reply = await plainH1Request(plain, { cluster: 'c1', token, path: `/forged-code/FORGED_${i}` });
    t.is(reply.status, 502);
  }
  t.is((await plainH1Request(plain, { cluster: 'c1', token, path: '/forged-code/constructor' })).status, 502);
  const metric = env.gateway.registry.getSingleMetric('tether_gateway_request_errors_total');
  const values = metric === undefined ? [] : (await metric.get()).values;
  const codes = values.map((v) => String(v.labels.code));
  const counted = (code: string): number => values.filter((v) => v.labels.code === code).reduce((n, v) => n + v.value, 0);
  if (TEST_BINDING === 'connection') {
    // Each request binds its connection: the answers pass as bytes, and are not read for codes.
    t.is(codes.filter((code) => code.startsWith('FORGED_')).length, 0, codes.join(', '));
    return;
  }
  t.is(codes.filter((code) => code.startsWith('FORGED_')).length, 32, codes.join(', '));
  t.false(codes.includes('constructor'));
  t.is(counted('UNRECOGNIZED'), 40 - 32 + 1);
});

test.serial('an agent told replicas that are not replicas (null, numbers, strings) by a gateway keeps running, and keeps serving', async (t) => {
  const material = await env.pki.gatewayCert();
  const fake = await startFakeGateway(material, env.pki.trustBundlePem);
  const agent = await env.startAgent({ clusterId: 'c1', agentId: 'told-junk', gateways: [fake.address], backoff: { initialDelayMs: 20, maxDelayMs: 200 } });
  try {
    const socket = await fake.next(WAIT_MS);
    const peer = new RawPeer(socket, { autoAck: true });
    const welcome = { type: 'welcome', gatewayId: 'fake', replicas: [null, 42, 'x', { id: 1 }, { id: 'ok', address: fake.address }], pingIntervalMs: 1000 };
    const opening = headerBlock([
      [':method', 'POST'],
      [':scheme', 'https'],
      [':path', '/.tether/control'],
      [':authority', 'tunnel.invalid'],
      ['tether-control', '1'],
    ]);
    peer.write(Buffer.concat([PREFACE, settingsFrame([]), headersFrame(1, opening, { endStream: false }), dataFrame(1, `${JSON.stringify(welcome)}\n`)]));
    // The agent takes the welcome (its connection goes live), whatever the list held.
    await agent.waitForConnections(1, WAIT_MS);
    t.is(agent.liveConnections().length, 1);
    // The same list later, in a replicas message.
    peer.write(dataFrame(1, `${JSON.stringify({ type: 'replicas', replicas: welcome.replicas })}\n`));
    peer.write(pingFrame(Buffer.from('replicas')));
    t.true(await peer.until(() => peer.log.pingAcks.includes(Buffer.from('replicas').toString('hex')), WAIT_MS));
    socket.destroy();
  } finally {
    await agent.close();
    await fake.close();
  }
});

test.serial('a request with more header fields than the tunnel carries is refused at the edge (431 HEADERS_TOO_LARGE; HTTP/2: reset), not 502 from the tunnel', async (t) => {
  const token = await env.token(['c1'], 'alice');
  const many = Array.from({ length: 245 }, (_, i) => `x-f${i}: v\r\n`).join('');
  const answer = await exchange(`GET /many HTTP/1.1\r\nhost: c1.tether.localhost\r\nauthorization: Bearer ${token}\r\n${many}\r\n`);
  // Binding carries them as bytes to the upstream; per request they would not fit the tunnel.
  if (TEST_BINDING === 'connection') t.regex(answer, /^HTTP\/1\.1 200 /);
  else {
    t.regex(answer, /^HTTP\/1\.1 431 /, answer.slice(0, 200));
    t.regex(answer, /\r\ntether-error: HEADERS_TOO_LARGE\r\n/i);
  }
  const session = await connectH2(env.gateway.plainUrl ?? '');
  try {
    const headers: http2.OutgoingHttpHeaders = { ':method': 'GET', ':path': '/many', ':authority': 'c1.tether.localhost', authorization: `Bearer ${token}` };
    for (let i = 0; i < 245; i++) headers[`x-f${i}`] = 'v';
    const outcome = await new Promise<string>((resolve) => {
      const stream = session.request(headers);
      stream.on('error', () => undefined);
      stream.resume();
      stream.once('response', (h) => resolve(`status ${String(h[':status'])} ${String(h['tether-error'])}`));
      stream.once('close', () => resolve(`reset ${stream.rstCode ?? ''}`));
    });
    t.regex(outcome, /^reset /, outcome);
  } finally {
    await closeH2(session);
  }
});

test.serial('a refused WebSocket upgrade or CONNECT leaves no connection open at the gateway once the client has closed', async (t) => {
  const token = await env.token(['c1'], 'alice');
  const plain = new URL(env.gateway.plainUrl ?? '');
  const cases = [
    // No Sec-WebSocket-Key: refused before admission (400), with a pipelined request behind it,
    // complete or not.
    'GET /ws HTTP/1.1\r\nhost: c1.tether.localhost\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nGET /next HTTP/1.1\r\nhost: c1.tether.localhost\r\n\r\n',
    'GET /ws HTTP/1.1\r\nhost: c1.tether.localhost\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nGET /next HTTP/1.1\r\nhost: c1.tether.localhost\r\n',
    // Another protocol than WebSocket.
    `GET / HTTP/1.1\r\nhost: c1.tether.localhost\r\nauthorization: Bearer ${token}\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n`,
    // CONNECT without a token: refused by admission (401).
    `CONNECT ${tcpTarget} HTTP/1.1\r\nhost: ${tcpTarget}\r\ntether-cluster: c1\r\n\r\nmore bytes`,
    // An upgrade without Host: refused before admission (400), then more than a few bytes.
    'GET /ws HTTP/1.1\r\ntether-cluster: c1\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nmore bytes',
    `GET /ws HTTP/1.1\r\nupgrade: h2c\r\nconnection: upgrade\r\n${Array.from({ length: 250 }, (_, i) => `x-h${i}: v\r\n`).join('')}\r\n${'x-more: bytes\r\n'.repeat(400)}`,
  ];
  const [tlsHost, tlsPort] = splitHostPort(env.gateway.address);
  for (const [bytes, secure] of cases.flatMap((c): Array<[string, boolean]> => [[c, false], [c, true]])) {
    const accepted = nextAcceptedSocket();
    const client = secure
      ? tls.connect({ host: tlsHost, port: tlsPort, servername: 'localhost', ca: env.pki.trustBundlePem, ALPNProtocols: ['http/1.1'] })
      : net.connect(Number(plain.port), plain.hostname);
    client.on('error', () => undefined);
    // The gateway's end: the TCP socket it accepted (under TLS, the one the TLS socket wraps).
    const server = await accepted;
    if (secure) await new Promise<void>((resolve) => client.once('secureConnect', () => resolve()));
    let received = '';
    const answered = new Promise<void>((resolve) => {
      client.on('data', (chunk: Buffer) => {
        received += chunk.toString('latin1');
        if (/\r\n\r\n[^\n]*\n$/.test(received)) resolve();
      });
    });
    // The head first; what follows it only once the answer is in (after the gateway took the
    // socket from its HTTP parser).
    const split = bytes.indexOf('\r\n\r\n') + 4;
    client.write(bytes.slice(0, split));
    await answered;
    if (split < bytes.length) client.write(bytes.slice(split));
    const what = `${secure ? 'TLS' : 'plain'} ${bytes.split('\r\n')[0]}`;
    t.regex(received, /^HTTP\/1\.1 4\d\d /, what);
    // The client has its answer and closes; the gateway must see that and close its end.
    client.end();
    const closed = await new Promise<boolean>((resolve) => {
      if (server.destroyed) return resolve(true);
      const timer = setTimeout(() => resolve(false), WAIT_MS);
      server.once('close', () => {
        clearTimeout(timer);
        resolve(true);
      });
    });
    t.true(closed, `${what}: the gateway's end still open ${WAIT_MS} ms after the client closed`);
    client.destroy();
  }
});
