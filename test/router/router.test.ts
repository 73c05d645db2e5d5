/**
 * The router's decisions (matching, virtual hosts, weights, round robin, rewrites) and the retry /
 * timeout behaviour through the HTTP front against real upstreams on 127.0.0.1.
 */
import test from 'ava';
import { create } from '@bufbuild/protobuf';
import { compileAssignment, compileCluster, compileRouteConfig } from '../../agent/router/compile.js';
import { HealthCheckSchema } from '../../xds/gen/envoy/config/core/v3/health_check_pb.js';
import { ClusterLoadAssignment_PolicySchema } from '../../xds/gen/envoy/config/endpoint/v3/endpoint_pb.js';
import { edsCluster, loadAssignment } from '../../xds/builders.js';
import { RouterProxy } from '../../agent/router/http-proxy.js';
import { compileRe2 } from '../../agent/router/regex.js';
import { Router } from '../../agent/router/router.js';
import type { RouteRequest } from '../../agent/router/router.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { closeClient, configOf, ms, namedUpstream, refusingPort, request, routesConfig } from './fixtures.js';
import type { RouteInit } from './fixtures.js';

failOnLeaks(test);
test.after.always(() => closeClient());

const to = (cluster: string, extra: Record<string, unknown> = {}): RouteInit['action'] => ({ case: 'route', value: { clusterSpecifier: { case: 'cluster', value: cluster }, ...extra } });
const req = (path: string, more: Partial<RouteRequest> = {}): RouteRequest => ({ method: 'GET', path, authority: 'app.local', headers: {}, ...more });

test('matching: exact path, prefix, safe_regex (full match), headers, case-insensitive prefix, first match wins', (t) => {
  const routes = routesConfig('rc', [
    {
      name: 'app',
      domains: ['*'],
      routes: [
        { match: { pathSpecifier: { case: 'path', value: '/exact' } }, action: to('exact') },
        { match: { pathSpecifier: { case: 'safeRegex', value: { regex: '/items/[0-9]+' } } }, action: to('regex') },
        { match: { pathSpecifier: { case: 'prefix', value: '/h/' }, headers: [{ name: 'x-env', headerMatchSpecifier: { case: 'exactMatch', value: 'canary' } }] }, action: to('canary') },
        { match: { pathSpecifier: { case: 'prefix', value: '/h/' }, headers: [{ name: 'x-user', headerMatchSpecifier: { case: 'stringMatch', value: { matchPattern: { case: 'suffix', value: '@EXAMPLE.com' }, ignoreCase: true } } }] }, action: to('suffix') },
        { match: { pathSpecifier: { case: 'prefix', value: '/h/' }, headers: [{ name: 'x-debug', headerMatchSpecifier: { case: 'presentMatch', value: true } }] }, action: to('present') },
        { match: { pathSpecifier: { case: 'prefix', value: '/h/' }, headers: [{ name: ':method', headerMatchSpecifier: { case: 'safeRegexMatch', value: { regex: 'GET|HEAD' } }, invertMatch: true }] }, action: to('not-get') },
        { match: { pathSpecifier: { case: 'prefix', value: '/H/' }, caseSensitive: false }, action: to('folded') },
        { match: { pathSpecifier: { case: 'prefix', value: '/' } }, action: to('default') },
      ],
    },
  ]);
  const names = ['exact', 'regex', 'canary', 'suffix', 'present', 'not-get', 'folded', 'default'];
  const router = new Router();
  router.update(configOf(routes, Object.fromEntries(names.map((n, i) => [n, [1000 + i]]))));
  const cluster = (r: RouteRequest) => router.route(r)?.cluster ?? null;
  t.is(cluster(req('/exact')), 'exact');
  t.is(cluster(req('/exact?q=1')), 'exact', 'path match ignores the query');
  t.is(cluster(req('/exact/more')), 'default');
  t.is(cluster(req('/items/42')), 'regex');
  t.is(cluster(req('/items/42x')), 'default', 'regex is a full match');
  t.is(cluster(req('/h/a', { headers: { 'x-env': 'canary' } })), 'canary');
  t.is(cluster(req('/h/a', { headers: { 'x-user': 'bob@example.COM' } })), 'suffix');
  t.is(cluster(req('/h/a', { headers: { 'x-debug': '' } })), 'present');
  t.is(cluster(req('/h/a', { method: 'POST' })), 'not-get');
  t.is(cluster(req('/h/a')), 'folded', 'GET falls through to the case-insensitive /H/ prefix');
  t.is(cluster(req('/nothing')), 'default');
  t.is(router.route(req('/exact'))?.route, 'virtual_hosts[0].routes[0]');
});

test('virtual hosts: exact domain, then longest *suffix, then prefix*, then *; with and without port', (t) => {
  const routes = routesConfig('rc', [
    { name: 'exact', domains: ['api.example.com', 'api.example.com:8443'], routes: [{ match: { pathSpecifier: { case: 'prefix', value: '/' } }, action: to('exact') }] },
    { name: 'suffix', domains: ['*.example.com'], routes: [{ match: { pathSpecifier: { case: 'prefix', value: '/' } }, action: to('suffix') }] },
    { name: 'longer', domains: ['*.eu.example.com'], routes: [{ match: { pathSpecifier: { case: 'prefix', value: '/' } }, action: to('longer') }] },
    { name: 'prefix', domains: ['internal.*'], routes: [{ match: { pathSpecifier: { case: 'prefix', value: '/' } }, action: to('prefix') }] },
    { name: 'any', domains: ['*'], routes: [{ match: { pathSpecifier: { case: 'prefix', value: '/' } }, action: to('any') }] },
  ]);
  const router = new Router();
  router.update(configOf(routes, { exact: [1], suffix: [2], longer: [3], prefix: [4], any: [5] }));
  const at = (authority: string) => router.route(req('/', { authority }))?.cluster;
  t.is(at('api.example.com'), 'exact');
  t.is(at('API.example.com:8443'), 'exact');
  t.is(at('www.example.com:8443'), 'any');
  t.is(at('api.example.com:9000'), 'any', 'as Envoy: the port is part of the host unless ignored');
  t.is(at('www.example.com'), 'suffix');
  t.is(at('x.eu.example.com'), 'longer');
  t.is(at('internal.corp'), 'prefix');
  t.is(at('other.org'), 'any');
});

test('weighted clusters split by weight; prefix_rewrite rewrites the upstream path', (t) => {
  const routes = routesConfig('rc', [
    {
      name: 'app',
      domains: ['*'],
      routes: [
        { match: { pathSpecifier: { case: 'prefix', value: '/v1/' } }, action: to('a', { prefixRewrite: '/base/' }) },
        {
          match: { pathSpecifier: { case: 'prefix', value: '/' } },
          action: { case: 'route', value: { clusterSpecifier: { case: 'weightedClusters', value: { clusters: [{ name: 'a', weight: 30 }, { name: 'b', weight: 70 }, { name: 'c', weight: 0 }] } } } },
        },
      ],
    },
  ]);
  let i = 0;
  const n = 1000;
  const router = new Router({ random: () => (i++ % n) / n });
  router.update(configOf(routes, { a: [1], b: [2], c: [3] }));
  const counts: Record<string, number> = {};
  for (let k = 0; k < n; k++) {
    const c = router.route(req('/x'))?.cluster ?? 'none';
    counts[c] = (counts[c] ?? 0) + 1;
  }
  t.deepEqual(counts, { a: 300, b: 700 });
  t.is(router.route(req('/v1/items?x=1'))?.path, '/base/items?x=1');
});

test('round robin per cluster across real upstreams; an update keeps decisions already made', async (t) => {
  const ups = await Promise.all(['u1', 'u2', 'u3'].map((n) => namedUpstream(n)));
  const routes = routesConfig('rc', [{ name: 'app', domains: ['*'], routes: [{ match: { pathSpecifier: { case: 'prefix', value: '/' } }, action: to('svc') }] }]);
  const router = new Router();
  router.update(configOf(routes, { svc: ups.map((u) => u.port) }));
  const proxy = new RouterProxy({ router });
  const { port } = await proxy.listen();
  try {
    const bodies: string[] = [];
    for (let k = 0; k < 9; k++) bodies.push((await request(port, '/')).body);
    t.deepEqual(ups.map((u) => u.hits), [3, 3, 3]);
    t.deepEqual(bodies.slice(0, 3).sort(), ['u1', 'u2', 'u3'], 'each of the first three goes to a different endpoint');
    const before = router.route(req('/'));
    router.update(configOf(routes, { svc: [ups[0]?.port ?? 0] }));
    t.truthy(before);
    const tried = new Set([before?.upstream.port]);
    for (let k = 0; k < 2; k++) tried.add(before?.next()?.port);
    t.is(tried.size, 3, 'a decision made before the update still walks the old endpoints');
    t.is(router.route(req('/'))?.upstream.port, String(ups[0]?.port));
  } finally {
    await proxy.close();
    await Promise.all(ups.map((u) => u.close()));
  }
});

test('retries: connect-failure and 5xx go to another endpoint for GET, never for POST; per-try and route timeouts', async (t) => {
  const good = await namedUpstream('good');
  const failing = await namedUpstream('failing', (_req, res) => {
    res.writeHead(503).end('failing');
    return true;
  });
  const slow = await namedUpstream('slow', () => true); // never answers
  const refused = await refusingPort();
  const retry = (on: string, extra: Record<string, unknown> = {}) => ({ retryPolicy: { retryOn: on, numRetries: 1, ...extra } });
  const routes = routesConfig('rc', [
    {
      name: 'app',
      domains: ['*'],
      routes: [
        { match: { pathSpecifier: { case: 'prefix', value: '/connect' } }, action: to('refused-first', retry('connect-failure')) },
        { match: { pathSpecifier: { case: 'prefix', value: '/5xx' } }, action: to('failing-first', retry('5xx')) },
        { match: { pathSpecifier: { case: 'prefix', value: '/noretry' } }, action: to('failing-first') },
        { match: { pathSpecifier: { case: 'prefix', value: '/pertry' } }, action: to('slow-first', retry('5xx', { perTryTimeout: ms(150) })) },
        { match: { pathSpecifier: { case: 'prefix', value: '/timeout' } }, action: to('slow-only', { timeout: ms(200) }) },
      ],
    },
  ]);
  // Round robin starts at the first endpoint, so the bad one is tried first.
  const router = new Router();
  router.update(configOf(routes, { 'refused-first': [refused, good.port], 'failing-first': [failing.port, good.port], 'slow-first': [slow.port, good.port], 'slow-only': [slow.port] }));
  const proxy = new RouterProxy({ router });
  const { port } = await proxy.listen();
  try {
    let r = await request(port, '/connect');
    t.is(r.status, 200);
    t.is(r.body, 'good');
    r = await request(port, '/5xx');
    t.is(r.body, 'good');
    t.is(r.status, 200);
    t.is(failing.hits, 1);
    r = await request(port, '/5xx', { method: 'POST' });
    // Round robin moved on: this POST starts at the good endpoint; send another so it lands on the failing one.
    const second = await request(port, '/5xx', { method: 'POST' });
    t.deepEqual([r.status, second.status].sort(), [200, 503], 'POST is not retried: one of two POSTs gets the 503');
    const hitsBefore = failing.hits;
    const a = await request(port, '/noretry');
    const b = await request(port, '/noretry');
    t.deepEqual([a.status, b.status].sort(), [200, 503], 'no retry policy: the 503 comes through');
    t.is(failing.hits, hitsBefore + 1);
    const started = Date.now();
    r = await request(port, '/pertry');
    t.is(r.status, 200);
    t.is(r.body, 'good');
    t.true(Date.now() - started >= 140, 'the first try waited for its per-try timeout');
    r = await request(port, '/timeout');
    t.is(r.status, 504);
    t.is(r.headers['tether-error'], 'UPSTREAM_TIMEOUT');
    t.true(proxy.counts.retries >= 3);
  } finally {
    await proxy.close();
    await Promise.all([good.close(), failing.close(), slow.close()]);
  }
});

test('reset: a connection dropped before the response is retried on another endpoint (retry_on reset)', async (t) => {
  const good = await namedUpstream('good');
  const dropping = await namedUpstream('dropping', (req) => {
    req.socket.destroy();
    return true;
  });
  const routes = routesConfig('rc', [
    {
      name: 'app',
      domains: ['*'],
      routes: [
        { match: { pathSpecifier: { case: 'prefix', value: '/r' } }, action: to('svc', { retryPolicy: { retryOn: 'reset', numRetries: 2 } }) },
        { match: { pathSpecifier: { case: 'prefix', value: '/' } }, action: to('svc', { retryPolicy: { retryOn: 'connect-failure' } }) },
      ],
    },
  ]);
  const router = new Router();
  router.update(configOf(routes, { svc: [dropping.port, good.port] }));
  const proxy = new RouterProxy({ router });
  const { port } = await proxy.listen();
  try {
    const replies = [await request(port, '/r'), await request(port, '/r')];
    t.deepEqual(replies.map((r) => r.body), ['good', 'good']);
    // A retry takes a round-robin turn too, so both requests started at the dropping endpoint.
    t.is(dropping.hits, 2, 'each request met the dropping endpoint and was retried on the good one');
    t.is(good.hits, 2);
    const other = [await request(port, '/x'), await request(port, '/x')];
    t.deepEqual(other.map((r) => r.status).sort(), [200, 503], 'reset is not retried under connect-failure only');
  } finally {
    await proxy.close();
    await Promise.all([good.close(), dropping.close()]);
  }
});

test('clusters and assignments the router cannot use are refused with the field path', (t) => {
  const least = edsCluster({ name: 'c', lbPolicy: 'LEAST_REQUEST' });
  const compiled = compileCluster(least);
  t.deepEqual(compiled.ok ? [] : compiled.problems.map((p) => `${p.field}: ${p.message}`), ['lb_policy: LEAST_REQUEST unsupported']);
  const withChecks = edsCluster({ name: 'd' });
  withChecks.healthChecks = [create(HealthCheckSchema, {})];
  const checked = compileCluster(withChecks);
  t.deepEqual(checked.ok ? [] : checked.problems.map((p) => `${p.field}: ${p.message}`), ['health_checks: unsupported']);
  const cla = loadAssignment('e', [{ address: '127.0.0.1', port: 1 }]);
  cla.policy = create(ClusterLoadAssignment_PolicySchema, { dropOverloads: [{ category: 'x' }] });
  const assignment = compileAssignment(cla);
  t.deepEqual(assignment.ok ? [] : assignment.problems.map((p) => `${p.field}: ${p.message}`), ['policy.drop_overloads: unsupported']);
});

test('what the router cannot apply is refused with the field path', (t) => {
  const routes = routesConfig('rc', [
    {
      name: 'app',
      domains: ['*'],
      routes: [
        { match: { pathSpecifier: { case: 'prefix', value: '/a' } }, action: to('a') },
        { match: { pathSpecifier: { case: 'safeRegex', value: { regex: '(?<=x)y' } } }, action: to('a') },
        { match: { pathSpecifier: { case: 'prefix', value: '/c' }, headers: [{ name: 'x', headerMatchSpecifier: { case: 'rangeMatch', value: { start: 1n, end: 2n } } }] }, action: to('a') },
        { match: { pathSpecifier: { case: 'prefix', value: '/d' }, grpc: {} }, action: to('a') },
        { match: { pathSpecifier: { case: 'prefix', value: '/e' } }, action: to('a', { retryPolicy: { retryOn: 'retriable-4xx' } }) },
        { match: { pathSpecifier: { case: 'prefix', value: '/f' } }, action: { case: 'redirect', value: { hostRedirect: 'x' } } },
      ],
    },
  ]);
  const compiled = compileRouteConfig(routes);
  t.false(compiled.ok);
  const problems = compiled.ok ? [] : compiled.problems.map((p) => `${p.field}: ${p.message}`);
  t.deepEqual(problems, [
    'virtual_hosts[0].routes[1].match.safe_regex.regex: lookbehind is not RE2',
    'virtual_hosts[0].routes[2].match.headers[0].range_match: unsupported',
    'virtual_hosts[0].routes[3].match.grpc: unsupported',
    'virtual_hosts[0].routes[4].route.retry_policy.retry_on: "retriable-4xx" unsupported',
    'virtual_hosts[0].routes[5].redirect: unsupported',
  ]);
});

test('RE2 translation: refused constructs and translated spellings', (t) => {
  for (const [pattern, reason] of [
    ['(a)\\1', 'backreferences are not RE2'],
    ['a(?=b)', 'lookahead is not RE2'],
    ['(?>a)', 'atomic groups are not RE2'],
    ['a(?i)b', 'inline flags are supported only at the start'],
  ] as const) {
    const r = compileRe2(pattern);
    t.deepEqual(r.ok ? 'compiled' : r.reason, reason, pattern);
  }
  const named = compileRe2('/u/(?P<id>[[:digit:]]+)');
  t.true(named.ok && named.regex.test('/u/123') && !named.regex.test('/u/12a'));
  const flags = compileRe2('(?i)abc');
  t.true(flags.ok && flags.regex.test('ABC'));
  const unicode = compileRe2('\\pL+');
  t.true(unicode.ok && unicode.regex.test('héllo'));
});
