/**
 * `npm start` (= `tether dev`) as a new user runs it: a child process, its printed instructions,
 * real requests through the gateway and the agent's tunnel, and a clean stop on SIGTERM.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { failOnLeaks } from '../helpers/leaks.js';

failOnLeaks(test);

function get(url: string, headers: Record<string, string>): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    req.end();
  });
}

test('tether dev starts everything, prints a client-url that works, and stops on SIGTERM', async (t) => {
  const stateDir = await mkdtemp(join(tmpdir(), 'tether-dev-'));
  t.teardown(() => rm(stateDir, { recursive: true, force: true }));
  const child = spawn(process.execPath, ['bin/tether.js', 'dev', '--state-dir', stateDir, '--listen', '127.0.0.1:0'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, TETHER_LOG_LEVEL: 'warn' },
  });
  const exited = once(child, 'exit');
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));

  const printed: string[] = [];
  const lines = createInterface({ input: child.stdout });
  let clientUrl = '';
  let host = '';
  for await (const line of lines) {
    printed.push(line);
    if (line.startsWith('client-url: ')) clientUrl = line.slice('client-url: '.length);
    if (line.startsWith('host: ')) host = line.slice('host: '.length);
    if (line.startsWith('Ctrl-C')) break;
  }
  t.regex(clientUrl, /^http:\/\/127\.0\.0\.1:\d+$/, `stdout: ${printed.join('\n')}\nstderr: ${stderr}`);
  t.is(host, 'demo.localhost');
  t.true(printed.some((line) => line.includes('spiffe://tether.local/cluster/demo/agent/dev-agent')));

  const token = (await readFile(join(stateDir, 'client-token'), 'utf8')).trim();
  const byHost = await get(`${clientUrl}/hello?x=1`, { authorization: `Bearer ${token}`, host });
  t.is(byHost.status, 200, byHost.body);
  const echoed = JSON.parse(byHost.body) as { path: string; forwarded: Record<string, string> };
  t.is(echoed.path, '/hello?x=1');
  t.is(echoed.forwarded['tether-subject'], 'user:dev@example.com');
  t.is(echoed.forwarded['tether-cluster'], 'demo');

  const byHeader = await get(`${clientUrl}/hello`, { authorization: `Bearer ${token}`, 'tether-cluster': 'demo' });
  t.is(byHeader.status, 200);
  const anonymous = await get(`${clientUrl}/hello`, { 'tether-cluster': 'demo' });
  t.is(anonymous.status, 401);
  t.is(anonymous.headers['tether-error'], 'UNAUTHENTICATED');

  child.kill('SIGTERM');
  const [code] = (await exited) as [number | null];
  t.is(code, 0, stderr);
});
