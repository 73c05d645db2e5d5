/**
 * The workload identity exchange: token + CSR in, a certificate naming exactly the requested
 * cluster and agent out, for the cluster whose registered issuer and subject rules the token
 * satisfies; every other case refused with its own code and counted.
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CertificateAuthority, createCsr, generateCsr, spiffeIdFor, verifyCertificateChain, x509 } from '../../certs/index.js';
import { generateKeyPair } from '../../certs/keys.js';
import { createIdentityExchange, InMemoryClusterIdentityRegistry, workloadCertificateIssuer } from '../../certs/identity-exchange.js';
import { readTokenFile, tokenFileSource } from '../../certs/workload-token-file.js';
import { silentLogger } from '../../common/log.js';
import { createRegistry } from '../../common/metrics.js';
import type { DevOidcIssuer } from '../../certs/dev-oidc-issuer.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { AUDIENCE, SUBJECT, refusalCode, startIssuer } from './token-fixtures.js';

failOnLeaks(test);

const TRUST_DOMAIN = 'tether.test';
let caPromise: Promise<CertificateAuthority> | null = null;
function sharedCa(): Promise<CertificateAuthority> {
  caPromise ??= CertificateAuthority.create({ trustDomain: TRUST_DOMAIN });
  return caPromise;
}

async function setup(t: ExecutionContext) {
  const ca = await sharedCa();
  const issuerA = await startIssuer(t);
  const issuerB = await startIssuer(t);
  const clusters = new InMemoryClusterIdentityRegistry([
    { clusterId: 'cluster-a', issuer: issuerA.issuer, audience: AUDIENCE, allowedSubjects: 'system:serviceaccount:tether:*' },
    { clusterId: 'cluster-b', issuer: issuerB.issuer, audience: AUDIENCE, allowedSubjects: 'system:serviceaccount:tether:*' },
  ]);
  const metrics = createRegistry();
  const identity = createIdentityExchange({ ca, clusters, metrics, certificateTtlMs: 10 * 60_000, logger: silentLogger() });
  return { ca, issuerA, issuerB, clusters, metrics, identity };
}

async function counts(metrics: ReturnType<typeof createRegistry>): Promise<Record<string, number>> {
  const metric = await metrics.getSingleMetric('tether_identity_exchanges_total')?.get();
  return Object.fromEntries((metric?.values ?? []).map((value) => [String(value.labels.result), value.value]));
}

async function agentToken(issuer: DevOidcIssuer, subject = SUBJECT): Promise<string> {
  return issuer.mint({ subject, audience: AUDIENCE, pod: 'tether-agent-0' });
}

test('issues a certificate naming exactly the requested cluster and agent, for the CSR key', async (t) => {
  const { ca, issuerA, metrics, identity } = await setup(t);
  // The CSR asks for another identity, in its subject and in a SAN extension: both are ignored.
  const keys = await generateKeyPair('ecdsa-p256');
  const wanted = 'spiffe://tether.test/cluster/cluster-b/agent/admin';
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: [{ CN: [wanted] }],
    keys,
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
    extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'url', value: wanted }, { type: 'dns', value: 'gateway.tether.test' }])],
  });
  const csrPem = csr.toString('pem');
  const issued = await identity.exchange({ token: await agentToken(issuerA), csrPem, clusterId: 'cluster-a', agentId: 'agent-1' });
  t.is(issued.spiffeId, spiffeIdFor(TRUST_DOMAIN, 'cluster-a', 'agent-1'));
  const peer = await verifyCertificateChain(issued.chainPem, { trustBundlePem: issued.trustBundlePem, requireSpiffe: true, expectedTrustDomain: TRUST_DOMAIN });
  t.like(peer, { clusterId: 'cluster-a', agentId: 'agent-1', trustDomain: TRUST_DOMAIN });
  const certificate = new x509.X509Certificate(issued.certificatePem);
  const sans = certificate.getExtension(x509.SubjectAlternativeNameExtension)?.names.toJSON() ?? [];
  t.deepEqual(sans, [{ type: 'url', value: issued.spiffeId }], 'one URI SAN, from the request, not the CSR');
  t.false(certificate.subject.includes('cluster-b'));
  const csrKey = Buffer.from(await crypto.subtle.exportKey('spki', keys.publicKey));
  t.true(Buffer.from(certificate.publicKey.rawData).equals(csrKey), 'the certificate carries the CSR key');
  const lifetime = issued.notAfter.getTime() - issued.notBefore.getTime();
  t.true(lifetime <= 10 * 60_000 + 120_000 && lifetime >= 10 * 60_000, `lifetime ${lifetime} ms`);
  t.deepEqual(await counts(metrics), { ok: 1 });
});

test('refuses an unknown cluster', async (t) => {
  const { issuerA, metrics, identity } = await setup(t);
  const { csrPem } = await generateCsr();
  t.is(await refusalCode(t, identity.exchange({ token: await agentToken(issuerA), csrPem, clusterId: 'cluster-z', agentId: 'agent-1' })), 'EXCHANGE_UNKNOWN_CLUSTER');
  t.deepEqual(issuerA.requests, { discovery: 0, jwks: 0 });
  t.deepEqual(await counts(metrics), { EXCHANGE_UNKNOWN_CLUSTER: 1 });
});

test("refuses cluster A's token for cluster B", async (t) => {
  const { issuerA, issuerB, metrics, identity } = await setup(t);
  const { csrPem } = await generateCsr();
  const token = await agentToken(issuerA);
  t.is(await refusalCode(t, identity.exchange({ token, csrPem, clusterId: 'cluster-b', agentId: 'agent-1' })), 'TOKEN_WRONG_ISSUER');
  t.deepEqual(issuerB.requests, { discovery: 0, jwks: 0 }, "B's issuer was not even asked");
  await identity.exchange({ token, csrPem, clusterId: 'cluster-a', agentId: 'agent-1' });
  t.deepEqual(await counts(metrics), { TOKEN_WRONG_ISSUER: 1, ok: 1 });
});

test('refuses a subject the cluster does not allow, and follows registration changes', async (t) => {
  const { issuerA, clusters, metrics, identity } = await setup(t);
  const { csrPem } = await generateCsr();
  const outsider = await agentToken(issuerA, 'system:serviceaccount:default:default');
  t.is(await refusalCode(t, identity.exchange({ token: outsider, csrPem, clusterId: 'cluster-a', agentId: 'agent-1' })), 'TOKEN_SUBJECT_NOT_ALLOWED');
  const insider = await agentToken(issuerA);
  await identity.exchange({ token: insider, csrPem, clusterId: 'cluster-a', agentId: 'agent-1' });
  clusters.register({ clusterId: 'cluster-a', issuer: issuerA.issuer, audience: AUDIENCE, allowedSubjects: ['system:serviceaccount:tether:gateway-agent'] });
  t.is(await refusalCode(t, identity.exchange({ token: insider, csrPem, clusterId: 'cluster-a', agentId: 'agent-1' })), 'TOKEN_SUBJECT_NOT_ALLOWED', 'the new rules apply at once');
  clusters.remove('cluster-a');
  t.is(await refusalCode(t, identity.exchange({ token: insider, csrPem, clusterId: 'cluster-a', agentId: 'agent-1' })), 'EXCHANGE_UNKNOWN_CLUSTER');
  t.deepEqual(await counts(metrics), { TOKEN_SUBJECT_NOT_ALLOWED: 2, ok: 1, EXCHANGE_UNKNOWN_CLUSTER: 1 });
});

test('refuses malformed agent ids, requests and CSRs, and bad tokens with their own codes', async (t) => {
  const { issuerA, identity } = await setup(t);
  const { csrPem } = await generateCsr();
  const token = await agentToken(issuerA);
  for (const agentId of ['a/b', '..', 'agent 1', 'x'.repeat(129), 'agent?x']) {
    t.is(await refusalCode(t, identity.exchange({ token, csrPem, clusterId: 'cluster-a', agentId })), 'EXCHANGE_BAD_AGENT_ID', agentId);
  }
  t.is(await refusalCode(t, identity.exchange({ token, csrPem, clusterId: 'cluster-a', agentId: '' })), 'EXCHANGE_BAD_REQUEST');
  t.is(await refusalCode(t, identity.exchange({ token: '', csrPem, clusterId: 'cluster-a', agentId: 'a' })), 'EXCHANGE_BAD_REQUEST');
  t.is(await refusalCode(t, identity.exchange({ token, csrPem: 'not a csr', clusterId: 'cluster-a', agentId: 'a' })), 'CSR_MALFORMED');
  // A CSR signed by a different key than the one it carries proves nothing.
  const mine = await generateKeyPair('ecdsa-p256');
  const other = await generateKeyPair('ecdsa-p256');
  const mixed = await createCsr({ publicKey: mine.publicKey, privateKey: other.privateKey }, 'ecdsa-p256');
  t.is(await refusalCode(t, identity.exchange({ token, csrPem: mixed, clusterId: 'cluster-a', agentId: 'a' })), 'CSR_BAD_SIGNATURE');
  const expired = await issuerA.mint({ subject: SUBJECT, audience: AUDIENCE, claims: { exp: Math.floor(Date.now() / 1000) - 3600 } });
  t.is(await refusalCode(t, identity.exchange({ token: expired, csrPem, clusterId: 'cluster-a', agentId: 'a' })), 'TOKEN_EXPIRED');
  const wrongAudience = await issuerA.mint({ subject: SUBJECT, audience: 'sts.amazonaws.com' });
  t.is(await refusalCode(t, identity.exchange({ token: wrongAudience, csrPem, clusterId: 'cluster-a', agentId: 'a' })), 'TOKEN_WRONG_AUDIENCE');
});

test('the agent-side issuer re-reads the projected token file on every call', async (t) => {
  const { issuerA, identity } = await setup(t);
  const dir = await mkdtemp(join(tmpdir(), 'tether-token-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const tokenPath = join(dir, 'token');
  await writeFile(tokenPath, `${await agentToken(issuerA)}\n`);
  const issue = workloadCertificateIssuer({ tokenSource: tokenFileSource(tokenPath), exchange: (request) => identity.exchange(request), clusterId: 'cluster-a', agentId: 'agent-7' });
  const { csrPem } = await generateCsr();
  const first = await issue(csrPem);
  t.is(first.spiffeId, spiffeIdFor(TRUST_DOMAIN, 'cluster-a', 'agent-7'));
  await writeFile(tokenPath, await agentToken(issuerA, 'system:serviceaccount:default:default'));
  t.is(await refusalCode(t, issue(csrPem)), 'TOKEN_SUBJECT_NOT_ALLOWED', 'the rewritten file was read');
  await writeFile(tokenPath, '  \n');
  t.is(await refusalCode(t, readTokenFile(tokenPath)), 'WORKLOAD_TOKEN_FILE_EMPTY');
  t.is(await refusalCode(t, readTokenFile(join(dir, 'missing'))), 'WORKLOAD_TOKEN_FILE_UNREADABLE');
});
