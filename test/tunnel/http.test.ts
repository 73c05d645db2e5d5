import test from 'ava';
import { failOnLeaks } from '../helpers/leaks.js';
import { closeH2, connectH2, h1Request, h2Request, plainH1Request } from '../helpers/tunnel-clients.js';
import { startTunnelEnv, type TunnelEnv } from '../helpers/tunnel-env.js';
import { startH2cUpstream, startHttp1Upstream, type Upstream } from '../helpers/tunnel-upstreams.js';

failOnLeaks(test);

let env: TunnelEnv;
let up1: Upstream;
let up2: Upstream;

test.before(async () => {
  up1 = await startHttp1Upstream();
  up2 = await startH2cUpstream();
  env = await startTunnelEnv({
    clusters: ['c1', 'c2', 'c3'],
    agents: [{ clusterId: 'c1', routes: [{ prefix: '/', upstream: up1.url }, { prefix: '/h2/', upstream: up2.url }] }],
  });
});

test.after.always(async () => {
  await env?.close();
  await up1?.close();
  await up2?.close();
});

test('HTTP/1.1 over TLS reaches the upstream through the tunnel by host', async (t) => {
  const token = await env.token(['c1']);
  const reply = await h1Request(env.gateway.address, env.pki.trustBundlePem, { cluster: 'c1', token, path: '/hello' });
  t.is(reply.status, 200);
  t.is(reply.body.toString(), 'hello');
});

test('HTTP/1.1 POST body, chunked response, keep-alive reuse', async (t) => {
  const token = await env.token(['c1']);
  const https = await import('node:https');
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
  try {
    const body = Buffer.alloc(300_000, 7);
    const echo = await h1Request(env.gateway.address, env.pki.trustBundlePem, { cluster: 'c1', token, method: 'POST', path: '/echo', body }, agent);
    t.is(echo.status, 200);
    t.true(echo.body.equals(body));
    const chunked = await h1Request(env.gateway.address, env.pki.trustBundlePem, { cluster: 'c1', token, path: '/chunked' }, agent);
    t.is(chunked.body.toString(), 'one,two,three');
    t.is(chunked.headers['transfer-encoding'], 'chunked');
  } finally {
    agent.destroy();
  }
});

test('HTTP/2 over TLS with the tether-cluster header; h2c upstream; SSE', async (t) => {
  const token = await env.token(['c1']);
  const session = await connectH2(env.gateway.url, env.pki.trustBundlePem);
  try {
    const replies = await Promise.all([
      h2Request(session, { path: '/hello', headers: { 'tether-cluster': 'c1' }, token }),
      h2Request(session, { path: '/h2/x', method: 'POST', body: 'ping', headers: { 'tether-cluster': 'c1' }, token }),
      h2Request(session, { path: '/sse', headers: { 'tether-cluster': 'c1' }, token }),
    ]);
    t.is(replies[0].body.toString(), 'hello');
    t.is(replies[1].status, 200);
    t.is(replies[1].headers['x-path'], '/h2/x');
    t.is(replies[1].body.toString(), 'ping');
    t.is(replies[2].headers['content-type'], 'text/event-stream');
    t.is(replies[2].body.toString(), 'data: event 1\n\ndata: event 2\n\ndata: event 3\n\n');
  } finally {
    await closeH2(session);
  }
});

test('trailers survive: HTTP/1.1 upstream → HTTP/2 client, h2c upstream → HTTP/2 client', async (t) => {
  const token = await env.token(['c1']);
  const session = await connectH2(env.gateway.url, env.pki.trustBundlePem);
  try {
    const a = await h2Request(session, { path: '/trailers', headers: { 'tether-cluster': 'c1', te: 'trailers' }, token });
    t.is(a.body.toString(), 'body');
    t.is(a.trailers['x-checksum'], 'abc123');
    const b = await h2Request(session, { path: '/h2/trailers', headers: { 'tether-cluster': 'c1', te: 'trailers' }, token });
    t.is(b.trailers['x-checksum'], 'h2');
  } finally {
    await closeH2(session);
  }
});

test('plain port: HTTP/1.1 and h2c prior knowledge', async (t) => {
  const token = await env.token(['c1']);
  const plain = env.gateway.plainUrl as string;
  const a = await plainH1Request(plain, { cluster: 'c1', token, path: '/hello' });
  t.is(a.body.toString(), 'hello');
  const session = await connectH2(plain);
  try {
    const b = await h2Request(session, { cluster: 'c1', token, path: '/hello' });
    t.is(b.body.toString(), 'hello');
  } finally {
    await closeH2(session);
  }
});

test('identity and client address reach the agent; forged tether-* and hop-by-hop headers do not', async (t) => {
  const token = await env.token(['c1'], 'bob');
  const reply = await h1Request(env.gateway.address, env.pki.trustBundlePem, {
    cluster: 'c1',
    token,
    path: '/headers',
    headers: { 'tether-subject': 'root', 'tether-client-address': '10.9.9.9', 'tether-x-evil': '1', 'x-keep': 'yes', connection: 'x-drop', 'x-drop': 'gone' },
  });
  const seen = JSON.parse(reply.body.toString()) as Record<string, string | undefined>;
  t.is(seen['tether-subject'], 'bob');
  t.is(seen['tether-cluster'], 'c1');
  t.is(seen['tether-client-address'], '127.0.0.1');
  t.is(seen['tether-x-evil'], undefined);
  t.is(seen['x-keep'], 'yes');
  t.is(seen['x-drop'], undefined);
});

test('error codes: 401 without token, 403 for another cluster, 404 unknown cluster, 503 no tunnel', async (t) => {
  const ca = env.pki.trustBundlePem;
  const address = env.gateway.address;
  const none = await h1Request(address, ca, { cluster: 'c1' });
  t.is(none.status, 401);
  t.is(none.headers['tether-error'], 'UNAUTHENTICATED');
  const bad = await h1Request(address, ca, { cluster: 'c1', token: 'not.a.jwt' });
  t.is(bad.status, 401);
  const forged = await env.issuer.sign({ clusters: ['c1'], issuer: 'https://evil.test' });
  t.is((await h1Request(address, ca, { cluster: 'c1', token: forged })).status, 401);
  const tokenC2 = await env.token(['c2']);
  const forbidden = await h1Request(address, ca, { cluster: 'c1', token: tokenC2 });
  t.is(forbidden.status, 403);
  t.is(forbidden.headers['tether-error'], 'FORBIDDEN');
  const unknown = await h1Request(address, ca, { cluster: 'nope', token: await env.token(['*']) });
  t.is(unknown.status, 404);
  t.is(unknown.headers['tether-error'], 'UNKNOWN_CLUSTER');
  const noTunnel = await h1Request(address, ca, { cluster: 'c2', token: tokenC2 });
  t.is(noTunnel.status, 503);
  t.is(noTunnel.headers['tether-error'], 'NO_TUNNEL');
  t.is(noTunnel.headers['retry-after'], '1');
  const metrics = await env.gateway.registry.getSingleMetricAsString('tether_gateway_request_errors_total');
  t.regex(metrics, /code="NO_TUNNEL"[^}]*\} 1/);
});

test('upstream refused gives 502 UPSTREAM_REFUSED', async (t) => {
  const down = await startHttp1Upstream();
  const port = down.port;
  await down.close();
  const extra = await env.startAgent({ clusterId: 'c3', agentId: 'a3', routes: [{ prefix: '/', upstream: `http://127.0.0.1:${port}` }] });
  await extra.waitForConnections(2);
  const reply = await h1Request(env.gateway.address, env.pki.trustBundlePem, { cluster: 'c3', token: await env.token(['c3']) });
  t.is(reply.status, 502);
  t.is(reply.headers['tether-error'], 'UPSTREAM_REFUSED');
});

test('agent /readyz reports live tunnels', async (t) => {
  const ready = env.agents[0]?.readiness();
  t.true(ready?.ready);
  t.is(ready?.details?.readyConnections, 2);
});
