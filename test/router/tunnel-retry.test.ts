/**
 * Retries on the tunnel path: a real gateway and agent (mTLS tunnel, test PKI) with the built-in
 * router, configured through the agent's own xDS server with retry policies. Bodyless idempotent
 * requests are retried on the cluster's other endpoint (connect failure, 5xx, per-try timeout) and
 * counted in `tether_agent_upstream_retries_total`; requests with a body are not; when the tries
 * run out the last one's error or response is what the client gets.
 */
import * as https from 'node:https';
import test from 'ava';
import type { Router, RouterConfig } from '../../agent/router/router.js';
import { DEFAULT_LISTENER, DEFAULT_ROUTE_CONFIG } from '../../agent/router/static-snapshot.js';
import { httpListener } from '../../xds/index.js';
import type { SnapshotInput } from '../../xds/index.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { h1Request } from '../helpers/tunnel-clients.js';
import { startTunnelEnv } from '../helpers/tunnel-env.js';
import { clustersOf, ms, namedUpstream, refusingPort, routesConfig } from './fixtures.js';
import type { RouteInit } from './fixtures.js';

failOnLeaks(test);

function toCluster(cluster: string, retryPolicy: Record<string, unknown>): RouteInit['action'] {
  return { case: 'route', value: { clusterSpecifier: { case: 'cluster', value: cluster }, retryPolicy } };
}

/** Resolve once the router's configuration satisfies `ready` (checked now and on every update). */
function applied(router: Router, ready: (config: RouterConfig) => boolean): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      router.off('updated', check);
      reject(new Error('router configuration not applied in time'));
    }, 10_000);
    function check(): void {
      const config = router.config;
      if (config === null || !ready(config)) return;
      clearTimeout(timer);
      router.off('updated', check);
      resolve();
    }
    router.on('updated', check);
    check();
  });
}

async function retries(registry: { getSingleMetric(name: string): unknown }): Promise<Record<string, number>> {
  const metric = registry.getSingleMetric('tether_agent_upstream_retries_total') as { get(): Promise<{ values: Array<{ labels: Record<string, string | number>; value: number }> }> } | undefined;
  const out: Record<string, number> = {};
  for (const v of (await metric?.get())?.values ?? []) out[String(v.labels.reason)] = v.value;
  return out;
}

test('bodyless idempotent tunnelled requests are retried on another endpoint; bodies are not; exhausted tries return the last error', async (t) => {
  const a = await namedUpstream('a');
  const bad = await namedUpstream('bad', (_req, res) => {
    res.writeHead(503, { 'content-type': 'text/plain' }).end('bad');
    return true;
  });
  const bad2 = await namedUpstream('bad2', (_req, res) => {
    res.writeHead(503, { 'content-type': 'text/plain' }).end('bad2');
    return true;
  });
  const hang = await namedUpstream('hang', () => true);
  const refused = await refusingPort();
  const refused2 = await refusingPort();
  const env = await startTunnelEnv({
    clusters: ['c1'],
    agents: [{ clusterId: 'c1', routes: [{ prefix: '/', upstream: `http://127.0.0.1:${a.port}` }], xds: { listen: { host: '127.0.0.1', port: 0 }, useBuiltInRouter: true } }],
  });
  const pool = new https.Agent({ keepAlive: true, maxSockets: 4 });
  try {
    const agent = env.agents[0];
    const xds = agent?.xds;
    const router = xds?.router;
    if (agent === undefined || xds === null || xds === undefined || router === null || router === undefined) throw new Error('agent has no built-in router');
    const spec: Record<string, number[]> = {
      svc: [refused, a.port],
      flaky: [bad.port, a.port],
      allbad: [bad.port, bad2.port],
      dead: [refused, refused2],
      slow: [hang.port, a.port],
    };
    const { clusters, endpoints } = clustersOf(spec);
    const route = (prefix: string, cluster: string, policy: Record<string, unknown>): RouteInit => ({ match: { pathSpecifier: { case: 'prefix', value: prefix } }, action: toCluster(cluster, policy) });
    const snapshot: SnapshotInput = {
      listeners: [httpListener(DEFAULT_LISTENER, '127.0.0.1', 10000, DEFAULT_ROUTE_CONFIG)],
      routes: [
        routesConfig(DEFAULT_ROUTE_CONFIG, [
          {
            name: 'agent',
            domains: ['*'],
            routes: [
              route('/flaky', 'flaky', { retryOn: '5xx', numRetries: 1 }),
              route('/allbad', 'allbad', { retryOn: '5xx', numRetries: 1 }),
              route('/dead', 'dead', { retryOn: 'connect-failure', numRetries: 2 }),
              route('/slow', 'slow', { retryOn: '5xx', numRetries: 1, perTryTimeout: ms(300) }),
              route('/', 'svc', { retryOn: 'connect-failure', numRetries: 1 }),
            ],
          },
        ]),
      ],
      clusters,
      endpoints,
    };
    xds.server.setSnapshot(snapshot);
    await applied(router, (config) => {
      if (Object.entries(spec).some(([name, ports]) => config.assignments.get(name)?.endpoints.length !== ports.length)) return false;
      return router.route({ method: 'GET', path: '/slow', authority: 'x', headers: {} })?.cluster === 'slow';
    });
    const token = await env.token(['c1']);
    const send = async (method: string, path: string, body?: string) => {
      const r = await h1Request(env.gateway.address, env.pki.trustBundlePem, { cluster: 'c1', token, method, path, ...(body === undefined ? {} : { body }) }, pool);
      return { status: r.status, body: r.body.toString(), code: String(r.headers['tether-error'] ?? '') };
    };

    // 1. One endpoint of svc refuses connections: every GET still succeeds, by a retry.
    const n = 10;
    const gets = [];
    for (let i = 0; i < n; i++) gets.push(await send('GET', `/get/${i}`));
    t.deepEqual(gets.filter((g) => g.status !== 200 || g.body !== 'a'), [], 'every GET answered by a');
    t.is(a.hits, n, 'each GET reached a exactly once');
    const afterGets = await retries(agent.registry);
    const connectRetries = afterGets['connect-failure'] ?? 0;
    // Round robin over two endpoints: at least every other request starts on the refusing one.
    t.true(connectRetries >= n / 2 && connectRetries <= n, `connect-failure retries ${connectRetries} of ${n} requests`);

    // 2. Requests with a body are never retried: POST (not idempotent) and PUT (idempotent, but with
    // a body). The cluster alternates between its two endpoints, so of two requests one meets the
    // refusing endpoint and fails with the connect error.
    for (const method of ['POST', 'PUT']) {
      const replies = [await send(method, `/body/${method}`, 'payload'), await send(method, `/body/${method}`, 'payload')];
      const failed = replies.filter((r) => r.status !== 200);
      t.deepEqual(failed.map((r) => [r.status, r.code]), [[502, 'UPSTREAM_REFUSED']], `${method} with a body: the refused one is not retried`);
    }
    t.deepEqual(await retries(agent.registry), afterGets, 'no retry counted for requests with a body');

    // 3. 5xx with retry_on 5xx: the 503 is discarded and the request retried on the healthy endpoint.
    const badBefore = bad.hits;
    const flaky = [];
    for (let i = 0; i < 6; i++) flaky.push(await send('GET', `/flaky/${i}`));
    t.deepEqual(flaky.filter((r) => r.status !== 200 || r.body !== 'a'), [], 'every /flaky GET answered 200 by a');
    const fiveXx = (await retries(agent.registry))['5xx'] ?? 0;
    t.true(bad.hits - badBefore >= 3, 'the 503 endpoint was tried');
    t.is(fiveXx, bad.hits - badBefore, 'one 5xx retry per 503 received');

    // 4. Tries exhausted: two 503 endpoints, one retry → the second try's 503 is the answer.
    const bad2Before = bad2.hits;
    const badBefore2 = bad.hits;
    const exhausted = await send('GET', '/allbad');
    t.is(exhausted.status, 503);
    t.deepEqual([bad.hits - badBefore2, bad2.hits - bad2Before], [1, 1], 'two tries, one per endpoint');
    t.true(exhausted.body === 'bad' || exhausted.body === 'bad2', 'the upstream 503 itself, not a tunnel error');
    // … and with connect failures only: the last try's error code, after attempts − 1 retries.
    const deadBefore = (await retries(agent.registry))['connect-failure'] ?? 0;
    const dead = await send('GET', '/dead');
    t.deepEqual([dead.status, dead.code], [502, 'UPSTREAM_REFUSED']);
    t.is(((await retries(agent.registry))['connect-failure'] ?? 0) - deadBefore, 2, 'num_retries 2 → two retries');

    // 5. Per-try timeout: an endpoint that never answers is abandoned after 300 ms for the other one.
    const slow = [await send('GET', '/slow/1'), await send('GET', '/slow/2')];
    t.deepEqual(slow.map((r) => [r.status, r.body]), [[200, 'a'], [200, 'a']]);
    t.is((await retries(agent.registry)).timeout, 1, 'one of the two met the silent endpoint and timed out once');
    t.is(hang.hits, 1);
  } finally {
    pool.destroy();
    await env.close();
    await Promise.all([a.close(), bad.close(), bad2.close(), hang.close()]);
  }
});
