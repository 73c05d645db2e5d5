/** TTLs and heartbeats (T1), gated by the client's advertised features (T2). */
import test from 'ava';
import { fromBinary } from '@bufbuild/protobuf';
import { failOnLeaks } from '../helpers/leaks.js';
import { deltaRequest, envoyNode, nameOfAny, sotwRequest } from '../helpers/ads-client.js';
import { TypeUrl } from '../../xds/resource-types.js';
import { ResourceSchema } from '../../xds/gen/envoy/service/discovery/v3/discovery_pb.js';
import { FEATURE_RESOURCE_IN_SOTW, FEATURE_TTL } from '../../xds/stream-session.js';
import { RESOURCE_WRAPPER_TYPE_URL } from '../../xds/snapshot.js';
import type { Any } from '@bufbuild/protobuf/wkt';
import { ack, baseInput, rig } from './fixtures.js';

failOnLeaks(test);

const withTtl = (ttlMs: number) => baseInput({ ttl: [{ kind: 'cluster', name: 'c1', ttlMs }] });
const node = (id: string, features: string[]) => ({ ...envoyNode(id), clientFeatures: features });

function unwrap(any: Any) {
  return fromBinary(ResourceSchema, any.value);
}

test('T1 SotW: TTL resources are wrapped with their TTL, refreshed by heartbeats, and resent plain when the TTL is removed', async (t) => {
  const { client, server } = await rig(t, withTtl(300));
  const ads = client.sotw();
  ads.send(sotwRequest({ node: node('ttl', [FEATURE_TTL, FEATURE_RESOURCE_IN_SOTW]), typeUrl: TypeUrl.cluster }));
  const first = await ads.next();
  const wrapped = first.resources.find((r) => r.typeUrl === RESOURCE_WRAPPER_TYPE_URL);
  t.truthy(wrapped);
  const resource = unwrap(wrapped!);
  t.is(resource.name, 'c1');
  t.is(resource.ttl?.nanos, 300_000_000);
  t.is(resource.resource?.typeUrl, TypeUrl.cluster);
  t.deepEqual(first.resources.filter((r) => r.typeUrl === TypeUrl.cluster).map(nameOfAny), ['c2']);
  ack(ads, first);
  const heartbeat = await ads.next();
  t.is(heartbeat.versionInfo, first.versionInfo, 'a heartbeat is not a new version');
  t.deepEqual(heartbeat.resources.map((r) => r.typeUrl), [RESOURCE_WRAPPER_TYPE_URL]);
  const beat = unwrap(heartbeat.resources[0]!);
  t.is(beat.name, 'c1');
  t.is(beat.version, resource.version);
  t.is(beat.resource, undefined, 'heartbeats carry no payload');
  ack(ads, heartbeat);
  server.setSnapshot(baseInput());
  const plain = await ads.next();
  t.true(plain.resources.every((r) => r.typeUrl === TypeUrl.cluster), 'TTL removed: resent without it');
  t.deepEqual(plain.resources.map(nameOfAny).sort(), ['c1', 'c2'], 'CDS carries the full set');
});

test('T1 Delta: Resource.ttl is set and heartbeats omit the resource', async (t) => {
  const { client } = await rig(t, withTtl(200));
  const ads = client.delta();
  ads.send(deltaRequest({ node: node('ttl-delta', [FEATURE_TTL]), typeUrl: TypeUrl.cluster }));
  const first = await ads.next();
  const c1 = first.resources.find((r) => r.name === 'c1');
  t.is(c1?.ttl?.nanos, 200_000_000);
  t.is(first.resources.find((r) => r.name === 'c2')?.ttl, undefined);
  ads.send(deltaRequest({ typeUrl: TypeUrl.cluster, responseNonce: first.nonce }));
  const heartbeat = await ads.next();
  t.deepEqual(heartbeat.resources.map((r) => [r.name, r.version, r.resource === undefined]), [['c1', c1?.version, true]]);
});

test('T2 client features gate TTLs: none without supports-resource-ttl; SotW also needs resource-in-sotw', async (t) => {
  const { client } = await rig(t, withTtl(300));
  for (const features of [[], [FEATURE_TTL]]) {
    const ads = client.sotw();
    ads.send(sotwRequest({ node: node(`f-${features.length}`, features), typeUrl: TypeUrl.cluster }));
    const response = await ads.next();
    t.true(response.resources.every((r) => r.typeUrl === TypeUrl.cluster), `features ${features.join(',') || 'none'}`);
  }
  const delta = client.delta();
  delta.send(deltaRequest({ node: node('plain-delta', []), typeUrl: TypeUrl.cluster }));
  const response = await delta.next();
  t.true(response.resources.every((r) => r.ttl === undefined));
});
