import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { AgentClient } from '../../agent/control-client.js';
import { DevOidcIssuer } from '../../certs/dev-oidc-issuer.js';
import { parseControlConfig } from '../../control/config.js';
import type * as pb from '../../control/gen/tether/control/v1/control_pb.js';
import { Phase } from '../../control/phases.js';
import { ControlServer } from '../../control/server.js';
import { userCaller } from '../../control/service.js';
import { newKek } from '../../control/store/keyring.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { createTestPki } from '../helpers/pki.js';

failOnLeaks(test);

const alice = userCaller('alice');
const SCOPE = { org: 'acme', project: 'p1', domain: 'dev' };

test('the agent client survives a control-plane restart: runs started before it finish, their phases arrive exactly once', async (t) => {
  const pki = await createTestPki();
  const issuer = new DevOidcIssuer();
  const issuerUrl = await issuer.listen();
  const dir = mkdtempSync(join(tmpdir(), 'tether-agent-control-client-'));
  const kek = newKek('k1');
  const servers: ControlServer[] = [];
  t.teardown(async () => {
    for (const server of servers) await server.close();
    await issuer.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const start = async (agentPort: number): Promise<ControlServer> => {
    const config = parseControlConfig({
      org: 'acme', store: { path: join(dir, 'control.db') }, grpc: { port: 0 }, http: { enabled: false, port: 0 }, auth: { issuers: [{ issuer: issuerUrl, audience: 'tether' }] },
      bootstrapAdmins: ['alice'], agents: { port: agentPort, heartbeatIntervalMs: 200, pollMs: 60_000 }, scheduler: { enabled: false },
    });
    const server = await ControlServer.start(config, { ca: pki.ca, env: { TETHER_CONTROL_KEK: `k1:${kek.key.toString('base64')}` } });
    servers.push(server);
    return server;
  };
  let server = await start(0);
  const port = server.agentPort;
  await server.service.registerCluster(alice, { org: 'acme', id: 'c1', mode: 'tunnel', endpoint: 'c1.example', issuer: 'https://i.example', audience: 'a', allowedSubjects: ['s'] });
  await server.service.registerTask(alice, { ...SCOPE, name: 'job', version: 'v1', spec: { command: 'sleep', args: ['1'], env: {}, timeoutSec: 0, maxOutputBytes: 0, description: '' } });

  const tls = await pki.agentCert({ clusterId: 'c1', agentId: 'a1' });
  const running = new Set<string>();
  const assignments: pb.Assignment[] = [];
  let wake: (() => void) | null = null;
  const agent = new AgentClient({
    address: `localhost:${port}`,
    agentId: 'a1',
    credentials: () => tls,
    running: () => [...running],
    onAssignment: (assignment) => {
      assignments.push(assignment);
      running.add(assignment.runId);
      wake?.();
    },
    onAbort: () => {},
    backoff: { initialDelayMs: 50, maxDelayMs: 200 },
  });
  t.teardown(() => agent.close());
  agent.start();
  await agent.whenConnected();
  const run = await server.service.createRun(alice, { ...SCOPE, taskName: 'job', taskVersion: 'v1', inputs: {} });
  while (assignments.length === 0) await new Promise<void>((resolve) => (wake = resolve));
  t.is(assignments[0]?.runId, run.id);
  agent.report({ runId: run.id, phase: Phase.INITIALIZING });
  agent.report({ runId: run.id, phase: Phase.RUNNING });
  await agent.whenIdle();

  // The control plane goes away; the run keeps running and finishes meanwhile.
  await server.close();
  agent.report({ runId: run.id, phase: Phase.SUCCEEDED, outputs: { log: 's3://bucket/logs/run.txt' } });
  running.delete(run.id);
  t.is(agent.pendingEvents, 1);

  server = await start(port);
  await agent.whenIdle();
  t.true(agent.connects >= 2);
  const history = await server.service.phaseHistory(alice, run.id);
  t.deepEqual(history.map((event) => event.phase), [Phase.INITIALIZING, Phase.RUNNING, Phase.SUCCEEDED]);
  const finished = await server.service.getRun(alice, run.id);
  t.is(finished.phase, Phase.SUCCEEDED);
  t.is(finished.result.outputs.log, 's3://bucket/logs/run.txt');
  // Not offered again after the reconnect.
  t.is(assignments.length, 1);
  await agent.drain(1_000);
  await server.drain(1_000);
});

test('renewal makes before it breaks: a new stream with the new certificate takes over; no event is lost or doubled', async (t) => {
  const pki = await createTestPki();
  const issuer = new DevOidcIssuer();
  const issuerUrl = await issuer.listen();
  const dir = mkdtempSync(join(tmpdir(), 'tether-control-agent-renew-'));
  t.teardown(async () => {
    await issuer.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const config = parseControlConfig({
    org: 'acme', store: { path: join(dir, 'control.db') }, grpc: { port: 0 }, http: { enabled: false, port: 0 }, auth: { issuers: [{ issuer: issuerUrl, audience: 'tether' }] },
    bootstrapAdmins: ['alice'], agents: { port: 0, heartbeatIntervalMs: 200, pollMs: 60_000 }, scheduler: { enabled: false },
  });
  const server = await ControlServer.start(config, { ca: pki.ca, env: { TETHER_CONTROL_KEK: newKek().key.toString('base64') } });
  t.teardown(() => server.close());
  await server.service.registerCluster(alice, { org: 'acme', id: 'c1', mode: 'tunnel', endpoint: 'c1.example', issuer: 'https://i.example', audience: 'a', allowedSubjects: ['s'] });
  await server.service.registerTask(alice, { ...SCOPE, name: 'job', version: 'v1', spec: { command: 'true', args: [], env: {}, timeoutSec: 0, maxOutputBytes: 0, description: '' } });
  const run = await server.service.createRun(alice, { ...SCOPE, taskName: 'job', taskVersion: 'v1', inputs: {} });

  let tls = await pki.agentCert({ clusterId: 'c1', agentId: 'a1' });
  const serials: string[] = [];
  const running = new Set<string>();
  let assigned: (() => void) | null = null;
  const agent = new AgentClient({
    address: `localhost:${server.agentPort}`,
    agentId: 'a1',
    credentials: () => {
      serials.push(tls.serialNumber);
      return tls;
    },
    running: () => [...running],
    onAssignment: (assignment) => {
      running.add(assignment.runId);
      assigned?.();
    },
    onAbort: () => {},
    backoff: { initialDelayMs: 50, maxDelayMs: 200 },
  });
  t.teardown(() => agent.close());
  agent.start();
  await new Promise<void>((resolve) => (assigned = resolve));
  agent.report({ runId: run.id, phase: Phase.RUNNING });

  tls = await pki.agentCert({ clusterId: 'c1', agentId: 'a1' });
  await agent.renew();
  t.is(agent.connects, 2);
  t.is(new Set(serials).size, 2, 'the second stream used the renewed certificate');
  agent.report({ runId: run.id, phase: Phase.SUCCEEDED });
  await agent.whenIdle();
  t.deepEqual((await server.service.phaseHistory(alice, run.id)).map((event) => event.phase), [Phase.RUNNING, Phase.SUCCEEDED]);
  const deadline = Date.now() + 5_000;
  while (JSON.stringify(server.agentChannel?.connected()) !== JSON.stringify({ c1: ['a1'] })) {
    if (Date.now() > deadline) throw new Error(`old session still there: ${JSON.stringify(server.agentChannel?.connected())}`);
    await new Promise<void>((resolve) => setTimeout(resolve, 10));
  }
  t.pass();
  await agent.drain(1_000);
  await server.drain(1_000);
});
