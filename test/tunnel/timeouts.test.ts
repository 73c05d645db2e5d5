import test from 'ava';
import { failOnLeaks } from '../helpers/leaks.js';
import { h1Request } from '../helpers/tunnel-clients.js';
import { startTunnelEnv, type TunnelEnv } from '../helpers/tunnel-env.js';
import { startHttp1Upstream, type Upstream } from '../helpers/tunnel-upstreams.js';

failOnLeaks(test);

let env: TunnelEnv;
let upstream: Upstream;

test.before(async () => {
  // Never answers; the response is dropped when the request goes away.
  upstream = await startHttp1Upstream((req, res) => {
    req.resume();
    if (req.url === '/ok') res.end(`ok ${String(req.headers['tether-cluster'])}`);
  });
  env = await startTunnelEnv({ gateway: { responseTimeoutMs: 300 } });
});

test.after.always(async () => {
  await env?.close();
  await upstream?.close();
});

test.serial('no response through the tunnel in time: 504 TUNNEL_TIMEOUT (gateway)', async (t) => {
  const agent = await env.startAgent({ clusterId: 'c1', routes: [{ prefix: '/', upstream: upstream.url }], upstreamTimeoutMs: 60_000 });
  await agent.waitForConnections(2);
  const start = Date.now();
  const reply = await h1Request(env.gateway.address, env.pki.trustBundlePem, { cluster: 'c1', token: await env.token(['c1']), path: '/hang' });
  t.is(reply.status, 504);
  t.is(reply.headers['tether-error'], 'TUNNEL_TIMEOUT');
  t.true(Date.now() - start < 3000);
  await agent.close();
});

test.serial('the upstream does not answer in time: 504 UPSTREAM_TIMEOUT (agent)', async (t) => {
  const agent = await env.startAgent({ clusterId: 'c2', agentId: 'a2', routes: [{ prefix: '/', upstream: upstream.url }], upstreamTimeoutMs: 100 });
  await agent.waitForConnections(2);
  const reply = await h1Request(env.gateway.address, env.pki.trustBundlePem, { cluster: 'c2', token: await env.token(['c2']), path: '/hang' });
  t.is(reply.status, 504);
  t.is(reply.headers['tether-error'], 'UPSTREAM_TIMEOUT');
  await agent.close();
});

test.serial('several agents serve one cluster; new streams go to the least-loaded connection', async (t) => {
  const a = await env.startAgent({ clusterId: 'c1', agentId: 'x1', routes: [{ prefix: '/', upstream: upstream.url }], connectionsPerGateway: 1 });
  const b = await env.startAgent({ clusterId: 'c1', agentId: 'x2', routes: [{ prefix: '/', upstream: upstream.url }], connectionsPerGateway: 1 });
  await a.waitForConnections(1);
  await b.waitForConnections(1);
  const token = await env.token(['c1']);
  // Two hanging requests: the second must land on the other agent's connection.
  const hanging = [0, 1].map(() => h1Request(env.gateway.address, env.pki.trustBundlePem, { cluster: 'c1', token, path: '/hang' }));
  const deadline = Date.now() + 5000;
  while (env.gateway.tunnels.all().reduce((n, x) => n + x.activeStreams, 0) < 2 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 5));
  const loads = env.gateway.tunnels.all().filter((x) => x.clusterId === 'c1').map((x) => x.activeStreams).sort();
  t.deepEqual(loads, [1, 1]);
  const replies = await Promise.all(hanging);
  t.deepEqual(replies.map((r) => r.status), [504, 504]);
  await a.close();
  await b.close();
});

test.serial('a connection at the agent stream limit takes no more streams: 503 TUNNEL_BUSY, others unaffected', async (t) => {
  const agent = await env.startAgent({ clusterId: 'c2', agentId: 'limited', routes: [{ prefix: '/', upstream: upstream.url }], connectionsPerGateway: 1, limits: { maxConcurrentStreams: 2 } });
  await agent.waitForConnections(1);
  const token = await env.token(['c2']);
  const hanging = [0, 1].map(() => h1Request(env.gateway.address, env.pki.trustBundlePem, { cluster: 'c2', token, path: '/hang' }));
  const deadline = Date.now() + 5000;
  while ((env.gateway.tunnels.all().find((x) => x.clusterId === 'c2')?.activeStreams ?? 0) < 2 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 5));
  const third = await h1Request(env.gateway.address, env.pki.trustBundlePem, { cluster: 'c2', token, path: '/ok' });
  t.is(third.status, 503);
  t.is(third.headers['tether-error'], 'TUNNEL_BUSY');
  t.deepEqual((await Promise.all(hanging)).map((r) => r.status), [504, 504]);
  const after = await h1Request(env.gateway.address, env.pki.trustBundlePem, { cluster: 'c2', token, path: '/ok' });
  t.is(after.status, 200);
  await agent.close();
});
