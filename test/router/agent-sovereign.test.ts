/**
 * The agent's xDS side in sovereign mode (AgentXds.setSovereign): the snapshot gains the sovereign
 * listener next to the tunnel's, the built-in router's sovereign front serves it (PROXY protocol,
 * the customer's certificate, the customer's IdP, RBAC) while the tunnel-side router keeps routing
 * by its own listener, and setSovereign(null) takes it away again.
 */
import test from 'ava';
import { AgentXds } from '../../agent/router/agent-xds.js';
import { TypeUrl } from '../../xds/resource-types.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { createTestPki } from '../helpers/pki.js';
import { AUDIENCE, ISSUER, customerIdp, proxyV1, recordingUpstream, sovereignRequest } from '../sovereign/fixtures.js';
import type { Echo } from '../sovereign/fixtures.js';

failOnLeaks(test);

test('setSovereign serves the sovereign listener next to the tunnel listener, and null removes it', async (t) => {
  const pki = await createTestPki({ trustDomain: 'customer.test' });
  const certificate = await pki.gatewayCert({ dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] });
  const idp = await customerIdp();
  const upstream = await recordingUpstream();
  const xds = new AgentXds({ routes: [{ prefix: '/', upstream: `http://127.0.0.1:${upstream.port}` }], listen: { host: '127.0.0.1', port: 0 }, useBuiltInRouter: true });
  try {
    await xds.start();
    await xds.setSovereign({
      listener: {
        name: 'sovereign',
        address: '127.0.0.1',
        port: 0,
        routeConfigName: 'sovereign-routes',
        tls: { sdsSecretName: 'customer-cert' },
        jwt: { issuer: ISSUER, audiences: [AUDIENCE], jwks: { local: JSON.stringify(idp.jwks) } },
        rbac: { policies: { readers: { principals: [{ and: [{ claim: 'roles', includes: 'reader' }, { remoteIp: '10.0.0.0/8' }] }] } } },
      },
      secret: { name: 'customer-cert', certificateChainPem: certificate.cert, privateKeyPem: certificate.key },
    });
    const front = xds.sovereignFront;
    const port = front?.address?.port;
    if (front === null || port === undefined) return t.fail('no sovereign front');
    t.deepEqual([...xds.server.snapshot().get(TypeUrl.listener).keys()].sort(), ['sovereign', 'tether-agent']);
    const ok = await sovereignRequest(port, certificate.ca, { preamble: proxyV1({ address: '10.1.1.1', port: 1000 }, { address: '10.0.0.1', port: 443 }), headers: { authorization: `Bearer ${await idp.mint()}` } });
    t.is(ok.status, 200);
    t.is((JSON.parse(ok.body) as Echo).path, '/data/x');
    t.is(xds.router?.route({ method: 'GET', path: '/x', authority: 'a', headers: {} })?.cluster, `http_127.0.0.1_${upstream.port}`, 'the tunnel-side router still routes by its own listener');
    await xds.setSovereign(null, 1000);
    t.is(xds.sovereignFront, null);
    t.deepEqual([...xds.server.snapshot().get(TypeUrl.listener).keys()], ['tether-agent']);
    await t.throwsAsync(sovereignRequest(port, certificate.ca, { preamble: proxyV1({ address: '10.1.1.1', port: 1000 }, { address: '10.0.0.1', port: 443 }) }), { code: 'ECONNREFUSED' });
  } finally {
    await xds.close();
    await upstream.close();
    await idp.close();
  }
});

test('setSovereign before start(): start() brings the front up with the router', async (t) => {
  const pki = await createTestPki({ trustDomain: 'customer.test' });
  const certificate = await pki.gatewayCert({ dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] });
  const idp = await customerIdp();
  const upstream = await recordingUpstream();
  const xds = new AgentXds({ routes: [{ prefix: '/', upstream: `http://127.0.0.1:${upstream.port}` }], listen: { host: '127.0.0.1', port: 0 }, useBuiltInRouter: true });
  try {
    await xds.setSovereign({
      listener: {
        name: 'sovereign',
        address: '127.0.0.1',
        port: 0,
        routeConfigName: 'sovereign-routes',
        tls: { certificateChainPem: certificate.cert, privateKeyPem: certificate.key },
        jwt: { issuer: ISSUER, audiences: [AUDIENCE], jwks: { local: JSON.stringify(idp.jwks) } },
        rbac: { policies: { anyone: { principals: [{ claim: 'sub', equals: 'alice' }] } } },
      },
    });
    t.is(xds.sovereignFront, null, 'nothing to serve from before start()');
    await xds.start();
    const port = xds.sovereignFront?.address?.port;
    if (port === undefined) return t.fail('no sovereign front after start()');
    const reply = await sovereignRequest(port, certificate.ca, { preamble: proxyV1({ address: '192.0.2.1', port: 1 }, { address: '10.0.0.1', port: 443 }), headers: { authorization: `Bearer ${await idp.mint()}` } });
    t.is(reply.status, 200);
  } finally {
    await xds.close();
    await upstream.close();
    await idp.close();
  }
});
