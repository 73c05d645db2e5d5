/**
 * The byte counters on both ends count exactly the body bytes that crossed (requests, responses
 * and both directions of a spliced CONNECT), and a request whose body the agent cannot forward is
 * still read to its end: the stream closes and the tunnel keeps serving.
 */
import test from 'ava';
import { once } from 'node:events';
import * as net from 'node:net';
import type { Registry } from 'prom-client';
import { failOnLeaks } from '../helpers/leaks.js';
import { plainH1Request } from '../helpers/tunnel-clients.js';
import { TEST_BINDING, startTunnelEnv, type TunnelEnv } from '../helpers/tunnel-env.js';
import { startHttp1Upstream, startTcpEcho, type Upstream } from '../helpers/tunnel-upstreams.js';

failOnLeaks(test);

const REQUEST_BYTES = 100 * 1024;
const RESPONSE_BYTES = 200 * 1024;
let env: TunnelEnv;
let upstream: Upstream;
let echo: Upstream;
let token: string;

test.before(async () => {
  upstream = await startHttp1Upstream((req, res) => {
    let received = 0;
    req.on('data', (chunk: Buffer) => (received += chunk.length));
    req.on('end', () => res.end(Buffer.alloc(RESPONSE_BYTES, received === REQUEST_BYTES ? 'y' : 'n')));
  });
  echo = await startTcpEcho();
  env = await startTunnelEnv({ clusters: ['c1'], agents: [{ clusterId: 'c1', routes: [{ prefix: '/ok/', upstream: upstream.url }], tcpTargets: [echo.url] }] });
  token = await env.token(['c1']);
});

test.after.always(async () => {
  await env?.close();
  await upstream?.close();
  await echo?.close();
});

async function bytes(registry: Registry, name: string): Promise<Record<string, number>> {
  const metric = await registry.getSingleMetric(name)?.get();
  const out: Record<string, number> = {};
  for (const value of metric?.values ?? []) out[String(value.labels.direction)] = value.value;
  return out;
}

async function counters(): Promise<{ gateway: Record<string, number>; agent: Record<string, number>; agentBound: Record<string, number> }> {
  const agent = env.agents[0];
  if (agent === undefined) throw new Error('no agent');
  return {
    gateway: await bytes(env.gateway.registry, 'tether_gateway_bytes_total'),
    agent: await bytes(agent.registry, 'tether_agent_bytes_total'),
    agentBound: await bytes(agent.registry, 'tether_agent_bound_bytes_total'),
  };
}

function delta(after: Record<string, number>, before: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const key of Object.keys(after)) out[key] = (after[key] ?? 0) - (before[key] ?? 0);
  return out;
}

test.serial('an HTTP/1.1 POST: each end counts exactly the request and response body bytes', async (t) => {
  const before = await counters();
  const reply = await plainH1Request(env.gateway.plainUrl ?? '', { method: 'POST', path: '/ok/upload', cluster: 'c1', token, body: Buffer.alloc(REQUEST_BYTES, 'x') });
  t.is(reply.status, 200);
  t.is(reply.body.length, RESPONSE_BYTES);
  t.is(reply.body[0], 'y'.charCodeAt(0), 'the upstream received the whole body');
  const after = await counters();
  t.deepEqual(delta(after.gateway, before.gateway), { to_agent: REQUEST_BYTES, to_client: RESPONSE_BYTES });
  if (TEST_BINDING === 'request') {
    t.deepEqual(delta(after.agent, before.agent), { to_upstream: REQUEST_BYTES, to_gateway: RESPONSE_BYTES });
    return;
  }
  // Bound: the agent relays the connection's bytes without parsing them, heads included, and
  // counts them apart from the bodies it forwards per request.
  t.true(Object.values(delta(after.agent, before.agent)).every((n) => n === 0));
  const bound = delta(after.agentBound, before.agentBound);
  t.true((bound.to_upstream ?? 0) > REQUEST_BYTES && (bound.to_upstream ?? 0) < REQUEST_BYTES + 4096, JSON.stringify(bound));
  t.true((bound.to_gateway ?? 0) > RESPONSE_BYTES && (bound.to_gateway ?? 0) < RESPONSE_BYTES + 4096, JSON.stringify(bound));
});

test.serial('a CONNECT splice counts both directions on both ends', async (t) => {
  const before = await counters();
  const socket = net.connect(new URL(env.gateway.plainUrl ?? '').port as unknown as number, '127.0.0.1');
  await once(socket, 'connect');
  const target = echo.url.replace(/^tcp:\/\//, '');
  socket.write(`CONNECT ${target} HTTP/1.1\r\nhost: ${target}\r\ntether-cluster: c1\r\nauthorization: Bearer ${token}\r\n\r\n`);
  let text = '';
  const payload = Buffer.alloc(5000, 'z');
  let echoed = 0;
  let established = false;
  await new Promise<void>((resolve, reject) => {
    socket.on('error', reject);
    socket.on('data', (chunk: Buffer) => {
      if (!established) {
        text += chunk.toString('latin1');
        const end = text.indexOf('\r\n\r\n');
        if (end < 0) return;
        established = true;
        if (!/^HTTP\/1\.1 200/.test(text)) return reject(new Error(text));
        echoed += Buffer.byteLength(text.slice(end + 4), 'latin1');
        socket.write(payload);
      } else echoed += chunk.length;
      if (echoed >= payload.length) resolve();
    });
  });
  socket.end();
  await once(socket, 'close');
  const after = await counters();
  t.deepEqual(delta(after.gateway, before.gateway), { to_agent: payload.length, to_client: payload.length });
  t.deepEqual(delta(after.agent, before.agent), { to_upstream: payload.length, to_gateway: payload.length });
});

test.serial('a body the agent cannot forward (no route) is read to its end: 404 NO_ROUTE, and the tunnel serves on', async (t) => {
  // Larger than the 4 MiB stream window: if the agent stopped reading, the upload would stall.
  const reply = await plainH1Request(env.gateway.plainUrl ?? '', { method: 'POST', path: '/nowhere', cluster: 'c1', token, body: Buffer.alloc(6 * 1024 * 1024, 'x') });
  t.is(reply.status, 404);
  t.is(reply.headers['tether-error'], 'NO_ROUTE');
  const next = await plainH1Request(env.gateway.plainUrl ?? '', { method: 'POST', path: '/ok/again', cluster: 'c1', token, body: Buffer.alloc(REQUEST_BYTES, 'x') });
  t.is(next.status, 200);
  t.is(env.gateway.tunnels.count('c1'), env.agents[0]?.config.connectionsPerGateway);
});

test.serial('a request with expect: 100-continue (which undici does not send) goes through, body and all', async (t) => {
  const reply = await plainH1Request(env.gateway.plainUrl ?? '', { method: 'POST', path: '/ok/continue', cluster: 'c1', token, headers: { expect: '100-continue' }, body: Buffer.alloc(REQUEST_BYTES, 'x') });
  t.is(reply.status, 200);
  t.is(reply.body.length, RESPONSE_BYTES);
  t.is(reply.body[0], 'y'.charCodeAt(0), 'the upstream received the whole body');
});
