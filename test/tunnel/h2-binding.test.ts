/**
 * HTTP/2 connection binding: an HTTP/2 client connection (h2 over TLS, h2c prior knowledge) whose
 * first request is admitted for an `h2c://` route is bound to one tunnel stream and one upstream
 * HTTP/2 connection. These tests show that later requests on it share that upstream connection,
 * that a request for another authority, token, cluster or route gets 421 `BINDING_MISMATCH` and
 * reaches nothing while the connection goes on working, that connections the binding cannot carry
 * are served per request, and that expiry, revocation, route removal and drain each close it.
 */
import test from 'ava';
import { once } from 'node:events';
import * as http2 from 'node:http2';
import type { IncomingHttpHeaders } from 'node:http2';
import * as net from 'node:net';
import { failOnLeaks } from '../helpers/leaks.js';
import { closeH2, connectH2, h2Request, splitHostPort, type Reply } from '../helpers/tunnel-clients.js';
import { startTunnelEnv, type TunnelEnv } from '../helpers/tunnel-env.js';
import { startHttp1Upstream, type Upstream } from '../helpers/tunnel-upstreams.js';
import { PREFACE, SETTINGS_ACK, FrameType, headerBlock, headersFrame, hpackTableSize, logPeer, rstStreamFrame, settingsFrame, type PeerLog } from '../fuzz/h2-wire.js';

failOnLeaks(test);

interface Seen {
  name: string;
  session: number;
  headers: IncomingHttpHeaders;
}

interface H2Upstream {
  url: string;
  sessions: () => number;
  close(): Promise<void>;
}

const seen: Seen[] = [];
let releaseSlow: () => void = () => undefined;

/** An h2c upstream that records each request with the number of its connection and answers JSON. */
async function recordingH2c(name: string): Promise<H2Upstream> {
  const server = http2.createServer();
  const sessions = new Set<http2.ServerHttp2Session>();
  let opened = 0;
  const ids = new WeakMap<http2.ServerHttp2Session, number>();
  server.on('session', (session) => {
    sessions.add(session);
    ids.set(session, ++opened);
    session.once('close', () => sessions.delete(session));
  });
  server.on('stream', (stream, headers) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('error', () => undefined);
    stream.once('end', () => {
      const session = stream.session === undefined ? 0 : (ids.get(stream.session as http2.ServerHttp2Session) ?? 0);
      seen.push({ name, session, headers });
      const body = JSON.stringify({ name, path: headers[':path'], body: Buffer.concat(chunks).toString(), subject: headers['tether-subject'] ?? null });
      if (headers[':path'] === '/slow') {
        stream.respond({ ':status': 200, 'content-type': 'application/json' });
        stream.write(body.slice(0, 3));
        const finish = (): void => {
          if (!stream.closed) stream.end(body.slice(3));
        };
        const previous = releaseSlow;
        releaseSlow = () => {
          previous();
          finish();
        };
        return;
      }
      stream.respond({ ':status': 200, 'content-type': 'application/json' }, { waitForTrailers: headers[':path'] === '/trailers' });
      if (headers[':path'] === '/trailers') stream.once('wantTrailers', () => stream.sendTrailers({ 'x-sum': String(body.length) }));
      stream.end(body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `h2c://127.0.0.1:${port}`,
    sessions: () => opened,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sessions) s.destroy();
        server.close(() => resolve());
      }),
  };
}

let env: TunnelEnv;
let upA: H2Upstream;
let upApi: H2Upstream;
let upB: H2Upstream;
let upH1: Upstream;

const routesC1 = (): Array<{ prefix: string; upstream: string }> => [
  { prefix: '/', upstream: upA.url },
  { prefix: '/api/', upstream: upApi.url },
  { prefix: '/h1/', upstream: upH1.url },
];

test.before(async () => {
  upA = await recordingH2c('a');
  upApi = await recordingH2c('api');
  upB = await recordingH2c('b');
  upH1 = await startHttp1Upstream();
  env = await startTunnelEnv({
    clusters: ['c1', 'c2'],
    gateway: { binding: 'connection' },
    agents: [
      { clusterId: 'c1', agentId: 'a1', routes: routesC1() },
      { clusterId: 'c2', agentId: 'b1', routes: [{ prefix: '/', upstream: upB.url }] },
    ],
  });
});

test.after.always(async () => {
  releaseSlow();
  await env?.close();
  await Promise.all([upA?.close(), upApi?.close(), upB?.close(), upH1?.close()]);
});

test.beforeEach(() => {
  seen.length = 0;
});

function plainUrl(): string {
  const url = env.gateway.plainUrl;
  if (url === null) throw new Error('no plain port');
  return url;
}

async function requestsOf(cluster: string, protocol: string): Promise<number> {
  const metric = await env.gateway.registry.getSingleMetric('tether_gateway_requests_total')?.get();
  return metric?.values.find((v) => v.labels.cluster === cluster && v.labels.protocol === protocol)?.value ?? 0;
}

async function errorsOf(code: string): Promise<number> {
  const metric = await env.gateway.registry.getSingleMetric('tether_gateway_request_errors_total')?.get();
  return metric?.values.find((v) => v.labels.code === code)?.value ?? 0;
}

function json(reply: Reply): { name: string; path: string; body: string; subject: string | null } {
  return JSON.parse(reply.body.toString()) as { name: string; path: string; body: string; subject: string | null };
}

function closed(session: http2.ClientHttp2Session, timeoutMs = 5_000): Promise<void> {
  if (session.destroyed) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`session still open after ${timeoutMs} ms`)), timeoutMs);
    session.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

for (const transport of ['h2c', 'h2'] as const) {
  test.serial(`${transport}: every request of a connection reaches one upstream connection; credential dropped, identity injected, forged fields replaced`, async (t) => {
    const token = await env.token(['c1'], 'alice');
    const session = transport === 'h2' ? await connectH2(env.gateway.url, env.gatewayTls.ca) : await connectH2(plainUrl());
    try {
      const before = await requestsOf('c1', 'http2-bound');
      const sessionsBefore = upA.sessions();
      const headers = { host: 'c1.tether.localhost', authorization: `Bearer ${token}`, 'tether-subject': 'mallory', 'x-custom': 'yes' };
      const first = await h2Request(session, { path: '/one', headers });
      t.is(first.status, 200);
      t.is(json(first).subject, 'alice');
      // Ten at once, a POST with a body, and trailers.
      const many = await Promise.all(Array.from({ length: 10 }, (_, i) => h2Request(session, { path: `/many/${i}`, headers })));
      for (const [i, reply] of many.entries()) t.is(json(reply).path, `/many/${i}`);
      const post = await h2Request(session, { method: 'POST', path: '/post', headers, body: 'x'.repeat(100_000) });
      t.is(json(post).body.length, 100_000);
      const trailers = await h2Request(session, { path: '/trailers', headers });
      t.is(trailers.trailers?.['x-sum'], String(trailers.body.length));
      t.is(upA.sessions() - sessionsBefore, 1, 'one upstream connection for the client connection');
      t.is((await requestsOf('c1', 'http2-bound')) - before, 13);
      t.is(seen.length, 13);
      const ids = new Set<string>();
      for (const s of seen) {
        t.is(s.session, seen[0]?.session);
        t.is(s.headers.authorization, undefined, 'the credential stays at the edge');
        t.is(s.headers['tether-subject'], 'alice');
        t.is(s.headers['x-custom'], 'yes');
        ids.add(String(s.headers['tether-request-id']));
      }
      t.is(ids.size, 13, 'a request id of its own for every request');
    } finally {
      await closeH2(session);
    }
  });
}

test.serial('a request for another authority, token, cluster or route gets 421 BINDING_MISMATCH and reaches nothing; the connection goes on', async (t) => {
  const token = await env.token(['c1'], 'alice');
  const both = await env.token(['c1', 'c2'], 'alice');
  const other = await env.token(['c1'], 'bob');
  const session = await connectH2(plainUrl());
  try {
    const headers = { host: 'c1.tether.localhost', authorization: `Bearer ${token}` };
    t.is((await h2Request(session, { path: '/first', headers })).status, 200);
    const mismatchesBefore = await errorsOf('BINDING_MISMATCH');
    const asks = [
      { path: '/x', headers: { host: 'c2.tether.localhost', authorization: `Bearer ${both}` } },
      { path: '/x', headers: { host: 'c1.tether.localhost', authorization: `Bearer ${other}` } },
      { path: '/x', headers: { ...headers, 'tether-cluster': 'c2' } },
      { path: '/api/x', headers },
      { path: '/h1/x', headers },
      { method: 'POST', path: '/api/post', headers, body: 'y'.repeat(200_000) },
    ];
    for (const ask of asks) {
      const reply = await h2Request(session, ask);
      t.is(reply.status, 421, ask.path);
      t.is(reply.headers['tether-error'], 'BINDING_MISMATCH');
    }
    t.is((await errorsOf('BINDING_MISMATCH')) - mismatchesBefore, asks.length);
    t.deepEqual(
      seen.map((s) => `${s.name} ${String(s.headers[':path'])}`),
      ['a /first'],
      'nothing refused reached an upstream',
    );
    // The connection, its HPACK state and its flow-control windows are intact.
    const after = await Promise.all([1, 2, 3].map((i) => h2Request(session, { method: 'POST', path: `/after/${i}`, headers, body: 'z'.repeat(70_000) })));
    for (const reply of after) t.is(reply.status, 200);
    // On a new connection the same requests are admitted on their own.
    const fresh = await connectH2(plainUrl());
    try {
      const api = await h2Request(fresh, { path: '/api/x', headers });
      t.is(json(api).name, 'api');
    } finally {
      await closeH2(fresh);
    }
  } finally {
    await closeH2(session);
  }
});

test.serial('what binding cannot carry is served per request: an HTTP/1.1 route, a refused token, a client that waits for the server', async (t) => {
  const token = await env.token(['c1'], 'alice');
  const headers = { host: 'c1.tether.localhost', authorization: `Bearer ${token}` };
  const before = await requestsOf('c1', 'http2');
  const h1 = await connectH2(plainUrl());
  try {
    const reply = await h2Request(h1, { path: '/h1/hello', headers });
    t.is(reply.status, 200);
    t.is(reply.body.toString(), 'hello');
    t.is((await h2Request(h1, { path: '/again', headers })).status, 200, 'per request, any route');
  } finally {
    await closeH2(h1);
  }
  t.is((await requestsOf('c1', 'http2')) - before, 2);

  const refused = await connectH2(env.gateway.url, env.gatewayTls.ca);
  try {
    const reply = await h2Request(refused, { path: '/x', headers: { host: 'c1.tether.localhost' } });
    t.is(reply.status, 401);
    t.is(reply.headers['tether-error'], 'UNAUTHENTICATED');
  } finally {
    await closeH2(refused);
  }

  // A client that sends no request until it has the server's SETTINGS.
  const [host, port] = splitHostPort(new URL(plainUrl()).host);
  const socket = net.connect({ host, port });
  await once(socket, 'connect');
  try {
    const peer = watch(socket);
    socket.write(Buffer.concat([PREFACE, settingsFrame([])]));
    await peer.until((log) => log.settings > 0, 2_000);
    socket.write(SETTINGS_ACK);
    const block = headerBlock([
      [':method', 'GET'],
      [':scheme', 'http'],
      [':path', '/waited'],
      [':authority', 'c1.tether.localhost'],
      ['authorization', `Bearer ${token}`],
    ]);
    socket.write(headersFrame(1, block, { endStream: true }));
    await peer.until((log) => log.headers.has(1) && log.ended.has(1));
    t.is(peer.log.goaway, null);
  } finally {
    socket.destroy();
  }
});

test.serial('a table size update over the limit the client was told closes the connection with COMPRESSION_ERROR, counted; others are unaffected', async (t) => {
  const token = await env.token(['c1'], 'alice');
  const headers = { host: 'c1.tether.localhost', authorization: `Bearer ${token}` };
  const [host, port] = splitHostPort(new URL(plainUrl()).host);
  const socket = net.connect({ host, port });
  await once(socket, 'connect');
  const metric = async (): Promise<number> =>
    (await env.gateway.registry.getSingleMetric('tether_gateway_session_errors_total')?.get())?.values.find((v) => v.labels.peer === 'client' && v.labels.reason === 'compression')?.value ?? 0;
  const before = await metric();
  const bystander = await connectH2(plainUrl());
  try {
    t.is((await h2Request(bystander, { path: '/bystander', headers })).status, 200);
    const peer = watch(socket);
    const request = (id: number, extra: Buffer = Buffer.alloc(0)): Buffer =>
      headersFrame(
        id,
        Buffer.concat([
          extra,
          headerBlock([
            [':method', 'GET'],
            [':scheme', 'http'],
            [':path', `/raw/${id}`],
            [':authority', 'c1.tether.localhost'],
            ['authorization', `Bearer ${token}`],
          ]),
        ]),
        { endStream: true },
      );
    socket.write(Buffer.concat([PREFACE, settingsFrame([]), request(1)]));
    await peer.until((log) => log.ended.has(1));
    socket.write(request(3, hpackTableSize(1 << 20)));
    await peer.until((log) => log.goaway !== null);
    t.is(peer.log.goaway?.code, 0x9, 'COMPRESSION_ERROR');
    if (!socket.destroyed) await once(socket, 'close');
    t.is((await metric()) - before, 1);
    t.false(seen.some((s) => s.headers[':path'] === '/raw/3'));
    t.is((await h2Request(bystander, { path: '/bystander/2', headers })).status, 200);
  } finally {
    socket.destroy();
    await closeH2(bystander);
  }
});

test.serial('rapid reset on a bound connection: the gateway cuts the client off with ENHANCE_YOUR_CALM before the upstream has to, counted as a flood; others are unaffected', async (t) => {
  const token = await env.token(['c1'], 'alice');
  const headers = { host: 'c1.tether.localhost', authorization: `Bearer ${token}` };
  const [host, port] = splitHostPort(new URL(plainUrl()).host);
  const floods = async (): Promise<number> =>
    (await env.gateway.registry.getSingleMetric('tether_gateway_session_errors_total')?.get())?.values.find((v) => v.labels.peer === 'client' && v.labels.reason === 'flood')?.value ?? 0;
  const before = await floods();
  const bystander = await connectH2(plainUrl());
  const socket = net.connect({ host, port });
  await once(socket, 'connect');
  try {
    t.is((await h2Request(bystander, { path: '/bystander', headers })).status, 200);
    const upstreamSessions = upA.sessions();
    const peer = watch(socket);
    const block = (id: number): Buffer =>
      headerBlock([
        [':method', 'GET'],
        [':scheme', 'http'],
        [':path', `/reset/${id}`],
        [':authority', 'c1.tether.localhost'],
        ['authorization', `Bearer ${token}`],
      ]);
    socket.write(Buffer.concat([PREFACE, settingsFrame([]), headersFrame(1, block(1), { endStream: true })]));
    await peer.until((log) => log.ended.has(1));
    const burst: Buffer[] = [];
    for (let id = 3; id < 3 + 2 * 2_000; id += 2) burst.push(headersFrame(id, block(id), { endStream: true }), rstStreamFrame(id, 0x8));
    socket.write(Buffer.concat(burst));
    await peer.until((log) => log.goaway !== null);
    t.is(peer.log.goaway?.code, 0xb, 'ENHANCE_YOUR_CALM');
    if (!socket.destroyed) await once(socket, 'close');
    t.is((await floods()) - before, 1, "the gateway's own limit cut it off");
    t.is(upA.sessions() - upstreamSessions, 1, 'one upstream connection, closed with the client');
    t.is((await h2Request(bystander, { path: '/bystander/2', headers })).status, 200);
  } finally {
    socket.destroy();
    await closeH2(bystander);
  }
});

test.serial('token expiry closes a bound HTTP/2 connection at exp', async (t) => {
  const token = await env.issuer.sign({ sub: 'shortlived', clusters: ['c1'], expiresIn: '2s' });
  const exp = (JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString()) as { exp: number }).exp;
  const session = await connectH2(plainUrl());
  const ended = closed(session, 5_000);
  t.is((await h2Request(session, { path: '/short', headers: { host: 'c1.tether.localhost', authorization: `Bearer ${token}` } })).status, 200);
  await ended;
  t.true(Date.now() >= exp * 1000 - 50, 'not before exp');
});

test.serial('revoking the client identity, removing the route and draining each close a bound HTTP/2 connection', async (t) => {
  const headersFor = (token: string): Record<string, string> => ({ host: 'c1.tether.localhost', authorization: `Bearer ${token}` });
  // Revocation.
  const carol = await env.token(['c1'], 'carol');
  const s1 = await connectH2(plainUrl());
  t.is((await h2Request(s1, { path: '/r', headers: headersFor(carol) })).status, 200);
  env.gateway.revokeSubjects(['carol']);
  await closed(s1);

  // Route removal at the agent.
  const token = await env.token(['c1'], 'alice');
  const s2 = await connectH2(plainUrl());
  t.is((await h2Request(s2, { path: '/route', headers: headersFor(token) })).status, 200);
  const agent = env.agents[0];
  if (agent === undefined) throw new Error('no agent');
  agent.setRoutes(routesC1().filter((r) => r.prefix !== '/'));
  await closed(s2);
  agent.setRoutes(routesC1());

  // Drain: the response in flight completes, then the connection closes.
  const s3 = await connectH2(plainUrl());
  t.is((await h2Request(s3, { path: '/warm', headers: headersFor(token) })).status, 200);
  const slow = h2Request(s3, { path: '/slow', headers: headersFor(token) });
  await waitFor(() => seen.some((s) => s.headers[':path'] === '/slow'));
  const draining = env.gateway.drain();
  const ended = closed(s3, 10_000);
  releaseSlow();
  const reply = await slow;
  t.is(reply.status, 200);
  t.is(json(reply).path, '/slow');
  await ended;
  await draining;
});

/** The frames a raw client socket receives, and a wait for a condition on them. */
function watch(socket: net.Socket): { log: PeerLog; until(condition: (log: PeerLog) => boolean, timeoutMs?: number): Promise<void> } {
  const waiters = new Set<() => void>();
  const log = logPeer(socket, () => {
    for (const waiter of [...waiters]) waiter();
  });
  return {
    log,
    until: (condition, timeoutMs = 5_000) =>
      new Promise<void>((resolve, reject) => {
        const check = (): void => {
          if (condition(log)) {
            clearTimeout(timer);
            waiters.delete(check);
            resolve();
          }
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error('frames not seen in time'));
        }, timeoutMs);
        waiters.add(check);
        check();
      }),
  };
}

async function waitFor(condition: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((resolve) => setImmediate(resolve));
  }
}
