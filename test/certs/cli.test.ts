/**
 * `tether certs …` run as a real child process (`node bin/tether.js`) in a temporary folder.
 */
import { execFile } from 'node:child_process';
import { createPublicKey } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { generateCsr, parseCertificates, parseOneCertificate, subjectAltNames } from '../../certs/index.js';
import { failOnLeaks } from '../helpers/leaks.js';

failOnLeaks(test);

const BIN = resolve(fileURLToPath(new URL('../../bin/tether.js', import.meta.url)));

interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

function tether(cwd: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<RunResult> {
  return new Promise((done) => {
    execFile(process.execPath, [BIN, ...args], { cwd, env: { ...process.env, ...env }, timeout: 60_000 }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === 'number' ? error.code : 1;
      done({ code, stdout, stderr });
    });
  });
}

async function workDir(t: ExecutionContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'tether-cli-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

const mode = async (path: string): Promise<number> => (await stat(path)).mode & 0o777;

test('init, issue (workload and server), verify, inspect and export-p12 work end to end', async (t) => {
  const dir = await workDir(t);
  const init = await tether(dir, ['certs', 'init', '--dir', 'ca', '--trust-domain', 'cli.test']);
  t.is(init.code, 0, init.stderr);
  t.regex(init.stdout, /created CA for trust domain cli\.test \(ecdsa-p256\)/);
  t.is(await mode(join(dir, 'ca', 'root-ca.key')), 0o600);
  t.is(await mode(join(dir, 'ca', 'intermediate-ca.key')), 0o600);

  const again = await tether(dir, ['certs', 'init', '--dir', 'ca', '--trust-domain', 'cli.test']);
  t.is(again.code, 1);
  t.regex(again.stderr, /CA_EXISTS/);

  const [workload, server] = await Promise.all([
    tether(dir, ['certs', 'issue', '--dir', 'ca', '--workload', '--cluster', 'c9', '--agent', 'edge-1', '--out', 'agent']),
    tether(dir, ['certs', 'issue', '--dir', 'ca', '--server', '--dns', 'gw.cli.test', '--dns', 'localhost', '--ip', '127.0.0.1', '--out', 'gw', '--ttl', '2d']),
  ]);
  t.is(workload.code, 0, workload.stderr);
  t.is(server.code, 0, server.stderr);
  t.is(await mode(join(dir, 'agent.key')), 0o600);
  t.is(await mode(join(dir, 'gw.key')), 0o600);
  const agentChain = parseCertificates(await readFile(join(dir, 'agent.crt'), 'utf8'));
  t.is(agentChain.length, 2, 'leaf + intermediate');
  t.deepEqual(subjectAltNames(agentChain[0]!).uris, ['spiffe://cli.test/cluster/c9/agent/edge-1']);
  const gwLeaf = parseOneCertificate(await readFile(join(dir, 'gw.crt'), 'utf8'));
  t.deepEqual(subjectAltNames(gwLeaf).dnsNames, ['gw.cli.test', 'localhost']);
  const lifetime = gwLeaf.notAfter.getTime() - Date.now();
  t.true(lifetime > 2 * 86_400_000 - 120_000 && lifetime <= 2 * 86_400_000 + 5_000, `--ttl 2d gave ${lifetime} ms`);

  const [verifyAgent, verifyGw, inspect, p12] = await Promise.all([
    tether(dir, ['certs', 'verify', '--dir', 'ca', '--usage', 'client', '--require-spiffe', 'agent.crt']),
    tether(dir, ['certs', 'verify', '--dir', 'ca', '--usage', 'server', 'gw.crt']),
    tether(dir, ['certs', 'inspect', 'agent.crt']),
    tether(dir, ['certs', 'export-p12', '--key', 'gw.key', '--cert', 'gw.crt', '--password-env', 'P12_PASSWORD', '--out', 'gw.p12', '--name', 'gateway'], { P12_PASSWORD: 's3cret' }),
  ]);
  t.is(verifyAgent.code, 0, verifyAgent.stderr);
  t.regex(verifyAgent.stdout, /^OK spiffe:\/\/cli\.test\/cluster\/c9\/agent\/edge-1 \(serial [0-9a-f]+/);
  t.is(verifyGw.code, 0, verifyGw.stderr);
  t.regex(verifyGw.stdout, /^OK gw\.cli\.test, localhost, 127\.0\.0\.1/);
  t.is(inspect.code, 0, inspect.stderr);
  t.regex(inspect.stdout, /URI: +spiffe:\/\/cli\.test\/cluster\/c9\/agent\/edge-1/);
  t.regex(inspect.stdout, /Role: +CA \(pathLen 0\)/);
  // Issued for 1 h; on a loaded machine the inspect may run more than a minute after issuing.
  t.regex(inspect.stdout, /Status: +valid, expires in (59|60)m/);
  t.is(p12.code, 0, p12.stderr);
  t.is(await mode(join(dir, 'gw.p12')), 0o600);
  t.true((await stat(join(dir, 'gw.p12'))).size > 500);
});

test('verify refuses a chain from another CA and a revoked serial; issue --csr uses only the CSR key', async (t) => {
  const dir = await workDir(t);
  const [a, b] = await Promise.all([
    tether(dir, ['certs', 'init', '--dir', 'ca-a', '--trust-domain', 'a.test']),
    tether(dir, ['certs', 'init', '--dir', 'ca-b', '--trust-domain', 'b.test', '--algorithm', 'rsa-3072']),
  ]);
  t.is(a.code, 0, a.stderr);
  t.is(b.code, 0, b.stderr);
  const { csrPem, keys } = await generateCsr('ecdsa-p256', 'please-make-me-admin');
  await writeFile(join(dir, 'req.csr'), csrPem);
  const [fromB, fromCsr] = await Promise.all([
    tether(dir, ['certs', 'issue', '--dir', 'ca-b', '--workload', '--cluster', 'c', '--agent', 'x', '--out', 'b-agent']),
    tether(dir, ['certs', 'issue', '--dir', 'ca-a', '--workload', '--cluster', 'c', '--agent', 'y', '--csr', 'req.csr', '--out', 'csr-agent']),
  ]);
  t.is(fromB.code, 0, fromB.stderr);
  t.is(fromCsr.code, 0, fromCsr.stderr);
  await t.throwsAsync(stat(join(dir, 'csr-agent.key')), undefined, 'no key file when signing a CSR');
  const csrLeaf = parseOneCertificate(await readFile(join(dir, 'csr-agent.crt'), 'utf8'));
  const spki = createPublicKey({ key: Buffer.from(await globalThis.crypto.subtle.exportKey('spki', keys.publicKey)), format: 'der', type: 'spki' });
  t.true(Buffer.from(csrLeaf.publicKey.rawData).equals(spki.export({ format: 'der', type: 'spki' })));
  t.false(csrLeaf.subject.includes('admin'));

  const serial = (/serial: +([0-9a-f]+)/.exec(fromCsr.stdout) ?? [])[1] ?? 'missing';
  const [untrusted, revoked, rsaInspect, badArgs] = await Promise.all([
    tether(dir, ['certs', 'verify', '--dir', 'ca-a', 'b-agent.crt']),
    tether(dir, ['certs', 'verify', '--dir', 'ca-a', '--revoked', serial, 'csr-agent.crt']),
    tether(dir, ['certs', 'inspect', join('ca-b', 'root-ca.crt')]),
    tether(dir, ['certs', 'issue', '--dir', 'ca-a', '--workload', '--server', '--out', 'x']),
  ]);
  t.is(untrusted.code, 1);
  t.regex(untrusted.stderr, /CERT_UNTRUSTED/);
  t.is(revoked.code, 1);
  t.regex(revoked.stderr, /CERT_REVOKED/);
  t.regex(rsaInspect.stdout, /Key: +RSA 3072/);
  t.is(badArgs.code, 1);
  t.regex(badArgs.stderr, /INVALID_OPTIONS/);
  const missing = await tether(dir, ['certs', 'verify', '--dir', 'nowhere', 'b-agent.crt']);
  t.regex(missing.stderr, /CA_NOT_FOUND/);
});

test('rotate keeps the previous root trusted until --finish', async (t) => {
  const dir = await workDir(t);
  t.is((await tether(dir, ['certs', 'init', '--dir', 'ca', '--trust-domain', 'rot.test'])).code, 0);
  t.is((await tether(dir, ['certs', 'issue', '--dir', 'ca', '--workload', '--cluster', 'c', '--agent', 'old', '--out', 'old'])).code, 0);
  const rotate = await tether(dir, ['certs', 'rotate', '--dir', 'ca']);
  t.is(rotate.code, 0, rotate.stderr);
  t.regex(rotate.stdout, /holds 2 roots/);
  t.is(await mode(join(dir, 'ca', 'intermediate-ca.key')), 0o600);
  t.is((await tether(dir, ['certs', 'issue', '--dir', 'ca', '--workload', '--cluster', 'c', '--agent', 'new', '--out', 'new'])).code, 0);
  const [oldOk, newOk] = await Promise.all([tether(dir, ['certs', 'verify', '--dir', 'ca', 'old.crt']), tether(dir, ['certs', 'verify', '--dir', 'ca', 'new.crt'])]);
  t.is(oldOk.code, 0, oldOk.stderr);
  t.is(newOk.code, 0, newOk.stderr);
  t.is((await tether(dir, ['certs', 'rotate', '--dir', 'ca', '--finish'])).code, 0);
  const [oldGone, newStill] = await Promise.all([tether(dir, ['certs', 'verify', '--dir', 'ca', 'old.crt']), tether(dir, ['certs', 'verify', '--dir', 'ca', 'new.crt'])]);
  t.is(oldGone.code, 1);
  t.regex(oldGone.stderr, /CERT_UNTRUSTED/);
  t.is(newStill.code, 0, newStill.stderr);
});
