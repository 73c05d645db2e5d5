/**
 * The gateway follows the control plane's cluster list and modes (gateway/control-plane-watch.ts,
 * control/cluster-watch.ts): a real control plane (SQLite store on disk, gRPC on port 0), a real
 * gateway and agent. Registering a cluster makes its requests reach the tunnel path; switching it
 * to sovereign in the control plane makes the gateway answer 403 CLUSTER_SOVEREIGN and close its
 * tunnels and bound connections; the control plane going away keeps the last list, and a restart
 * brings the changes made meanwhile; a caller without `cluster.watch` is refused.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { Registry } from 'prom-client';
import { DevOidcIssuer } from '../../certs/dev-oidc-issuer.js';
import { silentLogger } from '../../common/log.js';
import { parseControlConfig } from '../../control/config.js';
import { ControlServer } from '../../control/server.js';
import { ControlService, userCaller } from '../../control/service.js';
import { loadKeyring, newKek } from '../../control/store/keyring.js';
import { SqliteStore } from '../../control/store/sqlite-store.js';
import type { Gateway } from '../../gateway/index.js';
import { ControlPlaneWatch, type WatchedCluster } from '../../gateway/control-plane-watch.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { startTunnelEnv, TEST_BINDING, type TunnelEnv } from '../helpers/tunnel-env.js';
import { startHttp1Upstream, type Upstream } from '../helpers/tunnel-upstreams.js';

failOnLeaks(test);

const AUDIENCE = 'tether-control';
const ORG = 'acme';
const ENV = { TETHER_CONTROL_KEK: newKek().key.toString('base64') };
const ADMIN = userCaller('alice');

interface World {
  issuer: DevOidcIssuer;
  dir: string;
  control: ControlServer;
  grpcPort: number;
  env: TunnelEnv;
  upstream: Upstream;
}

let world: World;

async function startControl(dir: string, issuerUrl: string, grpcPort: number): Promise<ControlServer> {
  const config = parseControlConfig({
    org: ORG,
    store: { path: join(dir, 'control.db') },
    grpc: { host: '127.0.0.1', port: grpcPort },
    http: { enabled: false },
    auth: { issuers: [{ issuer: issuerUrl, audience: AUDIENCE }] },
    bootstrapAdmins: ['alice'],
    scheduler: { enabled: false },
    gatewayWatch: { pollMs: 200 },
  });
  return ControlServer.start(config, { env: ENV, logger: silentLogger() });
}

function register(service: ControlService, id: string, mode: 'tunnel' | 'sovereign'): Promise<unknown> {
  return service.registerCluster(ADMIN, { org: ORG, id, mode, endpoint: `${id}.example`, issuer: 'https://issuer.example', audience: 'tether-identity', allowedSubjects: ['agent'] });
}

/** Resolves with the first list (the current one included) that satisfies `want`. */
function listWhere(watch: ControlPlaneWatch, want: (clusters: readonly WatchedCluster[]) => boolean): Promise<readonly WatchedCluster[]> {
  const current = watch.clusters;
  if (current !== null && want(current)) return Promise.resolve(current);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      watch.off('update', onUpdate);
      reject(new Error(`no cluster list as wanted within 10 s (last: ${JSON.stringify(watch.clusters)})`));
    }, 10_000);
    const onUpdate = (clusters: WatchedCluster[]): void => {
      if (!want(clusters)) return;
      clearTimeout(timer);
      watch.off('update', onUpdate);
      resolve(clusters);
    };
    watch.on('update', onUpdate);
  });
}

const modeOf = (clusters: readonly WatchedCluster[], id: string): string | undefined => clusters.find((cluster) => cluster.id === id)?.mode;

async function get(gateway: Gateway, cluster: string, agent?: http.Agent): Promise<{ status: number; code: string | undefined; mode: string | undefined; socket: Socket }> {
  const token = await world.env.token([cluster]);
  return new Promise((resolve, reject) => {
    const request = http.get(`${gateway.plainUrl}/hello`, { agent: agent ?? false, headers: { authorization: `Bearer ${token}`, 'tether-cluster': cluster } }, (response) => {
      response.resume();
      response.on('end', () =>
        resolve({
          status: response.statusCode ?? 0,
          code: response.headers['tether-error'] as string | undefined,
          mode: response.headers['tether-cluster-mode'] as string | undefined,
          socket: request.socket as Socket,
        }),
      );
    });
    request.on('error', reject);
  });
}

function watchOf(gateway: Gateway): ControlPlaneWatch {
  if (gateway.controlPlane === null) throw new Error('the gateway has no control plane watch');
  return gateway.controlPlane;
}

test.before(async () => {
  const issuer = new DevOidcIssuer();
  const issuerUrl = await issuer.listen();
  const dir = mkdtempSync(join(tmpdir(), 'tether-gateway-watch-'));
  const control = await startControl(dir, issuerUrl, 0);
  await control.service.bind(ADMIN, 'user:gateway-1', 'Gateway', { org: ORG });
  await control.service.bind(ADMIN, 'user:bob', 'Viewer', { org: ORG });
  await register(control.service, 'c1', 'tunnel');
  const upstream = await startHttp1Upstream();
  const env = await startTunnelEnv({
    clusters: [],
    gateway: {
      controlPlane: { url: `http://127.0.0.1:${control.grpcPort}`, orgs: [ORG], backoff: { initialDelayMs: 20, maxDelayMs: 200 } },
      controlPlaneToken: () => issuer.mint({ subject: 'gateway-1', audience: AUDIENCE }),
    },
  });
  world = { issuer, dir, control, grpcPort: control.grpcPort, env, upstream };
});

test.after.always(async () => {
  await world.env.close();
  await world.control.close();
  await world.upstream.close();
  await world.issuer.close();
  rmSync(world.dir, { recursive: true, force: true });
});

test.serial('a token without cluster.watch is refused PERMISSION_DENIED, a bad one UNAUTHENTICATED; both audited', async (t) => {
  for (const [token, code] of [
    [await world.issuer.mint({ subject: 'bob', audience: AUDIENCE }), 'CONTROL_PERMISSION_DENIED'],
    [await world.issuer.mint({ subject: 'gateway-1', audience: 'someone-else' }), 'CONTROL_UNAUTHENTICATED'],
  ] as const) {
    const registry = new Registry();
    const applied: WatchedCluster[][] = [];
    const watch = new ControlPlaneWatch({
      url: `http://127.0.0.1:${world.grpcPort}`,
      orgs: [ORG],
      gatewayId: 'gw-test',
      token: () => token,
      backoff: { initialDelayMs: 60_000, maxDelayMs: 60_000 },
      apply: (clusters) => applied.push(clusters),
      logger: silentLogger(),
      registry,
    });
    const refused = new Promise<string>((resolve) => watch.once('disconnected', (error) => resolve(error.code)));
    watch.start();
    t.is(await refused, code);
    watch.close();
    t.deepEqual(applied, [], 'nothing applied');
    t.false(watch.connected);
    t.regex(await registry.metrics(), new RegExp(`tether_gateway_control_plane_errors_total\\{code="${code}"\\} 1`));
  }
  const audit = await world.control.store.listAudit({ principal: 'user:bob' }, 50, '');
  t.true(audit.items.some((record) => record.operation === 'cluster.watch' && record.result === 'CONTROL_PERMISSION_DENIED'));
});

test.serial('the gateway follows registrations and mode changes, keeps its list while the control plane is away, and picks up what changed meanwhile', async (t) => {
  const { env } = world;
  const gateway = env.gateway;
  const watch = watchOf(gateway);

  // The first list: c1 (tunnel). No agent yet: c1 reaches the tunnel path, c2 is unknown.
  await listWhere(watch, (clusters) => modeOf(clusters, 'c1') === 'tunnel');
  t.like(await get(gateway, 'c1'), { status: 503, code: 'NO_TUNNEL' });
  t.like(await get(gateway, 'c2'), { status: 404, code: 'UNKNOWN_CLUSTER' });
  t.regex(await gateway.registry.metrics(), /tether_gateway_control_plane_connected\S* 1/);

  // Registering c2 in the control plane: the gateway takes it.
  await register(world.control.service, 'c2', 'tunnel');
  await listWhere(watch, (clusters) => modeOf(clusters, 'c2') === 'tunnel');
  t.like(await get(gateway, 'c2'), { status: 503, code: 'NO_TUNNEL' });

  // An agent of c1 and a kept-alive client connection carried by it.
  const agent = await env.startAgent({ clusterId: 'c1', routes: [{ prefix: '/', upstream: world.upstream.url }] });
  await agent.waitForConnections(agent.config.connectionsPerGateway);
  const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const first = await get(gateway, 'c1', keepAlive);
  t.is(first.status, 200);
  const connectionClosed = new Promise<void>((resolve) => first.socket.once('close', () => resolve()));

  // Switched to sovereign in the control plane (audited): 403 CLUSTER_SOVEREIGN, tunnels and the
  // bound connection closed at once.
  await register(world.control.service, 'c1', 'sovereign');
  await listWhere(watch, (clusters) => modeOf(clusters, 'c1') === 'sovereign');
  t.is(gateway.clusterMode('c1'), 'sovereign');
  t.is(gateway.tunnels.countsByCluster().c1 ?? 0, 0);
  if (TEST_BINDING === 'connection') await connectionClosed;
  keepAlive.destroy();
  t.like(await get(gateway, 'c1'), { status: 403, code: 'CLUSTER_SOVEREIGN', mode: 'sovereign' });
  const audit = await world.control.store.listAudit({ principal: 'user:alice', operation: 'cluster.register' }, 50, '');
  t.true(audit.items.some((record) => record.resource === 'org/acme/cluster/c1(mode=sovereign)' && record.result === 'OK'));

  // The control plane goes away: the gateway keeps the last list.
  const away = new Promise<string>((resolve) => watch.once('disconnected', (error) => resolve(error.code)));
  await world.control.close();
  t.truthy(await away);
  t.false(watch.connected);
  t.regex(await gateway.registry.metrics(), /tether_gateway_control_plane_connected\S* 0/);
  t.like(await get(gateway, 'c1'), { status: 403, code: 'CLUSTER_SOVEREIGN' });
  t.like(await get(gateway, 'c2'), { status: 503, code: 'NO_TUNNEL' });

  // Meanwhile, on the same store: c3 registered, c1 claimed tunnel again.
  const store = SqliteStore.open({ path: join(world.dir, 'control.db'), keyring: await loadKeyring({ env: ENV }) });
  const offline = new ControlService({ store });
  await register(offline, 'c3', 'tunnel');
  await register(offline, 'c1', 'tunnel');
  await store.close();
  t.like(await get(gateway, 'c3'), { status: 404, code: 'UNKNOWN_CLUSTER' });

  // Back on the same port: the gateway reconnects and applies what changed.
  world.control = await startControl(world.dir, world.issuer.issuer, world.grpcPort);
  await listWhere(watch, (clusters) => modeOf(clusters, 'c3') === 'tunnel' && modeOf(clusters, 'c1') === 'tunnel');
  t.true(watch.connected);
  t.like(await get(gateway, 'c3'), { status: 503, code: 'NO_TUNNEL' });
  // The early refusal is lifted; the agent (no customer sovereignty configured here) dials again.
  t.is(gateway.clusterMode('c1'), 'tunnel');
  t.not((await get(gateway, 'c1')).code, 'CLUSTER_SOVEREIGN');
  t.regex(await gateway.registry.metrics(), /tether_gateway_control_plane_updates_total\S* [4-9]/);

  // Deleting clusters in the control plane (DeleteCluster): the gateway drops them, c1's tunnels
  // included, and answers UNKNOWN_CLUSTER.
  await world.control.service.deleteCluster(ADMIN, ORG, 'c3');
  await world.control.service.deleteCluster(ADMIN, ORG, 'c1');
  await listWhere(watch, (clusters) => !clusters.some((c) => c.id === 'c1' || c.id === 'c3'));
  t.is(gateway.tunnels.countsByCluster().c1 ?? 0, 0);
  t.like(await get(gateway, 'c1'), { status: 404, code: 'UNKNOWN_CLUSTER' });
  t.like(await get(gateway, 'c3'), { status: 404, code: 'UNKNOWN_CLUSTER' });
  t.like(await get(gateway, 'c2'), { status: 503, code: 'NO_TUNNEL' });

  // Another control-plane replica on the same store (its own process in production; its own
  // connection here) registers c5 and deletes c2: the watch's re-read brings both to the gateway.
  const replicaStore = SqliteStore.open({ path: join(world.dir, 'control.db'), keyring: await loadKeyring({ env: ENV }) });
  try {
    const replica = new ControlService({ store: replicaStore });
    await register(replica, 'c5', 'tunnel');
    await replica.deleteCluster(ADMIN, ORG, 'c2');
  } finally {
    await replicaStore.close();
  }
  await listWhere(watch, (clusters) => modeOf(clusters, 'c5') === 'tunnel' && !clusters.some((c) => c.id === 'c2'));
  t.like(await get(gateway, 'c5'), { status: 503, code: 'NO_TUNNEL' });
  t.like(await get(gateway, 'c2'), { status: 404, code: 'UNKNOWN_CLUSTER' });
});
