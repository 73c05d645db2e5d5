import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import * as https from 'node:https';
import { fileURLToPath } from 'node:url';
import type { AgentEvent } from '../../agent/index.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { h1Request } from '../helpers/tunnel-clients.js';
import { AUDIENCE, ISSUER, startTunnelEnv, type TunnelEnv } from '../helpers/tunnel-env.js';
import { startHttp1Upstream, type Upstream } from '../helpers/tunnel-upstreams.js';
import { TYPESCRIPT_LOADER } from '../helpers/typescript-loader.js';

failOnLeaks(test);

let upstream: Upstream;
let releaseSlow: () => void = () => undefined;
/** Called when the upstream holds a `/slow` request (its tunnel stream is then open). */
let slowArrived: () => void = () => undefined;

test.before(async () => {
  upstream = await startHttp1Upstream((req, res) => {
    req.resume();
    if (req.url === '/slow') {
      releaseSlow = () => res.end('slow done');
      res.writeHead(200);
      res.write('slow;');
      slowArrived();
      return;
    }
    res.end('ok');
  });
});

test.after.always(async () => {
  await upstream?.close();
});

const routes = (): Array<{ prefix: string; upstream: string }> => [{ prefix: '/', upstream: upstream.url }];

test.serial('the agent reconnects with backoff after a gateway restart on the same address', async (t) => {
  const env = await startTunnelEnv({ agents: [{ clusterId: 'c1', routes: routes() }] });
  try {
    const agent = env.agents[0];
    if (agent === undefined) throw new Error('no agent');
    const port = Number(env.gateway.address.split(':')[1]);
    await env.gateway.close();
    env.gateways.length = 0;
    t.false(agent.readiness().ready);
    const gateway = await env.startGateway({ listen: { host: '127.0.0.1', port } });
    await agent.waitForConnections(2, 10_000);
    const reply = await h1Request(gateway.address, env.pki.trustBundlePem, { cluster: 'c1', token: await env.token(['c1']) });
    t.is(reply.status, 200);
    const reconnects = await agent.registry.getSingleMetricAsString('tether_agent_tunnel_reconnects_total');
    t.regex(reconnects, /tether_agent_tunnel_reconnects_total\{[^}]*\} [1-9]/);
  } finally {
    await env.close();
  }
});

test.serial('two replicas: the agent learns the second from the control stream; kill one, every new request succeeds through the other', async (t) => {
  const env = await startTunnelEnv();
  try {
    const a = env.gateway;
    const b = await env.startGateway({ id: 'gw-b' });
    a.setReplicas([{ id: 'gw-b', address: b.address }]);
    const agent = await env.startAgent({ clusterId: 'c1', routes: routes(), gateways: [a.address] });
    await agent.waitForConnections(4);
    t.is(a.tunnels.count('c1'), 2);
    t.is(b.tunnels.count('c1'), 2);
    const token = await env.token(['c1']);
    await a.close();
    let failures = 0;
    for (let i = 0; i < 30; i++) {
      const reply = await h1Request(b.address, env.pki.trustBundlePem, { cluster: 'c1', token });
      if (reply.status !== 200) failures++;
    }
    t.is(failures, 0);
  } finally {
    await env.close();
  }
});

test.serial('gateway drain: agents are told to move, the in-flight request finishes, the other replica takes new ones', async (t) => {
  const env = await startTunnelEnv();
  try {
    const a = env.gateway;
    const b = await env.startGateway({ id: 'gw-b' });
    const agent = await env.startAgent({ clusterId: 'c1', routes: routes(), gateways: [a.address, b.address] });
    await agent.waitForConnections(4);
    const token = await env.token(['c1']);
    const arrived = new Promise<void>((resolve) => {
      slowArrived = resolve;
    });
    const slow = h1Request(a.address, env.pki.trustBundlePem, { cluster: 'c1', token, path: '/slow' });
    // Wait for the upstream to hold the request (an event, where an unbounded poll was before).
    await Promise.race([arrived, slow.then((r) => Promise.reject(new Error(`the slow request was answered ${r.status} before reaching the upstream`)))]);
    t.true(a.tunnels.all().some((x) => x.activeStreams > 0), 'the slow request is in flight through a tunnel of the draining replica');
    const drained = a.drain(5_000);
    // New requests at the other replica keep working during the drain.
    const during = await h1Request(b.address, env.pki.trustBundlePem, { cluster: 'c1', token });
    t.is(during.status, 200);
    releaseSlow();
    const reply = await slow;
    t.is(reply.status, 200);
    t.is(reply.body.toString(), 'slow;slow done');
    await drained;
    t.is(a.tunnels.count(), 0);
  } finally {
    await env.close();
  }
});

/**
 * The race behind a rare `503 NO_TUNNEL` in the rolling-restart test: a keep-alive client sends a
 * request just as the drain begins. The drain saw nothing in flight and closed the tunnels at once,
 * then the request was read from the still-open connection and found no tunnel. Starting the drain
 * in the same tick as the request makes the race certain: the gateway cannot have read it yet.
 */
test.serial('gateway drain: a request already sent on an open keep-alive connection is carried, and that connection then closes', async (t) => {
  const env = await startTunnelEnv({ agents: [{ clusterId: 'c1', routes: routes() }] });
  const pool = new https.Agent({ keepAlive: true, maxSockets: 1 });
  try {
    const a = env.gateway;
    const token = await env.token(['c1']);
    const first = await h1Request(a.address, env.pki.trustBundlePem, { cluster: 'c1', token }, pool);
    t.is(first.status, 200);
    t.is(first.headers.connection, 'keep-alive');
    const second = h1Request(a.address, env.pki.trustBundlePem, { cluster: 'c1', token }, pool);
    const began = Date.now();
    const drained = a.drain(20_000);
    const reply = await second;
    t.is(reply.status, 200, `answered ${reply.status} ${String(reply.headers['tether-error'])}`);
    t.is(reply.headers.connection, 'close', 'a draining gateway closes the connection after the response');
    await drained;
    // The drain ended because the last client connection closed, not at its grace deadline.
    t.true(Date.now() - began < 10_000, `drain took ${Date.now() - began} ms`);
    t.is(a.tunnels.count(), 0);
  } finally {
    pool.destroy();
    await env.close();
  }
});

test.serial('agent rolling restart with drain under continuous load: zero failed requests', async (t) => {
  const env = await startTunnelEnv();
  try {
    const first = await env.startAgent({ clusterId: 'c1', agentId: 'a1', routes: routes() });
    await first.waitForConnections(2);
    const token = await env.token(['c1']);
    let stop = false;
    let ok = 0;
    const failures: string[] = [];
    const load = async (): Promise<void> => {
      while (!stop) {
        const reply = await h1Request(env.gateway.address, env.pki.trustBundlePem, { cluster: 'c1', token });
        if (reply.status === 200) ok++;
        else failures.push(`${reply.status} ${String(reply.headers['tether-error'])}`);
      }
    };
    const loaders = [load(), load(), load()];
    /** Let `n` more requests complete (bounded) so that every phase carries load. */
    const progress = async (n: number): Promise<void> => {
      const target = ok + failures.length + n;
      const deadline = Date.now() + 10_000;
      while (ok + failures.length < target && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 5));
    };
    await progress(10);
    const second = await env.startAgent({ clusterId: 'c1', agentId: 'a2', routes: routes() });
    await second.waitForConnections(2);
    await progress(10);
    const drainFirst = first.drain(5_000);
    await progress(10);
    await drainFirst;
    const third = await env.startAgent({ clusterId: 'c1', agentId: 'a3', routes: routes() });
    await third.waitForConnections(2);
    const drainSecond = second.drain(5_000);
    await progress(10);
    await drainSecond;
    await progress(10);
    stop = true;
    await Promise.all(loaders);
    t.log(`${ok} requests succeeded`);
    t.true(ok >= 50);
    t.deepEqual(failures, []);
  } finally {
    await env.close();
  }
});

test.serial('50 agents reconnecting at once after a gateway restart are spread by jitter and all admitted', async (t) => {
  const env = await startTunnelEnv();
  try {
    const agents = [];
    for (let i = 0; i < 50; i++) {
      agents.push(await env.startAgent({ clusterId: 'c1', agentId: `herd-${i}`, routes: routes(), connectionsPerGateway: 1, backoff: { initialDelayMs: 300, maxDelayMs: 2000, jitter: 0.5 } }));
    }
    await Promise.all(agents.map((a) => a.waitForConnections(1)));
    const port = Number(env.gateway.address.split(':')[1]);
    const liveAt: number[] = [];
    const refused: string[] = [];
    const firstDelay: number[] = [];
    for (const agent of agents) {
      agent.events.on('live', () => liveAt.push(Date.now()));
      agent.events.on('refused', (e: AgentEvent) => refused.push(e.code ?? '?'));
      agent.events.once('retry', (e: AgentEvent) => firstDelay.push(e.delayMs ?? -1));
    }
    await env.gateway.close();
    env.gateways.length = 0;
    const restartedAt = Date.now();
    const gateway = await env.startGateway({ listen: { host: '127.0.0.1', port } });
    await Promise.all(agents.map((a) => a.waitForConnections(1, 15_000)));
    const offsets = liveAt.map((at) => at - restartedAt).sort((a, b) => a - b);
    t.log(`reconnects spread over ${offsets[0]}…${offsets[offsets.length - 1]} ms after the restart`);
    t.deepEqual(refused, []);
    t.is(gateway.tunnels.count('c1'), 50);
    t.true((offsets[offsets.length - 1] ?? 0) - (offsets[0] ?? 0) >= 100, 'the herd is spread');
    // The closing gateway told every agent the same retry-after; jitter (0.5 here) spreads it
    // upwards, so the agents did not all dial again in the same millisecond.
    const retryAfter = env.gateway.config.agentRetryAfterMs;
    t.is(firstDelay.length, 50);
    t.true(firstDelay.every((d) => d >= retryAfter && d <= retryAfter * 1.5), `first delays within [${retryAfter}, ${retryAfter * 1.5}]: ${firstDelay.join(', ')}`);
    t.true(new Set(firstDelay).size > 25, `${new Set(firstDelay).size} distinct first delays of 50`);
    t.true(Math.max(...firstDelay) - Math.min(...firstDelay) >= retryAfter * 0.25, 'jitter spreads the first retry');
  } finally {
    await env.close();
  }
});

test.serial('a frozen gateway (SIGSTOP) is detected by PING timeout within the configured bound', async (t) => {
  const env = await startTunnelEnv();
  let child: ChildProcess | null = null;
  try {
    const options = {
      tls: { key: env.gatewayTls.key, cert: env.gatewayTls.cert, ca: env.pki.trustBundlePem },
      trustDomain: env.pki.trustDomain,
      clusters: ['c1'],
      auth: { mode: 'jwt', issuers: [{ issuer: ISSUER, audiences: [AUDIENCE], jwks: env.issuer.jwks }] },
      pingIntervalMs: 60_000,
      pingTimeoutMs: 60_000,
    };
    const script = fileURLToPath(new URL('../helpers/tunnel-gateway-child.ts', import.meta.url));
    child = spawn(process.execPath, ['--import', TYPESCRIPT_LOADER, script, JSON.stringify(options)], { stdio: ['ignore', 'pipe', 'inherit'] });
    const [line] = (await once(child.stdout as NodeJS.ReadableStream, 'data')) as [Buffer];
    const address = /ready (\S+)/.exec(line.toString())?.[1];
    if (address === undefined) throw new Error(`child said ${line.toString()}`);
    const agent = await env.startAgent({ clusterId: 'c1', routes: routes(), gateways: [address], pingIntervalMs: 200, pingTimeoutMs: 400 });
    await agent.waitForConnections(2);
    const closed = once(agent.events, 'closed');
    const frozenAt = Date.now();
    child.kill('SIGSTOP');
    const [event] = (await closed) as [AgentEvent];
    const detectedMs = Date.now() - frozenAt;
    t.log(`frozen gateway detected after ${detectedMs} ms`);
    t.is(event.code, 'TUNNEL_PING_TIMEOUT');
    t.true(detectedMs <= 200 + 400 + 300, `detected within interval + timeout (${detectedMs} ms)`);
    await agent.close();
  } finally {
    if (child !== null) {
      child.kill('SIGCONT');
      child.kill('SIGKILL');
      await once(child, 'exit');
    }
    await env.close();
  }
});
