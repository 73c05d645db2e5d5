/**
 * The router's own ADS client against a real `XdsServer` on 127.0.0.1:0: ACKs of applied
 * configuration (seen by the server and CSDS), a NACK naming the unsupported field (recorded by
 * the server, CSDS and metrics) with the last good configuration still routing, traffic moving
 * 100/0 → 0/100 under continuous load with no failed request, an endpoint removed from EDS
 * getting no more traffic, and a reconnect after the server went away.
 */
import test from 'ava';
import { create } from '@bufbuild/protobuf';
import { AdsClient } from '../../agent/router/ads-client.js';
import type { AdsEvent } from '../../agent/router/ads-client.js';
import { RouterProxy } from '../../agent/router/http-proxy.js';
import { Router } from '../../agent/router/router.js';
import { ClientResourceStatus } from '../../xds/gen/envoy/admin/v3/config_dump_shared_pb.js';
import { ListenerFilterSchema } from '../../xds/gen/envoy/config/listener/v3/listener_components_pb.js';
import { XdsServer, httpListener, loadAssignment, TypeUrl } from '../../xds/index.js';
import type { SettleEvent, SnapshotInput } from '../../xds/index.js';
import { AdsTestClient } from '../helpers/ads-client.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { closeClient, clustersOf, namedUpstream, request, routesConfig } from './fixtures.js';
import type { NamedUpstream, RouteInit } from './fixtures.js';

failOnLeaks(test);
test.after.always(() => closeClient());

const NODE = 'router-1';

function weighted(weights: Record<string, number>): RouteInit['action'] {
  return { case: 'route', value: { clusterSpecifier: { case: 'weightedClusters', value: { clusters: Object.entries(weights).map(([name, weight]) => ({ name, weight })) } } } };
}

function snapshot(routes: RouteInit[], clusters: Record<string, number[]>): SnapshotInput {
  const { clusters: cs, endpoints } = clustersOf(clusters);
  return {
    listeners: [httpListener('front', '127.0.0.1', 10000, 'rc')],
    routes: [routesConfig('rc', [{ name: 'app', domains: ['*'], routes }])],
    clusters: cs,
    endpoints,
  };
}

/** Resolves with the first `event` for which `when` holds (bounded). */
function waitFor<T>(subscribe: (listener: (value: T) => void) => () => void, when: (value: T) => boolean, what: string, ms = 5000): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out waiting for ${what}`));
    }, ms);
    const off = subscribe((value) => {
      if (!when(value)) return;
      clearTimeout(timer);
      off();
      resolve(value);
    });
  });
}

interface Setup {
  server: XdsServer;
  port: number;
  router: Router;
  client: AdsClient;
  proxy: RouterProxy;
  front: number;
  close(): Promise<void>;
}

async function setup(input: SnapshotInput): Promise<Setup> {
  const server = new XdsServer();
  const { port } = await server.listen();
  server.setSnapshot(input);
  const router = new Router();
  const client = new AdsClient({ target: `127.0.0.1:${port}`, router, nodeId: NODE });
  const acked = new Set<string>();
  const allAcked = waitFor<SettleEvent>(
    (l) => (server.on('ack', l), () => server.off('ack', l)),
    (e) => (acked.add(e.type), acked.size === 4),
    'ACKs of all four types at the server',
  );
  client.start();
  await allAcked;
  const proxy = new RouterProxy({ router });
  const { port: front } = await proxy.listen();
  return {
    server,
    port,
    router,
    client,
    proxy,
    front,
    close: async () => {
      await proxy.close();
      await client.close();
      await server.close();
    },
  };
}

const onClient = (client: AdsClient, event: 'ack' | 'nack') => (l: (e: AdsEvent) => void) => (client.on(event, l), () => client.off(event, l));

test('ACK: applied versions are the server snapshot versions; the router routes by them', async (t) => {
  const a = await namedUpstream('a');
  const s = await setup(snapshot([{ match: { pathSpecifier: { case: 'prefix', value: '/' } }, action: weighted({ a: 1 }) }], { a: [a.port] }));
  try {
    const snap = s.server.snapshot();
    t.deepEqual(s.client.versions(), { listener: snap.version(TypeUrl.listener), route: snap.version(TypeUrl.route), cluster: snap.version(TypeUrl.cluster), endpoint: snap.version(TypeUrl.endpoint) });
    const status = s.server.clientStatus().find((c) => c.nodeId === NODE);
    t.is(status?.kind, 'other', 'user agent tether-router');
    for (const type of status?.types ?? []) t.is(type.ackedVersion, snap.version(TypeUrl[type.kind]), type.kind);
    t.deepEqual(s.client.subscribed('route'), ['rc']);
    t.deepEqual(s.client.subscribed('endpoint'), ['a']);
    const r = await request(s.front, '/hello');
    t.is(r.status, 200);
    t.is(r.body, 'a');
  } finally {
    await s.close();
    await a.close();
  }
});

test('NACK names the unsupported field; server, CSDS and metrics record it; the last good configuration keeps routing', async (t) => {
  const a = await namedUpstream('a');
  const b = await namedUpstream('b');
  const good = snapshot([{ match: { pathSpecifier: { case: 'prefix', value: '/' } }, action: weighted({ a: 1 }) }], { a: [a.port], b: [b.port] });
  const s = await setup(good);
  try {
    const goodRouteVersion = s.client.versions().route;
    const goodRcVersion = s.server.snapshot().get(TypeUrl.route).get('rc')?.version;
    const bad = snapshot(
      [
        { match: { pathSpecifier: { case: 'prefix', value: '/x' } }, action: weighted({ b: 1 }) },
        { match: { pathSpecifier: { case: 'prefix', value: '/' }, grpc: {} }, action: weighted({ b: 1 }) },
      ],
      { a: [a.port], b: [b.port] },
    );
    const clientNack = waitFor(onClient(s.client, 'nack'), (e) => e.kind === 'route', 'the client NACK');
    const serverNack = waitFor<SettleEvent>((l) => (s.server.on('nack', l), () => s.server.off('nack', l)), (e) => e.type === 'route', 'the server NACK');
    s.server.setSnapshot(bad);
    const expected = 'route_configuration "rc" virtual_hosts[0].routes[1].match.grpc: unsupported';
    t.is((await clientNack).message, expected);
    const seen = await serverNack;
    t.is(seen.message, expected);
    t.is(seen.nodeId, NODE);
    t.is(s.client.versions().route, goodRouteVersion, 'the applied version did not move');
    // CSDS over the wire, as an operator would read it.
    const csdsClient = new AdsTestClient(`127.0.0.1:${s.port}`);
    try {
      const csds = await csdsClient.csds(NODE);
      const rc = csds.config[0]?.genericXdsConfigs.find((g) => g.typeUrl === TypeUrl.route && g.name === 'rc');
      t.is(rc?.clientStatus, ClientResourceStatus.NACKED);
      t.is(rc?.errorState?.details, expected);
      t.is(rc?.versionInfo, goodRcVersion, 'CSDS shows the version of rc the router still holds');
    } finally {
      csdsClient.close();
    }
    const metrics = await s.server.registry.getSingleMetricAsString('tether_xds_nacks_total');
    t.regex(metrics, /tether_xds_nacks_total\{type="route"\} 1/);
    // Last good: everything still goes to a (the bad config would send /x to b).
    for (const path of ['/', '/x']) t.is((await request(s.front, path)).body, 'a', path);
    // A fixed configuration is ACKed and applied.
    const fixed = snapshot([{ match: { pathSpecifier: { case: 'prefix', value: '/x' } }, action: weighted({ b: 1 }) }, { match: { pathSpecifier: { case: 'prefix', value: '/' } }, action: weighted({ a: 1 }) }], { a: [a.port], b: [b.port] });
    const ack = waitFor(onClient(s.client, 'ack'), (e) => e.kind === 'route', 'the ACK of the fix');
    s.server.setSnapshot(fixed);
    t.is((await ack).version, s.server.snapshot().version(TypeUrl.route));
    t.is((await request(s.front, '/x')).body, 'b');
    t.is((await request(s.front, '/')).body, 'a');
  } finally {
    await s.close();
    await Promise.all([a.close(), b.close()]);
  }
});

/** Continuous load through the front; each reply tagged with the phase its request started in. */
function load(front: number, workers: number) {
  const phase = { now: 'before' as string };
  const replies: Array<{ phase: string; status: number; body: string }> = [];
  const errors: string[] = [];
  let running = true;
  const loops = Array.from({ length: workers }, async () => {
    while (running) {
      const started = phase.now;
      try {
        const r = await request(front, '/work');
        replies.push({ phase: started, status: r.status, body: r.body });
      } catch (reason) {
        errors.push(String(reason));
      }
    }
  });
  const until = async (count: number): Promise<void> => {
    const deadline = Date.now() + 10_000;
    while (replies.length < count && Date.now() < deadline) await new Promise<void>((r) => setImmediate(r));
  };
  return {
    phase,
    replies,
    errors,
    until,
    stop: async () => {
      running = false;
      await Promise.all(loops);
    },
  };
}

test('weights 100/0 → 0/100 through setSnapshot move the traffic with zero failed requests under load', async (t) => {
  const a = await namedUpstream('a');
  const b = await namedUpstream('b');
  const spec = { a: [a.port], b: [b.port] };
  const s = await setup(snapshot([{ match: { pathSpecifier: { case: 'prefix', value: '/' } }, action: weighted({ a: 100, b: 0 }) }], spec));
  const traffic = load(s.front, 8);
  try {
    await traffic.until(200);
    traffic.phase.now = 'during';
    const applied = waitFor(onClient(s.client, 'ack'), (e) => e.kind === 'route', 'the ACK of the new weights');
    const before = s.router.config;
    s.server.setSnapshot(snapshot([{ match: { pathSpecifier: { case: 'prefix', value: '/' } }, action: weighted({ a: 0, b: 100 }) }], spec));
    await applied;
    t.not(s.router.config, before);
    traffic.phase.now = 'after';
    const mark = traffic.replies.length;
    await traffic.until(mark + 200);
  } finally {
    await traffic.stop();
    await s.close();
    await Promise.all([a.close(), b.close()]);
  }
  const { replies, errors } = traffic;
  t.deepEqual(errors, [], 'no request failed at the client');
  t.deepEqual(replies.filter((r) => r.status !== 200), [], 'every reply is a 200');
  const count = (phase: string, body: string) => replies.filter((r) => r.phase === phase && r.body === body).length;
  t.true(count('before', 'a') >= 200);
  t.is(count('before', 'b'), 0);
  t.true(count('after', 'b') >= 200);
  t.is(count('after', 'a'), 0, 'no request started after the ACK went to a');
  t.log(`${replies.length} requests: before a=${count('before', 'a')}; during a=${count('during', 'a')} b=${count('during', 'b')}; after b=${count('after', 'b')}; 0 failed`);
});

test('an endpoint removed from EDS gets no more traffic (and nothing fails)', async (t) => {
  let removedHitsAtAck = -1;
  const a = await namedUpstream('a');
  const b: NamedUpstream = await namedUpstream('b');
  const s = await setup(snapshot([{ match: { pathSpecifier: { case: 'prefix', value: '/' } }, action: weighted({ svc: 1 }) }], { svc: [a.port, b.port] }));
  const traffic = load(s.front, 4);
  try {
    await traffic.until(100);
    t.true(b.hits > 20, 'both endpoints served before');
    const applied = waitFor(onClient(s.client, 'ack'), (e) => e.kind === 'endpoint', 'the ACK of the endpoint change');
    s.server.updateSnapshot({ endpoints: [loadAssignment('svc', [{ address: '127.0.0.1', port: a.port }])] });
    await applied;
    traffic.phase.now = 'after';
    removedHitsAtAck = b.hits;
    const mark = traffic.replies.length;
    await traffic.until(mark + 200);
  } finally {
    await traffic.stop();
    await s.close();
    await Promise.all([a.close(), b.close()]);
  }
  t.deepEqual(traffic.errors, []);
  t.deepEqual(traffic.replies.filter((r) => r.status !== 200), []);
  t.is(traffic.replies.filter((r) => r.phase === 'after' && r.body === 'b').length, 0);
  t.true(b.hits - removedHitsAtAck <= 4, 'at most the requests already in flight at the ACK reached b');
  t.true(traffic.replies.filter((r) => r.phase === 'after').length >= 200);
});

test('the stream is re-opened with backoff after the server goes away; the last configuration routes meanwhile', async (t) => {
  const a = await namedUpstream('a');
  const b = await namedUpstream('b');
  const s = await setup(snapshot([{ match: { pathSpecifier: { case: 'prefix', value: '/' } }, action: weighted({ a: 1 }) }], { a: [a.port], b: [b.port] }));
  let second: XdsServer | null = null;
  try {
    const lost = waitFor<{ code: number }>((l) => (s.client.on('disconnected', l), () => s.client.off('disconnected', l)), () => true, 'the disconnect');
    await s.server.close();
    await lost;
    t.is((await request(s.front, '/')).body, 'a', 'still routing by the last configuration');
    second = new XdsServer();
    second.setSnapshot(snapshot([{ match: { pathSpecifier: { case: 'prefix', value: '/' } }, action: weighted({ b: 1 }) }], { a: [a.port], b: [b.port] }));
    const moved = waitFor(onClient(s.client, 'ack'), (e) => e.kind === 'route' && e.version === second?.snapshot().version(TypeUrl.route), 'the new server route ACK', 10_000);
    await second.listen({ port: s.port });
    await moved;
    t.is((await request(s.front, '/')).body, 'b');
  } finally {
    await s.close();
    await second?.close();
    await Promise.all([a.close(), b.close()]);
  }
});

test('only the listener the router uses is applied (and can be NACKed); it can be named', async (t) => {
  const a = await namedUpstream('a');
  const input = snapshot([{ match: { pathSpecifier: { case: 'prefix', value: '/' } }, action: weighted({ a: 1 }) }], { a: [a.port] });
  const tls = httpListener('envoy-tls', '127.0.0.1', 10443, 'rc');
  tls.listenerFilters = [create(ListenerFilterSchema, { name: 'envoy.filters.listener.tls_inspector' })];
  input.listeners = [tls, ...(input.listeners ?? [])];
  const server = new XdsServer();
  const { port } = await server.listen();
  server.setSnapshot(input);
  const named = new Router();
  const first = new Router();
  const byName = new AdsClient({ target: `127.0.0.1:${port}`, router: named, nodeId: 'router-named', listenerName: 'front' });
  const byDefault = new AdsClient({ target: `127.0.0.1:${port}`, router: first, nodeId: 'router-first' });
  try {
    const nack = waitFor(onClient(byDefault, 'nack'), (e) => e.kind === 'listener', 'the NACK of the first listener');
    const routed = waitFor<unknown>((l) => (named.on('updated', l), () => named.off('updated', l)), () => named.route({ method: 'GET', path: '/', authority: 'x', headers: {} }) !== null, 'a routable config');
    byName.start();
    byDefault.start();
    t.is((await nack).message, 'listener "envoy-tls" listener_filters: unsupported');
    await routed;
    t.is(named.config?.listener.name, 'front');
    t.is(first.config, null, 'nothing applied from a NACKed listener response');
  } finally {
    await byName.close();
    await byDefault.close();
    await server.close();
    await a.close();
  }
});
