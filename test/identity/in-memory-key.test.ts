/**
 * DESIGN.md I4, the in-memory key guarantee: the whole agent identity flow (dev issuer, CA on
 * disk, projected token file, identity exchange, certificate source with renewals) runs with one
 * temporary state folder for everything it writes, and afterwards no file under that folder holds
 * any of the agent's private keys, in any encoding, and the only PEM private-key blocks there are
 * the CA's and the dev issuer's own key files.
 *
 * A positive control runs the same scanner over a folder where an agent key *was* written, so the
 * scan cannot pass by finding nothing.
 */
import test from 'ava';
import { createPrivateKey } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { CertificateAuthority, verifyCertificateChain } from '../../certs/index.js';
import { CertificateSource } from '../../certs/certificate-source.js';
import type { CertificateMaterial } from '../../certs/certificate-source.js';
import { DEV_ISSUER_KEYS_FILE, DevOidcIssuer } from '../../certs/dev-oidc-issuer.js';
import { createIdentityExchange, InMemoryClusterIdentityRegistry, workloadCertificateIssuer } from '../../certs/identity-exchange.js';
import { tokenFileSource } from '../../certs/workload-token-file.js';
import { silentLogger } from '../../common/log.js';
import { createRegistry } from '../../common/metrics.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { AUDIENCE, SUBJECT } from './token-fixtures.js';

failOnLeaks(test);

/** The system temporary folder, before the flow test points TMPDIR into its state folder. */
const SYSTEM_TMP = tmpdir();

interface KeyNeedles {
  label: string;
  needles: { encoding: string; bytes: Buffer }[];
}

/** Every encoding of one private key we look for in files. */
function needlesFor(keyPem: string, label: string): KeyNeedles {
  const key = createPrivateKey(keyPem);
  const pkcs8 = key.export({ format: 'der', type: 'pkcs8' });
  const sec1 = key.export({ format: 'der', type: 'sec1' });
  const d = Buffer.from(String(key.export({ format: 'jwk' }).d), 'base64url');
  const pemBody = keyPem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, '');
  return {
    label,
    needles: [
      { encoding: 'PKCS#8 DER', bytes: pkcs8 },
      { encoding: 'SEC1 DER', bytes: sec1 },
      { encoding: 'raw private scalar', bytes: d },
      { encoding: 'PKCS#8 PEM first line', bytes: Buffer.from(pemBody.slice(0, 64)) },
      { encoding: 'scalar base64url (JWK d)', bytes: Buffer.from(d.toString('base64url')) },
      { encoding: 'scalar base64', bytes: Buffer.from(d.toString('base64')) },
      { encoding: 'scalar hex', bytes: Buffer.from(d.toString('hex')) },
    ],
  };
}

async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true, recursive: true });
  return entries.filter((entry) => entry.isFile()).map((entry) => join(entry.parentPath, entry.name));
}

interface ScanResult {
  files: number;
  bytes: number;
  keyHits: string[];
  privateKeyBlocks: string[];
}

async function scan(dir: string, keys: KeyNeedles[]): Promise<ScanResult> {
  const result: ScanResult = { files: 0, bytes: 0, keyHits: [], privateKeyBlocks: [] };
  for (const file of await filesUnder(dir)) {
    const content = await readFile(file);
    result.files += 1;
    result.bytes += content.length;
    const name = relative(dir, file);
    for (const key of keys) {
      for (const needle of key.needles) {
        if (content.includes(needle.bytes)) result.keyHits.push(`${name}: ${key.label} as ${needle.encoding}`);
      }
    }
    const lower = content.toString('latin1').toLowerCase();
    if (lower.includes('private key')) result.privateKeyBlocks.push(name);
  }
  return result;
}

test('the exchange and renewal flow writes no agent private key under its state folder', async (t) => {
  const state = await mkdtemp(join(SYSTEM_TMP, 'tether-state-'));
  t.teardown(() => rm(state, { recursive: true, force: true }));
  // Anything a library would put in the temporary folder lands in the state folder too.
  const savedTmpdir = process.env.TMPDIR;
  await mkdir(join(state, 'tmp'));
  process.env.TMPDIR = join(state, 'tmp');
  t.teardown(() => {
    if (savedTmpdir === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = savedTmpdir;
  });
  t.is(tmpdir(), join(state, 'tmp'));

  // Vendor side: a CA saved in the state folder, loaded back as the control plane would.
  const caDir = join(state, 'ca');
  await (await CertificateAuthority.create({ trustDomain: 'tether.test' })).save(caDir);
  const ca = await CertificateAuthority.load(caDir);

  // Cluster side: the dev issuer keeps its signing keys in the state folder, and the kubelet's
  // projected token lands in a file there.
  const issuer = new DevOidcIssuer({ stateDir: join(state, 'issuer') });
  t.teardown(() => issuer.close());
  await issuer.listen();
  const tokenDir = join(state, 'agent', 'serviceaccount');
  await mkdir(tokenDir, { recursive: true });
  const tokenPath = join(tokenDir, 'token');
  await writeFile(tokenPath, await issuer.mint({ subject: SUBJECT, audience: AUDIENCE, pod: 'tether-agent-0' }));

  const metrics = createRegistry();
  const identity = createIdentityExchange({
    ca,
    clusters: new InMemoryClusterIdentityRegistry([{ clusterId: 'cluster-a', issuer: issuer.issuer, audience: AUDIENCE, allowedSubjects: 'system:serviceaccount:tether:*' }]),
    certificateTtlMs: 3_000,
    metrics,
    logger: silentLogger(),
  });

  // Agent side: in-memory keys, certificates through the exchange, short lifetime so it renews.
  const source = new CertificateSource({
    issue: workloadCertificateIssuer({ tokenSource: tokenFileSource(tokenPath), exchange: (request) => identity.exchange(request), clusterId: 'cluster-a', agentId: 'agent-1' }),
    logger: silentLogger(),
  });
  t.teardown(() => source.close());
  const seen: CertificateMaterial[] = [];
  const renewed = new Promise<void>((resolve) => {
    source.subscribe((material) => {
      seen.push(material);
      if (seen.length >= 2) resolve();
    });
  });
  await source.start();
  // Between renewals the kubelet rotates the token file; the source must pick up the new one.
  await writeFile(tokenPath, await issuer.mint({ subject: SUBJECT, audience: AUDIENCE, pod: 'tether-agent-0' }));
  await renewed;
  await source.close();

  t.true(seen.length >= 2, 'the first certificate and at least one renewal');
  t.is(new Set(seen.map((material) => material.serialNumber)).size, seen.length, 'each renewal is a new certificate');
  t.is(new Set(seen.map((material) => material.keyPem)).size, seen.length, 'each renewal uses a new key');
  for (const material of seen) {
    const peer = await verifyCertificateChain(material.chainPem, { trustBundlePem: ca.trustBundlePem(), requireSpiffe: true, now: material.obtainedAt });
    t.like(peer, { clusterId: 'cluster-a', agentId: 'agent-1' });
  }
  const metric = await metrics.getSingleMetric('tether_identity_exchanges_total')?.get();
  t.is(metric?.values.find((value) => value.labels.result === 'ok')?.value, seen.length);

  const agentKeys = seen.map((material, index) => needlesFor(material.keyPem, `agent key #${index + 1}`));
  const result = await scan(state, agentKeys);
  t.log(`scanned ${result.files} files (${result.bytes} bytes) for ${agentKeys.length} agent keys x ${agentKeys[0]?.needles.length ?? 0} encodings`);
  t.true(result.files >= 8, 'the flow wrote its CA, issuer and token files there');
  t.deepEqual(result.keyHits, [], 'no agent key material on disk');
  const known = [join('ca', 'root-ca.key'), join('ca', 'intermediate-ca.key'), join('issuer', DEV_ISSUER_KEYS_FILE)];
  t.deepEqual(result.privateKeyBlocks.sort(), known.sort(), 'the only private keys on disk are the CA and dev issuer keys');
});

test('positive control: the scanner finds an agent key written in any of its encodings', async (t) => {
  const dir = await mkdtemp(join(SYSTEM_TMP, 'tether-scan-control-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const source = new CertificateSource({
    issue: async (csrPem) => {
      const ca = await CertificateAuthority.create({ trustDomain: 'tether.test' });
      return ca.signCsr(csrPem, { kind: 'workload', clusterId: 'c', agentId: 'a' });
    },
    logger: silentLogger(),
  });
  t.teardown(() => source.close());
  await source.start();
  const { keyPem } = source.current();
  const key = needlesFor(keyPem, 'agent key');
  await source.close();
  const [pkcs8, sec1, scalar] = key.needles;
  await writeFile(join(dir, 'key.der'), Buffer.concat([Buffer.from('junk'), pkcs8?.bytes ?? Buffer.alloc(0)]));
  await writeFile(join(dir, 'sec1.bin'), sec1?.bytes ?? Buffer.alloc(0));
  await writeFile(join(dir, 'scalar.bin'), Buffer.concat([Buffer.alloc(7), scalar?.bytes ?? Buffer.alloc(0)]));
  await writeFile(join(dir, 'jwk.json'), JSON.stringify(createPrivateKey(keyPem).export({ format: 'jwk' })));
  await writeFile(join(dir, 'key.pem'), keyPem);
  const result = await scan(dir, [key]);
  for (const file of ['key.der', 'sec1.bin', 'scalar.bin', 'jwk.json', 'key.pem']) {
    t.true(result.keyHits.some((hit) => hit.startsWith(`${file}:`)), `${file} detected`);
  }
  t.deepEqual(result.privateKeyBlocks, ['key.pem']);
});
