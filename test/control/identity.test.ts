import test from 'ava';
import { generateCsr } from '../../certs/csr.js';
import { DevOidcIssuer } from '../../certs/dev-oidc-issuer.js';
import { x509 } from '../../certs/x509.js';
import { parseControlConfig } from '../../control/config.js';
import { ControlServer } from '../../control/server.js';
import { userCaller } from '../../control/service.js';
import { newKek } from '../../control/store/keyring.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { createTestPki } from '../helpers/pki.js';

failOnLeaks(test);

const AGENT_SA = 'system:serviceaccount:tether:agent';

test('IdentityService.ExchangeToken: a registered cluster\'s workload token + CSR → a workload certificate; refusals by code; audited', async (t) => {
  const issuer = new DevOidcIssuer();
  const issuerUrl = await issuer.listen();
  t.teardown(() => issuer.close());
  const pki = await createTestPki();
  const config = parseControlConfig({
    org: 'acme', store: { path: ':memory:' }, grpc: { port: 0 }, http: { port: 0 }, auth: { issuers: [{ issuer: issuerUrl, audience: 'tether-control' }] }, bootstrapAdmins: ['alice'],
  });
  const server = await ControlServer.start(config, { ca: pki.ca, env: { TETHER_CONTROL_KEK: newKek().key.toString('base64') } });
  t.teardown(() => server.close());
  await server.service.registerCluster(userCaller('alice'), { org: 'acme', id: 'c1', mode: 'tunnel', endpoint: 'c1.example', issuer: issuerUrl, audience: 'tether-exchange', allowedSubjects: [AGENT_SA] });

  const exchange = async (body: Record<string, string>): Promise<{ status: number; json: Record<string, string> }> => {
    const response = await fetch(`http://127.0.0.1:${server.httpPort}/tether.control.v1.IdentityService/ExchangeToken`, { method: 'POST', body: JSON.stringify(body) });
    return { status: response.status, json: (await response.json()) as Record<string, string> };
  };
  const { csrPem } = await generateCsr();
  const ok = await exchange({ token: await issuer.mint({ subject: AGENT_SA, audience: 'tether-exchange' }), csrPem, clusterId: 'c1', agentId: 'a1' });
  t.is(ok.status, 200, JSON.stringify(ok.json));
  t.is(ok.json.spiffeId, `spiffe://${pki.trustDomain}/cluster/c1/agent/a1`);
  const leaf = new x509.X509Certificate(ok.json.certificateChainPem!);
  const lifetime = leaf.notAfter.getTime() - leaf.notBefore.getTime();
  t.true(lifetime <= 3_700_000, `certificate lives ${lifetime} ms`);
  t.is(ok.json.trustBundlePem, pki.trustBundlePem);

  const refusals: Array<[string, Record<string, string>, number, string]> = [
    ['a subject not allowed', { token: await issuer.mint({ subject: 'system:serviceaccount:other:agent', audience: 'tether-exchange' }), csrPem, clusterId: 'c1', agentId: 'a1' }, 401, 'TOKEN_SUBJECT_NOT_ALLOWED'],
    ['a user token (another audience)', { token: await issuer.mint({ subject: AGENT_SA, audience: 'tether-control' }), csrPem, clusterId: 'c1', agentId: 'a1' }, 401, 'TOKEN_WRONG_AUDIENCE'],
    ['an unknown cluster', { token: await issuer.mint({ subject: AGENT_SA, audience: 'tether-exchange' }), csrPem, clusterId: 'c9', agentId: 'a1' }, 404, 'EXCHANGE_UNKNOWN_CLUSTER'],
    ['a bad agent id', { token: await issuer.mint({ subject: AGENT_SA, audience: 'tether-exchange' }), csrPem, clusterId: 'c1', agentId: '../x' }, 400, 'EXCHANGE_BAD_AGENT_ID'],
    ['a malformed CSR', { token: await issuer.mint({ subject: AGENT_SA, audience: 'tether-exchange' }), csrPem: 'nope', clusterId: 'c1', agentId: 'a1' }, 400, 'CSR_MALFORMED'],
  ];
  for (const [label, body, status, code] of refusals) t.like(await exchange(body), { status, json: { code } }, label);

  const audit = await server.service.listAudit(userCaller('alice'), 'acme', { operation: 'identity.exchange' }, 50, '');
  // The unknown cluster's refusal belongs to no org (it is in the store, not in acme's log).
  t.deepEqual(audit.items.map((entry) => entry.result).reverse(), ['OK', 'TOKEN_SUBJECT_NOT_ALLOWED', 'TOKEN_WRONG_AUDIENCE', 'EXCHANGE_BAD_AGENT_ID', 'CSR_MALFORMED']);
  t.deepEqual((await server.store.listAudit({ org: '', operation: 'identity.exchange' }, 50, '')).items.map((entry) => `${entry.resource} ${entry.result}`), ['cluster/c9 EXCHANGE_UNKNOWN_CLUSTER']);
  t.is(audit.items.at(-1)?.principal, 'workload:c1/a1');
  await server.drain(1_000);
});
