/**
 * The README's walkthrough, run exactly as written (the shell block between the walkthrough
 * markers) against a fresh `tether dev`: register a task, upload its input through a signed URL,
 * run it, watch its phases, download its output through a signed link.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO, startDev } from '../helpers/dev-process.js';
import { failOnLeaks } from '../helpers/leaks.js';

failOnLeaks(test);

const WALKTHROUGH_LIMIT_MS = 60_000;

async function walkthroughBlock(): Promise<string> {
  const readme = await readFile(join(REPO, 'README.md'), 'utf8');
  const match = /<!-- walkthrough:start -->\s*```sh\n([\s\S]*?)```\s*<!-- walkthrough:end -->/.exec(readme);
  if (match?.[1] === undefined) throw new Error('README.md has no walkthrough block');
  return match[1];
}

test('the README walkthrough works as written', async (t) => {
  const cwd = await mkdtemp(join(tmpdir(), 'tether-walkthrough-'));
  t.teardown(() => rm(cwd, { recursive: true, force: true }));
  await symlink(join(REPO, 'bin'), join(cwd, 'bin'));
  const dev = await startDev(['--listen', '127.0.0.1:0', '--control-listen', '127.0.0.1:0'], cwd);
  t.teardown(() => dev.stop());
  t.truthy(dev.clientUrl, dev.stderr());

  const script = await walkthroughBlock();
  const shell = spawn('bash', ['-euo', 'pipefail', '-c', script], {
    cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, TETHER_GATEWAY_URL: dev.clientUrl, TETHER_CONTROL_URL: dev.controlUrl },
  });
  let out = '';
  let err = '';
  shell.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
  shell.stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
  const limit = setTimeout(() => shell.kill('SIGKILL'), WALKTHROUGH_LIMIT_MS);
  const [code] = (await once(shell, 'exit')) as [number | null];
  clearTimeout(limit);
  t.is(code, 0, `stdout:\n${out}\nstderr:\n${err}\ndev stderr:\n${dev.stderr()}`);

  t.regex(out, /^tether-blob:\/\/demo-data\/uploads\/dev\/demo\/development\/.+\/input\.txt$/m);
  t.regex(out, /"phase": "PHASE_INITIALIZING"[\s\S]*"phase": "PHASE_RUNNING"[\s\S]*"phase": "PHASE_SUCCEEDED"/);
  t.true(out.trimEnd().endsWith('HELLO FROM THE DATA PLANE'), out);
  t.is(await readFile(join(cwd, 'shout.txt'), 'utf8'), 'HELLO FROM THE DATA PLANE\n');
  t.is(await dev.stop(), 0);
});
