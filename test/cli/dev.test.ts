/**
 * `npm start` (= `tether dev`) as a new user runs it: a child process, its printed instructions,
 * real requests through the gateway and the agent's tunnel, and a clean stop on SIGTERM.
 */
import test, { type ExecutionContext } from 'ava';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { request } from 'node:http';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDev, type DevProcess } from '../helpers/dev-process.js';
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
  const dev = await startDev(['--state-dir', stateDir, '--listen', '127.0.0.1:0', '--control-listen', '127.0.0.1:0']);
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

async function tempStateDir(t: ExecutionContext): Promise<string> {
  const stateDir = await mkdtemp(join(tmpdir(), 'tether-dev-'));
  t.teardown(() => rm(stateDir, { recursive: true, force: true }));
  return stateDir;
}

async function startReleased(t: ExecutionContext, args: string[]): Promise<DevProcess> {
  const dev = await startDev(args);
  t.teardown(async () => {
    await dev.stop();
  });
  return dev;
}

test('two tether dev side by side, every port chosen by the system: both start and both answer', async (t) => {
  const ports = ['--listen', '127.0.0.1:0', '--control-listen', '127.0.0.1:0'];
  const [stateA, stateB] = await Promise.all([tempStateDir(t), tempStateDir(t)]);
  const both = await Promise.all([startReleased(t, ['--state-dir', stateA, ...ports]), startReleased(t, ['--state-dir', stateB, ...ports])]);
  for (const dev of both) t.regex(dev.clientUrl, /^http:\/\/127\.0\.0\.1:\d+$/, `stdout: ${dev.printed.join('\n')}\nstderr: ${dev.stderr()}`);
  const [a, b] = both as [DevProcess, DevProcess];
  t.not(a.clientUrl, b.clientUrl);
  t.not(a.controlUrl, b.controlUrl);

  for (const [dev, stateDir] of [[a, stateA], [b, stateB]] as const) {
    const token = (await readFile(join(stateDir, 'client-token'), 'utf8')).trim();
    const through = await get(`${dev.clientUrl}/hello`, { authorization: `Bearer ${token}`, host: dev.host });
    t.is(through.status, 200, through.body);
    const health = await get(`${dev.controlUrl}/healthz`, {});
    t.is(health.status, 200, health.body);
  }
  // Each instance's token is its own issuer's: one gateway does not take the other's.
  const tokenA = (await readFile(join(stateA, 'client-token'), 'utf8')).trim();
  t.is((await get(`${b.clientUrl}/hello`, { authorization: `Bearer ${tokenA}`, host: b.host })).status, 401);

  t.deepEqual(await Promise.all([a.stop(), b.stop()]), [0, 0], `${a.stderr()}\n${b.stderr()}`);
});

/** A plain TCP server holding a loopback port chosen by the system. */
async function occupyPort(t: ExecutionContext): Promise<number> {
  const holder: Server = createServer();
  await new Promise<void>((resolve, reject) => {
    holder.once('error', reject);
    holder.listen(0, '127.0.0.1', resolve);
  });
  t.teardown(() => new Promise<void>((resolve) => holder.close(() => resolve())));
  return (holder.address() as AddressInfo).port;
}

for (const flag of ['--control-listen', '--listen'] as const) {
  test(`a taken ${flag} port: PORT_IN_USE naming the address and ${flag}, exit 1, no stack`, async (t) => {
    const port = await occupyPort(t);
    const ports = { '--listen': '127.0.0.1:0', '--control-listen': '127.0.0.1:0', [flag]: `127.0.0.1:${port}` };
    const dev = await startReleased(t, ['--state-dir', await tempStateDir(t), ...Object.entries(ports).flat()]);
    const code = await dev.exited();
    const stderr = dev.stderr();
    t.is(code, 1, stderr);
    t.is(dev.clientUrl, '', 'it never printed that it is running');
    t.is(
      stderr,
      `tether: PORT_IN_USE: ${flag} 127.0.0.1:${port} is taken (EADDRINUSE); choose another with ${flag} HOST:PORT, or port 0\n`,
    );
  });
}
