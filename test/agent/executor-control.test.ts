/**
 * The executor behind the real control-plane channel: a run created in the control plane is
 * leased to the agent (AgentClient), executed with its input fetched and its output uploaded
 * through signed URLs, and its phases (with the output URI) recorded by the control plane; an
 * abort from the control plane stops a running process. Wiring as the agent does it.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import test from 'ava';
import { AgentClient } from '../../agent/control-client.js';
import type { AgentEvent } from '../../agent/control-client.js';
import { downloadToFile, startEmbeddedDataproxy } from '../../agent/dataproxy/index.js';
import { Executor } from '../../agent/executor/index.js';
import type { ExecutorEvent, RunHandle } from '../../agent/executor/index.js';
import { DevOidcIssuer } from '../../certs/dev-oidc-issuer.js';
import { parseControlConfig } from '../../control/config.js';
import { Phase } from '../../control/phases.js';
import { ControlServer } from '../../control/server.js';
import { userCaller } from '../../control/service.js';
import { newKek } from '../../control/store/keyring.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { createTestPki } from '../helpers/pki.js';
import { md5 } from './dataproxy-fixture.js';

failOnLeaks(test);

const alice = userCaller('alice');
const SCOPE = { org: 'acme', project: 'p1', domain: 'dev' };

// Compile-time check: an executor event is an AgentEvent as it is.
const asAgentEvent = (event: ExecutorEvent): AgentEvent => event;

const UPPER = `
const fs = require('node:fs'), path = require('node:path');
const text = fs.readFileSync(path.join(process.env.TETHER_INPUTS_DIR, 'text'), 'utf8');
fs.writeFileSync(path.join(process.env.TETHER_OUTPUTS_DIR, 'upper.txt'), text.toUpperCase());
`;

test('control plane → lease → executor → signed URLs → phases and output URI back in the control plane; abort from the control plane', async (t) => {
  const pki = await createTestPki();
  const issuer = new DevOidcIssuer();
  const issuerUrl = await issuer.listen();
  const dir = mkdtempSync(join(tmpdir(), 'tether-executor-control-'));
  const config = parseControlConfig({
    org: 'acme', store: { path: join(dir, 'control.db') }, grpc: { port: 0 }, http: { enabled: false, port: 0 }, auth: { issuers: [{ issuer: issuerUrl, audience: 'tether' }] },
    bootstrapAdmins: ['alice'], agents: { port: 0, heartbeatIntervalMs: 200, pollMs: 60_000 }, scheduler: { enabled: false },
  });
  const server = await ControlServer.start(config, { ca: pki.ca, env: { TETHER_CONTROL_KEK: newKek().key.toString('base64') } });
  const data = await startEmbeddedDataproxy({ root: join(dir, 'blobs'), bucket: 'c1-data', signingKeys: [randomBytes(32)], clusterId: 'c1' });
  const handles = new Map<string, RunHandle>();
  let agent: AgentClient | null = null;
  const runningWaiters = new Map<string, () => void>();
  const executor = new Executor({
    workDir: join(dir, 'work'),
    urls: data.dataproxy,
    onEvent: (event) => {
      agent?.report(asAgentEvent(event));
      if (event.phase === Phase.RUNNING) runningWaiters.get(event.runId)?.();
    },
    killGraceMs: 500,
  });
  const tls = await pki.agentCert({ clusterId: 'c1', agentId: 'a1' });
  const started: Array<() => void> = [];
  agent = new AgentClient({
    address: `localhost:${server.agentPort}`,
    agentId: 'a1',
    credentials: () => tls,
    running: () => executor.running(),
    onAssignment: (assignment) => {
      handles.set(assignment.runId, executor.start(assignment));
      for (const wake of started.splice(0)) wake();
    },
    onAbort: (runId, reason) => executor.abort(runId, reason),
    backoff: { initialDelayMs: 50, maxDelayMs: 200 },
  });
  const leased = async (runId: string): Promise<RunHandle> => {
    while (!handles.has(runId)) await new Promise<void>((resolve) => started.push(resolve));
    return handles.get(runId) as RunHandle;
  };
  try {
    await server.service.registerCluster(alice, { org: 'acme', id: 'c1', mode: 'tunnel', endpoint: 'c1.example', issuer: 'https://i.example', audience: 'a', allowedSubjects: ['s'] });
    await server.service.registerTask(alice, { ...SCOPE, name: 'upper', version: 'v1', spec: { command: process.execPath, args: ['-e', UPPER], env: {}, timeoutSec: 30, maxOutputBytes: 0, description: '' } });
    await server.service.registerTask(alice, { ...SCOPE, name: 'forever', version: 'v1', spec: { command: process.execPath, args: ['-e', 'setInterval(() => {}, 1000)'], env: {}, timeoutSec: 30, maxOutputBytes: 0, description: '' } });
    agent.start();
    await agent.whenConnected();

    const text = 'the payload stays in the data plane\n';
    await data.store.write('inputs/text', Readable.from([Buffer.from(text)]), { md5: md5(text), maxBytes: 1 << 20 });
    const run = await server.service.createRun(alice, { ...SCOPE, taskName: 'upper', taskVersion: 'v1', inputs: { text: 'tether-blob://c1-data/inputs/text' } });
    const outcome = await (await leased(run.id)).done;
    t.is(outcome.phase, Phase.SUCCEEDED, JSON.stringify(outcome.error));
    await agent.whenIdle();
    const recorded = await server.service.getRun(alice, run.id);
    t.is(recorded.phase, Phase.SUCCEEDED);
    t.deepEqual(recorded.result.outputs, { 'upper.txt': `tether-blob://c1-data/runs/p1/dev/${run.id}/upper.txt` });
    const history = await server.service.phaseHistory(alice, run.id);
    t.deepEqual(history.map((event) => event.phase), [Phase.INITIALIZING, Phase.RUNNING, Phase.SUCCEEDED]);
    const link = await data.dataproxy.createDownloadLink({ uri: recorded.result.outputs['upper.txt'] as string });
    await downloadToFile(link.signedUrl, join(dir, 'upper.txt'));
    t.is(await readFile(join(dir, 'upper.txt'), 'utf8'), text.toUpperCase());

    const long = await server.service.createRun(alice, { ...SCOPE, taskName: 'forever', taskVersion: 'v1', inputs: {} });
    const isRunning = new Promise<void>((resolve) => runningWaiters.set(long.id, resolve));
    const handle = await leased(long.id);
    await isRunning;
    await server.service.abortRun(alice, long.id, 'stop it');
    const aborted = await handle.done;
    t.is(aborted.phase, Phase.ABORTED);
    t.is(aborted.error?.message, 'stop it');
    await agent.whenIdle();
    t.is((await server.service.getRun(alice, long.id)).phase, Phase.ABORTED);
  } finally {
    await executor.close();
    await agent.close();
    await data.close();
    await server.close();
    await issuer.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
