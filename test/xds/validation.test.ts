/** Validation by client kind before publishing, CSDS and metrics. */
import test from 'ava';
import { create } from '@bufbuild/protobuf';
import { failOnLeaks } from '../helpers/leaks.js';
import { envoyNode, grpcNode, namesOf, sotwRequest } from '../helpers/ads-client.js';
import { TypeUrl } from '../../xds/resource-types.js';
import { apiListener, edsCluster, loadAssignment } from '../../xds/builders.js';
import { HCM_TYPE_URL } from '../../xds/references.js';
import { HttpConnectionManagerSchema } from '../../xds/gen/envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager_pb.js';
import { ListenerSchema } from '../../xds/gen/envoy/config/listener/v3/listener_pb.js';
import { toBinary } from '@bufbuild/protobuf';
import { isTetherError } from '../../common/errors.js';
import { UpstreamTlsContextSchema } from '../../xds/gen/envoy/extensions/transport_sockets/tls/v3/tls_pb.js';
import { TransportSocketSchema } from '../../xds/gen/envoy/config/core/v3/base_pb.js';
import { ack, baseInput, rig } from './fixtures.js';

failOnLeaks(test);

/** An API listener whose only HTTP filter is not the router. */
function listenerWithoutRouter(name: string) {
  const hcm = create(HttpConnectionManagerSchema, {
    routeSpecifier: { case: 'rds', value: { routeConfigName: 'rc', configSource: { configSourceSpecifier: { case: 'ads', value: {} } } } },
    httpFilters: [{ name: 'envoy.filters.http.fault', configType: { case: 'typedConfig', value: { typeUrl: 'type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault', value: new Uint8Array() } } }],
  });
  return create(ListenerSchema, { name, apiListener: { apiListener: { typeUrl: HCM_TYPE_URL, value: toBinary(HttpConnectionManagerSchema, hcm) } } });
}

test('a connected gRPC client: a listener it would NACK is refused, naming resource and field', async (t) => {
  const { client, server } = await rig(t, baseInput({ listeners: [apiListener('svc:1', 'rc')] }));
  const grpc = client.sotw();
  grpc.send(sotwRequest({ node: grpcNode(), typeUrl: TypeUrl.listener, resourceNames: ['svc:1'] }));
  ack(grpc, await grpc.next(), ['svc:1']);
  const before = server.snapshot();
  const error = t.throws(() => server.setSnapshot(baseInput({ listeners: [listenerWithoutRouter('svc:1')] })));
  t.true(isTetherError(error, 'XDS_VALIDATION_FAILED'));
  t.regex(error?.message ?? '', /listener "svc:1" api_listener\.api_listener\.http_filters\[0\]: the last HTTP filter must be the router/);
  t.regex(error?.message ?? '', /gRPC clients do not support type\.googleapis\.com\/envoy\.extensions\.filters\.http\.fault\.v3\.HTTPFault/);
  t.is(server.snapshot(), before);
  t.regex(await server.registry.getSingleMetricAsString('tether_xds_snapshots_refused_total'), /reason="invalid"\} 1/);
});

test('gRPC rules apply only to what gRPC clients receive; Envoy-only clients get Envoy rules', async (t) => {
  const leastRequest = baseInput({ clusters: [edsCluster({ name: 'c1' }), edsCluster({ name: 'c2', lbPolicy: 'LEAST_REQUEST' })] });
  const { client, server } = await rig(t);
  const envoy = client.sotw();
  envoy.send(sotwRequest({ node: envoyNode(), typeUrl: TypeUrl.cluster }));
  ack(envoy, await envoy.next());
  t.notThrows(() => server.setSnapshot(leastRequest), 'Envoy supports LEAST_REQUEST');
  const grpc = client.sotw();
  grpc.send(sotwRequest({ node: grpcNode(), typeUrl: TypeUrl.cluster, resourceNames: ['c1'] }));
  t.deepEqual(namesOf(await grpc.next()), ['c1']);
  t.notThrows(() => server.setSnapshot(baseInput({ clusters: [edsCluster({ name: 'c1' }), edsCluster({ name: 'c2', lbPolicy: 'RANDOM' })] })), 'the gRPC client does not read c2');
  const error = t.throws(() => server.setSnapshot(baseInput({ clusters: [edsCluster({ name: 'c1', lbPolicy: 'MAGLEV' }), edsCluster({ name: 'c2' })] })));
  t.regex(error?.message ?? '', /cluster "c1" lb_policy: gRPC clients support ROUND_ROBIN or RING_HASH \(found MAGLEV\)/);
});

test('validateFor holds every snapshot to a kind even before any such client connects', async (t) => {
  const { server } = await rig(t, baseInput(), { validateFor: ['grpc'] });
  const error = t.throws(() => server.setSnapshot(baseInput({ clusters: [edsCluster({ name: 'c1', lbPolicy: 'RANDOM' }), edsCluster({ name: 'c2' })] })));
  t.true(isTetherError(error, 'XDS_VALIDATION_FAILED'));
});

test('Envoy rules: a listener with neither address nor api_listener is refused', async (t) => {
  const { client, server } = await rig(t);
  const envoy = client.sotw();
  envoy.send(sotwRequest({ node: envoyNode(), typeUrl: TypeUrl.listener }));
  ack(envoy, await envoy.next());
  const error = t.throws(() => server.setSnapshot(baseInput({ listeners: [create(ListenerSchema, { name: 'bare' })] })));
  t.regex(error?.message ?? '', /listener "bare" address: a listener needs an address/);
});

test('metrics: clients by kind, responses, ACKs, NACKs, convergence, bytes and resources by type', async (t) => {
  const { client, server } = await rig(t);
  const envoy = client.sotw();
  envoy.send(sotwRequest({ node: envoyNode(), typeUrl: TypeUrl.cluster }));
  const cds = await envoy.next();
  ack(envoy, cds);
  const grpc = client.sotw();
  grpc.send(sotwRequest({ node: grpcNode(), typeUrl: TypeUrl.endpoint, resourceNames: ['c1'] }));
  const eds = await grpc.next();
  grpc.send(sotwRequest({ typeUrl: TypeUrl.endpoint, resourceNames: ['c1'], responseNonce: eds.nonce, errorDetail: { code: 3, message: 'nope' } }));
  // One more round trip on each stream so both requests above were processed.
  envoy.send(sotwRequest({ typeUrl: TypeUrl.secret, resourceNames: ['probe-0'] }));
  await envoy.next();
  grpc.send(sotwRequest({ typeUrl: TypeUrl.secret, resourceNames: ['probe-0'] }));
  await grpc.next();
  const text = await server.registry.metrics();
  t.regex(text, /tether_xds_connected_clients\{kind="envoy"\} 1/);
  t.regex(text, /tether_xds_connected_clients\{kind="grpc"\} 1/);
  t.regex(text, /tether_xds_responses_total\{type="cluster"\} 1/);
  t.regex(text, /tether_xds_acks_total\{type="cluster"\} 1/);
  t.regex(text, /tether_xds_nacks_total\{type="endpoint"\} 1/);
  t.regex(text, /tether_xds_convergence_seconds_count\{type="cluster"\} 1/);
  t.regex(text, /tether_xds_sent_resources_total\{type="cluster"\} 2/);
  const bytes = Number(/tether_xds_sent_bytes_total\{type="cluster"\} (\d+)/.exec(text)?.[1]);
  t.true(bytes > 50, `cluster bytes ${bytes}`);
  envoy.close();
  grpc.close();
  await Promise.all([envoy.closed, grpc.closed]);
  for (let i = 0; i < 100 && server.sessionCount > 0; i += 1) await new Promise<void>((resolve) => setTimeout(resolve, 10));
  t.regex(await server.registry.getSingleMetricAsString('tether_xds_connected_clients'), /kind="envoy"\} 0/);
});

test('CSDS over gRPC: per client what it ACKed, what it NACKed and why', async (t) => {
  const { client } = await rig(t);
  const good = client.sotw();
  good.send(sotwRequest({ node: envoyNode('good'), typeUrl: TypeUrl.cluster }));
  ack(good, await good.next());
  const bad = client.sotw();
  bad.send(sotwRequest({ node: envoyNode('bad'), typeUrl: TypeUrl.cluster }));
  const response = await bad.next();
  bad.send(sotwRequest({ typeUrl: TypeUrl.cluster, responseNonce: response.nonce, errorDetail: { code: 3, message: 'cluster c2: unsupported field' } }));
  for (const stream of [good, bad]) {
    stream.send(sotwRequest({ typeUrl: TypeUrl.secret, resourceNames: ['probe-0'] }));
    await stream.next();
  }
  const all = await client.csds();
  const byNode = new Map(all.config.map((c) => [c.node?.id, c]));
  const goodC2 = byNode.get('good')?.genericXdsConfigs.find((g) => g.name === 'c2' && g.typeUrl === TypeUrl.cluster);
  const badC2 = byNode.get('bad')?.genericXdsConfigs.find((g) => g.name === 'c2' && g.typeUrl === TypeUrl.cluster);
  t.is(goodC2?.clientStatus, 3, 'ACKED');
  t.is(goodC2?.configStatus, 1, 'SYNCED');
  t.truthy(goodC2?.xdsConfig?.value.length);
  t.is(badC2?.clientStatus, 4, 'NACKED');
  t.is(badC2?.configStatus, 4, 'ERROR');
  t.is(badC2?.errorState?.details, 'cluster c2: unsupported field');
  const only = await client.csds('bad');
  t.deepEqual(only.config.map((c) => c.node?.id), ['bad']);
});

test('updateSnapshot encodes only what changed, keeps the rest shared, and is checked like setSnapshot', async (t) => {
  const { client, server } = await rig(t);
  const ads = client.sotw();
  ads.send(sotwRequest({ node: envoyNode(), typeUrl: TypeUrl.endpoint, resourceNames: ['c1', 'c2'] }));
  ack(ads, await ads.next(), ['c1', 'c2']);
  const before = server.snapshot();
  const after = server.updateSnapshot({ endpoints: [loadAssignment('c2', [{ address: '127.0.0.1', port: 9902 }])] });
  t.is(after.get(TypeUrl.cluster), before.get(TypeUrl.cluster), 'untouched types keep their map');
  t.is(after.get(TypeUrl.endpoint).get('c1'), before.get(TypeUrl.endpoint).get('c1'), 'untouched resources keep their encoding');
  t.not(after.get(TypeUrl.endpoint).get('c2')?.version, before.get(TypeUrl.endpoint).get('c2')?.version);
  t.deepEqual(namesOf(await ads.next()), ['c2']);
  const error = t.throws(() => server.updateSnapshot({}, { remove: { endpoint: ['c1'] } }));
  t.true(isTetherError(error, 'XDS_SNAPSHOT_INCONSISTENT'));
  t.is(server.snapshot(), after);
});

test('a client kind that subscribes after publication is validated when served: counted and logged by resource', async (t) => {
  const { client, server } = await rig(t, baseInput({ clusters: [edsCluster({ name: 'c1', lbPolicy: 'MAGLEV' }), edsCluster({ name: 'c2' })] }));
  const grpc = client.sotw();
  grpc.send(sotwRequest({ node: grpcNode(), typeUrl: TypeUrl.cluster, resourceNames: ['c1', 'c2'] }));
  t.deepEqual(namesOf(await grpc.next()), ['c1', 'c2']);
  t.regex(await server.registry.getSingleMetricAsString('tether_xds_served_invalid_total'), /kind="grpc",type="cluster"\} 1/);
});

test('gRPC TLS rules: SDS certificates in a cluster a gRPC client reads are refused, naming the field', async (t) => {
  const { client, server } = await rig(t);
  const grpc = client.sotw();
  grpc.send(sotwRequest({ node: grpcNode(), typeUrl: TypeUrl.cluster, resourceNames: ['c1'] }));
  ack(grpc, await grpc.next(), ['c1']);
  const tls = create(UpstreamTlsContextSchema, { commonTlsContext: { tlsCertificateSdsSecretConfigs: [{ name: 'client-cert' }] } });
  const withSds = edsCluster({ name: 'c1' });
  withSds.transportSocket = create(TransportSocketSchema, {
    name: 'envoy.transport_sockets.tls',
    configType: { case: 'typedConfig', value: { typeUrl: 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext', value: toBinary(UpstreamTlsContextSchema, tls) } },
  });
  const error = t.throws(() => server.setSnapshot(baseInput({ clusters: [withSds, edsCluster({ name: 'c2' })] })));
  t.regex(error?.message ?? '', /cluster "c1" transport_socket\.typed_config\.common_tls_context\.tls_certificate_sds_secret_configs: gRPC clients do not use SDS/);
  t.regex(error?.message ?? '', /ca_certificate_provider_instance: gRPC clients require a CA certificate provider instance/);
});
