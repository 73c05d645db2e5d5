/** Conformance, Delta (incremental) xDS: the Δ IDs and the Delta forms of V7, U5, W1, W3, R5, R6, O1. */
import test from 'ava';
import { failOnLeaks } from '../helpers/leaks.js';
import { deltaNamesOf, deltaRequest, envoyNode } from '../helpers/ads-client.js';
import type { DeltaStream } from '../helpers/ads-client.js';
import { TypeUrl } from '../../xds/resource-types.js';
import { edsCluster, loadAssignment, routeConfiguration } from '../../xds/builders.js';
import type { DeltaDiscoveryResponse } from '../../xds/gen/envoy/service/discovery/v3/discovery_pb.js';
import { DeltaProber, baseInput, rig } from './fixtures.js';

failOnLeaks(test);

function ack(stream: DeltaStream, response: DeltaDiscoveryResponse, extra: { subscribe?: string[]; unsubscribe?: string[] } = {}): void {
  stream.send(deltaRequest({ typeUrl: response.typeUrl, responseNonce: response.nonce, resourceNamesSubscribe: extra.subscribe ?? [], resourceNamesUnsubscribe: extra.unsubscribe ?? [] }));
}

const changedEndpoints = () =>
  baseInput({ endpoints: [loadAssignment('c1', [{ address: '127.0.0.1', port: 9301 }]), loadAssignment('c2', [{ address: '127.0.0.1', port: 9002 }])] });

test('V7 Delta honours a subscription change carried by a stale nonce', async (t) => {
  const { client, server } = await rig(t);
  const ads = client.delta();
  ads.send(deltaRequest({ node: envoyNode(), typeUrl: TypeUrl.endpoint, resourceNamesSubscribe: ['c1'] }));
  const first = await ads.next();
  t.deepEqual(deltaNamesOf(first), ['c1']);
  server.setSnapshot(changedEndpoints());
  ads.send(deltaRequest({ typeUrl: TypeUrl.endpoint, resourceNamesSubscribe: ['c2'], responseNonce: 'stale-nonce' }));
  const answer = await ads.next();
  t.true(deltaNamesOf(answer).includes('c2'));
});

test('U5 Delta returns every subscribed name, even one the client already has', async (t) => {
  const { client } = await rig(t);
  const ads = client.delta();
  ads.send(deltaRequest({ node: envoyNode(), typeUrl: TypeUrl.endpoint, resourceNamesSubscribe: ['c1'] }));
  const first = await ads.next();
  ack(ads, first, { subscribe: ['c1'] });
  const again = await ads.next();
  t.deepEqual(deltaNamesOf(again), ['c1']);
  t.is(again.resources[0]?.version, first.resources[0]?.version);
  ack(ads, again, { unsubscribe: ['c1'] });
  const prober = new DeltaProber(ads);
  await prober.expectNothingBefore(t, 'unsubscribe needs no response');
  ads.send(deltaRequest({ typeUrl: TypeUrl.endpoint, resourceNamesSubscribe: ['c1'] }));
  t.deepEqual(deltaNamesOf(await ads.next()), ['c1']);
});

test('W1 Delta legacy wildcard: an empty first subscribe is a wildcard for CDS/LDS only', async (t) => {
  const { client } = await rig(t);
  const cds = client.delta();
  cds.send(deltaRequest({ node: envoyNode(), typeUrl: TypeUrl.cluster }));
  t.deepEqual(deltaNamesOf(await cds.next()), ['c1', 'c2']);
  const eds = client.delta();
  eds.send(deltaRequest({ node: envoyNode('eds'), typeUrl: TypeUrl.endpoint }));
  const prober = new DeltaProber(eds);
  await prober.expectNothingBefore(t, 'an empty EDS subscribe is not a wildcard');
});

test('W3 unsubscribing a name under a wildcard: resent if covered, removed if not', async (t) => {
  const { client } = await rig(t);
  const ads = client.delta();
  ads.send(deltaRequest({ node: envoyNode(), typeUrl: TypeUrl.cluster, resourceNamesSubscribe: ['*', 'c1', 'ghost'] }));
  const first = await ads.next();
  t.deepEqual(deltaNamesOf(first), ['c1', 'c2']);
  t.deepEqual(first.removedResources, ['ghost']);
  ack(ads, first, { unsubscribe: ['c1'] });
  const covered = await ads.next();
  t.deepEqual(deltaNamesOf(covered), ['c1'], 'still covered by the wildcard: sent in resources');
  ack(ads, covered, { unsubscribe: ['ghost'] });
  const uncovered = await ads.next();
  t.deepEqual(uncovered.removedResources, ['ghost'], 'not covered: sent in removed_resources');
});

test('R5 Delta deletes by removed_resources', async (t) => {
  const { client, server } = await rig(t);
  const ads = client.delta();
  ads.send(deltaRequest({ node: envoyNode(), typeUrl: TypeUrl.cluster }));
  ack(ads, await ads.next());
  server.setSnapshot(baseInput({ clusters: [edsCluster({ name: 'c1' })], endpoints: [loadAssignment('c1', [{ address: '127.0.0.1', port: 9001 }])] }));
  const removal = await ads.next();
  t.deepEqual(removal.removedResources, ['c2']);
  t.is(removal.resources.length, 0);
});

test('R6 Delta not-found goes in removed_resources and the subscription stays alive', async (t) => {
  const { client, server } = await rig(t);
  const ads = client.delta();
  ads.send(deltaRequest({ node: envoyNode(), typeUrl: TypeUrl.endpoint, resourceNamesSubscribe: ['c9'] }));
  const notFound = await ads.next();
  t.deepEqual(notFound.removedResources, ['c9']);
  ack(ads, notFound);
  const input = baseInput();
  input.clusters?.push(edsCluster({ name: 'c9' }));
  input.endpoints?.push(loadAssignment('c9', [{ address: '127.0.0.1', port: 9009 }]));
  server.setSnapshot(input);
  t.deepEqual(deltaNamesOf(await ads.next()), ['c9']);
});

test('Δ1 reconnect with initial_resource_versions: unchanged not resent, changed resent, gone removed', async (t) => {
  const { client, server } = await rig(t);
  const c1 = server.snapshot().get(TypeUrl.cluster).get('c1')?.version ?? '';
  const ads = client.delta();
  ads.send(deltaRequest({ node: envoyNode(), typeUrl: TypeUrl.cluster, initialResourceVersions: { c1, c2: 'old-version', c7: 'deleted-meanwhile' } }));
  const response = await ads.next();
  t.deepEqual(deltaNamesOf(response), ['c2']);
  t.deepEqual(response.removedResources, ['c7']);
});

test('Δ2 system_version_info is informational: set on responses, never required from clients', async (t) => {
  const { client, server } = await rig(t);
  const ads = client.delta();
  ads.send(deltaRequest({ node: envoyNode(), typeUrl: TypeUrl.cluster }));
  const response = await ads.next();
  t.is(response.systemVersionInfo, server.snapshot().version(TypeUrl.cluster));
  ack(ads, response, { subscribe: ['c1'] });
  t.deepEqual(deltaNamesOf(await ads.next()), ['c1']);
});

test('Δ3 a phantom unsubscribe is ignored', async (t) => {
  const { client } = await rig(t);
  const ads = client.delta();
  ads.send(deltaRequest({ node: envoyNode(), typeUrl: TypeUrl.endpoint, resourceNamesSubscribe: ['c1'] }));
  ack(ads, await ads.next(), { unsubscribe: ['never-subscribed'] });
  await new DeltaProber(ads).expectNothingBefore(t, 'phantom unsubscribe');
  ads.send(deltaRequest({ typeUrl: TypeUrl.endpoint, resourceNamesSubscribe: ['c2'] }));
  t.deepEqual(deltaNamesOf(await ads.next()), ['c2'], 'the stream still works');
});

test('Δ4 an unsubscribe-only request gets no response', async (t) => {
  const { client } = await rig(t);
  const ads = client.delta();
  ads.send(deltaRequest({ node: envoyNode(), typeUrl: TypeUrl.endpoint, resourceNamesSubscribe: ['c1', 'c2'] }));
  ack(ads, await ads.next(), { unsubscribe: ['c2'] });
  await new DeltaProber(ads).expectNothingBefore(t, 'unsubscribe-only');
});

test('Δ5 each resource carries name, a content version and the resource itself', async (t) => {
  const { client, server } = await rig(t);
  const ads = client.delta();
  ads.send(deltaRequest({ node: envoyNode(), typeUrl: TypeUrl.endpoint, resourceNamesSubscribe: ['c1', 'c2'] }));
  const first = await ads.next();
  for (const resource of first.resources) {
    t.truthy(resource.name);
    t.truthy(resource.version);
    t.is(resource.resource?.typeUrl, TypeUrl.endpoint);
  }
  ack(ads, first);
  server.setSnapshot(changedEndpoints());
  const second = await ads.next();
  t.deepEqual(deltaNamesOf(second), ['c1']);
  t.not(second.resources[0]?.version, first.resources.find((r) => r.name === 'c1')?.version);
  const rebuilt = server.setSnapshot(changedEndpoints());
  t.is(rebuilt.get(TypeUrl.endpoint).get('c1')?.version, second.resources[0]?.version, 'same content, same version');
});

test('O1 (Delta) a retired cluster is removed only after routes moved away from it', async (t) => {
  const { client, server } = await rig(t);
  const ads = client.delta();
  ads.send(deltaRequest({ node: envoyNode(), typeUrl: TypeUrl.cluster }));
  ack(ads, await ads.next());
  ads.send(deltaRequest({ typeUrl: TypeUrl.route, resourceNamesSubscribe: ['rc'] }));
  ack(ads, await ads.next());
  server.setSnapshot({
    ...baseInput(),
    clusters: [edsCluster({ name: 'c2' }), edsCluster({ name: 'c3' })],
    endpoints: [loadAssignment('c2', [{ address: '127.0.0.1', port: 9002 }]), loadAssignment('c3', [{ address: '127.0.0.1', port: 9003 }])],
    routes: [routeConfiguration('rc', [{ name: 'all', domains: ['*'], routes: [{ prefix: '/', cluster: 'c3' }] }])],
  });
  const cds = await ads.next();
  t.deepEqual(deltaNamesOf(cds), ['c3']);
  t.deepEqual(cds.removedResources, [], 'c1 not removed yet');
  ack(ads, cds);
  const rds = await ads.next();
  t.is(rds.typeUrl, TypeUrl.route);
  ack(ads, rds);
  const retire = await ads.next();
  t.is(retire.typeUrl, TypeUrl.cluster);
  t.deepEqual(retire.removedResources, ['c1']);
});

test('R5/Δ5 with updateSnapshot (per-type diffs): changes and removals reach Delta clients', async (t) => {
  const { client, server } = await rig(t);
  const cds = client.delta();
  cds.send(deltaRequest({ node: envoyNode('cds'), typeUrl: TypeUrl.cluster }));
  ack(cds, await cds.next());
  const eds = client.delta();
  eds.send(deltaRequest({ node: envoyNode('eds'), typeUrl: TypeUrl.endpoint, resourceNamesSubscribe: ['c1', 'c2'] }));
  ack(eds, await eds.next());
  server.updateSnapshot({ endpoints: [loadAssignment('c1', [{ address: '127.0.0.1', port: 9401 }])] });
  const changed = await eds.next();
  t.deepEqual(deltaNamesOf(changed), ['c1']);
  ack(eds, changed);
  server.updateSnapshot({}, { remove: { cluster: ['c2'], endpoint: ['c2'] } });
  const removal = await cds.next();
  t.deepEqual(removal.removedResources, ['c2']);
  t.deepEqual((await eds.next()).removedResources, ['c2'], 'a subscribed name that disappears is reported removed (R6)');
});
