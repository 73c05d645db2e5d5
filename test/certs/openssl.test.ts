/**
 * Interoperability with the real `openssl` binary (Debian package `openssl`): it accepts the
 * chains we issue (ECDSA and RSA, strict mode, client and server purposes), refuses expired and
 * foreign ones, and reads the PKCS#12 bundles we export.
 */
import { execFile, spawnSync } from 'node:child_process';
import { createPrivateKey, createPublicKey } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';
import test from 'ava';
import { exportPkcs12, parseCertificates, parseOneCertificate } from '../../certs/index.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { createTestPki } from '../helpers/pki.js';

failOnLeaks(test);

const run = promisify(execFile);

/** Tests must be declared synchronously, so probe for the binary synchronously. */
const haveOpenssl = spawnSync('openssl', ['version']).status === 0;
if (!haveOpenssl && process.env.CI !== undefined && process.env.CI !== '') {
  throw new Error('openssl is required in CI (Debian package "openssl")');
}
const opensslTest = haveOpenssl ? test : test.skip;
if (!haveOpenssl) console.warn('skipping openssl interoperability tests: install the Debian package "openssl"');

async function tempDir(t: { teardown(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'tether-openssl-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** `openssl verify` exit status and output. */
async function opensslVerify(args: string[]): Promise<{ ok: boolean; output: string }> {
  try {
    const { stdout, stderr } = await run('openssl', ['verify', ...args]);
    return { ok: true, output: stdout + stderr };
  } catch (reason) {
    const r = reason as { stdout?: string; stderr?: string };
    return { ok: false, output: `${r.stdout ?? ''}${r.stderr ?? ''}` };
  }
}

for (const algorithm of ['ecdsa-p256', 'rsa-3072'] as const) {
  opensslTest(`openssl verify accepts issued ${algorithm} chains and refuses expired and foreign ones`, async (t) => {
    const dir = await tempDir(t);
    const pki = await createTestPki({ algorithm });
    const files = {
      root: join(dir, 'root.pem'),
      intermediate: join(dir, 'intermediate.pem'),
      workload: join(dir, 'workload.pem'),
      server: join(dir, 'server.pem'),
      expired: join(dir, 'expired.pem'),
      foreign: join(dir, 'foreign.pem'),
      foreignIntermediate: join(dir, 'foreign-intermediate.pem'),
    };
    await writeFile(files.root, pki.trustBundlePem);
    await writeFile(files.intermediate, pki.ca.intermediateCertificatePem);
    await writeFile(files.workload, (await pki.agentCert()).certificatePem);
    await writeFile(files.server, (await pki.gatewayCert()).certificatePem);
    await writeFile(files.expired, (await pki.expiredAgentCert()).certificatePem);
    await writeFile(files.foreign, (await pki.untrustedAgentCert()).certificatePem);
    await writeFile(files.foreignIntermediate, pki.foreign.intermediateCertificatePem);

    const plain = await opensslVerify(['-CAfile', files.root, '-untrusted', files.intermediate, files.workload, files.server]);
    t.true(plain.ok, plain.output);
    t.regex(plain.output, /workload\.pem: OK/);
    t.regex(plain.output, /server\.pem: OK/);
    const asClient = await opensslVerify(['-x509_strict', '-purpose', 'sslclient', '-CAfile', files.root, '-untrusted', files.intermediate, files.workload]);
    t.true(asClient.ok, asClient.output);
    const asServer = await opensslVerify(['-x509_strict', '-purpose', 'sslserver', '-CAfile', files.root, '-untrusted', files.intermediate, files.server]);
    t.true(asServer.ok, asServer.output);

    const expired = await opensslVerify(['-CAfile', files.root, '-untrusted', files.intermediate, files.expired]);
    t.false(expired.ok);
    t.regex(expired.output, /certificate has expired/);
    const foreign = await opensslVerify(['-CAfile', files.root, '-untrusted', files.foreignIntermediate, files.foreign]);
    t.false(foreign.ok);
    t.regex(foreign.output, /unable to get (local )?issuer certificate/);
  });

  opensslTest(`openssl pkcs12 reads an exported ${algorithm} bundle (certificates and key) and refuses a wrong password`, async (t) => {
    const dir = await tempDir(t);
    const pki = await createTestPki({ algorithm });
    const issued = await pki.ca.issueServer({ dnsNames: ['lb.example.com'], algorithm });
    const password = 'correct horse ü';
    const p12 = join(dir, 'bundle.p12');
    await writeFile(p12, exportPkcs12({ keyPem: issued.privateKeyPem ?? '', chainPem: issued.chainPem, password, friendlyName: 'tether gateway' }));

    const certsOut = (await run('openssl', ['pkcs12', '-in', p12, '-passin', `pass:${password}`, '-nokeys'])).stdout;
    const certs = parseCertificates(certsOut);
    t.is(certs.length, 2);
    t.true(Buffer.from(certs[0]!.rawData).equals(Buffer.from(parseOneCertificate(issued.certificatePem).rawData)), 'leaf first');
    t.true(Buffer.from(certs[1]!.rawData).equals(Buffer.from(parseOneCertificate(pki.ca.intermediateCertificatePem).rawData)));
    t.regex(certsOut, /friendlyName: tether gateway/);

    const keyOut = (await run('openssl', ['pkcs12', '-in', p12, '-passin', `pass:${password}`, '-nocerts', '-nodes'])).stdout;
    const key = createPrivateKey(keyOut.slice(keyOut.indexOf('-----BEGIN')));
    const spki = createPublicKey(key).export({ format: 'der', type: 'spki' });
    t.true(spki.equals(Buffer.from(certs[0]!.publicKey.rawData)), 'the key matches the leaf');

    await t.throwsAsync(run('openssl', ['pkcs12', '-in', p12, '-passin', 'pass:wrong', '-nokeys']));
    // Node (OpenSSL underneath) can load it as a TLS identity too
    t.notThrows(() => tls.createSecureContext({ pfx: exportPkcs12({ keyPem: issued.privateKeyPem ?? '', chainPem: issued.chainPem, password }), passphrase: password }));
  });
}

test('exportPkcs12 refuses a key that does not belong to the leaf, and an empty password', async (t) => {
  const pki = await createTestPki();
  const a = await pki.agentCert();
  const b = await pki.agentCert();
  t.is(t.throws(() => exportPkcs12({ keyPem: a.key, chainPem: b.cert, password: 'x' }))?.message.startsWith('[CERT_KEY_MISMATCH]'), true);
  t.is(t.throws(() => exportPkcs12({ keyPem: a.key, chainPem: a.cert, password: '' }))?.message.startsWith('[PKCS12_BAD_PASSWORD]'), true);
});
