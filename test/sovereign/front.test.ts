/**
 * The sovereign front (agent/router/sovereign-front.ts) configured over xDS by the sovereign
 * listener, against a real xDS server, real TLS, real ES256 tokens from a JWKS endpoint, and a
 * client that writes its own PROXY headers (the HAProxy tests put a real load balancer in front):
 * who gets through, who is refused with which status and code, what the upstream receives, what
 * the access log says, which connections are closed before TLS, and how the certificate follows SDS.
 */
import { createHmac } from 'node:crypto';
import * as net from 'node:net';
import * as tls from 'node:tls';
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { generateKeyPair } from 'jose';
import { failOnLeaks } from '../helpers/leaks.js';
import { AUDIENCE, ISSUER, listenerSpec, proxyV1, proxyV2, signWith, sovereignRequest, sovereignSnapshot, startSovereign } from './fixtures.js';
import type { Echo, SovereignRig } from './fixtures.js';
import { freePort } from './haproxy.js';

failOnLeaks(test);

const CLIENT = { address: '10.20.30.40', port: 40_001 };
const LB_FRONTEND = { address: '10.0.0.1', port: 443 };

async function withRig(t: ExecutionContext, run: (rig: SovereignRig) => Promise<void>, options: Parameters<typeof startSovereign>[0] = {}): Promise<void> {
  const rig = await startSovereign(options);
  try {
    await run(rig);
  } finally {
    await rig.close();
  }
  t.pass();
}

function codeOf(headers: Record<string, unknown>): string {
  return String(headers['tether-error'] ?? '');
}

test('a valid token from an allowed network reaches the upstream: token stripped, subject header set, client address from PROXY protocol in the access log', (t) =>
  withRig(t, async (rig) => {
    const token = await rig.idp.mint();
    const reply = await sovereignRequest(rig.port, rig.certificate.ca, {
      preamble: proxyV1(CLIENT, LB_FRONTEND),
      headers: { authorization: `Bearer ${token}`, 'x-customer-subject': 'forged', 'x-forwarded-for': '198.51.100.1' },
    });
    t.is(reply.status, 200);
    const echo = JSON.parse(reply.body) as Echo;
    t.is(echo.path, '/data/x');
    t.is(echo.headers.authorization, undefined, 'forward: false removes the verified token');
    t.is(echo.headers['x-customer-subject'], 'alice', 'claim_to_headers replaces what the client sent');
    t.is(echo.headers['x-forwarded-for'], '198.51.100.1, 10.20.30.40', 'the PROXY source is appended, as Envoy with use_remote_address');
    const record = await rig.access((r) => r.stage === 'request' && r.status === 200, 'the 200');
    t.deepEqual(record.client, CLIENT);
    t.is(record.peer.address, '127.0.0.1');
    t.is(record.proxy, 1);
    t.regex(record.tls ?? '', /^TLSv1\.[23]$/);
    t.is(record.subject, 'alice');
    t.is(record.issuer, ISSUER);
    t.is(record.policy, 'readers');
    t.is(record.cluster, 'data');
    t.is(record.code, 'OK');

    const v2 = await sovereignRequest(rig.port, rig.certificate.ca, { preamble: proxyV2({ address: '10.9.8.7', port: 5555 }, LB_FRONTEND), headers: { authorization: `Bearer ${token}` } });
    t.is(v2.status, 200);
    t.deepEqual((await rig.access((r) => r.proxy === 2, 'the v2 request')).client, { address: '10.9.8.7', port: 5555 });
    t.is(rig.idp.fetches, 1, 'the remote JWKS is cached for cache_duration');
    const lookups = await rig.front.registry.getSingleMetricAsString('tether_sovereign_jwt_cache_lookups_total');
    t.regex(lookups, /result="miss"\} 1$/m, 'the first request verified the token (jwt_cache_config is on by default)');
    t.regex(lookups, /result="hit"\} 1$/m, 'the second found it verified');
  }));

test('refusals: no token 401, expired 401, wrong audience 401, foreign issuer 401, HMAC 401, no role 403, outside the networks 403; each with its code and metric', (t) =>
  withRig(t, async (rig) => {
    const ask = (headers: Record<string, string>, source = CLIENT, path = '/data/x') => sovereignRequest(rig.port, rig.certificate.ca, { preamble: proxyV1(source, LB_FRONTEND), headers, path });
    const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

    const none = await ask({});
    t.is(none.status, 401);
    t.is(codeOf(none.headers), 'UNAUTHENTICATED');
    t.regex(String(none.headers['www-authenticate']), /^Bearer/);
    const expired = await ask(bearer(await rig.idp.mint({}, { expiresInSec: -120 })));
    t.is(expired.status, 401);
    t.is(codeOf(expired.headers), 'TOKEN_EXPIRED');
    const audience = await ask(bearer(await rig.idp.mint({}, { audience: 'another-service' })));
    t.is(audience.status, 401);
    t.is(codeOf(audience.headers), 'TOKEN_WRONG_AUDIENCE');
    const early = await ask(bearer(await rig.idp.mint({}, { notBeforeSec: 600 })));
    t.is(codeOf(early.headers), 'TOKEN_NOT_YET_VALID');

    // A token the vendor's control plane could mint: its own key and issuer, right audience and role.
    const { privateKey: vendorKey } = await generateKeyPair('ES256');
    const vendor = await ask(bearer(await signWith(vendorKey, 'control-1', { sub: 'vendor-admin', roles: ['reader'] }, { issuer: 'https://control.tether.example', audience: AUDIENCE })));
    t.is(vendor.status, 401);
    t.is(codeOf(vendor.headers), 'TOKEN_WRONG_ISSUER');
    const forgedKid = await ask(bearer(await signWith(vendorKey, 'customer-1', { sub: 'alice', roles: ['reader'] }, { issuer: ISSUER, audience: AUDIENCE })));
    t.is(codeOf(forgedKid.headers), 'TOKEN_BAD_SIGNATURE', 'the customer issuer and kid, signed with another key');
    const secret = new Uint8Array(createHmac('sha256', 'k').update('x').digest());
    const hmac = await ask(bearer(await signWith(secret, 'customer-1', { sub: 'alice', roles: ['reader'] }, { issuer: ISSUER, audience: AUDIENCE, alg: 'HS256' })));
    t.is(codeOf(hmac.headers), 'TOKEN_ALG_NOT_ALLOWED');
    const unsigned = `${Buffer.from('{"alg":"none"}').toString('base64url')}.${Buffer.from(JSON.stringify({ iss: ISSUER, aud: AUDIENCE, sub: 'alice', exp: 4e9 })).toString('base64url')}.`;
    t.is(codeOf((await ask(bearer(unsigned))).headers), 'TOKEN_ALG_NOT_ALLOWED');

    const writer = await ask(bearer(await rig.idp.mint({ roles: ['writer'] })));
    t.is(writer.status, 403);
    t.is(codeOf(writer.headers), 'RBAC_DENIED');
    const outside = await ask(bearer(await rig.idp.mint()), { address: '192.0.2.55', port: 1234 });
    t.is(outside.status, 403);
    t.is(codeOf(outside.headers), 'RBAC_DENIED');
    const elsewhere = await ask(bearer(await rig.idp.mint()), CLIENT, '/admin');
    t.is(codeOf(elsewhere.headers), 'RBAC_DENIED', 'readers may read /data/ only');
    t.is(rig.upstream.hits, 0, 'nothing refused reached the upstream');

    // The access line (and the count) follow the response's last byte; wait for the last one.
    await rig.access((r) => r.path === '/admin', 'the /admin refusal');
    const metrics = await rig.front.registry.getSingleMetricAsString('tether_sovereign_requests_total');
    for (const [code, count] of [['UNAUTHENTICATED', 1], ['TOKEN_EXPIRED', 1], ['TOKEN_WRONG_AUDIENCE', 1], ['TOKEN_WRONG_ISSUER', 1], ['TOKEN_ALG_NOT_ALLOWED', 2], ['RBAC_DENIED', 3]] as const) {
      t.regex(metrics, new RegExp(`code="${code}"\\} ${count}$`, 'm'));
    }
    const denied = await rig.access((r) => r.code === 'RBAC_DENIED' && r.client?.address === '192.0.2.55', 'the refusal outside the networks');
    t.is(denied.status, 403);
    t.is(denied.subject, 'alice', 'the token was valid; RBAC refused it');
  }));

test('connections without a valid PROXY header are closed before TLS, counted and logged: none, garbage, too slow', (t) =>
  withRig(
    t,
    async (rig) => {
      const token = await rig.idp.mint();
      await t.throwsAsync(sovereignRequest(rig.port, rig.certificate.ca, { headers: { authorization: `Bearer ${token}` } }), undefined, 'TLS straight away');
      t.is((await rig.access((r) => r.code === 'PROXY_PROTOCOL_REQUIRED', 'the refused direct connection')).stage, 'connection');
      await t.throwsAsync(sovereignRequest(rig.port, rig.certificate.ca, { preamble: Buffer.from('PROXY TCP4 10.0.0.1 10.0.0.2 99999 443\r\n') }));
      t.regex((await rig.access((r) => r.code === 'PROXY_PROTOCOL_INVALID', 'the bad header')).message ?? '', /ports must be decimal/);
      // Half a header, then nothing: the deadline closes it.
      const slow = net.connect(rig.port, '127.0.0.1');
      slow.on('error', () => undefined);
      slow.write('PROXY TCP4 10.0.0.1');
      await rig.access((r) => r.code === 'PROXY_PROTOCOL_TIMEOUT', 'the timeout');
      if (!slow.destroyed) await new Promise((resolve) => slow.once('close', resolve));
      const metrics = await rig.front.registry.getSingleMetricAsString('tether_sovereign_connections_total');
      t.regex(metrics, /result="PROXY_PROTOCOL_REQUIRED"\} 1$/m);
      t.regex(metrics, /result="PROXY_PROTOCOL_INVALID"\} 1$/m);
      t.regex(metrics, /result="PROXY_PROTOCOL_TIMEOUT"\} 1$/m);
      t.is(rig.upstream.hits, 0);
    },
    { front: { proxyHeaderTimeoutMs: 300 } },
  ));

test('TLS below 1.2 is refused in the handshake (TLS_HANDSHAKE_FAILED), and a client that does not trust the certificate gets nothing', (t) =>
  withRig(t, async (rig) => {
    await t.throwsAsync(sovereignRequest(rig.port, rig.certificate.ca, { preamble: proxyV1(CLIENT, LB_FRONTEND), tls: { minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' } }));
    const old = await rig.access((r) => r.code === 'TLS_HANDSHAKE_FAILED', 'the TLS 1.1 handshake');
    t.deepEqual(old.client, CLIENT, 'refused after the PROXY header: the client is known');
    t.regex(old.message ?? '', /unsupported protocol/, 'the server refused the TLS 1.1 ClientHello itself');
    await t.throwsAsync(sovereignRequest(rig.port, rig.pki.foreign.trustBundlePem(), { preamble: proxyV1(CLIENT, LB_FRONTEND) }), { message: /certificate/ });
    t.is(rig.upstream.hits, 0);
  }));

test('the certificate follows SDS: a new secret applies to new connections, without a restart', (t) =>
  withRig(t, async (rig) => {
    const peerSerial = (ca: string) =>
      new Promise<string>((resolve, reject) => {
        const raw = net.connect(rig.port, '127.0.0.1', () => {
          raw.write(proxyV1(CLIENT, LB_FRONTEND));
          const secure = tls.connect({ socket: raw, ca, servername: 'localhost' }, () => {
            resolve(secure.getPeerCertificate().serialNumber);
            secure.destroy();
          });
          secure.once('error', reject);
        });
        raw.once('error', reject);
      });
    const before = await peerSerial(rig.certificate.ca);
    t.is(before.toLowerCase().replace(/^0+/, ''), rig.certificate.serialNumber.replace(/^0+/, ''));
    const renewed = await rig.pki.gatewayCert({ dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] });
    const updated = new Promise<void>((resolve) => rig.client.on('ack', (e) => e.kind === 'secret' && resolve()));
    rig.server.setSnapshot(sovereignSnapshot(listenerSpec(rig.idp), rig.upstream.port, renewed));
    await updated;
    const after = await peerSerial(rig.certificate.ca);
    t.is(after.toLowerCase().replace(/^0+/, ''), renewed.serialNumber.replace(/^0+/, ''));
  }));

test('a listener update applies to new requests; a listener the front cannot enforce is NACKed and the old policy keeps serving', (t) =>
  withRig(t, async (rig) => {
    const token = await rig.idp.mint({ roles: ['auditor'] });
    const ask = () => sovereignRequest(rig.port, rig.certificate.ca, { preamble: proxyV1(CLIENT, LB_FRONTEND), headers: { authorization: `Bearer ${token}` } });
    t.is((await ask()).status, 403);
    const acked = new Promise<void>((resolve) => rig.client.on('ack', (e) => e.kind === 'listener' && resolve()));
    const auditors = listenerSpec(rig.idp, { port: rig.port, rbac: { policies: { auditors: { principals: [{ claim: 'roles', includes: 'auditor' }] } } } });
    rig.server.setSnapshot(sovereignSnapshot(auditors, rig.upstream.port, rig.certificate));
    await acked;
    t.is((await ask()).status, 200);
    // Envoy would accept a wildcard address; the sovereign front listens on in-cluster addresses only.
    const nacked = new Promise<string>((resolve) => rig.client.on('nack', (e) => e.kind === 'listener' && resolve(e.message ?? '')));
    rig.server.setSnapshot(sovereignSnapshot({ ...auditors, address: '0.0.0.0', rbac: { policies: {} } }, rig.upstream.port, rig.certificate));
    t.is(await nacked, 'listener "sovereign" address.socket_address.address: "0.0.0.0" is not a loopback or in-cluster (private) address');
    t.is((await ask()).status, 200, 'still the applied policy');
  }));

test('a listener moved to another port is bound there before the old socket closes', (t) =>
  withRig(t, async (rig) => {
    const token = await rig.idp.mint();
    const port = await freePort();
    const moved = new Promise<number>((resolve) => rig.front.once('listening', (address) => resolve(address.port)));
    rig.server.setSnapshot(sovereignSnapshot(listenerSpec(rig.idp, { port }), rig.upstream.port, rig.certificate));
    t.is(await moved, port);
    t.is((await sovereignRequest(port, rig.certificate.ca, { preamble: proxyV1(CLIENT, LB_FRONTEND), headers: { authorization: `Bearer ${token}` } })).status, 200);
    await t.throwsAsync(sovereignRequest(rig.port, rig.certificate.ca, { preamble: proxyV1(CLIENT, LB_FRONTEND) }), { code: 'ECONNREFUSED' });
    t.is(rig.front.address?.port, port);
  }));

test('drain: a request in progress completes, new connections are refused', (t) =>
  withRig(t, async (rig) => {
    const token = await rig.idp.mint();
    const inFlight = sovereignRequest(rig.port, rig.certificate.ca, { preamble: proxyV1(CLIENT, LB_FRONTEND), path: '/data/hold', headers: { authorization: `Bearer ${token}` } });
    await rig.upstream.held();
    const drained = rig.front.drain(5000);
    await t.throwsAsync(sovereignRequest(rig.port, rig.certificate.ca, { preamble: proxyV1(CLIENT, LB_FRONTEND) }), { code: 'ECONNREFUSED' });
    rig.upstream.release();
    const reply = await inFlight;
    t.is(reply.status, 200);
    t.is((JSON.parse(reply.body) as Echo).path, '/data/hold');
    await drained;
  }));

test('a provider with forward: true passes the verified token on to the upstream (as Envoy does); the default drops it', (t) =>
  withRig(
    t,
    async (rig) => {
      const token = await rig.idp.mint();
      const reply = await sovereignRequest(rig.port, rig.certificate.ca, { preamble: proxyV1(CLIENT, LB_FRONTEND), headers: { authorization: `Bearer ${token}` } });
      t.is(reply.status, 200);
      const echo = JSON.parse(reply.body) as Echo;
      t.is(echo.headers.authorization, `Bearer ${token}`);
      t.is(echo.headers['x-customer-subject'], 'alice');
    },
    {
      spec: (idp) => {
        const spec = listenerSpec(idp);
        return { ...spec, jwt: { ...spec.jwt, forward: true } };
      },
    },
  ));
