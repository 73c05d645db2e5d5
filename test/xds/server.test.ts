/** XdsServer lifecycle and per-node views. */
import test from 'ava';
import { once } from 'node:events';
import { status } from '@grpc/grpc-js';
import { failOnLeaks } from '../helpers/leaks.js';
import { AdsTestClient, envoyNode, namesOf, sotwRequest } from '../helpers/ads-client.js';
import { XdsServer } from '../../xds/server.js';
import { TypeUrl } from '../../xds/resource-types.js';
import { edsCluster, loadAssignment } from '../../xds/builders.js';
import { SotwProber, ack, baseInput, rig } from './fixtures.js';

failOnLeaks(test);

test('per-node views: a node group with its own snapshot sees it; others see the default', async (t) => {
  const { client, server } = await rig(t, baseInput(), { nodeGroup: (node) => node.cluster });
  server.setSnapshot(
    { clusters: [edsCluster({ name: 'team-a-only' })], endpoints: [loadAssignment('team-a-only', [{ address: '127.0.0.1', port: 9100 }])] },
    { group: 'team-a' },
  );
  const teamA = client.sotw();
  teamA.send(sotwRequest({ node: { ...envoyNode('a-1'), cluster: 'team-a' }, typeUrl: TypeUrl.cluster }));
  t.deepEqual(namesOf(await teamA.next()), ['team-a-only']);
  const other = client.sotw();
  other.send(sotwRequest({ node: { ...envoyNode('b-1'), cluster: 'team-b' }, typeUrl: TypeUrl.cluster }));
  const first = await other.next();
  t.deepEqual(namesOf(first), ['c1', 'c2']);
  ack(other, first);
  // A change to the default group reaches team-b, not team-a.
  server.setSnapshot(baseInput({ clusters: [edsCluster({ name: 'c1' }), edsCluster({ name: 'c2', connectTimeoutMs: 4321 })] }));
  t.deepEqual(namesOf(await other.next()), ['c1', 'c2']);
  await new SotwProber(teamA).expectNothingBefore(t, 'team-a has its own snapshot');
  t.is(server.snapshot('team-a').get(TypeUrl.cluster).size, 1);
  // The same resource content in two groups is one shared encoding.
  const shared = server.setSnapshot(baseInput(), { group: 'team-a' });
  t.is(shared.get(TypeUrl.endpoint).get('c1')?.anyBytes.byteLength, server.snapshot().get(TypeUrl.endpoint).get('c1')?.anyBytes.byteLength);
});

test('drain ends open streams with OK; close is idempotent; afterwards new streams fail UNAVAILABLE', async (t) => {
  const server = new XdsServer();
  server.setSnapshot(baseInput());
  const { port } = await server.listen();
  const client = new AdsTestClient(`127.0.0.1:${port}`);
  t.teardown(async () => {
    client.close();
    await server.close();
  });
  const stream = client.sotw();
  stream.send(sotwRequest({ node: envoyNode(), typeUrl: TypeUrl.cluster }));
  await stream.next();
  const drained = server.drain(2000);
  t.is(await stream.closed, null, 'ended with OK');
  await drained;
  t.is(server.sessionCount, 0);
  await server.close();
  await server.close();
  const late = client.sotw();
  late.send(sotwRequest({ node: envoyNode('late'), typeUrl: TypeUrl.cluster }));
  t.is((await late.closed)?.code, status.UNAVAILABLE);
});

test('rollbackOnNack: a NACK of the current version puts the previous snapshot back, once', async (t) => {
  const { client, server } = await rig(t, baseInput(), { rollbackOnNack: true });
  const good = server.snapshot();
  const ads = client.sotw();
  ads.send(sotwRequest({ node: envoyNode(), typeUrl: TypeUrl.cluster }));
  const first = await ads.next();
  ack(ads, first);
  server.setSnapshot(baseInput({ clusters: [edsCluster({ name: 'c1' }), edsCluster({ name: 'c2', connectTimeoutMs: 1 })] }));
  const bad = await ads.next();
  t.not(bad.versionInfo, first.versionInfo);
  const rolledBack = once(server, 'rollback');
  ads.send(sotwRequest({ typeUrl: TypeUrl.cluster, versionInfo: first.versionInfo, responseNonce: bad.nonce, errorDetail: { code: 3, message: 'c2: bad timeout' } }));
  const [event] = (await rolledBack) as [{ to: unknown; cause: { message?: string } }];
  t.is(event.to, good);
  t.is(event.cause.message, 'c2: bad timeout');
  t.is(server.snapshot(), good);
  const restored = await ads.next();
  t.is(restored.versionInfo, first.versionInfo, 'the previous version is served again');
});
