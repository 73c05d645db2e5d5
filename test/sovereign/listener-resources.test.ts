/**
 * The sovereign listener as Envoy is given it (xds/builders.ts `sovereignListener`): its shape,
 * decoded independently by protobufjs from Envoy's own .proto files (the API tree shipped in
 * @grpc/grpc-js-xds, not our generated code); a snapshot holding it passes the server's Envoy
 * validation and consistency checks; and the broken variants Envoy would refuse are refused before
 * publishing, naming resource and field.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { fromBinary, toBinary } from '@bufbuild/protobuf';
import type { DescMessage, MessageShape } from '@bufbuild/protobuf';
import protobuf from 'protobufjs';
import { isTetherError } from '../../common/errors.js';
import { edsCluster, jwksCluster, loadAssignment, routeConfiguration, sovereignListener, tlsSecret } from '../../xds/builders.js';
import type { SovereignListenerSpec } from '../../xds/builders.js';
import { JwtAuthenticationSchema } from '../../xds/gen/envoy/extensions/filters/http/jwt_authn/v3/config_pb.js';
import { DownstreamTlsContextSchema } from '../../xds/gen/envoy/extensions/transport_sockets/tls/v3/tls_pb.js';
import { ListenerSchema } from '../../xds/gen/envoy/config/listener/v3/listener_pb.js';
import type { Listener } from '../../xds/gen/envoy/config/listener/v3/listener_pb.js';
import { HttpConnectionManagerSchema } from '../../xds/gen/envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager_pb.js';
import { XdsServer } from '../../xds/server.js';
import type { SnapshotInput } from '../../xds/snapshot.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { createTestPki } from '../helpers/pki.js';

failOnLeaks(test);

let sdsInput: SnapshotInput;
test.before(async () => {
  sdsInput = await snapshotWith(sovereignListener(spec()));
});

const JWKS = JSON.stringify({ keys: [{ kty: 'EC', crv: 'P-256', x: 'f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU', y: 'x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0', kid: 'k1' }] });

function spec(overrides: Partial<SovereignListenerSpec> = {}): SovereignListenerSpec {
  return {
    name: 'sovereign',
    address: '127.0.0.1',
    port: 8443,
    routeConfigName: 'sovereign-routes',
    tls: { sdsSecretName: 'customer-cert' },
    jwt: {
      issuer: 'https://idp.customer.example',
      audiences: ['tether-data'],
      jwks: { remote: { uri: 'https://idp.customer.example/jwks.json', cluster: 'customer-idp-jwks', cacheDurationMs: 300_000 } },
      claimToHeaders: [{ claim: 'sub', header: 'x-customer-subject' }],
    },
    rbac: {
      policies: {
        readers: { principals: [{ and: [{ claim: 'roles', includes: 'reader' }, { remoteIp: '10.0.0.0/8' }] }], permissions: [{ pathPrefix: '/data/' }] },
        admins: { principals: [{ claim: 'sub', equals: 'alice' }] },
      },
    },
    ...overrides,
  };
}

async function snapshotWith(listener: Listener, extra: Partial<SnapshotInput> = {}): Promise<SnapshotInput> {
  const pki = await createTestPki();
  const cert = await pki.gatewayCert({ dnsNames: ['data.customer.example'] });
  return {
    listeners: [listener],
    routes: [routeConfiguration('sovereign-routes', [{ name: 'data', domains: ['*'], routes: [{ prefix: '/', cluster: 'data' }] }])],
    clusters: [edsCluster({ name: 'data' }), jwksCluster('customer-idp-jwks', 'https://idp.customer.example/jwks.json')],
    endpoints: [loadAssignment('data', [{ address: '10.1.2.3', port: 8080 }])],
    secrets: [tlsSecret('customer-cert', cert.cert, cert.key)],
    ...extra,
  };
}

/** Envoy's API tree as @grpc/grpc-js-xds ships it, loaded by protobufjs (an independent decoder). */
function envoyProtos(): protobuf.Root {
  const base = path.join('node_modules', '@grpc', 'grpc-js-xds', 'deps');
  const dirs = [...['envoy-api', 'xds', 'protoc-gen-validate', 'googleapis'].map((d) => path.join(base, d)), path.join('node_modules', 'protobufjs')];
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => dirs.map((d) => path.join(d, target)).find((p) => existsSync(p)) ?? target;
  root.loadSync(
    [
      'envoy/config/listener/v3/listener.proto',
      'envoy/extensions/filters/listener/proxy_protocol/v3/proxy_protocol.proto',
      'envoy/extensions/transport_sockets/tls/v3/tls.proto',
      'envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto',
      'envoy/extensions/filters/http/jwt_authn/v3/config.proto',
      'envoy/extensions/filters/http/rbac/v3/rbac.proto',
      'envoy/extensions/filters/http/router/v3/router.proto',
    ],
    { keepCase: true },
  );
  return root;
}

type Json = Record<string, unknown>;

/** Decode with protobufjs, unpacking every `Any` by its type URL (an unknown type throws). */
function decodeDeep(root: protobuf.Root, typeName: string, bytes: Uint8Array): Json {
  const type = root.lookupType(typeName);
  const object = type.toObject(type.decode(bytes), { enums: String, longs: String, bytes: String, defaults: false }) as Json;
  const unpack = (value: unknown): unknown => {
    if (Array.isArray(value)) return value.map(unpack);
    if (typeof value !== 'object' || value === null) return value;
    const record = value as Json;
    if (typeof record.type_url === 'string') {
      // An empty message packs to no bytes, which toObject leaves out.
      const inner = record.type_url.replace(/^type\.googleapis\.com\//, '');
      return { '@type': inner, ...decodeDeep(root, inner, Buffer.from(typeof record.value === 'string' ? record.value : '', 'base64')) };
    }
    return Object.fromEntries(Object.entries(record).map(([k, v]) => [k, unpack(v)]));
  };
  return unpack(object) as Json;
}

function at(value: unknown, ...keys: Array<string | number>): unknown {
  let current = value;
  for (const key of keys) current = (current as Record<string | number, unknown> | undefined)?.[key];
  return current;
}

test('the sovereign listener, decoded by protobufjs from Envoy\'s own protos: PROXY protocol, TLS 1.2+, jwt_authn → rbac → router', (t) => {
  const listener = sovereignListener(spec());
  const json = decodeDeep(envoyProtos(), 'envoy.config.listener.v3.Listener', toBinary(ListenerSchema, listener));
  t.is(at(json, 'listener_filters', 0, 'name'), 'envoy.filters.listener.proxy_protocol');
  t.is(at(json, 'listener_filters', 0, 'typed_config', '@type'), 'envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol');
  t.is(at(json, 'listener_filters', 0, 'typed_config', 'allow_requests_without_proxy_protocol'), undefined, 'PROXY protocol is required');
  const tls = at(json, 'filter_chains', 0, 'transport_socket', 'typed_config');
  t.is(at(tls, '@type'), 'envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext');
  t.is(at(tls, 'common_tls_context', 'tls_params', 'tls_minimum_protocol_version'), 'TLSv1_2');
  t.is(at(tls, 'common_tls_context', 'tls_certificate_sds_secret_configs', 0, 'name'), 'customer-cert');
  t.deepEqual(at(tls, 'common_tls_context', 'tls_certificate_sds_secret_configs', 0, 'sds_config', 'ads'), {});
  const hcm = at(json, 'filter_chains', 0, 'filters', 0, 'typed_config');
  t.is(at(hcm, 'use_remote_address', 'value'), true, 'the client address comes from the connection, not from X-Forwarded-For');
  t.deepEqual((at(hcm, 'http_filters') as Json[]).map((f) => f.name), ['envoy.filters.http.jwt_authn', 'envoy.filters.http.rbac', 'envoy.filters.http.router']);
  const provider = at(hcm, 'http_filters', 0, 'typed_config', 'providers', 'customer-idp');
  t.is(at(provider, 'issuer'), 'https://idp.customer.example');
  t.deepEqual(at(provider, 'audiences'), ['tether-data']);
  t.is(at(provider, 'remote_jwks', 'http_uri', 'cluster'), 'customer-idp-jwks');
  t.is(at(provider, 'remote_jwks', 'cache_duration', 'seconds'), '300');
  t.is(at(provider, 'payload_in_metadata'), 'jwt_payload');
  t.deepEqual(at(provider, 'claim_to_headers'), [{ header_name: 'x-customer-subject', claim_name: 'sub' }]);
  t.is(at(hcm, 'http_filters', 0, 'typed_config', 'rules', 0, 'requires', 'provider_name'), 'customer-idp');
  const readers = at(hcm, 'http_filters', 1, 'typed_config', 'rules', 'policies', 'readers');
  t.is(at(hcm, 'http_filters', 1, 'typed_config', 'rules', 'action'), undefined, 'ALLOW is the default (zero) action');
  const [claim, network] = at(readers, 'principals', 0, 'and_ids', 'ids') as Json[];
  t.is(at(claim, 'metadata', 'filter'), 'envoy.filters.http.jwt_authn');
  t.deepEqual(at(claim, 'metadata', 'path'), [{ key: 'jwt_payload' }, { key: 'roles' }]);
  t.is(at(claim, 'metadata', 'value', 'list_match', 'one_of', 'string_match', 'exact'), 'reader');
  t.deepEqual(at(network, 'remote_ip'), { address_prefix: '10.0.0.0', prefix_len: { value: 8 } });
  t.is(at(readers, 'permissions', 0, 'url_path', 'path', 'prefix'), '/data/');
  t.is(at(hcm, 'http_filters', 2, 'typed_config', '@type'), 'envoy.extensions.filters.http.router.v3.Router');
});

/** Re-encode one HTTP filter's config of the listener's HCM after `edit` changed it. */
function editFilter<Desc extends DescMessage>(listener: Listener, index: number, schema: Desc, edit: (config: MessageShape<Desc>) => void): void {
  const hcmConfig = listener.filterChains[0]?.filters[0]?.configType;
  if (hcmConfig?.case !== 'typedConfig') throw new Error('no HCM');
  const hcm = fromBinary(HttpConnectionManagerSchema, hcmConfig.value.value);
  const filterConfig = hcm.httpFilters[index]?.configType;
  if (filterConfig?.case !== 'typedConfig') throw new Error(`no filter ${index}`);
  const config = fromBinary(schema, filterConfig.value.value);
  edit(config);
  filterConfig.value.value = toBinary(schema, config);
  hcmConfig.value.value = toBinary(HttpConnectionManagerSchema, hcm);
}

test('a snapshot with the sovereign listener passes Envoy validation and the consistency checks (SDS and inline certificate)', async (t) => {
  const server = new XdsServer({ validateFor: ['envoy'] });
  const pki = await createTestPki();
  const cert = await pki.gatewayCert();
  try {
    t.notThrows(() => server.setSnapshot(sdsInput));
    const listener = sovereignListener(spec({ tls: { certificateChainPem: cert.cert, privateKeyPem: cert.key }, jwt: { ...spec().jwt, jwks: { local: JWKS } } }));
    const inline = await snapshotWith(listener, { secrets: [], clusters: [edsCluster({ name: 'data' })] });
    t.notThrows(() => server.setSnapshot(inline), 'no secret and no JWKS cluster needed');
  } finally {
    await server.close();
  }
});

test('refused before publishing: a missing SDS secret or JWKS cluster (inconsistent), and what Envoy itself would refuse', async (t) => {
  const server = new XdsServer({ validateFor: ['envoy'] });
  try {
    const input = await snapshotWith(sovereignListener(spec()), { secrets: [], clusters: [edsCluster({ name: 'data' })] });
    const error = t.throws(() => server.setSnapshot(input));
    t.true(isTetherError(error, 'XDS_SNAPSHOT_INCONSISTENT'));
    t.regex(error?.message ?? '', /listener "sovereign" filter_chains\[0\]\.transport_socket\.typed_config\.common_tls_context\.tls_certificate_sds_secret_configs\[0\]\.name: secret "customer-cert" is not in the snapshot/);
    t.regex(error?.message ?? '', /providers\["customer-idp"\]\.remote_jwks\.http_uri\.cluster: cluster "customer-idp-jwks" is not in the snapshot/);

    const broken = sovereignListener(spec({ jwt: { ...spec().jwt, jwks: { local: '{"keys":[]}' } }, rbac: { policies: { net: { principals: [{ remoteIp: '10.0.0.300/8' }], permissions: [] } } } }));
    editFilter(broken, 0, JwtAuthenticationSchema, (jwt) => {
      const rule = jwt.rules[0];
      if (rule?.requirementType.case === 'requires') rule.requirementType.value.requiresType = { case: 'providerName', value: 'vendor-idp' };
    });
    const invalid = t.throws(() => server.setSnapshot({ ...sdsInput, listeners: [broken] }));
    t.true(isTetherError(invalid, 'XDS_VALIDATION_FAILED'));
    const message = invalid?.message ?? '';
    const hcm = 'listener "sovereign" filter_chains\\[0\\]\\.filters\\[0\\]\\.typed_config';
    t.regex(message, new RegExp(`${hcm}\\.http_filters\\[0\\]\\.typed_config\\.providers\\["customer-idp"\\]\\.local_jwks: is not a JWKS`));
    t.regex(message, new RegExp(`${hcm}\\.http_filters\\[0\\]\\.typed_config\\.rules\\[0\\]\\.requires\\.provider_name: provider "vendor-idp" is not in providers`));
    t.regex(message, new RegExp(`${hcm}\\.http_filters\\[1\\]\\.typed_config\\.rules\\.policies\\["net"\\]\\.permissions: needs at least one permission`));
    t.regex(message, new RegExp(`${hcm}\\.http_filters\\[1\\]\\.typed_config\\.rules\\.policies\\["net"\\]\\.principals\\[0\\]\\.remote_ip\\.address_prefix: "10\\.0\\.0\\.300" is not an IP address literal`));

    const noCertificate = sovereignListener(spec());
    const socket = noCertificate.filterChains[0]?.transportSocket?.configType;
    if (socket?.case !== 'typedConfig') throw new Error('no transport socket');
    const tls = fromBinary(DownstreamTlsContextSchema, socket.value.value);
    if (tls.commonTlsContext !== undefined) tls.commonTlsContext.tlsCertificateSdsSecretConfigs = [];
    socket.value.value = toBinary(DownstreamTlsContextSchema, tls);
    const uncertified = t.throws(() => server.setSnapshot({ ...sdsInput, listeners: [noCertificate] }));
    t.regex(uncertified?.message ?? '', /listener "sovereign" filter_chains\[0\]\.transport_socket\.typed_config\.common_tls_context: a server TLS context needs a certificate/);
  } finally {
    await server.close();
  }
});
