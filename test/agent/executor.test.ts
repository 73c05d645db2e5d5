import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { create } from '@bufbuild/protobuf';
import anyTest from 'ava';
import type { TestFn } from 'ava';
import { downloadToFile } from '../../agent/dataproxy/index.js';
import { Executor } from '../../agent/executor/index.js';
import type { ExecutorEvent, ExecutorOptions, ExecutorRun } from '../../agent/executor/index.js';
import * as pb from '../../control/gen/tether/control/v1/control_pb.js';
import { Phase } from '../../control/phases.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { md5, startFixture } from './dataproxy-fixture.js';
import type { Fixture } from './dataproxy-fixture.js';

interface Context {
  fixture: Fixture;
  events: ExecutorEvent[];
  executor: Executor;
  scratch: string;
  make(options?: Partial<ExecutorOptions>): Executor;
  cleanup(): Promise<void>;
}

const test = anyTest as TestFn<Context>;
failOnLeaks(test);

const NODE = process.execPath;

test.beforeEach(async (t) => {
  const fixture = await startFixture();
  const events: ExecutorEvent[] = [];
  const executors: Executor[] = [];
  const scratch = await mkdtemp(join(tmpdir(), 'tether-executor-'));
  const make = (options: Partial<ExecutorOptions> = {}): Executor => {
    const executor = new Executor({ workDir: join(fixture.dir, 'work'), urls: fixture.dataproxy, onEvent: (event) => events.push(event), killGraceMs: 300, registry: fixture.registry, ...options });
    executors.push(executor);
    return executor;
  };
  const cleanup = async (): Promise<void> => {
    await Promise.all(executors.map((executor) => executor.close()));
    await fixture.close();
    await rm(scratch, { recursive: true, force: true });
  };
  t.context = { fixture, events, scratch, make, cleanup, executor: make() };
});

test.afterEach.always(async (t) => {
  await t.context.cleanup();
});

function run(runId: string, script: string, extra: Partial<ExecutorRun> = {}): ExecutorRun {
  return { runId, command: NODE, args: ['-e', script], env: {}, inputs: {}, outputPrefix: '', timeoutSec: 30, maxOutputBytes: 0, scope: { org: 'o', project: 'p', domain: 'dev' }, ...extra };
}

async function putInput(fixture: Fixture, key: string, body: string): Promise<string> {
  const location = await fixture.dataproxy.createUploadLocationForUri({ uri: `tether-blob://dp1/${key}`, contentMd5: md5(body) });
  const { Readable } = await import('node:stream');
  await fixture.store.write(key, Readable.from([Buffer.from(body)]), { md5: md5(body), maxBytes: 1 << 20 });
  return location.nativeUrl;
}

function phases(events: ExecutorEvent[], runId: string): Phase[] {
  return events.filter((event) => event.runId === runId).map((event) => event.phase);
}

/** Gone = no such process, or a zombie waiting for a reaper (it runs no code). */
function isGone(pid: number): boolean {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return fields.slice(fields.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

async function waitFor(condition: () => boolean, what: string, limitMs = 5000): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

const UPPER = `
const fs = require('node:fs'), path = require('node:path');
const text = fs.readFileSync(path.join(process.env.TETHER_INPUTS_DIR, 'text'), 'utf8');
fs.writeFileSync(path.join(process.env.TETHER_OUTPUTS_DIR, 'upper.txt'), text.toUpperCase() + process.env.GREETING);
fs.mkdirSync(path.join(process.env.TETHER_OUTPUTS_DIR, 'parts'));
fs.writeFileSync(path.join(process.env.TETHER_OUTPUTS_DIR, 'parts', 'a.txt'), 'part a');
console.log('done, cwd=' + path.basename(process.cwd()) + ' agentSecret=' + (process.env.AGENT_SECRET ?? 'none'));
`;

test('success: an input comes in through a signed link, the uppercased output goes out through a signed upload', async (t) => {
  const { fixture, events } = t.context;
  const input = await putInput(fixture, 'inputs/text', 'hello from the data plane\n');
  process.env.AGENT_SECRET = 'do-not-leak';
  // A real lease message from the control plane's schema fits the executor as it is.
  const assignment = create(pb.AssignmentSchema, {
    runId: 'run-ok',
    scope: { org: 'o', project: 'p', domain: 'dev' },
    command: NODE,
    args: ['-e', UPPER],
    env: { GREETING: '!' },
    inputs: { text: input },
    outputPrefix: '',
    timeoutSec: 30,
  });
  const handle = t.context.executor.start(assignment);
  delete process.env.AGENT_SECRET;
  const outcome = await handle.done;
  t.is(outcome.phase, Phase.SUCCEEDED, JSON.stringify(outcome.error));
  t.deepEqual(phases(events, 'run-ok'), [Phase.INITIALIZING, Phase.RUNNING, Phase.SUCCEEDED]);
  t.deepEqual(outcome.outputs, { parts: 'tether-blob://dp1/runs/p/dev/run-ok/parts/', 'upper.txt': 'tether-blob://dp1/runs/p/dev/run-ok/upper.txt' });
  const terminal = events.at(-1);
  t.deepEqual(terminal?.outputs, outcome.outputs);
  const link = await fixture.dataproxy.createDownloadLink({ uri: outcome.outputs['upper.txt'] as string });
  const target = join(t.context.scratch, 'upper.txt');
  await downloadToFile(link.signedUrl, target);
  t.is(await readFile(target, 'utf8'), 'HELLO FROM THE DATA PLANE\n!');
  t.not(await fixture.store.stat('runs/p/dev/run-ok/parts/a.txt'), null);
  // Logs stay in the data plane; the agent's environment did not reach the task.
  t.is(await readFile(handle.logs.stdout, 'utf8'), 'done, cwd=work agentSecret=none\n');
  // Inputs, outputs and the work folder are cleaned up.
  t.false(existsSync(join(fixture.dir, 'work', 'runs', 'run-ok', 'inputs')));
  t.regex(await fixture.registry.metrics(), /tether_executor_runs_finished_total\{phase="SUCCEEDED",code="OK"\} 1/);
});

test('a non-zero exit is FAILED with a short message that carries no output', async (t) => {
  const { executor, events } = t.context;
  const outcome = await executor.start(run('run-exit', "process.stderr.write('secret-payload-123'); process.exit(3)")).done;
  t.is(outcome.phase, Phase.FAILED);
  t.is(outcome.error?.code, 'EXECUTOR_EXIT_CODE');
  t.is(outcome.error?.message, 'the process exited with code 3');
  t.is(outcome.exitCode, 3);
  const terminal = events.at(-1);
  t.is(terminal?.phase, Phase.FAILED);
  t.false(JSON.stringify(events).includes('secret-payload'));
  t.is(await readFile(outcome.logs.stderr, 'utf8'), 'secret-payload-123');
});

test('a command that cannot start, and a missing input, are FAILED with their codes', async (t) => {
  const { executor } = t.context;
  const missing = await executor.start({ ...run('run-nocmd', ''), command: join(t.context.scratch, 'no-such-binary'), args: [] }).done;
  t.is(missing.error?.code, 'EXECUTOR_SPAWN_FAILED');
  t.regex(missing.error?.message ?? '', /ENOENT/);
  const input = await executor.start(run('run-noinput', 'process.exit(0)', { inputs: { data: 'tether-blob://dp1/none/here' } })).done;
  t.is(input.phase, Phase.FAILED);
  t.is(input.error?.code, 'EXECUTOR_INPUT_FAILED');
  t.is(input.error?.message, 'input "data" could not be fetched (DATAPROXY_NOT_FOUND)');
  t.deepEqual(phases(t.context.events, 'run-noinput'), [Phase.INITIALIZING, Phase.FAILED]);
  const badOutput = await executor.start(run('run-symlink', "require('fs').symlinkSync('/etc/passwd', process.env.TETHER_OUTPUTS_DIR + '/passwd')")).done;
  t.is(badOutput.error?.code, 'EXECUTOR_OUTPUT_INVALID');
});

const SPAWNS_CHILD = (pidFile: string): string => `
const { spawn } = require('node:child_process');
const child = spawn(process.execPath, ['-e', 'process.on("SIGTERM", () => {}); setInterval(() => {}, 1000)'], { stdio: 'ignore' });
process.on('SIGTERM', () => {});
require('node:fs').writeFileSync(${JSON.stringify(pidFile)}, process.pid + ' ' + child.pid);
setInterval(() => {}, 1000);
`;

test('timeout: TIMED_OUT, and the process and its child are gone (SIGTERM ignored, SIGKILL after the grace)', async (t) => {
  const { executor, scratch } = t.context;
  const pidFile = join(scratch, 'pids');
  const started = Date.now();
  const outcome = await executor.start(run('run-slow', SPAWNS_CHILD(pidFile), { timeoutSec: 1 })).done;
  const took = Date.now() - started;
  t.is(outcome.phase, Phase.TIMED_OUT);
  t.is(outcome.error?.code, 'EXECUTOR_TIMEOUT');
  t.true(took >= 1000 && took < 4000, `took ${took} ms`);
  const pids = (await readFile(pidFile, 'utf8')).split(' ').map(Number);
  t.is(pids.length, 2);
  for (const pid of pids) await waitFor(() => isGone(pid), `pid ${pid} to exit`);
  t.pass();
});

test('abort: ABORTED with the reason, the process group is gone', async (t) => {
  const { executor, events, scratch } = t.context;
  const pidFile = join(scratch, 'pids');
  const handle = executor.start(run('run-abort', SPAWNS_CHILD(pidFile)));
  await waitFor(() => existsSync(pidFile) && readFileSync(pidFile, 'utf8').includes(' '), 'the task to start');
  t.deepEqual(executor.running(), ['run-abort']);
  t.true(executor.abort('run-abort', 'user asked'));
  const outcome = await handle.done;
  t.is(outcome.phase, Phase.ABORTED);
  t.deepEqual(outcome.error, { code: 'EXECUTOR_ABORTED', message: 'user asked', kind: 'USER' });
  t.deepEqual(phases(events, 'run-abort'), [Phase.INITIALIZING, Phase.RUNNING, Phase.ABORTED]);
  for (const pid of (await readFile(pidFile, 'utf8')).split(' ').map(Number)) await waitFor(() => isGone(pid), `pid ${pid} to exit`);
  t.deepEqual(executor.running(), []);
  t.false(executor.abort('run-abort'));
});

const NOISY = "const line = 'x'.repeat(1023) + '\\n'; for (let i = 0; i < 1000; i++) process.stdout.write(line); process.stderr.write('tail');";

test('output limit, policy fail: FAILED with EXECUTOR_OUTPUT_LIMIT, the log holds exactly the cap', async (t) => {
  const outcome = await t.context.executor.start(run('run-noisy', `${NOISY} setInterval(() => {}, 1000)`, { maxOutputBytes: 10_000 })).done;
  t.is(outcome.phase, Phase.FAILED);
  t.is(outcome.error?.code, 'EXECUTOR_OUTPUT_LIMIT');
  const size = (await stat(outcome.logs.stdout)).size + (await stat(outcome.logs.stderr)).size;
  t.is(size, 10_000);
});

test('output limit, policy truncate: the run succeeds, the log is cut with a note', async (t) => {
  const executor = t.context.make({ outputLimit: 'truncate' });
  const outcome = await executor.start(run('run-truncated', NOISY, { maxOutputBytes: 10_000 })).done;
  t.is(outcome.phase, Phase.SUCCEEDED);
  t.true(outcome.truncated);
  const log = await readFile(outcome.logs.stdout, 'utf8');
  t.true(log.endsWith('\n[tether: output truncated at 10000 bytes]\n'));
  t.is(log.length, 10_000 + '\n[tether: output truncated at 10000 bytes]\n'.length);
});

test('the same run started twice runs once; a bad run id is FAILED; close aborts what runs', async (t) => {
  const { executor, events } = t.context;
  const first = executor.start(run('run-twice', 'setInterval(() => {}, 1000)'));
  const second = executor.start(run('run-twice', 'setInterval(() => {}, 1000)'));
  t.is(first.done, second.done);
  const bad = await executor.start(run('../escape', 'process.exit(0)')).done;
  t.is(bad.error?.code, 'EXECUTOR_BAD_RUN');
  await waitFor(() => first.phase === Phase.RUNNING, 'the run to start');
  await executor.close();
  t.is((await first.done).phase, Phase.ABORTED);
  t.deepEqual(phases(events, 'run-twice'), [Phase.INITIALIZING, Phase.RUNNING, Phase.ABORTED]);
});

test('runAs: the task runs as another user and cannot read the agent signing-key file', async (t) => {
  if (process.getuid?.() !== 0) {
    t.log('skipped: runAs needs the agent to run as root');
    t.pass();
    return;
  }
  const { fixture, scratch } = t.context;
  const { chmod, writeFile } = await import('node:fs/promises');
  await chmod(fixture.dir, 0o711);
  const keyFile = join(fixture.dir, 'dataproxy.keys');
  await writeFile(keyFile, 'c2VjcmV0LXNpZ25pbmcta2V5LWJ5dGVzLTAxMjM0NTY3\n', { mode: 0o600 });
  const executor = t.context.make({ runAs: { uid: 65534, gid: 65534 } });
  const script = `
const fs = require('node:fs');
let result;
try { fs.readFileSync(${JSON.stringify(keyFile)}); result = 'read'; } catch (e) { result = e.code; }
fs.writeFileSync(process.env.TETHER_OUTPUTS_DIR + '/result.txt', result + ' uid=' + process.getuid());
`;
  const outcome = await executor.start(run('run-nobody', script)).done;
  t.is(outcome.phase, Phase.SUCCEEDED, JSON.stringify(outcome.error));
  const link = await fixture.dataproxy.createDownloadLink({ uri: outcome.outputs['result.txt'] as string });
  const target = join(scratch, 'result.txt');
  await downloadToFile(link.signedUrl, target);
  t.is(await readFile(target, 'utf8'), 'EACCES uid=65534');
});
