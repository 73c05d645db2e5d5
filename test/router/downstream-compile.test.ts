/**
 * The router's compilation of a listener's downstream security (agent/router/downstream.ts and its
 * parts): refused as before for a router behind the tunnel, compiled for the sovereign front;
 * NACK reasons with field paths; RBAC decisions on claims, networks and paths; the PROXY protocol
 * parser on v1 and v2 headers, partial input and garbage.
 */
import test from 'ava';
import { create, toBinary } from '@bufbuild/protobuf';
import { AnySchema } from '@bufbuild/protobuf/wkt';
import { exportJWK, generateKeyPair } from 'jose';
import { compileListener } from '../../agent/router/compile.js';
import type { CompiledListener } from '../../agent/router/compile.js';
import type { HttpSecurityFilter } from '../../agent/router/downstream.js';
import { compileSecret } from '../../agent/router/downstream-tls.js';
import { V2_SIGNATURE, parseProxyHeader } from '../../agent/router/proxy-protocol.js';
import type { RbacRequest } from '../../agent/router/rbac.js';
import { sovereignListener, tlsSecret } from '../../xds/builders.js';
import type { SovereignListenerSpec } from '../../xds/builders.js';
import { ListenerFilterSchema } from '../../xds/gen/envoy/config/listener/v3/listener_components_pb.js';
import { TlsParameters_TlsProtocol } from '../../xds/gen/envoy/extensions/transport_sockets/tls/v3/common_pb.js';
import { DownstreamTlsContextSchema } from '../../xds/gen/envoy/extensions/transport_sockets/tls/v3/tls_pb.js';
import { DOWNSTREAM_TLS_TYPE_URL } from '../../xds/references.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { createTestPki } from '../helpers/pki.js';
import type { TlsMaterial } from '../helpers/pki.js';

failOnLeaks(test);

let cert: TlsMaterial;
let jwks: string;

test.before(async () => {
  cert = await (await createTestPki()).gatewayCert();
  const { publicKey } = await generateKeyPair('ES256');
  jwks = JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' }] });
});

function spec(overrides: Partial<SovereignListenerSpec> = {}): SovereignListenerSpec {
  return {
    name: 'sovereign',
    address: '127.0.0.1',
    port: 0,
    routeConfigName: 'rc',
    tls: { certificateChainPem: cert.cert, privateKeyPem: cert.key },
    jwt: { issuer: 'https://idp.test', audiences: ['data'], jwks: { local: jwks }, claimToHeaders: [{ claim: 'sub', header: 'x-sub' }] },
    rbac: {
      policies: {
        readers: { principals: [{ and: [{ claim: 'roles', includes: 'reader' }, { remoteIp: '10.0.0.0/8' }] }], permissions: [{ pathPrefix: '/data/' }] },
        admin: { principals: [{ claim: 'sub', equals: 'alice' }] },
        lb: { principals: [{ and: [{ directRemoteIp: '192.168.7.0/24' }, { claim: ['org', 'name'], equals: 'acme' }] }], permissions: [{ path: '/exact' }] },
      },
    },
    ...overrides,
  };
}

function problemsOf(listener: ReturnType<typeof sovereignListener>, downstream: boolean): string[] {
  const compiled = compileListener(listener, { downstream });
  return compiled.ok ? [] : compiled.problems.map((p) => `${p.field}: ${p.message}`);
}

function compiled(overrides: Partial<SovereignListenerSpec> = {}): CompiledListener {
  const result = compileListener(sovereignListener(spec(overrides)), { downstream: true });
  if (!result.ok) throw new Error(result.problems.map((p) => `${p.field}: ${p.message}`).join('; '));
  return result.value;
}

const HCM = 'filter_chains[0].filters[0].typed_config';

test('a router behind the tunnel keeps refusing PROXY protocol, downstream TLS, jwt_authn and rbac (nothing would apply them)', (t) => {
  t.deepEqual(problemsOf(sovereignListener(spec()), false), ['listener_filters: unsupported', 'filter_chains[0].transport_socket: unsupported']);
  const plain = sovereignListener(spec());
  plain.listenerFilters = [];
  const chain = plain.filterChains[0];
  if (chain !== undefined) chain.transportSocket = undefined;
  t.deepEqual(problemsOf(plain, false), [
    `${HCM}.http_filters[0].typed_config: type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication unsupported`,
    `${HCM}.http_filters[1].typed_config: type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC unsupported`,
  ]);
});

test('the sovereign front compiles address, PROXY protocol, TLS 1.2+, jwt_authn and rbac in order', (t) => {
  const listener = compiled();
  const downstream = listener.downstream;
  if (downstream === null) return t.fail('no downstream part');
  t.deepEqual(downstream.address, { host: '127.0.0.1', port: 0 });
  t.deepEqual(downstream.proxyProtocol, { required: true, v1: true, v2: true });
  t.is(downstream.tls.minVersion, 'TLSv1.2');
  t.is(downstream.tls.maxVersion, 'TLSv1.3');
  t.deepEqual(downstream.tls.alpn, ['http/1.1'], 'h2 is listed for Envoy; the built-in front offers HTTP/1.1');
  t.deepEqual(downstream.tls.certificate, { cert: cert.cert, key: cert.key });
  t.deepEqual(downstream.filters.map((f: HttpSecurityFilter) => `${f.kind}:${f.name}`), ['jwt_authn:envoy.filters.http.jwt_authn', 'rbac:envoy.filters.http.rbac']);
  t.is(listener.rds, 'rc');
  t.deepEqual(compiled({ tls: { sdsSecretName: 'customer-cert' }, disallowProxyVersions: ['V1'] }).downstream?.tls.certificate, { sds: 'customer-cert' });
  t.deepEqual(compiled({ disallowProxyVersions: ['V1'] }).downstream?.proxyProtocol, { required: true, v1: false, v2: true });
});

test('NACK reasons name the field: a public or wildcard address, another listener filter, TLS below 1.2, no TLS, weak token rules, symmetric keys, unknown metadata', (t) => {
  t.deepEqual(problemsOf(sovereignListener(spec({ address: '0.0.0.0' })), true), ['address.socket_address.address: "0.0.0.0" is not a loopback or in-cluster (private) address']);
  t.deepEqual(problemsOf(sovereignListener(spec({ address: '203.0.113.9' })), true), ['address.socket_address.address: "203.0.113.9" is not a loopback or in-cluster (private) address']);
  t.deepEqual(problemsOf(sovereignListener(spec({ address: '10.2.3.4' })), true), [], 'an in-cluster address is fine');

  const inspector = sovereignListener(spec());
  inspector.listenerFilters.push(create(ListenerFilterSchema, { name: 'envoy.filters.listener.tls_inspector' }));
  t.deepEqual(problemsOf(inspector, true), ['listener_filters[1]: envoy.filters.listener.tls_inspector unsupported (only envoy.filters.listener.proxy_protocol)']);

  const old = sovereignListener(spec());
  const chain = old.filterChains[0];
  if (chain === undefined) return t.fail('no chain');
  const tls = create(DownstreamTlsContextSchema, {
    commonTlsContext: {
      tlsParams: { tlsMinimumProtocolVersion: TlsParameters_TlsProtocol.TLSv1_1 },
      tlsCertificates: [{ certificateChain: { specifier: { case: 'inlineString', value: cert.cert } }, privateKey: { specifier: { case: 'inlineString', value: cert.key } } }],
    },
  });
  chain.transportSocket = { $typeName: 'envoy.config.core.v3.TransportSocket', name: 'tls', configType: { case: 'typedConfig', value: create(AnySchema, { typeUrl: DOWNSTREAM_TLS_TYPE_URL, value: toBinary(DownstreamTlsContextSchema, tls) }) } };
  t.deepEqual(problemsOf(old, true), ['filter_chains[0].transport_socket.typed_config.common_tls_context.tls_params.tls_minimum_protocol_version: TLSv1_1 refused (TLSv1_2 or later)']);
  chain.transportSocket = undefined;
  t.deepEqual(problemsOf(old, true), ['filter_chains[0].transport_socket: is required (the sovereign front serves TLS only)']);

  const jwt = `${HCM}.http_filters[0].typed_config.providers["customer-idp"]`;
  t.deepEqual(problemsOf(sovereignListener(spec({ jwt: { ...spec().jwt, audiences: [], clockSkewSeconds: 300 } })), true), [
    `${jwt}.audiences: at least one audience is required`,
    `${jwt}.clock_skew_seconds: 300 is more than the 60 s allowed`,
  ]);
  const oct = JSON.stringify({ keys: [{ kty: 'oct', k: 'c2VjcmV0', kid: 'shared' }] });
  t.deepEqual(problemsOf(sovereignListener(spec({ jwt: { ...spec().jwt, jwks: { local: oct } } })), true), [
    `${jwt}.local_jwks: key "shared" refused: only asymmetric keys (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA, Ed25519)`,
  ]);
  t.deepEqual(problemsOf(sovereignListener(spec({ jwt: { ...spec().jwt, jwks: { remote: { uri: 'http://idp.example/jwks', cluster: 'idp' } } } })), true), [
    `${jwt}.remote_jwks.http_uri.uri: "http://idp.example/jwks" must be https (plain http only to a loopback address)`,
  ]);
  // A provider that stores no payload: every claim principal reads metadata that never exists.
  const unread = problemsOf(sovereignListener(spec({ jwt: { ...spec().jwt, payloadInMetadata: '' } })), true);
  t.is(unread.length, 3);
  t.regex(unread[0] ?? '', /policies\["admin"\]\.principals\[0\]\.metadata\.path\[0\]\.key: "" is not the payload_in_metadata of a jwt_authn provider that runs before this filter/);
});

test('SDS secrets: a certificate and key that load are compiled; a mismatched pair is NACKed', async (t) => {
  const ok = compileSecret(tlsSecret('customer-cert', cert.cert, cert.key));
  t.true(ok.ok);
  const other = await (await createTestPki()).gatewayCert();
  const bad = compileSecret(tlsSecret('customer-cert', cert.cert, other.key));
  t.false(bad.ok);
  if (!bad.ok) t.regex(`${bad.problems[0]?.field}: ${bad.problems[0]?.message}`, /^tls_certificate: certificate and key do not load/);
});

function rbacOf(listener: CompiledListener) {
  const filter = listener.downstream?.filters.find((f) => f.kind === 'rbac');
  if (filter?.kind !== 'rbac') throw new Error('no rbac');
  return filter.config;
}

function ask(path: string, remoteIp: string, payload: Record<string, unknown> | null, directRemoteIp = '127.0.0.1'): RbacRequest {
  return {
    request: { method: 'GET', path, authority: 'data', headers: {} },
    path,
    remoteIp,
    directRemoteIp,
    jwtPayloads: payload === null ? new Map() : new Map([['jwt_payload', payload]]),
  };
}

test('RBAC decisions: claim in a list AND client network, exact claim, nested claim AND load-balancer network, path permissions', (t) => {
  const rbac = rbacOf(compiled());
  t.is(rbac.action, 'ALLOW');
  t.deepEqual(rbac.decide(ask('/data/x', '10.1.2.3', { roles: ['reader', 'x'] })), { allowed: true, policy: 'readers' });
  t.deepEqual(rbac.decide(ask('/data/x', '::ffff:10.1.2.3', { roles: ['reader'] })), { allowed: true, policy: 'readers' }, 'IPv4-mapped client addresses');
  t.false(rbac.decide(ask('/data/x', '192.0.2.1', { roles: ['reader'] })).allowed, 'outside the allowed network');
  t.false(rbac.decide(ask('/data/x', '10.1.2.3', { roles: ['writer'] })).allowed, 'without the role');
  t.false(rbac.decide(ask('/data/x', '10.1.2.3', { roles: 'reader' })).allowed, 'a string is not a list');
  t.false(rbac.decide(ask('/other', '10.1.2.3', { roles: ['reader'] })).allowed, 'the permission is /data/ only');
  t.false(rbac.decide(ask('/data/x', '10.1.2.3', null)).allowed, 'no verified token, no claims');
  t.deepEqual(rbac.decide(ask('/anything', '192.0.2.1', { sub: 'alice' })), { allowed: true, policy: 'admin' });
  t.deepEqual(rbac.decide(ask('/exact', '192.0.2.1', { org: { name: 'acme' } }, '192.168.7.20')), { allowed: true, policy: 'lb' });
  t.false(rbac.decide(ask('/exact', '192.0.2.1', { org: { name: 'acme' } }, '192.168.8.20')).allowed, 'the load balancer is not the expected peer');
  const deny = rbacOf(compiled({ rbac: { action: 'DENY', policies: { blocked: { principals: [{ remoteIp: '10.9.0.0/16' }] } } } }));
  t.deepEqual(deny.decide(ask('/', '10.9.1.1', null)), { allowed: false, policy: 'blocked' });
  t.deepEqual(deny.decide(ask('/', '10.8.1.1', null)), { allowed: true, policy: null });
});

test('PROXY protocol parser: v1 TCP4/TCP6/UNKNOWN, v2 IPv4/IPv6/LOCAL/UNSPEC with TLVs, partial input, and refusals', (t) => {
  const v1 = parseProxyHeader(Buffer.from('PROXY TCP4 192.0.2.10 10.0.0.1 51234 443\r\nGET'));
  t.deepEqual(v1, { state: 'done', header: { version: 1, command: 'PROXY', source: { address: '192.0.2.10', port: 51234 }, destination: { address: '10.0.0.1', port: 443 }, length: 42 } });
  const v16 = parseProxyHeader(Buffer.from('PROXY TCP6 2001:db8::1 ::1 1 65535\r\n'));
  t.is(v16.state === 'done' ? v16.header.source?.address : null, '2001:db8::1');
  t.deepEqual(parseProxyHeader(Buffer.from('PROXY UNKNOWN ffff::1 ::1 1 2\r\n')), { state: 'done', header: { version: 1, command: 'UNKNOWN', source: null, destination: null, length: 31 } });
  t.deepEqual(parseProxyHeader(Buffer.from('PROXY TCP4 192.0.2.10 10.0.0.1 51234')), { state: 'incomplete' });
  t.deepEqual(parseProxyHeader(Buffer.from('PRO')), { state: 'incomplete' });
  t.is(parseProxyHeader(Buffer.from('PROXY TCP4 192.0.2.10 10.0.0.1 051234 443\r\n')).state, 'invalid', 'leading zero port');
  t.is(parseProxyHeader(Buffer.from('PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n')).state, 'invalid', 'family mismatch');
  t.is(parseProxyHeader(Buffer.from(`PROXY TCP4 ${'1'.repeat(120)}`)).state, 'invalid', 'no CRLF within 107 bytes');
  t.deepEqual(parseProxyHeader(Buffer.from([0x16, 0x03, 0x01, 0x00])), { state: 'absent' }, 'a TLS ClientHello is not a PROXY header');
  t.deepEqual(parseProxyHeader(Buffer.from('GET / HTTP/1.1\r\n')), { state: 'absent' });

  const v2 = (command: number, family: number, body: Buffer): Buffer => {
    const head = Buffer.alloc(16);
    V2_SIGNATURE.copy(head);
    head[12] = 0x20 | command;
    head[13] = family;
    head.writeUInt16BE(body.length, 14);
    return Buffer.concat([head, body]);
  };
  const tlv = Buffer.from([0x04, 0x00, 0x02, 0xaa, 0xbb]); // PP2_TYPE_NOOP, 2 bytes
  const ipv4 = Buffer.concat([Buffer.from([203, 0, 113, 7, 10, 0, 0, 1]), Buffer.from([0xc3, 0x50, 0x01, 0xbb]), tlv]);
  const parsed = parseProxyHeader(Buffer.concat([v2(1, 0x11, ipv4), Buffer.from([0x16, 0x03])]));
  t.deepEqual(parsed, { state: 'done', header: { version: 2, command: 'PROXY', source: { address: '203.0.113.7', port: 50000 }, destination: { address: '10.0.0.1', port: 443 }, length: 16 + 17 } });
  const six = Buffer.alloc(36);
  Buffer.from('20010db8000000000000000000000042', 'hex').copy(six, 0);
  six[31] = 1;
  six.writeUInt16BE(1234, 32);
  six.writeUInt16BE(443, 34);
  const p6 = parseProxyHeader(v2(1, 0x21, six));
  t.deepEqual(p6.state === 'done' ? [p6.header.source, p6.header.destination] : null, [{ address: '2001:db8::42', port: 1234 }, { address: '::1', port: 443 }]);
  t.deepEqual(parseProxyHeader(v2(0, 0x00, Buffer.alloc(0))), { state: 'done', header: { version: 2, command: 'LOCAL', source: null, destination: null, length: 16 } });
  t.deepEqual(parseProxyHeader(v2(1, 0x00, Buffer.alloc(0))), { state: 'done', header: { version: 2, command: 'PROXY', source: null, destination: null, length: 16 } });
  t.deepEqual(parseProxyHeader(v2(1, 0x11, ipv4).subarray(0, 20)), { state: 'incomplete' });
  t.deepEqual(parseProxyHeader(V2_SIGNATURE.subarray(0, 5)), { state: 'incomplete' });
  t.is(parseProxyHeader(v2(1, 0x12, ipv4)).state, 'invalid', 'UDP is refused');
  t.is(parseProxyHeader(v2(1, 0x31, Buffer.alloc(216))).state, 'invalid', 'AF_UNIX is refused');
  t.is(parseProxyHeader(v2(2, 0x11, ipv4)).state, 'invalid', 'unknown command');
  t.is(parseProxyHeader(v2(1, 0x11, Buffer.alloc(8))).state, 'invalid', 'shorter than its addresses');
  const huge = v2(1, 0x11, Buffer.alloc(5000));
  t.is(parseProxyHeader(huge.subarray(0, 16)).state, 'invalid', 'declared length above the cap is refused before it is read');
  const badVersion = v2(1, 0x11, ipv4);
  badVersion[12] = 0x11;
  t.is(parseProxyHeader(badVersion).state, 'invalid');
});
