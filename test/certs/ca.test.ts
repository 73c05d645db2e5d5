import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import type { webcrypto } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import {
  CertificateAuthority,
  checkCsr,
  generateCsr,
  generateKeyPair,
  createCsr,
  inspectCertificate,
  parseOneCertificate,
  parseSpiffeId,
  spiffeIdFor,
  subjectAltNames,
  verifyCertificateChain,
  x509,
} from '../../certs/index.js';
import type { TetherError } from '../../common/errors.js';
import { createTestPki } from '../helpers/pki.js';

async function codeOf(promise: Promise<unknown>): Promise<string | undefined> {
  try {
    await promise;
    return undefined;
  } catch (reason) {
    return (reason as { code?: string }).code;
  }
}

test('workload leaf profile: one SPIFFE URI SAN, not a CA, critical KU, EKU, SKI/AKI, 1 h, random positive serial', async (t) => {
  const pki = await createTestPki();
  const before = Date.now();
  const issued = await pki.ca.issueWorkload({ clusterId: 'prod-eu', agentId: 'agent-7' });
  const leaf = parseOneCertificate(issued.certificatePem);
  t.deepEqual(subjectAltNames(leaf).uris, ['spiffe://tether.test/cluster/prod-eu/agent/agent-7']);
  t.is(issued.spiffeId, 'spiffe://tether.test/cluster/prod-eu/agent/agent-7');
  const bc = leaf.getExtension(x509.BasicConstraintsExtension);
  t.is(bc?.ca, false);
  t.true(bc?.critical);
  const ku = leaf.getExtension(x509.KeyUsagesExtension);
  t.true(ku?.critical);
  t.is(ku?.usages, x509.KeyUsageFlags.digitalSignature);
  t.deepEqual([...(leaf.getExtension(x509.ExtendedKeyUsageExtension)?.usages ?? [])].map(String).sort(), [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth].sort());
  const aki = leaf.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId;
  const intermediate = parseOneCertificate(pki.ca.intermediateCertificatePem);
  t.is(aki, intermediate.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId);
  t.truthy(leaf.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId);
  // ~1 min backdated, 1 h from issuance
  t.true(issued.notBefore.getTime() <= before - 55_000 && issued.notBefore.getTime() >= before - 70_000);
  t.true(Math.abs(issued.notAfter.getTime() - (before + 3_600_000)) < 5_000);
  t.regex(issued.serialNumber, /^[0-9a-f]{1,32}$/);
  t.true(Buffer.from(leaf.serialNumber.padStart(32, '0'), 'hex')[0]! < 0x80, 'positive serial');
  const other = await pki.ca.issueWorkload({ clusterId: 'prod-eu', agentId: 'agent-7' });
  t.not(other.serialNumber, issued.serialNumber);
  // the chain is leaf + intermediate
  t.is(issued.chainPem, issued.certificatePem + pki.ca.intermediateCertificatePem);
  t.regex(issued.privateKeyPem ?? '', /BEGIN PRIVATE KEY/);
});

test('intermediate has pathLen 0 and root is a CA; RSA server leaves add keyEncipherment', async (t) => {
  const pki = await createTestPki();
  const intermediate = parseOneCertificate(pki.ca.intermediateCertificatePem);
  const bc = intermediate.getExtension(x509.BasicConstraintsExtension);
  t.is(bc?.ca, true);
  t.is(bc?.pathLength, 0);
  t.true(((intermediate.getExtension(x509.KeyUsagesExtension)?.usages ?? 0) & x509.KeyUsageFlags.keyCertSign) !== 0);
  const server = await pki.ca.issueServer({ dnsNames: ['gw.example.com'], ipAddresses: ['127.0.0.1', '::1'], algorithm: 'rsa-3072' });
  const leaf = parseOneCertificate(server.certificatePem);
  t.is(leaf.getExtension(x509.KeyUsagesExtension)?.usages, x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment);
  const sans = subjectAltNames(leaf);
  t.deepEqual(sans.dnsNames, ['gw.example.com']);
  t.deepEqual(sans.ipAddresses.length, 2);
  t.deepEqual(sans.uris, []);
  await t.notThrowsAsync(verifyCertificateChain(server.chainPem, { trustBundlePem: pki.trustBundlePem, usage: 'server' }));
  t.is(await codeOf(pki.ca.issueServer({ dnsNames: ['bad name!'] })), 'CERT_BAD_REQUEST');
  t.is(await codeOf(pki.ca.issueServer({ ipAddresses: ['300.1.1.1'] })), 'CERT_BAD_REQUEST');
  t.is(await codeOf(pki.ca.issueServer({})), 'CERT_BAD_REQUEST');
});

test('save writes key files with mode 0600 and load restores a working CA; missing CA is CA_NOT_FOUND', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'tether-ca-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const ca = await CertificateAuthority.create({ trustDomain: 'save.test' });
  await ca.save(dir);
  for (const name of ['root-ca.key', 'intermediate-ca.key']) {
    t.is((await stat(join(dir, name))).mode & 0o777, 0o600, name);
  }
  // an existing key file with a loose mode is tightened on save
  await writeFile(join(dir, 'root-ca.key'), 'x', { mode: 0o644 });
  await ca.save(dir);
  t.is((await stat(join(dir, 'root-ca.key'))).mode & 0o777, 0o600);
  const loaded = await CertificateAuthority.load(dir);
  t.is(loaded.trustDomain, 'save.test');
  t.is(loaded.rootCertificatePem, ca.rootCertificatePem);
  const issued = await loaded.issueWorkload({ clusterId: 'c', agentId: 'a' });
  const peer = await verifyCertificateChain(issued.chainPem, { trustBundlePem: ca.trustBundlePem(), expectedTrustDomain: 'save.test' });
  t.is(peer.spiffeId, 'spiffe://save.test/cluster/c/agent/a');
  t.is(await codeOf(CertificateAuthority.load(join(dir, 'nothing-here'))), 'CA_NOT_FOUND');
});

test('SPIFFE IDs: build and parse; malformed ones are CERT_BAD_SPIFFE_ID', (t) => {
  t.is(spiffeIdFor('td.example', 'c-1', 'a_2'), 'spiffe://td.example/cluster/c-1/agent/a_2');
  t.deepEqual(parseSpiffeId('spiffe://td.example/cluster/c-1/agent/a_2'), { trustDomain: 'td.example', clusterId: 'c-1', agentId: 'a_2' });
  for (const bad of [
    'https://td/cluster/c/agent/a',
    'spiffe://td',
    'spiffe://TD/cluster/c/agent/a',
    'spiffe://td:443/cluster/c/agent/a',
    'spiffe://user@td/cluster/c/agent/a',
    'spiffe://td/cluster/c/agent/a/',
    'spiffe://td/cluster/c/agent/a?x=1',
    'spiffe://td/cluster/../agent/a',
    'spiffe://td/ns/default/sa/x',
  ]) {
    t.is(t.throws<TetherError>(() => parseSpiffeId(bad))?.code, 'CERT_BAD_SPIFFE_ID', bad);
  }
  t.is(t.throws<TetherError>(() => spiffeIdFor('td', 'a/b', 'x'))?.code, 'CERT_BAD_SPIFFE_ID');
});

test('CSR checks: tampered signature is CSR_BAD_SIGNATURE, RSA 1024 and P-521 are CSR_WEAK_KEY, garbage is CSR_MALFORMED', async (t) => {
  const pki = await createTestPki();
  const { csrPem } = await generateCsr('ecdsa-p256');
  const der = Buffer.from(csrPem.replace(/-----[A-Z ]+-----|\s/g, ''), 'base64');
  der[der.length - 1] ^= 0x01; // inside the signature value
  const tampered = `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`;
  t.is(await codeOf(checkCsr(tampered)), 'CSR_BAD_SIGNATURE');
  t.is(await codeOf(pki.ca.signCsr(tampered, { kind: 'workload', clusterId: 'c', agentId: 'a' })), 'CSR_BAD_SIGNATURE');

  const weakRsa = (await globalThis.crypto.subtle.generateKey(
    { name: 'RSASSA-PKCS1-v1_5', modulusLength: 1024, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' },
    true,
    ['sign', 'verify'],
  )) as webcrypto.CryptoKeyPair;
  const weakCsr = await x509.Pkcs10CertificateRequestGenerator.create({ name: 'CN=weak', keys: weakRsa, signingAlgorithm: { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' } as webcrypto.Algorithm });
  t.is(await codeOf(pki.ca.signCsr(weakCsr.toString('pem'), { kind: 'workload', clusterId: 'c', agentId: 'a' })), 'CSR_WEAK_KEY');

  const p521 = (await globalThis.crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-521' }, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const p521Csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: 'CN=p521', keys: p521, signingAlgorithm: { name: 'ECDSA', hash: 'SHA-512' } as webcrypto.Algorithm });
  t.is(await codeOf(pki.ca.signCsr(p521Csr.toString('pem'), { kind: 'workload', clusterId: 'c', agentId: 'a' })), 'CSR_WEAK_KEY');

  t.is(await codeOf(checkCsr('-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n')), 'CSR_MALFORMED');
  t.is(await codeOf(checkCsr('hello')), 'CSR_MALFORMED');
  // RSA 3072 CSRs are accepted and get keyEncipherment
  const rsa = await generateKeyPair('rsa-3072');
  const issued = await pki.ca.signCsr(await createCsr(rsa, 'rsa-3072'), { kind: 'server', dnsNames: ['gw.test'] });
  t.is(parseOneCertificate(issued.certificatePem).getExtension(x509.KeyUsagesExtension)?.usages, x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment);
});

test('signCsr takes only the public key: names and extensions requested in the CSR are never copied', async (t) => {
  const pki = await createTestPki();
  const keys = await generateKeyPair('ecdsa-p256');
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: 'CN=admin, O=evil',
    keys,
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' } as webcrypto.Algorithm,
    extensions: [
      new x509.SubjectAlternativeNameExtension([
        { type: 'url', value: 'spiffe://tether.test/cluster/other/agent/admin' },
        { type: 'dns', value: 'control.tether.test' },
        { type: 'ip', value: '10.0.0.1' },
      ]),
      new x509.BasicConstraintsExtension(true, 3, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true),
    ],
  });
  t.true(inspectCertificate(csr.toString('pem')).includes('Requested names (ignored'));
  const issued = await pki.ca.signCsr(csr.toString('pem'), { kind: 'workload', clusterId: 'c1', agentId: 'a1' });
  const leaf = parseOneCertificate(issued.certificatePem);
  const sans = subjectAltNames(leaf);
  t.deepEqual(sans.uris, ['spiffe://tether.test/cluster/c1/agent/a1']);
  t.deepEqual(sans.dnsNames, []);
  t.deepEqual(sans.ipAddresses, []);
  t.is(leaf.getExtension(x509.BasicConstraintsExtension)?.ca, false);
  t.is(leaf.getExtension(x509.KeyUsagesExtension)?.usages, x509.KeyUsageFlags.digitalSignature);
  t.false(leaf.subject.includes('admin'));
  t.false(leaf.subject.includes('evil'));
  // the certified key is the CSR's key
  const spki = Buffer.from(await globalThis.crypto.subtle.exportKey('spki', keys.publicKey));
  t.true(spki.equals(Buffer.from(leaf.publicKey.rawData)));
  const peer = await verifyCertificateChain(issued.chainPem, { trustBundlePem: pki.trustBundlePem, expectedTrustDomain: 'tether.test', requireSpiffe: true });
  t.deepEqual([peer.clusterId, peer.agentId], ['c1', 'a1']);
});

test('verifyCertificateChain refuses leaves that break the SVID rules, with specific codes', async (t) => {
  const pki = await createTestPki();
  const verify = (chainPem: string, extra: Partial<Parameters<typeof verifyCertificateChain>[1]> = {}): Promise<string | undefined> =>
    codeOf(verifyCertificateChain(chainPem, { trustBundlePem: pki.trustBundlePem, expectedTrustDomain: 'tether.test', ...extra }));
  const twoUris = await pki.ca.unsafeIssue({ uris: [spiffeIdFor('tether.test', 'c', 'a'), spiffeIdFor('tether.test', 'c', 'b')] });
  t.is(await verify(twoUris.chainPem), 'CERT_IDENTITY_MISMATCH');
  const caLeaf = await pki.ca.unsafeIssue({ uris: [spiffeIdFor('tether.test', 'c', 'a')], ca: true });
  t.is(await verify(caLeaf.chainPem), 'CERT_BAD_USAGE');
  const noEku = await pki.ca.unsafeIssue({ uris: [spiffeIdFor('tether.test', 'c', 'a')], extendedKeyUsages: [] });
  t.is(await verify(noEku.chainPem), 'CERT_BAD_USAGE');
  const serverOnly = await pki.ca.unsafeIssue({ uris: [spiffeIdFor('tether.test', 'c', 'a')], extendedKeyUsages: [x509.ExtendedKeyUsage.serverAuth] });
  t.is(await verify(serverOnly.chainPem, { usage: 'client' }), 'CERT_BAD_USAGE');
  t.is(await verify(serverOnly.chainPem, { usage: 'server' }), undefined);
  const notSpiffe = await pki.ca.unsafeIssue({ uris: ['https://example.com/agent'] });
  t.is(await verify(notSpiffe.chainPem), 'CERT_BAD_SPIFFE_ID');
  const gateway = await pki.gatewayCert();
  t.is(await verify(gateway.chainPem), undefined, 'server certificates without URI SAN pass by default');
  t.is(await verify(gateway.chainPem, { requireSpiffe: true }), 'CERT_IDENTITY_MISMATCH');
  t.is(await verify((await pki.wrongTrustDomainAgentCert()).chainPem), 'CERT_IDENTITY_MISMATCH');
  t.is(await verify((await pki.untrustedAgentCert()).chainPem), 'CERT_UNTRUSTED');
  t.is(await verify((await pki.expiredAgentCert()).chainPem), 'CERT_EXPIRED');
  t.is(await verify((await pki.notYetValidAgentCert()).chainPem), 'CERT_NOT_YET_VALID');
  const good = await pki.agentCert();
  t.is(await verify(good.chainPem, { revokedSerials: new Set([good.serialNumber.toUpperCase()]) }), 'CERT_REVOKED');
  // revoking the intermediate revokes everything under it
  const intermediateSerial = parseOneCertificate(pki.ca.intermediateCertificatePem).serialNumber;
  t.is(await verify(good.chainPem, { revokedSerials: new Set([intermediateSerial]) }), 'CERT_REVOKED');
  // the leaf alone, without its intermediate, has no path
  t.is(await verify(good.certificatePem), 'CERT_UNTRUSTED');
  // validity is checked at `now`
  t.is(await verify(good.chainPem, { now: new Date(good.notAfter.getTime() + 1000) }), 'CERT_EXPIRED');
  t.is(await verify('not a pem'), 'CERT_MALFORMED');
  t.is(await verify('-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n'), 'CERT_MALFORMED');
  // a chain signed by a different key under the same names does not verify
  const impostor = await CertificateAuthority.create({ trustDomain: 'tether.test' });
  t.is(await verify((await impostor.issueWorkload({ clusterId: 'c', agentId: 'a' })).chainPem), 'CERT_UNTRUSTED');
});

test('CA rotation: a bundle holding both roots verifies chains of the old and the new CA', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'tether-rot-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const oldCa = await CertificateAuthority.create({ trustDomain: 'rot.test' });
  const newCa = await CertificateAuthority.create({ trustDomain: 'rot.test' });
  t.is(newCa.addTrustedRoots(oldCa.trustBundlePem()), 1);
  t.is(newCa.addTrustedRoots(oldCa.trustBundlePem()), 0, 'idempotent');
  const bundle = newCa.trustBundlePem();
  t.is((bundle.match(/BEGIN CERTIFICATE/g) ?? []).length, 2);
  const fromOld = await oldCa.issueWorkload({ clusterId: 'c', agentId: 'old' });
  const fromNew = await newCa.issueWorkload({ clusterId: 'c', agentId: 'new' });
  for (const issued of [fromOld, fromNew]) {
    const peer = await verifyCertificateChain(issued.chainPem, { trustBundlePem: bundle, expectedTrustDomain: 'rot.test' });
    t.is(peer.spiffeId, issued.spiffeId);
  }
  // before the rotation the old bundle does not know the new CA
  t.is(await codeOf(verifyCertificateChain(fromNew.chainPem, { trustBundlePem: oldCa.trustBundlePem() })), 'CERT_UNTRUSTED');
  // the kept root survives save/load, and can be dropped at the end of the rotation
  await newCa.save(dir);
  const loaded = await CertificateAuthority.load(dir);
  t.is(loaded.trustBundlePem(), bundle);
  t.is(await readFile(join(dir, 'trust-bundle.pem'), 'utf8'), bundle);
  t.true(loaded.removeTrustedRoot(parseOneCertificate(oldCa.rootCertificatePem).serialNumber));
  t.is(await codeOf(verifyCertificateChain(fromOld.chainPem, { trustBundlePem: loaded.trustBundlePem() })), 'CERT_UNTRUSTED');
});
