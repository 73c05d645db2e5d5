import test from 'ava';
import { failOnLeaks } from '../helpers/leaks.js';
import { startTunnelEnv, type TunnelEnv } from '../helpers/tunnel-env.js';
import { startHttp1Upstream, type Upstream } from '../helpers/tunnel-upstreams.js';

failOnLeaks(test);

let env: TunnelEnv;
let upstream: Upstream;

test.before(async () => {
  upstream = await startHttp1Upstream();
  env = await startTunnelEnv();
});

test.after.always(async () => {
  await env?.close();
  await upstream?.close();
});

function listeningServers(): number {
  return process.getActiveResourcesInfo().filter((type) => type === 'TCPServerWrap').length;
}

test.serial('I1: the agent listens only on its admin address; /readyz is ready only with a live tunnel and reports counts; /metrics has tunnel series', async (t) => {
  const before = listeningServers();
  const agent = await env.startAgent({ clusterId: 'c1', routes: [{ prefix: '/', upstream: upstream.url }], admin: { host: '127.0.0.1', port: 0 } });
  t.is(listeningServers(), before + 1, 'exactly one listening socket: the admin server');
  const admin = agent.adminAddress;
  if (admin === null) throw new Error('no admin address');
  t.is(admin.address, '127.0.0.1');
  await agent.waitForConnections(2);
  const ready = await fetch(`http://127.0.0.1:${admin.port}/readyz`);
  t.is(ready.status, 200);
  const body = (await ready.json()) as { ready: boolean; readyConnections: number; gateways: Record<string, number> };
  t.true(body.ready);
  t.is(body.readyConnections, 2);
  t.deepEqual(Object.values(body.gateways), [2]);
  const metrics = await (await fetch(`http://127.0.0.1:${admin.port}/metrics`)).text();
  t.regex(metrics, /tether_agent_tunnel_connections\{[^}]*gateway="[^"]+"[^}]*\} 2/);
  t.regex(metrics, /tether_agent_tunnel_handshakes_total\{[^}]*result="ok"/);

  // Without a gateway the agent is not ready.
  await env.gateway.close();
  await agent.waitForConnections(0);
  const deadline = Date.now() + 5000;
  while (agent.readiness().ready && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
  const notReady = await fetch(`http://127.0.0.1:${admin.port}/readyz`);
  t.is(notReady.status, 503);
  t.is(((await notReady.json()) as { readyConnections: number }).readyConnections, 0);
  await agent.close();
});
