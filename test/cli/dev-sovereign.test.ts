/**
 * `tether dev --sovereign` as a user runs it: a child process, its printed instructions, and the
 * printed requests made as printed (the curl lines through `sh -c` when curl is installed, and the
 * same requests from Node): the reader token gets 200 from the demo upstream, the token without
 * the role 403 RBAC_DENIED, none 401, and the vendor's gateway 403 CLUSTER_SOVEREIGN. With HAProxy
 * in front (skipped with a message where the haproxy package is missing, unless CI is set), and
 * without it (HAPROXY_BIN pointing nowhere: it says how to install it and the listener is reached
 * directly with a PROXY header).
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { startDev } from '../helpers/dev-process.js';
import type { DevProcess } from '../helpers/dev-process.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { proxyV1, sovereignRequest } from '../sovereign/fixtures.js';
import { HAPROXY_PACKAGE, findHaproxy } from '../sovereign/haproxy.js';

failOnLeaks(test);

const ci = process.env.CI !== undefined && process.env.CI !== '';
const curlBinary = ['/usr/bin/curl', '/bin/curl', '/usr/local/bin/curl'].find((candidate) => existsSync(candidate)) ?? null;

function field(dev: DevProcess, name: string): string {
  const line = dev.printed.find((l) => l.startsWith(`${name}: `));
  return line === undefined ? '' : line.slice(name.length + 2);
}

/** The printed `curl` lines with the status each one says it gets (`# 200`, `# 403 RBAC_DENIED`, ...). */
function printedCurls(dev: DevProcess): Array<{ command: string; status: number; code: string | null }> {
  return dev.printed.flatMap((line) => {
    const match = /^ {2}(curl .*?)\s+# (\d{3})(?: ([A-Z_]+))?/.exec(line);
    return match === null ? [] : [{ command: match[1] as string, status: Number(match[2]), code: match[3] ?? null }];
  });
}

function shell(command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('/bin/sh', ['-c', command], { timeout: 20_000 }, (error, stdout, stderr) => (error === null ? resolve(stdout) : reject(new Error(`${command}: ${stderr || error.message}`))));
  });
}

function plainGet(url: string, headers: Record<string, string>): Promise<{ status: number; code: unknown }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { headers, agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, code: res.headers['tether-error'] }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function run(t: ExecutionContext, haproxy: boolean): Promise<void> {
  const stateDir = await mkdtemp(join(tmpdir(), 'tether-dev-sovereign-'));
  t.teardown(() => rm(stateDir, { recursive: true, force: true }));
  const dev = await startDev(['--sovereign', '--state-dir', stateDir, '--listen', '127.0.0.1:0', '--control-listen', '127.0.0.1:0'], undefined, haproxy ? {} : { HAPROXY_BIN: join(stateDir, 'no-haproxy-here') });
  t.teardown(() => dev.stop());
  const url = field(dev, 'sovereign-url');
  t.regex(url, /^https:\/\/127\.0\.0\.1:\d+$/, `stdout: ${dev.printed.join('\n')}\nstderr: ${dev.stderr()}`);
  t.is(field(dev, 'sovereign-haproxy'), haproxy ? 'yes' : 'no');
  const text = dev.printed.join('\n');
  if (haproxy) t.regex(text, /HAProxy on 127\.0\.0\.1:\d+ \(TLS passed through, send-proxy-v2\)/);
  else t.true(text.includes(`haproxy is not installed (Debian package "${HAPROXY_PACKAGE}": apt-get install ${HAPROXY_PACKAGE})`), text);

  // The printed requests, as printed.
  const curls = printedCurls(dev);
  t.deepEqual(
    curls.map((c) => [c.status, c.code]),
    [
      [200, null],
      [403, 'RBAC_DENIED'],
      [401, 'UNAUTHENTICATED'],
      [403, 'CLUSTER_SOVEREIGN'],
    ],
  );
  for (const c of curls.slice(0, 3)) t.is(c.command.includes('--haproxy-protocol'), !haproxy, c.command);
  if (curlBinary !== null) {
    for (const c of curls) {
      const out = await shell(c.command);
      t.regex(out, new RegExp(`^HTTP/1\\.1 ${c.status} `), `${c.command}\n${out}`);
      if (c.code !== null) t.regex(out, new RegExp(`^tether-error: ${c.code}\\r?$`, 'mi'), c.command);
    }
  } else t.log('curl is not installed: the printed requests are made from Node only');

  // The same from Node.
  const { port } = new URL(url);
  const ca = await readFile(join(stateDir, 'trust-bundle.pem'), 'utf8');
  const token = async (name: string): Promise<string> => (await readFile(join(stateDir, 'sovereign', name), 'utf8')).trim();
  const preamble = haproxy ? undefined : proxyV1({ address: '127.0.0.1', port: 40_000 }, { address: '127.0.0.1', port: Number(port) });
  const ask = (headers: Record<string, string>) => sovereignRequest(Number(port), ca, { path: '/hello', headers, ...(preamble === undefined ? {} : { preamble }) });
  const ok = await ask({ authorization: `Bearer ${await token('reader-token')}` });
  t.is(ok.status, 200, ok.body);
  t.like(JSON.parse(ok.body), { service: 'tether demo upstream', path: '/hello' });
  const noRole = await ask({ authorization: `Bearer ${await token('no-role-token')}` });
  t.deepEqual([noRole.status, noRole.headers['tether-error']], [403, 'RBAC_DENIED']);
  const clientToken = (await readFile(join(stateDir, 'client-token'), 'utf8')).trim();
  const vendorToken = await ask({ authorization: `Bearer ${clientToken}` });
  t.is(vendorToken.status, 401, "the vendor issuer's token is refused by the customer's listener");
  t.deepEqual(await plainGet(`${dev.clientUrl}/hello`, { authorization: `Bearer ${clientToken}`, 'tether-cluster': 'demo' }), { status: 403, code: 'CLUSTER_SOVEREIGN' });

  t.is(await dev.stop(), 0, dev.stderr());
}

if (findHaproxy() === null && !ci) {
  test.skip(`tether dev --sovereign with HAProxy: not run, ${HAPROXY_PACKAGE} is not installed (apt-get install ${HAPROXY_PACKAGE})`, () => undefined);
} else {
  test('tether dev --sovereign with HAProxy in front: the printed requests get 200, 403, 401 and the vendor gateway 403 CLUSTER_SOVEREIGN', async (t) => {
    if (findHaproxy() === null) return t.fail(`no haproxy binary (CI requires the Debian package "${HAPROXY_PACKAGE}")`);
    await run(t, true);
  });
}

test('tether dev --sovereign without haproxy: says how to install it, the listener is reached directly with a PROXY header, the printed requests work', (t) => run(t, false));
