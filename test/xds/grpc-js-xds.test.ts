/**
 * A real xDS client nobody here wrote: @grpc/grpc-js-xds, bootstrapped (GRPC_XDS_BOOTSTRAP_CONFIG)
 * to our server, calls real grpc-js backends through `xds:///who.test:1`. Its own process (ava runs
 * each file separately), because grpc-js-xds reads and caches its bootstrap once per process.
 */
import { createHook } from 'node:async_hooks';
import test from 'ava';
import { Client, Server, ServerCredentials, credentials } from '@grpc/grpc-js';
import type { sendUnaryData, ServerUnaryCall } from '@grpc/grpc-js';
import { register } from '@grpc/grpc-js-xds';
import { XdsServer } from '../../xds/server.js';
import type { SettleEvent } from '../../xds/stream-session.js';
import { apiListener, edsCluster, loadAssignment, routeConfiguration } from '../../xds/builders.js';
import type { EndpointSpec } from '../../xds/builders.js';
import type { SnapshotInput } from '../../xds/snapshot.js';
import type { ResourceKind } from '../../xds/resource-types.js';
import { TypeUrl } from '../../xds/resource-types.js';
import { isTetherError } from '../../common/errors.js';

const TARGET = 'who.test:1';
const PATH = '/tether.test.Who/Name';
const raw = (value: Buffer) => value;

interface Backend {
  name: string;
  port: number;
  server: Server;
}

async function startBackend(name: string): Promise<Backend> {
  const server = new Server();
  server.register(PATH, (_call: ServerUnaryCall<Buffer, Buffer>, callback: sendUnaryData<Buffer>) => callback(null, Buffer.from(name)), raw, raw, 'unary');
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound))),
  );
  return { name, port, server };
}

interface World {
  xds: XdsServer;
  backends: Record<'A' | 'B' | 'C', Backend>;
  client: Client;
}

let world: World | null = null;

function at(backend: Backend, weight = 1): EndpointSpec {
  return { address: '127.0.0.1', port: backend.port, weight };
}

function snapshotInput(routeTo: Array<{ cluster: string; weight: number }>, endpoints: Record<string, EndpointSpec[]>): SnapshotInput {
  return {
    listeners: [apiListener(TARGET, 'who-routes')],
    routes: [routeConfiguration('who-routes', [{ name: 'who', domains: ['*'], routes: [{ prefix: '', weighted: routeTo }] }])],
    clusters: Object.keys(endpoints).map((name) => edsCluster({ name })),
    endpoints: Object.entries(endpoints).map(([name, list]) => loadAssignment(name, list)),
  };
}

/** Resolves on the next ACK/NACK from the gRPC client for `type` matching `predicate`. */
function settled(xds: XdsServer, outcome: 'ack' | 'nack', type: ResourceKind, predicate: (e: SettleEvent) => boolean = () => true): Promise<SettleEvent> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      xds.off(outcome, listener);
      reject(new Error(`no ${outcome} for ${type} within 15 s`));
    }, 15_000);
    const listener = (event: SettleEvent) => {
      if (event.client !== 'grpc' || event.type !== type || !predicate(event)) return;
      clearTimeout(timer);
      xds.off(outcome, listener);
      resolve(event);
    };
    xds.on(outcome, listener);
  });
}

function call(client: Client): Promise<string> {
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(PATH, raw, raw, Buffer.alloc(0), { deadline: Date.now() + 5000 }, (error, value) => {
      if (error || !value) reject(error ?? new Error('empty response'));
      else resolve(value.toString());
    });
  });
}

async function tally(client: Client, n: number): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (let i = 0; i < n; i += 1) {
    const name = await call(client);
    counts[name] = (counts[name] ?? 0) + 1;
  }
  return counts;
}

/** Built by the first test (not a before hook, so the leak check's baseline precedes it). */
async function setUp(): Promise<World> {
  if (world) return world;
  const backends = { A: await startBackend('A'), B: await startBackend('B'), C: await startBackend('C') };
  const xds = new XdsServer();
  xds.setSnapshot(snapshotInput([{ cluster: 'cA', weight: 90 }, { cluster: 'cB', weight: 10 }], { cA: [at(backends.A)], cB: [at(backends.B)] }));
  const { port } = await xds.listen();
  process.env.GRPC_XDS_BOOTSTRAP_CONFIG = JSON.stringify({
    xds_servers: [{ server_uri: `127.0.0.1:${port}`, channel_creds: [{ type: 'insecure' }], server_features: ['xds_v3'] }],
    node: { id: 'grpc-js-xds-test', locality: {} },
  });
  register();
  const client = new Client(`xds:///${TARGET}`, credentials.createInsecure());
  world = { xds, backends, client };
  return world;
}

// The leak check: sockets and servers must all be released. grpc-js and grpc-js-xds keep internal
// timers after a channel closes (channel idle, subchannel-pool cleanup, call-ref: unref'd; the
// priority policy's 10 s failover timer: ref'd, it ends by itself), so timers are not counted here.
const liveSockets = new Map<number, string>();
const socketHook = createHook({
  init(asyncId, type) {
    if (type === 'TCPWRAP' || type === 'TCPSERVERWRAP' || type === 'PIPEWRAP') liveSockets.set(asyncId, type);
  },
  destroy(asyncId) {
    liveSockets.delete(asyncId);
  },
});
test.before(() => {
  socketHook.enable();
});

test.after.always('no leaked sockets or servers', async (t) => {
  if (!world) return;
  world.client.close();
  await world.xds.close();
  for (const backend of Object.values(world.backends)) backend.server.forceShutdown();
  const deadline = Date.now() + 3000;
  while (liveSockets.size > 0 && Date.now() < deadline) await new Promise<void>((resolve) => setTimeout(resolve, 20));
  socketHook.disable();
  t.deepEqual([...liveSockets.values()], [], 'every socket and server is closed');
});

function share(counts: Record<string, number>, name: string): number {
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  return (counts[name] ?? 0) / total;
}

test.serial('RPCs through xds:/// reach the backends our EDS names, split 90/10 by route weights', async (t) => {
  const { client, xds } = await setUp();
  const counts = await tally(client, 400);
  t.deepEqual(Object.keys(counts).sort(), ['A', 'B']);
  t.true(share(counts, 'A') > 0.8 && share(counts, 'A') < 0.97, `A got ${JSON.stringify(counts)}`);
  const status = xds.clientStatus().find((s) => s.nodeId === 'grpc-js-xds-test');
  t.is(status?.kind, 'grpc');
  t.deepEqual(status?.resources.map((r) => `${r.kind}/${r.name}:${r.status}`).sort(), [
    'cluster/cA:ACKED',
    'cluster/cB:ACKED',
    'endpoint/cA:ACKED',
    'endpoint/cB:ACKED',
    `listener/${TARGET}:ACKED`,
    'route/who-routes:ACKED',
  ]);
});

test.serial('changing weights to 10/90 shows in the measured split', async (t) => {
  const { client, xds, backends } = await setUp();
  const acked = settled(xds, 'ack', 'route');
  const published = xds.setSnapshot(snapshotInput([{ cluster: 'cA', weight: 10 }, { cluster: 'cB', weight: 90 }], { cA: [at(backends.A)], cB: [at(backends.B)] }));
  const event = await acked;
  t.is(event.version, published.version(TypeUrl.route));
  await tally(client, 20);
  const counts = await tally(client, 400);
  t.true(share(counts, 'B') > 0.8 && share(counts, 'B') < 0.97, `B got ${JSON.stringify(counts)}`);
});

test.serial('an invalid resource: refused by validation; forced, NACKed by the client, recorded, last good kept', async (t) => {
  const { client, xds, backends } = await setUp();
  const before = xds.snapshot();
  const bad = snapshotInput([{ cluster: 'cA', weight: 10 }, { cluster: 'cB', weight: 90 }], {
    cA: [at(backends.A)],
    cB: [{ address: 'backend-b.invalid', port: backends.B.port }],
  });
  const refused = t.throws(() => xds.setSnapshot(bad));
  t.true(isTetherError(refused, 'XDS_VALIDATION_FAILED'));
  t.regex(refused?.message ?? '', /endpoint "cB" endpoints\[0\]\.lb_endpoints\[0\]\.endpoint\.address\.socket_address\.address: "backend-b\.invalid" is not an IP address literal/);
  t.is(xds.snapshot(), before);

  const nacked = settled(xds, 'nack', 'endpoint');
  xds.setSnapshot(bad, { validate: false });
  const nack = await nacked;
  t.regex(nack.message ?? '', /not a valid IPv4 or IPv6 address/);
  const status = xds.clientStatus().find((s) => s.nodeId === 'grpc-js-xds-test');
  const cB = status?.resources.find((r) => r.kind === 'endpoint' && r.name === 'cB');
  t.is(cB?.status, 'NACKED');
  t.regex(cB?.nack?.message ?? '', /backend-b\.invalid/);
  t.is(cB?.ackedVersion, before.get(TypeUrl.endpoint).get('cB')?.version, 'the client still runs the last good version');
  const metrics = await xds.registry.getSingleMetricAsString('tether_xds_nacks_total');
  t.regex(metrics, /type="endpoint"\} 1/);
  const counts = await tally(client, 200);
  t.deepEqual(Object.keys(counts).sort(), ['A', 'B'], 'traffic still flows on the last good endpoints');
  t.true(share(counts, 'B') > 0.75);
});

test.serial('removing a backend from EDS stops traffic to it', async (t) => {
  const { client, xds, backends } = await setUp();
  let acked = settled(xds, 'ack', 'endpoint', (e) => e.names.includes('cB'));
  xds.setSnapshot(snapshotInput([{ cluster: 'cB', weight: 1 }], { cB: [at(backends.B), at(backends.C)] }));
  await acked;
  await tally(client, 20);
  const both = await tally(client, 100);
  t.deepEqual(Object.keys(both).sort(), ['B', 'C']);
  acked = settled(xds, 'ack', 'endpoint', (e) => e.names.includes('cB'));
  xds.setSnapshot(snapshotInput([{ cluster: 'cB', weight: 1 }], { cB: [at(backends.C)] }));
  await acked;
  await tally(client, 20);
  const after = await tally(client, 200);
  t.deepEqual(after, { C: 200 });
});
