/**
 * `tether sovereignty keygen|sign|verify` as real child processes (`node bin/tether.js`), and the
 * documents they make read by a real agent through `sovereignty.customerKeyFile`.
 */
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { Agent } from '../../agent/index.js';
import { importCustomerPublicKey, verifyModeDocument } from '../../agent/mode-document.js';
import type { ModeRefusal } from '../../agent/sovereignty.js';
import { silentLogger } from '../../common/log.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { createTestPki } from '../helpers/pki.js';
import { nextEvent } from './mode-fixtures.js';

failOnLeaks(test);

const BIN = resolve(fileURLToPath(new URL('../../bin/tether.js', import.meta.url)));

interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

function tether(cwd: string, args: string[]): Promise<RunResult> {
  return new Promise((done) => {
    execFile(process.execPath, [BIN, ...args], { cwd, timeout: 60_000 }, (error, stdout, stderr) => {
      done({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1, stdout, stderr });
    });
  });
}

async function workDir(t: ExecutionContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'tether-sovereignty-cli-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test.serial('keygen, sign and verify: the customer signs, the agent side verifies; a wrong key, another cluster or a tampered file exit 1 with their codes', async (t) => {
  const dir = await workDir(t);
  const keygen = await tether(dir, ['sovereignty', 'keygen', '--out', 'customer']);
  t.is(keygen.code, 0, keygen.stderr);
  t.regex(keygen.stdout, /key thumbprint \(RFC 7638, SHA-256\): [A-Za-z0-9_-]{43}/);
  t.is((await stat(join(dir, 'customer.key'))).mode & 0o777, 0o600);
  const [again, other, sign] = await Promise.all([
    tether(dir, ['sovereignty', 'keygen', '--out', 'customer']),
    tether(dir, ['sovereignty', 'keygen', '--out', 'other', '--algorithm', 'p-256']),
    tether(dir, ['sovereignty', 'sign', '--key', 'customer.key', '--cluster', 'c1', '--mode', 'sovereign', '--seq', '41', '--out', 'mode.jws']),
  ]);
  t.is(again.stderr.trim(), 'tether: FILE_EXISTS: customer.key exists; pass --force to overwrite');
  t.is(other.code, 0, other.stderr);
  t.is(sign.code, 0, sign.stderr);
  t.regex(sign.stdout, /^signed mode\.jws: cluster c1, mode sovereign, seq 41, issued /);
  const document = await verifyModeDocument(await readFile(join(dir, 'mode.jws'), 'utf8'), importCustomerPublicKey(await readFile(join(dir, 'customer.pub.pem'), 'utf8')), 'c1');
  t.like(document, { cluster: 'c1', mode: 'sovereign', seq: 41, alg: 'EdDSA' });

  const [verify, signP256] = await Promise.all([
    tether(dir, ['sovereignty', 'verify', '--public-key', 'customer.pub.pem', '--file', 'mode.jws', '--cluster', 'c1']),
    tether(dir, ['sovereignty', 'sign', '--key', 'other.key', '--cluster', 'c1', '--mode', 'tunnel', '--out', 'p256.jws']),
  ]);
  t.is(verify.code, 0, verify.stderr);
  t.is(signP256.code, 0, signP256.stderr);
  t.regex(verify.stdout, /^valid: cluster c1, mode sovereign, seq 41, issued .*, alg EdDSA$/m);

  const refusal = async (args: string[]): Promise<string> => {
    const run = await tether(dir, args);
    t.is(run.code, 1, run.stdout);
    return /^tether: ([A-Z_]+):/.exec(run.stderr)?.[1] ?? run.stderr;
  };
  const [header, , signature] = (await readFile(join(dir, 'mode.jws'), 'utf8')).trim().split('.');
  const tunnelPayload = Buffer.from(JSON.stringify({ v: 1, cluster: 'c1', mode: 'tunnel', seq: 42, iat: 1 })).toString('base64url');
  await writeFile(join(dir, 'tampered.jws'), `${header}.${tunnelPayload}.${signature}\n`);
  await writeFile(join(dir, 'unsigned.json'), JSON.stringify({ v: 1, cluster: 'c1', mode: 'tunnel', seq: 42, iat: 1 }));
  // P-256 signs with ES256.
  const verifyP256 = tether(dir, ['sovereignty', 'verify', '--public-key', 'other.pub.pem', '--file', 'p256.jws']);
  const codes = await Promise.all([
    refusal(['sovereignty', 'verify', '--public-key', 'other.pub.pem', '--file', 'mode.jws']),
    refusal(['sovereignty', 'verify', '--public-key', 'customer.pub.pem', '--file', 'mode.jws', '--cluster', 'c2']),
    refusal(['sovereignty', 'verify', '--public-key', 'customer.pub.pem', '--file', 'tampered.jws']),
    refusal(['sovereignty', 'verify', '--public-key', 'customer.pub.pem', '--file', 'unsigned.json']),
    refusal(['sovereignty', 'verify', '--public-key', 'customer.key', '--file', 'mode.jws']),
    refusal(['sovereignty', 'sign', '--key', 'customer.pub.pem', '--cluster', 'c1', '--mode', 'tunnel', '--out', 'x.jws']),
  ]);
  t.deepEqual(codes, ['MODE_BAD_SIGNATURE', 'MODE_WRONG_CLUSTER', 'MODE_BAD_SIGNATURE', 'MODE_UNSIGNED', 'MODE_KEY_INVALID', 'MODE_KEY_INVALID']);

  t.regex((await verifyP256).stdout, /alg ES256/);
});

test.serial('an agent pinning the CLI-made public key file takes the CLI-signed document and refuses an older one', async (t) => {
  const dir = await workDir(t);
  t.is((await tether(dir, ['sovereignty', 'keygen', '--out', 'customer'])).code, 0);
  t.is((await tether(dir, ['sovereignty', 'sign', '--key', 'customer.key', '--cluster', 'c1', '--mode', 'sovereign', '--out', 'mode.jws'])).code, 0);
  const agent = new Agent({
    gateways: ['127.0.0.1:9'],
    tls: { key: '', cert: '', ca: '' },
    logger: silentLogger(),
    sovereignty: { clusterId: 'c1', customerKeyFile: join(dir, 'customer.pub.pem'), modeFile: join(dir, 'mode.jws'), pollMs: 60_000 },
  });
  t.teardown(() => agent.close());
  await agent.start();
  t.is(agent.mode, 'sovereign');
  const seq = agent.modeDocument?.seq ?? 0;
  t.true(seq > 1_600_000_000_000, 'the default seq is the signing time in ms');
  t.deepEqual(agent.readiness().details?.knownGateways, []);

  // Signed beside the watched file, then moved in once the test listens (a child process may take seconds here).
  t.is((await tether(dir, ['sovereignty', 'sign', '--key', 'customer.key', '--cluster', 'c1', '--mode', 'tunnel', '--seq', '5', '--out', 'older.jws'])).code, 0);
  const refused = nextEvent<[ModeRefusal]>(agent.events, 'modeRefused');
  await rename(join(dir, 'older.jws'), join(dir, 'mode.jws'));
  await agent.reloadMode();
  t.is((await refused)[0].code, 'MODE_REPLAYED');
  t.is(agent.mode, 'sovereign');
  t.is(agent.modeDocument?.seq, seq);
});

/** Keys, a sovereign document (seq 3) and the agent's TLS files in `dir`, made by the CLI and the test PKI. */
async function cliAgentFiles(t: ExecutionContext, dir: string): Promise<Awaited<ReturnType<typeof createTestPki>>> {
  t.is((await tether(dir, ['sovereignty', 'keygen', '--out', 'customer'])).code, 0);
  t.is((await tether(dir, ['sovereignty', 'sign', '--key', 'customer.key', '--cluster', 'c1', '--mode', 'sovereign', '--seq', '3', '--out', 'mode.jws'])).code, 0);
  const pki = await createTestPki();
  const cert = await pki.agentCert({ clusterId: 'c1', agentId: 'cli' });
  await writeFile(join(dir, 'agent.key'), cert.key);
  await writeFile(join(dir, 'agent.crt'), cert.cert);
  await writeFile(join(dir, 'ca.pem'), pki.trustBundlePem);
  return pki;
}

/** `tether agent --config <dir>/agent.yaml` from another folder; resolves with its first line and admin URL. */
async function startCliAgent(t: ExecutionContext, dir: string, yaml: string[]): Promise<{ line: string; admin: string; stop(): Promise<{ code: number | null; stderr: string }> }> {
  await writeFile(join(dir, 'agent.yaml'), [...yaml, ''].join('\n'));
  // Started from another folder: the relative paths are the config file's.
  const child = spawn(process.execPath, [BIN, 'agent', '--config', join(dir, 'agent.yaml')], { cwd: tmpdir(), stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TETHER_LOG_LEVEL: 'silent' } });
  const exited = once(child, 'exit');
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const [first] = (await Promise.race([once(child.stdout, 'data'), exited.then(() => [Buffer.from(`exited: ${stderr}`)])])) as [Buffer];
  const line = first.toString();
  return {
    line,
    admin: /admin on (http:\S+)/.exec(line)?.[1] ?? '',
    stop: async () => {
      child.kill('SIGTERM');
      const [code] = (await exited) as [number | null];
      return { code, stderr };
    },
  };
}

const AGENT_YAML = ['gateways: [127.0.0.1:9]', 'tls: { keyFile: agent.key, certFile: agent.crt, caFile: ca.pem }', 'admin: { host: 127.0.0.1, port: 0 }', 'drainGraceMs: 500'];

test.serial('tether agent --config with sovereignty (paths relative to the file) starts sovereign: no tunnel, mode in /readyz and /metrics; SIGTERM exits 0', async (t) => {
  const dir = await workDir(t);
  await cliAgentFiles(t, dir);
  const agent = await startCliAgent(t, dir, [...AGENT_YAML, 'sovereignty: { clusterId: c1, customerKeyFile: customer.pub.pem, modeFile: mode.jws, stateFile: state.json }']);
  t.regex(agent.line, /^agent in sovereign mode \(customer-signed document seq 3\): no tunnel is dialed; admin on (http:\S+)/);
  const ready = (await (await fetch(`${agent.admin}/readyz`, { headers: { connection: 'close' } })).json()) as Record<string, unknown>;
  t.like(ready, { ready: true, mode: 'sovereign', modeSeq: 3, readyConnections: 0, knownGateways: [] });
  const metrics = await (await fetch(`${agent.admin}/metrics`, { headers: { connection: 'close' } })).text();
  t.regex(metrics, /tether_agent_mode\{mode="sovereign"[^}]*\} 1/);
  t.regex(metrics, /tether_agent_mode_document_seq\{[^}]*\} 3/);
  t.like(JSON.parse(await readFile(join(dir, 'state.json'), 'utf8')) as object, { cluster: 'c1', seq: 3 });
  const { code, stderr } = await agent.stop();
  t.is(code, 0, stderr);
});

test.serial('tether agent --config with sovereignty.listener (certificate, key and JWKS files relative to the config file) serves the sovereign listener and says where', async (t) => {
  const dir = await workDir(t);
  const pki = await cliAgentFiles(t, dir);
  const listener = await pki.gatewayCert({ dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] });
  await writeFile(join(dir, 'listener.crt'), listener.cert);
  await writeFile(join(dir, 'listener.key'), listener.key);
  await writeFile(join(dir, 'jwks.json'), JSON.stringify({ keys: [{ kty: 'EC', crv: 'P-256', x: 'f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU', y: 'x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0', kid: 'k' }] }));
  const agent = await startCliAgent(t, dir, [
    ...AGENT_YAML,
    'xds: {}',
    'sovereignty:',
    '  clusterId: c1',
    '  customerKeyFile: customer.pub.pem',
    '  modeFile: mode.jws',
    '  listener:',
    '    address: 127.0.0.1',
    '    tls: { certFile: listener.crt, keyFile: listener.key }',
    '    jwt: { issuer: https://idp.customer.test, audiences: [tether-data], jwks: { file: jwks.json } }',
    '    rbac: { policies: { anyone: { principals: [{ claim: roles, includes: reader }] } } }',
    '    routes: [{ prefix: /, upstream: "http://127.0.0.1:9" }]',
  ]);
  t.regex(agent.line, /^agent in sovereign mode \(customer-signed document seq 3\): no tunnel is dialed; sovereign listener on 127\.0\.0\.1:\d+; admin on http:/);
  const ready = (await (await fetch(`${agent.admin}/readyz`, { headers: { connection: 'close' } })).json()) as Record<string, unknown>;
  t.like(ready, { ready: true, mode: 'sovereign', sovereignListener: { serving: true } });
  const metrics = await (await fetch(`${agent.admin}/metrics`, { headers: { connection: 'close' } })).text();
  t.regex(metrics, /^tether_agent_sovereign_listener_up\{[^}]*\} 1$/m);
  const { code, stderr } = await agent.stop();
  t.is(code, 0, stderr);
});
