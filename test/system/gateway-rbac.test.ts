/**
 * The gateway's authorizer is the control plane's RBAC graph (DESIGN §6): a valid client token is
 * not enough to reach a cluster's data plane; the subject needs `data.read` in the cluster's org.
 * A binding made in the control plane takes effect at the gateway; removing it takes it away.
 */
import test from 'ava';
import { join } from 'node:path';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { parseControlConfig } from '../../control/config.js';
import { ControlServer } from '../../control/server.js';
import { userCaller } from '../../control/service.js';
import { newKek } from '../../control/store/keyring.js';
import { accessAuthorizer } from '../../gateway/index.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { h1Request } from '../helpers/tunnel-clients.js';
import { startTunnelEnv, ISSUER } from '../helpers/tunnel-env.js';
import { startHttp1Upstream } from '../helpers/tunnel-upstreams.js';

failOnLeaks(test);

test('a client reaches a cluster only with a role in its org in the control plane', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'tether-gateway-rbac-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const control = await ControlServer.start(
    parseControlConfig({
      org: 'acme',
      store: { path: join(dir, 'control.db') },
      grpc: { port: 0 },
      http: { enabled: false, port: 0 },
      auth: { issuers: [{ issuer: ISSUER, audience: 'tether' }] },
      bootstrapAdmins: ['alice'],
      scheduler: { enabled: false },
    }),
    { env: { TETHER_CONTROL_KEK: newKek().key.toString('base64') } },
  );
  t.teardown(() => control.close());
  const alice = userCaller('alice');
  await control.service.registerCluster(alice, { org: 'acme', id: 'c1', mode: 'tunnel', endpoint: 'c1.example', issuer: 'https://i.example', audience: 'a', allowedSubjects: ['s'] });

  const checks: string[] = [];
  const upstream = await startHttp1Upstream();
  t.teardown(() => upstream.close());
  const env = await startTunnelEnv({
    clusters: ['c1'],
    gateway: {
      authorizer: accessAuthorizer({
        ttlMs: 0,
        check: (subject, groups, clusterId) => {
          checks.push(`${subject}@${clusterId}`);
          return control.service.mayReachCluster(subject, groups, clusterId);
        },
      }),
    },
    agents: [{ clusterId: 'c1', routes: [{ prefix: '/', upstream: upstream.url }] }],
  });
  t.teardown(() => env.close());
  const ca = env.pki.trustBundlePem;
  const get = async (sub: string): Promise<{ status: number; code: unknown }> => {
    // Every token claims the cluster: the claim no longer decides, the graph does.
    const reply = await h1Request(env.gateway.address, ca, { cluster: 'c1', token: await env.token(['c1'], sub), path: '/' });
    return { status: reply.status, code: reply.headers['tether-error'] };
  };

  t.deepEqual(await get('alice'), { status: 200, code: undefined }, 'org Admin');
  t.deepEqual(await get('bob'), { status: 403, code: 'FORBIDDEN' }, 'valid token, no role');

  const binding = await control.service.bind(alice, 'user:bob', 'Viewer', { org: 'acme' });
  t.deepEqual(await get('bob'), { status: 200, code: undefined }, 'Viewer in the org');
  await control.service.unbind(alice, 'acme', binding.id);
  t.deepEqual(await get('bob'), { status: 403, code: 'FORBIDDEN' }, 'binding removed');
  t.true(checks.includes('bob@c1') && checks.includes('alice@c1'));
});

test('answers are cached for the TTL and a failing check refuses without caching', async (t) => {
  let now = 0;
  let calls = 0;
  let fail = false;
  const authorize = accessAuthorizer({
    ttlMs: 1000,
    now: () => now,
    check: async () => {
      calls++;
      if (fail) throw new Error('control plane unreachable');
      return true;
    },
  });
  const identity = { subject: 'bob', issuer: 'i', claims: { groups: ['b', 'a'] } };
  t.true(await authorize(identity, 'c1'));
  t.true(await authorize({ ...identity, claims: { groups: ['a', 'b'] } }, 'c1'));
  t.is(calls, 1, 'same subject, same groups (any order), same cluster: one check');
  now = 1500;
  fail = true;
  t.false(await authorize(identity, 'c1'), 'expired, and the check fails: refused');
  fail = false;
  t.true(await authorize(identity, 'c1'));
  t.is(calls, 3);
});
