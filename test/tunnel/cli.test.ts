import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { failOnLeaks } from '../helpers/leaks.js';
import { createTestPki } from '../helpers/pki.js';
import { h1Request } from '../helpers/tunnel-clients.js';
import { AUDIENCE, ISSUER, createTokenIssuer } from '../helpers/tunnel-env.js';
import { startHttp1Upstream } from '../helpers/tunnel-upstreams.js';
import { TYPESCRIPT_LOADER } from '../helpers/typescript-loader.js';

failOnLeaks(test);

const script = fileURLToPath(new URL('../helpers/tunnel-cli-child.ts', import.meta.url));

function run(args: string[]): { child: ChildProcess; line: Promise<string> } {
  const child = spawn(process.execPath, ['--import', TYPESCRIPT_LOADER, script, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TETHER_LOG_LEVEL: 'silent' } });
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => {
    stderr += c.toString();
  });
  const line = new Promise<string>((resolve, reject) => {
    child.stdout?.once('data', (c: Buffer) => resolve(c.toString()));
    child.once('exit', (code) => reject(new Error(`exited ${String(code)}: ${stderr}`)));
  });
  line.catch(() => undefined);
  return { child, line };
}

test('tether gateway --config and tether agent --config carry a request; SIGTERM drains and exits 0', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'tether-cli-'));
  const upstream = await startHttp1Upstream();
  const children: ChildProcess[] = [];
  try {
    const pki = await createTestPki();
    const issuer = await createTokenIssuer();
    const gw = await pki.gatewayCert();
    const ag = await pki.agentCert({ clusterId: 'c1', agentId: 'cli' });
    await writeFile(join(dir, 'gw.key'), gw.key);
    await writeFile(join(dir, 'gw.crt'), gw.cert);
    await writeFile(join(dir, 'ca.pem'), pki.trustBundlePem);
    await writeFile(join(dir, 'agent.key'), ag.key);
    await writeFile(join(dir, 'agent.crt'), ag.cert);
    await writeFile(
      join(dir, 'gateway.yaml'),
      stringify({
        id: 'gw-cli',
        listen: { host: '127.0.0.1', port: 0 },
        tls: { keyFile: 'gw.key', certFile: 'gw.crt', caFile: 'ca.pem' },
        trustDomain: pki.trustDomain,
        clusters: ['c1'],
        auth: { mode: 'jwt', issuers: [{ issuer: ISSUER, audiences: [AUDIENCE], jwks: issuer.jwks }] },
        drainGraceMs: 1000,
      }),
    );
    const gateway = run(['gateway', '--config', join(dir, 'gateway.yaml')]);
    children.push(gateway.child);
    const address = /https:\/\/(\S+)/.exec(await gateway.line)?.[1];
    if (address === undefined) throw new Error('no gateway address');
    await writeFile(
      join(dir, 'agent.yaml'),
      stringify({
        gateways: [address],
        serverName: 'localhost',
        tls: { keyFile: 'agent.key', certFile: 'agent.crt', caFile: 'ca.pem' },
        routes: [{ prefix: '/', upstream: upstream.url }],
        backoff: { initialDelayMs: 50, maxDelayMs: 500 },
        drainGraceMs: 1000,
      }),
    );
    const agent = run(['agent', '--config', join(dir, 'agent.yaml')]);
    children.push(agent.child);
    t.regex(await agent.line, /agent dialing/);
    const token = await issuer.sign({ clusters: ['c1'] });
    // The agent dials in the background; retry (bounded) until its tunnel is up.
    let status = 0;
    const deadline = Date.now() + 15_000;
    while (status !== 200 && Date.now() < deadline) {
      const reply = await h1Request(address, pki.trustBundlePem, { token, headers: { 'tether-cluster': 'c1' } });
      status = reply.status;
      if (status !== 200) await new Promise((resolve) => setTimeout(resolve, 50));
    }
    t.is(status, 200);
    for (const child of [agent.child, gateway.child]) {
      const exited = once(child, 'exit');
      child.kill('SIGTERM');
      const [code] = (await exited) as [number | null];
      t.is(code, 0);
    }
  } finally {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await upstream.close();
    await rm(dir, { recursive: true, force: true });
  }
});
