/**
 * Connection binding (gateway `binding: 'connection'`): an HTTP/1.1 client connection is bound to
 * one tunnel stream and one upstream connection after its first request is authorized. These
 * tests show what a later request on a bound connection can reach when it changes `Host`,
 * `tether-cluster`, the token or the path, and that token expiry, revocation of the client or the
 * agent, route removal, cluster removal and drain each close a bound connection.
 *
 * Requests are written by hand on one socket so that every request provably shares one client
 * connection; the upstreams record which of their connections each request arrived on.
 */
import test from 'ava';
import { once } from 'node:events';
import * as http from 'node:http';
import * as net from 'node:net';
import type { GatewayOptions } from '../../gateway/index.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { splitHostPort } from '../helpers/tunnel-clients.js';
import { startTunnelEnv, type TunnelEnv } from '../helpers/tunnel-env.js';
import { startHttp1Upstream, type Upstream } from '../helpers/tunnel-upstreams.js';

failOnLeaks(test);

interface Seen {
  path: string;
  port: number;
  headers: http.IncomingHttpHeaders;
}

/** An upstream that answers JSON `{ name, path, subject }` and records each complete request with its connection's port. */
async function recordingUpstream(name: string, seen: Seen[], hold?: { waiting: Promise<void>; started: () => void }): Promise<Upstream> {
  return startHttp1Upstream((req, res) => {
    // Recorded and answered once the whole request has arrived.
    req.resume();
    req.once('end', () => answer(req, res));
  });

  function answer(req: http.IncomingMessage, res: http.ServerResponse): void {
    seen.push({ path: req.url ?? '', port: req.socket.remotePort ?? 0, headers: req.headers });
    const body = JSON.stringify({ name, path: req.url, subject: req.headers['tether-subject'] ?? null });
    if (req.url === '/slow' && hold !== undefined) {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) });
      res.write(body.slice(0, 5));
      hold.started();
      void hold.waiting.then(() => res.end(body.slice(5)));
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) });
    res.end(body);
  }
}

interface RawReply {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** One client connection to the gateway's plain port: send a request, read exactly one response. */
class Client {
  private buffer = Buffer.alloc(0);
  private waiter: (() => void) | null = null;
  closed = false;
  readonly done: Promise<void>;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      this.waiter?.();
    });
    socket.on('error', () => undefined);
    this.done = new Promise((resolve) =>
      socket.once('close', () => {
        this.closed = true;
        this.waiter?.();
        resolve();
      }),
    );
  }

  static async open(url: string): Promise<Client> {
    const [host, port] = splitHostPort(new URL(url).host);
    const socket = net.connect({ host, port });
    await once(socket, 'connect');
    return new Client(socket);
  }

  async request(path: string, headers: Record<string, string>, timeoutMs = 5_000): Promise<RawReply> {
    const lines = [`GET ${path} HTTP/1.1`, ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`)];
    this.socket.write(`${lines.join('\r\n')}\r\n\r\n`);
    return this.read(timeoutMs);
  }

  /** Read one response (Content-Length bodies only, as the upstreams here send). */
  async read(timeoutMs = 5_000): Promise<RawReply> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const end = this.buffer.indexOf('\r\n\r\n');
      if (end !== -1) {
        const [statusLine = '', ...fieldLines] = this.buffer.toString('latin1', 0, end).split('\r\n');
        const headers: Record<string, string> = {};
        for (const line of fieldLines) {
          const colon = line.indexOf(':');
          headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
        }
        const length = Number(headers['content-length'] ?? 0);
        if (this.buffer.length >= end + 4 + length) {
          const body = this.buffer.toString('utf8', end + 4, end + 4 + length);
          this.buffer = this.buffer.subarray(end + 4 + length);
          return { status: Number(statusLine.split(' ')[1]), headers, body };
        }
      }
      if (this.closed) throw new Error(`connection closed before a complete response (${this.buffer.length} bytes buffered)`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('no response in time');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(timer);
          this.waiter = null;
          resolve();
        };
      });
    }
  }

  /** Resolves when the gateway closes the connection; rejects after `timeoutMs`. */
  async closedWithin(timeoutMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.done,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`connection still open after ${timeoutMs} ms`)), timeoutMs);
      }),
    ]).finally(() => clearTimeout(timer));
  }

  close(): void {
    this.socket.destroy();
  }
}

const seenA: Seen[] = [];
const seenApi: Seen[] = [];
const seenB: Seen[] = [];
let upA: Upstream;
let upApi: Upstream;
let upB: Upstream;
let releaseSlow: () => void = () => undefined;
let slowStarted: () => void = () => undefined;
let slowIsRunning: Promise<void> = Promise.resolve();
let env: TunnelEnv;

const ROUTES_C1 = (): Array<{ prefix: string; upstream: string }> => [
  { prefix: '/', upstream: upA.url },
  { prefix: '/api/', upstream: upApi.url },
];

test.before(async () => {
  const waiting = new Promise<void>((resolve) => {
    releaseSlow = resolve;
  });
  slowIsRunning = new Promise<void>((resolve) => {
    slowStarted = resolve;
  });
  upA = await recordingUpstream('a', seenA, { waiting, started: () => slowStarted() });
  upApi = await recordingUpstream('api', seenApi);
  upB = await recordingUpstream('b', seenB);
  env = await startTunnelEnv({
    clusters: ['c1', 'c2'],
    gateway: { binding: 'connection' },
    agents: [
      { clusterId: 'c1', agentId: 'a1', routes: ROUTES_C1() },
      { clusterId: 'c2', agentId: 'b1', routes: [{ prefix: '/', upstream: upB.url }] },
    ],
  });
});

test.after.always(async () => {
  releaseSlow();
  await env?.close();
  await Promise.all([upA?.close(), upApi?.close(), upB?.close()]);
});

test.beforeEach(() => {
  seenA.length = 0;
  seenApi.length = 0;
  seenB.length = 0;
});

function plainUrl(): string {
  const url = env.gateway.plainUrl;
  if (url === null) throw new Error('no plain port');
  return url;
}

async function boundRequests(cluster: string): Promise<number> {
  const metric = await env.gateway.registry.getSingleMetric('tether_gateway_requests_total')?.get();
  return metric?.values.find((v) => v.labels.cluster === cluster && v.labels.protocol === 'http1-bound')?.value ?? 0;
}

const host = (cluster: string): string => `${cluster}.tether.localhost`;

test.serial('requests on one client connection share one tunnel stream and one upstream connection', async (t) => {
  const token = await env.token(['c1'], 'alice');
  const before = await boundRequests('c1');
  const client = await Client.open(plainUrl());
  try {
    for (let i = 0; i < 5; i++) {
      const reply = await client.request(`/r${i}`, { host: host('c1'), authorization: `Bearer ${token}` });
      t.is(reply.status, 200);
      t.is(JSON.parse(reply.body).subject, 'alice');
    }
  } finally {
    client.close();
  }
  t.is(seenA.length, 5);
  t.is(new Set(seenA.map((s) => s.port)).size, 1, 'every request on the one upstream connection');
  t.is((await boundRequests('c1')) - before, 5);
  t.true(seenA.every((s) => s.headers['tether-request-id'] !== undefined && s.headers['tether-cluster'] === 'c1'));
  t.is(new Set(seenA.map((s) => s.headers['tether-request-id'])).size, 5, 'a request id per request');
});

test.serial('a later request that changes Host to another cluster reaches only what its token allows', async (t) => {
  const tokenC1 = await env.token(['c1'], 'alice');
  const client = await Client.open(plainUrl());
  try {
    t.is((await client.request('/first', { host: host('c1'), authorization: `Bearer ${tokenC1}` })).status, 200);
    const second = await client.request('/second', { host: host('c2'), authorization: `Bearer ${tokenC1}` });
    t.is(second.status, 403);
    t.is(second.headers['tether-error'], 'FORBIDDEN');
  } finally {
    client.close();
  }
  t.deepEqual(seenA.map((s) => s.path), ['/first'], 'the bound upstream saw only the first request');
  t.is(seenB.length, 0, "c2's upstream saw nothing");
});

test.serial('a later request that changes tether-cluster (with a token for both) is admitted afresh and reaches c2 on its own binding', async (t) => {
  const token = await env.token(['c1', 'c2'], 'carol');
  const client = await Client.open(plainUrl());
  try {
    const first = await client.request('/first', { host: 'anything.example', 'tether-cluster': 'c1', authorization: `Bearer ${token}` });
    t.is(JSON.parse(first.body).name, 'a');
    const second = await client.request('/second', { host: 'anything.example', 'tether-cluster': 'c2', authorization: `Bearer ${token}` });
    t.is(second.status, 200);
    t.is(JSON.parse(second.body).name, 'b');
    const third = await client.request('/third', { host: 'anything.example', 'tether-cluster': 'c1', authorization: `Bearer ${token}` });
    t.is(JSON.parse(third.body).name, 'a');
  } finally {
    client.close();
  }
  t.deepEqual(seenA.map((s) => s.path), ['/first', '/third']);
  t.deepEqual(seenB.map((s) => s.path), ['/second']);
  t.is(seenB[0]?.headers['tether-cluster'], 'c2');
});

test.serial('a later request with another token: a bad one gets 401 and reaches nothing, a valid one carries its own identity', async (t) => {
  const alice = await env.token(['c1'], 'alice');
  const mallory = await env.token(['c1'], 'mallory');
  const client = await Client.open(plainUrl());
  try {
    t.is((await client.request('/first', { host: host('c1'), authorization: `Bearer ${alice}` })).status, 200);
    const other = await client.request('/other', { host: host('c1'), authorization: `Bearer ${mallory}` });
    t.is(JSON.parse(other.body).subject, 'mallory', 'the new token is verified and its own subject is passed on');
    const forged = await client.request('/forged', { host: host('c1'), authorization: `Bearer ${alice}x` });
    t.is(forged.status, 401);
    t.is(forged.headers['tether-error'], 'UNAUTHENTICATED');
    const none = await Client.open(plainUrl());
    try {
      t.is((await none.request('/first', { host: host('c1'), authorization: `Bearer ${alice}` })).status, 200);
      const anonymous = await none.request('/anonymous', { host: host('c1') });
      t.is(anonymous.status, 401);
    } finally {
      none.close();
    }
  } finally {
    client.close();
  }
  t.deepEqual(
    seenA.map((s) => [s.path, s.headers['tether-subject']]),
    [
      ['/first', 'alice'],
      ['/other', 'mallory'],
      ['/first', 'alice'],
    ],
  );
});

test.serial('forged tether-* headers on a bound connection are replaced by the gateway', async (t) => {
  const token = await env.token(['c1'], 'alice');
  const client = await Client.open(plainUrl());
  try {
    await client.request('/first', { host: host('c1'), authorization: `Bearer ${token}` });
    const reply = await client.request('/second', { host: host('c1'), authorization: `Bearer ${token}`, 'tether-subject': 'root', 'tether-identity': 'forged', 'tether-x': '1' });
    t.is(JSON.parse(reply.body).subject, 'alice');
  } finally {
    client.close();
  }
  const second = seenA[1];
  t.is(second?.headers['tether-subject'], 'alice');
  t.not(second?.headers['tether-identity'], 'forged');
  t.is(second?.headers['tether-x'], undefined);
});

test.serial("a path another route serves leaves the binding: it reaches that route's upstream, never the bound one", async (t) => {
  const token = await env.token(['c1'], 'alice');
  const client = await Client.open(plainUrl());
  try {
    t.is(JSON.parse((await client.request('/page', { host: host('c1'), authorization: `Bearer ${token}` })).body).name, 'a');
    t.is(JSON.parse((await client.request('/api/items', { host: host('c1'), authorization: `Bearer ${token}` })).body).name, 'api');
    t.is(JSON.parse((await client.request('/api/more', { host: host('c1'), authorization: `Bearer ${token}` })).body).name, 'api');
  } finally {
    client.close();
  }
  t.deepEqual(seenA.map((s) => s.path), ['/page']);
  t.deepEqual(seenApi.map((s) => s.path), ['/api/items', '/api/more']);
  t.is(new Set(seenApi.map((s) => s.port)).size, 1, '/api/ requests share their own binding');
});

test.serial('a bound connection closes by itself when the token that opened it expires', async (t) => {
  const short = await env.issuer.sign({ clusters: ['c1'], sub: 'brief', expiresIn: '2s' });
  const client = await Client.open(plainUrl());
  try {
    t.is((await client.request('/first', { host: host('c1'), authorization: `Bearer ${short}` })).status, 200);
    await client.closedWithin(4_000);
    t.pass('closed at exp');
  } finally {
    client.close();
  }
  t.deepEqual(seenA.map((s) => s.path), ['/first']);
});

test.serial("revoking the client's identity closes its bound connections and refuses its token", async (t) => {
  const token = await env.token(['c1'], 'revokee');
  const client = await Client.open(plainUrl());
  try {
    t.is((await client.request('/first', { host: host('c1'), authorization: `Bearer ${token}` })).status, 200);
    env.gateway.revokeSubjects(['revokee']);
    await client.closedWithin(2_000);
    const again = await Client.open(plainUrl());
    try {
      const refused = await again.request('/again', { host: host('c1'), authorization: `Bearer ${token}` });
      t.is(refused.status, 401);
      t.is(refused.headers['tether-error'], 'IDENTITY_REVOKED');
    } finally {
      again.close();
    }
  } finally {
    client.close();
    env.gateway.revokeSubjects([]);
  }
  t.deepEqual(seenA.map((s) => s.path), ['/first']);
});

test.serial('removing the route closes the connections bound through it; the next request finds no route', async (t) => {
  const token = await env.token(['c1'], 'alice');
  const agent = env.agents[0];
  if (agent === undefined) throw new Error('no agent');
  const client = await Client.open(plainUrl());
  try {
    t.is((await client.request('/first', { host: host('c1'), authorization: `Bearer ${token}` })).status, 200);
    agent.setRoutes([{ prefix: '/api/', upstream: upApi.url }]);
    await client.closedWithin(2_000);
    const next = await Client.open(plainUrl());
    try {
      const reply = await next.request('/first', { host: host('c1'), authorization: `Bearer ${token}` });
      t.is(reply.status, 404);
      t.is(reply.headers['tether-error'], 'NO_ROUTE');
    } finally {
      next.close();
    }
  } finally {
    client.close();
    agent.setRoutes(ROUTES_C1());
  }
  t.deepEqual(seenA.map((s) => s.path), ['/first']);
});

/** A gateway and one agent of c1 of their own, for tests that remove or end what they bind through. */
async function ownEnv(gateway: Partial<GatewayOptions> = {}): Promise<TunnelEnv & { url: string }> {
  const own = await startTunnelEnv({ clusters: ['c1', 'c2'], gateway: { binding: 'connection', ...gateway }, agents: [{ clusterId: 'c1', agentId: 'own', routes: ROUTES_C1() }] });
  const url = own.gateway.plainUrl;
  if (url === null) throw new Error('no plain port');
  return Object.assign(own, { url });
}

test.serial('removing the cluster closes its bound connections; the next request gets UNKNOWN_CLUSTER', async (t) => {
  const own = await ownEnv();
  const token = await own.token(['c1'], 'alice');
  const client = await Client.open(own.url);
  try {
    t.is((await client.request('/first', { host: host('c1'), authorization: `Bearer ${token}` })).status, 200);
    own.gateway.setClusters(['c2']);
    await client.closedWithin(2_000);
    const next = await Client.open(own.url);
    try {
      const reply = await next.request('/first', { host: host('c1'), authorization: `Bearer ${token}` });
      t.is(reply.status, 404);
      t.is(reply.headers['tether-error'], 'UNKNOWN_CLUSTER');
    } finally {
      next.close();
    }
    t.is(own.gateway.tunnels.count('c1'), 0, "c1's tunnels are closed with it");
  } finally {
    client.close();
    await own.close();
  }
  t.deepEqual(seenA.map((s) => s.path), ['/first']);
});

test.serial("revoking the agent's certificate closes the connections bound through its tunnels", async (t) => {
  const own = await ownEnv();
  const token = await own.token(['c1'], 'alice');
  const client = await Client.open(own.url);
  try {
    t.is((await client.request('/first', { host: host('c1'), authorization: `Bearer ${token}` })).status, 200);
    const serials = own.gateway.tunnels.all().map((tunnel) => tunnel.serialNumber ?? '');
    t.true(serials.length > 0 && serials.every((serial) => serial !== ''));
    own.gateway.setRevokedSerials(serials);
    await client.closedWithin(2_000);
  } finally {
    client.close();
    await own.close();
  }
});

test.serial('drain: the response in flight on a bound connection completes (told connection: close), then the connection closes', async (t) => {
  const own = await ownEnv();
  const token = await own.token(['c1'], 'alice');
  const client = await Client.open(own.url);
  try {
    t.is((await client.request('/first', { host: host('c1'), authorization: `Bearer ${token}` })).status, 200);
    client.socket.write(`GET /slow HTTP/1.1\r\nhost: ${host('c1')}\r\nauthorization: Bearer ${token}\r\n\r\n`);
    await slowIsRunning;
    const drained = own.gateway.drain(10_000);
    releaseSlow();
    const reply = await client.read();
    t.is(reply.status, 200);
    t.is(JSON.parse(reply.body).path, '/slow');
    t.is(reply.headers.connection, 'close');
    await client.closedWithin(3_000);
    await drained;
  } finally {
    client.close();
    await own.close();
  }
  t.deepEqual(seenA.map((s) => s.path), ['/first', '/slow']);
});

test.serial('an idle bound connection closes at the keep-alive timeout, not before', async (t) => {
  const own = await ownEnv({ clientKeepAliveTimeoutMs: 400 });
  const token = await own.token(['c1'], 'alice');
  const client = await Client.open(own.url);
  try {
    t.is((await client.request('/first', { host: host('c1'), authorization: `Bearer ${token}` })).status, 200);
    const idleSince = Date.now();
    await client.closedWithin(3_000);
    t.true(Date.now() - idleSince >= 350, 'not before the timeout');
  } finally {
    client.close();
    await own.close();
  }
});

test.serial('a chunked body over maxRequestBodyBytes on a bound connection: 413 BODY_TOO_LARGE, and the upstream never gets it whole', async (t) => {
  const own = await ownEnv({ limits: { maxRequestBodyBytes: 1000 } });
  const token = await own.token(['c1'], 'alice');
  const client = await Client.open(own.url);
  try {
    t.is((await client.request('/first', { host: host('c1'), authorization: `Bearer ${token}` })).status, 200);
    const chunk = 'x'.repeat(600);
    client.socket.write(`POST /big HTTP/1.1\r\nhost: ${host('c1')}\r\nauthorization: Bearer ${token}\r\ntransfer-encoding: chunked\r\n\r\n`);
    client.socket.write(`258\r\n${chunk}\r\n258\r\n${chunk}\r\n0\r\n\r\n`);
    const reply = await client.read();
    t.is(reply.status, 413);
    t.is(reply.headers['tether-error'], 'BODY_TOO_LARGE');
    await client.closedWithin(2_000);
  } finally {
    client.close();
    await own.close();
  }
  t.deepEqual(seenA.map((s) => s.path), ['/first'], 'the oversized request was never answered by the upstream');
});
