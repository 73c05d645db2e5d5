/**
 * The agent's static routes as an xDS snapshot: valid for Envoy and consistent, served by the
 * embedded XdsServer (`AgentXds`) to the built-in router, whose decisions (through the stream
 * routing adapter and the HTTP front) reach HTTP/1.1 (IP and host name) and h2c upstreams with the
 * same paths the static RouteTable would use; a route change follows over ADS.
 */
import test from 'ava';
import { AgentXds } from '../../agent/router/agent-xds.js';
import { RouterProxy } from '../../agent/router/http-proxy.js';
import { staticSnapshot } from '../../agent/router/static-snapshot.js';
import { RouteTable } from '../../agent/routes.js';
import { Snapshot, checkConsistency, formatProblem, validateFor } from '../../xds/index.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { startH2cUpstream } from '../helpers/tunnel-upstreams.js';
import { closeClient, namedUpstream, request } from './fixtures.js';

failOnLeaks(test);
test.after.always(() => closeClient());

test('the snapshot is consistent and valid for the Envoy rules, one cluster per origin', (t) => {
  const input = staticSnapshot([
    { prefix: '/api/', upstream: 'http://127.0.0.1:8080/base' },
    { prefix: '/', upstream: 'h2c://127.0.0.1:9090' },
    { prefix: '/v2/', upstream: 'http://127.0.0.1:8080' },
    { prefix: '/dns/', upstream: 'http://localhost:8081' },
    { prefix: '/tls/', upstream: 'https://example.internal' },
  ]);
  const snapshot = Snapshot.build(input);
  t.deepEqual(checkConsistency(snapshot).map(formatProblem), []);
  t.deepEqual(validateFor('envoy', snapshot).map(formatProblem), []);
  t.deepEqual(input.clusters?.map((c) => c.name).sort(), ['h2c_127.0.0.1_9090', 'http_127.0.0.1_8080', 'http_localhost_8081', 'https_example.internal_443']);
  t.deepEqual(input.endpoints?.map((e) => e.clusterName).sort(), ['h2c_127.0.0.1_9090', 'http_127.0.0.1_8080'], 'only IP literals go through EDS');
  const prefixes = input.routes?.[0]?.virtualHosts[0]?.routes.map((r) => (r.match?.pathSpecifier.case === 'prefix' ? r.match.pathSpecifier.value : ''));
  t.deepEqual(prefixes, ['/api/', '/dns/', '/tls/', '/v2/', '/'], 'longest prefix first');
});

test('served by the embedded xDS server, the built-in router routes like the static table, over HTTP/1.1, host names and h2c', async (t) => {
  const a = await namedUpstream('a');
  const b = await namedUpstream('b');
  const h2 = await startH2cUpstream();
  const routes = [
    { prefix: '/api/', upstream: `http://127.0.0.1:${a.port}/base` },
    { prefix: '/dns/', upstream: `http://localhost:${b.port}` },
    { prefix: '/', upstream: `h2c://127.0.0.1:${h2.port}` },
  ];
  const xds = new AgentXds({ routes, listen: { host: '127.0.0.1', port: 0 }, useBuiltInRouter: true });
  let proxy: RouterProxy | null = null;
  try {
    await xds.start();
    t.truthy(xds.address?.port);
    const routing = xds.routing;
    const router = xds.router;
    if (routing === null || router === null) throw new Error('no built-in router');
    const table = new RouteTable(routes);
    for (const path of ['/api/items?id=1', '/dns/q', '/other']) {
      const decided = routing.decide({ ':method': 'GET', ':path': path, ':authority': 'svc.local' });
      if (!decided.ok) throw new Error(decided.message);
      const fromTable = table.match(path);
      t.is(String(decided.route.kind), String(fromTable?.kind ?? 'none'), path);
      t.is(decided.route.upstream.host, fromTable?.upstream.host ?? 'none', path);
      const base = fromTable?.upstream.pathname.replace(/\/$/, '') ?? '';
      t.is(decided.headers[':path'], `${base}${path}`, `${path}: the path the static table would send`);
    }
    proxy = new RouterProxy({ router });
    const { port } = await proxy.listen();
    t.is((await request(port, '/api/items')).body, 'a');
    t.deepEqual(a.paths, ['/base/api/items']);
    t.is((await request(port, '/dns/q')).body, 'b');
    const viaH2c = await request(port, '/grpc-ish');
    t.is(viaH2c.status, 200, viaH2c.body);
    t.is(viaH2c.headers['x-path'], '/grpc-ish');
    // A route change is a new snapshot; the router follows over ADS.
    const followed = new Promise<void>((resolve) => {
      const check = (): void => {
        if (router.route({ method: 'GET', path: '/api/x', authority: 's', headers: {} })?.upstream.port === String(b.port)) {
          router.off('updated', check);
          resolve();
        }
      };
      router.on('updated', check);
    });
    xds.setRoutes([{ prefix: '/api/', upstream: `http://127.0.0.1:${b.port}` }, { prefix: '/', upstream: `h2c://127.0.0.1:${h2.port}` }]);
    await followed;
    t.is((await request(port, '/api/x')).body, 'b');
    const again = routing.decide({ ':method': 'GET', ':path': '/api/x', ':authority': 'svc' });
    t.true(again.ok);
  } finally {
    await proxy?.close();
    await xds.close();
    await Promise.all([a.close(), b.close(), h2.close()]);
  }
});

test('stream routing refuses with the handler error codes', async (t) => {
  const xds = new AgentXds({ routes: [{ prefix: '/only/', upstream: 'http://127.0.0.1:9' }], listen: { host: '127.0.0.1', port: 0 }, useBuiltInRouter: true });
  try {
    await xds.start();
    const decided = xds.routing?.decide({ ':method': 'GET', ':path': '/elsewhere', ':authority': 'svc' });
    t.deepEqual(decided?.ok === false ? decided.code : 'routed', 'NO_ROUTE');
  } finally {
    await xds.close();
  }
});
