/**
 * Must-show 3: the built-in router carries tunnel traffic by xDS. A real gateway and agent (mTLS
 * tunnel, test PKI) with the agent's `xds` option: its embedded xDS server serves the static
 * routes, its router routes the tunnelled streams. Weights changed through that server move the
 * traffic 100/0 → 0/100 under continuous load with no failed request; a route added later takes
 * effect for its path.
 */
import * as https from 'node:https';
import test from 'ava';
import type { AdsEvent } from '../../agent/router/ads-client.js';
import { DEFAULT_LISTENER, DEFAULT_ROUTE_CONFIG } from '../../agent/router/static-snapshot.js';
import { httpListener } from '../../xds/index.js';
import type { SnapshotInput } from '../../xds/index.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { h1Request } from '../helpers/tunnel-clients.js';
import { startTunnelEnv } from '../helpers/tunnel-env.js';
import { clustersOf, namedUpstream, routesConfig } from './fixtures.js';
import type { RouteInit } from './fixtures.js';

failOnLeaks(test);

function weighted(weights: Record<string, number>): RouteInit['action'] {
  return { case: 'route', value: { clusterSpecifier: { case: 'weightedClusters', value: { clusters: Object.entries(weights).map(([name, weight]) => ({ name, weight })) } } } };
}

function snapshot(routes: RouteInit[], clusters: Record<string, number[]>): SnapshotInput {
  const { clusters: cs, endpoints } = clustersOf(clusters);
  return {
    listeners: [httpListener(DEFAULT_LISTENER, '127.0.0.1', 10000, DEFAULT_ROUTE_CONFIG)],
    routes: [routesConfig(DEFAULT_ROUTE_CONFIG, [{ name: 'agent', domains: ['*'], routes }])],
    clusters: cs,
    endpoints,
  };
}

/** A gateway and one agent of c1 whose built-in router serves its static route (`/` → port) by xDS. */
function builtInRouterEnv(port: number): ReturnType<typeof startTunnelEnv> {
  return startTunnelEnv({
    clusters: ['c1'],
    agents: [{ clusterId: 'c1', routes: [{ prefix: '/', upstream: `http://127.0.0.1:${port}` }], xds: { listen: { host: '127.0.0.1', port: 0 }, useBuiltInRouter: true } }],
  });
}

test('tunnelled requests follow a weight change made through the agent xDS server, with zero failures', async (t) => {
  const a = await namedUpstream('a');
  const b = await namedUpstream('b');
  const env = await builtInRouterEnv(a.port);
  const pool = new https.Agent({ keepAlive: true, maxSockets: 16 });
  const replies: Array<{ phase: string; ended: string; status: number; body: string; code: string }> = [];
  const errors: string[] = [];
  const phase = { now: 'static' };
  let running = true;
  let loops: Array<Promise<void>> = [];
  try {
    const agent = env.agents[0];
    const xds = agent?.xds;
    const client = xds?.client;
    if (xds === null || xds === undefined || client === null || client === undefined) throw new Error('agent has no built-in router');
    t.truthy(xds.address?.port, 'the agent serves xDS on a loopback port');
    const token = await env.token(['c1']);
    const one = async (path: string) => {
      const r = await h1Request(env.gateway.address, env.pki.trustBundlePem, { cluster: 'c1', token, path }, pool);
      return { status: r.status, body: r.body.toString(), code: String(r.headers['tether-error'] ?? '') };
    };
    t.is((await one('/hello')).body, 'a', 'the static route, served as xDS');
    /** Wait until `count` replies to requests started in the current phase came back. */
    const until = async (count: number): Promise<void> => {
      const deadline = Date.now() + 15_000;
      const now = phase.now;
      while (replies.filter((r) => r.phase === now).length < count && Date.now() < deadline) await new Promise<void>((r) => setImmediate(r));
    };
    loops = Array.from({ length: 6 }, async () => {
      while (running) {
        const started = phase.now;
        try {
          const reply = await one('/work');
          replies.push({ phase: started, ended: phase.now, ...reply });
        } catch (reason) {
          errors.push(String(reason));
        }
      }
    });
    const spec = { a: [a.port], b: [b.port] };
    const ackOf = (kind: string) =>
      new Promise<AdsEvent>((resolve) => {
        const on = (e: AdsEvent) => {
          if (e.kind !== kind) return;
          client.off('ack', on);
          resolve(e);
        };
        client.on('ack', on);
      });
    await until(100);
    phase.now = 'during';
    let acked = ackOf('route');
    xds.server.setSnapshot(snapshot([{ match: { pathSpecifier: { case: 'prefix', value: '/' } }, action: weighted({ a: 100, b: 0 }) }], spec));
    await acked;
    phase.now = 'weighted-100-0';
    await until(150);
    phase.now = 'switching';
    acked = ackOf('route');
    xds.server.setSnapshot(snapshot([{ match: { pathSpecifier: { case: 'prefix', value: '/' } }, action: weighted({ a: 0, b: 100 }) }], spec));
    await acked;
    phase.now = 'weighted-0-100';
    await until(150);
    running = false;
    await Promise.all(loops);
    // A route change: /a-only/ goes to a again while the rest stays on b.
    acked = ackOf('route');
    xds.server.setSnapshot(
      snapshot(
        [
          { match: { pathSpecifier: { case: 'prefix', value: '/a-only/' } }, action: weighted({ a: 1 }) },
          { match: { pathSpecifier: { case: 'prefix', value: '/' } }, action: weighted({ b: 1 }) },
        ],
        spec,
      ),
    );
    await acked;
    t.is((await one('/a-only/x')).body, 'a');
    t.is((await one('/other')).body, 'b');
  } finally {
    running = false;
    await Promise.all(loops);
    pool.destroy();
    await env.close();
    await Promise.all([a.close(), b.close()]);
  }
  // A request is routed at the agent, some time after it started: count it in a phase only when it
  // started and ended there (for the last phase, starting there is enough: nothing changes after).
  const count = (p: string, body: string) => replies.filter((r) => r.phase === p && (r.ended === p || p === 'weighted-0-100') && r.body === body).length;
  t.deepEqual(errors, [], 'no client error');
  t.deepEqual(replies.filter((r) => r.status !== 200), [], 'every tunnelled request answered 200');
  t.true(count('weighted-100-0', 'a') >= 150);
  t.is(count('weighted-100-0', 'b'), 0);
  t.true(count('weighted-0-100', 'b') >= 150);
  t.is(count('weighted-0-100', 'a'), 0, 'nothing started after the ACK went to a');
  t.log(`${replies.length} tunnelled requests, 0 failed; 100/0: a=${count('weighted-100-0', 'a')}; switching: a=${count('switching', 'a')} b=${count('switching', 'b')}; 0/100: b=${count('weighted-0-100', 'b')}`);
});

test('Agent.setRoutes reaches the built-in router: a route added to the agent is served by xDS and routes tunnelled requests', async (t) => {
  const a = await namedUpstream('a');
  const b = await namedUpstream('b');
  const env = await builtInRouterEnv(a.port);
  try {
    const agent = env.agents[0];
    const client = agent?.xds?.client;
    if (agent === undefined || client === null || client === undefined) throw new Error('agent has no built-in router');
    const token = await env.token(['c1']);
    const body = async (path: string) => (await h1Request(env.gateway.address, env.pki.trustBundlePem, { cluster: 'c1', token, path })).body.toString();
    t.is(await body('/b/x'), 'a', 'before: one route to a');
    const acked = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        client.off('ack', on);
        reject(new Error('the router was sent no new routes within 5 s'));
      }, 5000);
      const on = (e: AdsEvent) => {
        if (e.kind !== 'route') return;
        clearTimeout(timer);
        client.off('ack', on);
        resolve();
      };
      client.on('ack', on);
    });
    agent.setRoutes([
      { prefix: '/b/', upstream: `http://127.0.0.1:${b.port}` },
      { prefix: '/', upstream: `http://127.0.0.1:${a.port}` },
    ]);
    await acked;
    t.is(await body('/b/x'), 'b', 'the new route, through the agent xDS server and its router');
    t.is(await body('/other'), 'a');
  } finally {
    await env.close();
    await Promise.all([a.close(), b.close()]);
  }
});
