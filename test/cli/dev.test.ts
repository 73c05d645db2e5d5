/**
 * `npm start` (= `tether dev`) as a new user runs it: a child process, its printed instructions,
 * real requests through the gateway and the agent's tunnel, and a clean stop on SIGTERM.
 */
import test from 'ava';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDev } from '../helpers/dev-process.js';
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
  const dev = await startDev(['--state-dir', stateDir, '--listen', '127.0.0.1:0', '--control-port', '0']);
  t.teardown(() => dev.stop());
  const { clientUrl, host, printed } = dev;
  t.regex(clientUrl, /^http:\/\/127\.0\.0\.1:\d+$/, `stdout: ${printed.join('\n')}\nstderr: ${dev.stderr()}`);
  t.regex(dev.controlUrl, /^http:\/\/127\.0\.0\.1:\d+$/);
  t.is(host, 'demo.localhost');
  t.true(printed.some((line) => line.includes('spiffe://tether.local/cluster/demo/agent/dev-agent')));

  const token = (await readFile(join(stateDir, 'client-token'), 'utf8')).trim();
  const byHost = await get(`${clientUrl}/hello?x=1`, { authorization: `Bearer ${token}`, host });
  t.is(byHost.status, 200, byHost.body);
  const echoed = JSON.parse(byHost.body) as { path: string; forwarded: Record<string, string> };
  t.is(echoed.path, '/hello?x=1');
  t.is(echoed.forwarded['tether-subject'], 'dev');
  t.is(echoed.forwarded['tether-cluster'], 'demo');

  const byHeader = await get(`${clientUrl}/hello`, { authorization: `Bearer ${token}`, 'tether-cluster': 'demo' });
  t.is(byHeader.status, 200);
  const anonymous = await get(`${clientUrl}/hello`, { 'tether-cluster': 'demo' });
  t.is(anonymous.status, 401);
  t.is(anonymous.headers['tether-error'], 'UNAUTHENTICATED');

  t.is(await dev.stop(), 0, dev.stderr());
});
