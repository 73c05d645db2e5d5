import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { Client, credentials, Metadata } from '@grpc/grpc-js';
import type { ClientDuplexStream, ServiceError } from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';
import type { MessageInitShape } from '@bufbuild/protobuf';
import { DevOidcIssuer } from '../../certs/dev-oidc-issuer.js';
import { parseControlConfig } from '../../control/config.js';
import * as pb from '../../control/gen/tether/control/v1/control_pb.js';
import { CODE_TRAILER } from '../../control/grpc-api.js';
import { Phase } from '../../control/phases.js';
import { ControlServer } from '../../control/server.js';
import { userCaller } from '../../control/service.js';
import { newKek } from '../../control/store/keyring.js';
import type { TaskSpec } from '../../control/store/repository.js';
import { deserializerFor, methodPath, serializerFor } from '../../xds/grpc-service.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { createTestPki } from '../helpers/pki.js';
import type { TestPki } from '../helpers/pki.js';

failOnLeaks(test);

const alice = userCaller('alice');
const SCOPE = { org: 'acme', project: 'p1', domain: 'dev' };
const SPEC: TaskSpec = { command: 'sh', args: ['-c', 'echo hi'], env: { FROM_TASK: '1', OVERRIDE: 'task' }, timeoutSec: 30, maxOutputBytes: 1024, description: '' };
const connect = pb.AgentService.method.connect;

type Kind = NonNullable<pb.ControlMessage['kind']['case']>;
type ValueOf<K extends Kind> = Extract<pb.ControlMessage['kind'], { case: K }>['value'];

/** One agent stream, with a queue of what the control plane sent. */
class TestAgent {
  readonly stream: ClientDuplexStream<pb.AgentMessage, pb.ControlMessage>;
  readonly client: Client;
  readonly received: pb.ControlMessage[] = [];
  readonly ended: Promise<{ code: string; status: number }>;
  #waiters: Array<() => void> = [];

  constructor(port: number, tls: { key: string; cert: string; ca: string }) {
    this.client = new Client(`localhost:${port}`, credentials.createSsl(Buffer.from(tls.ca), Buffer.from(tls.key), Buffer.from(tls.cert)));
    this.stream = this.client.makeBidiStreamRequest(methodPath(connect), serializerFor(connect.input), deserializerFor(connect.output), new Metadata());
    this.stream.on('data', (message: pb.ControlMessage) => {
      this.received.push(message);
      for (const wake of this.#waiters.splice(0)) wake();
    });
    this.ended = new Promise((resolve) => {
      this.stream.on('error', (error: ServiceError) => resolve({ code: String(error.metadata?.get(CODE_TRAILER)[0] ?? ''), status: error.code }));
      this.stream.on('end', () => resolve({ code: 'END', status: 0 }));
    });
    this.ended.then(() => {
      for (const wake of this.#waiters.splice(0)) wake();
    });
  }

  send(message: MessageInitShape<typeof pb.AgentMessageSchema>): void {
    this.stream.write(create(pb.AgentMessageSchema, message));
  }

  hello(agentId: string, running: string[] = [], capacity = 10): void {
    this.send({ kind: { case: 'hello', value: { agentId, version: 'test', runningRunIds: running, capacity } } });
  }

  events(batchId: string, events: Array<{ runId: string; phase: Phase; message?: string }>): void {
    this.send({ kind: { case: 'events', value: { batchId, events: events.map((event) => ({ runId: event.runId, phase: event.phase as number as pb.Phase, message: event.message ?? '' })) } } });
  }

  /** Remove and return the first message of `kind` matching `match`, waiting for it. */
  async next<K extends Kind>(kind: K, match: (value: ValueOf<K>) => boolean = () => true): Promise<ValueOf<K>> {
    let ended = false;
    void this.ended.then(() => (ended = true));
    for (;;) {
      const index = this.received.findIndex((message) => message.kind.case === kind && match(message.kind.value as unknown as ValueOf<K>));
      if (index >= 0) return this.received.splice(index, 1)[0]!.kind.value as unknown as ValueOf<K>;
      if (ended) throw new Error(`stream ended while waiting for ${kind}`);
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
  }

  close(): void {
    this.stream.cancel();
    this.client.close();
  }
}

interface World {
  pki: TestPki;
  issuer: DevOidcIssuer;
  dir: string;
  start(): Promise<ControlServer>;
  agent(server: ControlServer, cluster?: string, agentId?: string): Promise<TestAgent>;
}

async function world(t: ExecutionContext, agentOptions: { leaseMs?: number; pollMs?: number } = {}): Promise<World> {
  const pki = await createTestPki();
  const issuer = new DevOidcIssuer();
  const issuerUrl = await issuer.listen();
  const dir = mkdtempSync(join(tmpdir(), 'tether-control-agents-'));
  const kek = newKek('k1');
  const agents: TestAgent[] = [];
  const servers: ControlServer[] = [];
  t.teardown(async () => {
    for (const agent of agents) agent.close();
    for (const server of servers) await server.close();
    await issuer.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const config = parseControlConfig({
    org: 'acme', store: { path: join(dir, 'control.db') }, grpc: { port: 0 }, http: { enabled: false, port: 0 }, auth: { issuers: [{ issuer: issuerUrl, audience: 'tether' }] },
    bootstrapAdmins: ['alice'], agents: { port: 0, heartbeatIntervalMs: 60_000, leaseMs: agentOptions.leaseMs ?? 60_000, pollMs: agentOptions.pollMs ?? 60_000 }, scheduler: { enabled: false },
  });
  return {
    pki, issuer, dir,
    async start() {
      const server = await ControlServer.start(config, { ca: pki.ca, env: { TETHER_CONTROL_KEK: `k1:${kek.key.toString('base64')}` } });
      servers.push(server);
      return server;
    },
    async agent(server, cluster = 'c1', agentId = 'a1') {
      const agent = new TestAgent(server.agentPort, await pki.agentCert({ clusterId: cluster, agentId }));
      agents.push(agent);
      return agent;
    },
  };
}

/** Poll a condition the server exposes no event for, with a bounded deadline. */
async function until(condition: () => boolean, deadlineMs = 5_000): Promise<void> {
  const end = Date.now() + deadlineMs;
  while (!condition()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise<void>((resolve) => setTimeout(resolve, 10));
  }
}

async function seed(server: ControlServer): Promise<void> {
  await server.service.registerCluster(alice, { org: 'acme', id: 'c1', mode: 'tunnel', endpoint: 'c1.example', issuer: 'https://i.example', audience: 'a', allowedSubjects: ['s'] });
  await server.service.registerCluster(alice, { org: 'acme', id: 'c2', mode: 'tunnel', endpoint: 'c2.example', issuer: 'https://i.example', audience: 'a', allowedSubjects: ['s'] });
  await server.service.registerTask(alice, { ...SCOPE, name: 'hello', version: 'v1', spec: SPEC });
}

const newRun = (server: ControlServer, cluster = 'c1') =>
  server.service.createRun(alice, { ...SCOPE, taskName: 'hello', taskVersion: 'v1', clusterId: cluster, inputs: { data: 's3://b/in' }, env: { OVERRIDE: 'run' } });

test('an agent is welcomed, leased its cluster\'s runs, reports phases (repeats are duplicates), and is told to abort', async (t) => {
  const w = await world(t);
  const server = await w.start();
  await seed(server);
  const queuedBefore = await newRun(server);
  const agent = await w.agent(server);
  agent.hello('a1');
  t.like(await agent.next('welcome'), { clusterId: 'c1', mode: pb.ClusterMode.TUNNEL });
  const first = await agent.next('assignment');
  t.is(first.runId, queuedBefore.id);
  t.deepEqual(first.env, { FROM_TASK: '1', OVERRIDE: 'run' });
  t.is(first.command, 'sh');
  t.deepEqual(first.inputs, { data: 's3://b/in' });

  // A run queued while connected is pushed at once; another cluster's is not.
  const other = await newRun(server, 'c2');
  const second = await newRun(server);
  t.is((await agent.next('assignment')).runId, second.id);

  agent.events('1', [{ runId: first.runId, phase: Phase.RUNNING }, { runId: first.runId, phase: Phase.SUCCEEDED }, { runId: other.id, phase: Phase.RUNNING }]);
  const ack = await agent.next('eventsAck', (value) => value.batchId === '1');
  t.deepEqual(ack.outcomes.map((o) => o.code || o.status), ['APPLIED', 'APPLIED', 'PHASE_WRONG_CLUSTER']);
  // The same batch again (as after a lost ack): duplicates, no new rows.
  agent.events('2', [{ runId: first.runId, phase: Phase.RUNNING }, { runId: first.runId, phase: Phase.SUCCEEDED }]);
  const again = await agent.next('eventsAck', (value) => value.batchId === '2');
  // RUNNING after SUCCEEDED is refused as PHASE_TERMINAL (an agent treats that as "already past").
  t.deepEqual(again.outcomes.map((o) => o.code || o.status), ['PHASE_TERMINAL', 'DUPLICATE']);
  t.deepEqual((await server.service.phaseHistory(alice, first.runId)).map((e) => e.phase), [Phase.RUNNING, Phase.SUCCEEDED]);

  agent.events('3', [{ runId: second.id, phase: Phase.RUNNING }]);
  await agent.next('eventsAck', (value) => value.batchId === '3');
  await server.service.abortRun(alice, second.id, 'stop it');
  t.like(await agent.next('abort'), { runId: second.id, reason: 'stop it' });
  agent.events('4', [{ runId: second.id, phase: Phase.ABORTED }]);
  t.is((await agent.next('eventsAck', (value) => value.batchId === '4')).outcomes[0]?.status, 'APPLIED');
  t.is((await server.service.getRun(alice, second.id)).phase, Phase.ABORTED);
  // A registration change reaches the connected agent as a fresh Welcome.
  await server.service.registerCluster(alice, { org: 'acme', id: 'c1', mode: 'sovereign', endpoint: 'router.corp.internal', issuer: 'https://i.example', audience: 'a', allowedSubjects: ['s'] });
  t.like(await agent.next('welcome'), { clusterId: 'c1', mode: pb.ClusterMode.SOVEREIGN });
  t.deepEqual(server.agentChannel?.connected(), { c1: ['a1'] });
  // Deleting the cluster (its runs all finished) disconnects its agent.
  await server.service.deleteCluster(alice, 'acme', 'c1');
  t.like(await agent.ended, { code: 'AGENT_UNKNOWN_CLUSTER', status: 5 });
  await server.drain(1_000);
});

test('refusals: unregistered cluster, Hello naming another agent, no Hello first, no client certificate', async (t) => {
  const w = await world(t);
  const server = await w.start();
  await seed(server);
  const unknown = await w.agent(server, 'c9', 'a1');
  unknown.hello('a1');
  t.is((await unknown.ended).code, 'AGENT_UNKNOWN_CLUSTER');
  const liar = await w.agent(server, 'c1', 'a1');
  liar.hello('a2');
  t.is((await liar.ended).code, 'AGENT_ID_MISMATCH');
  const rude = await w.agent(server, 'c1', 'a1');
  rude.send({ kind: { case: 'heartbeat', value: { running: 0 } } });
  t.is((await rude.ended).code, 'AGENT_NO_HELLO');
  const log = (await server.service.listAudit(alice, 'acme', { operation: 'agent.connect' }, 50, '')).items.map((entry) => `${entry.principal} ${entry.result}`);
  t.deepEqual(log.reverse(), ['agent:c1/a1 AGENT_ID_MISMATCH', 'agent:c1/a1 AGENT_NO_HELLO'], "acme's log: its own cluster's agents only");
  const unscoped = await server.store.listAudit({ org: '', operation: 'agent.connect' }, 50, '');
  t.deepEqual(unscoped.items.map((entry) => `${entry.principal} ${entry.result}`), ['agent:c9/a1 AGENT_UNKNOWN_CLUSTER'], 'an unregistered cluster is no org\'s');
  // Without a client certificate the TLS handshake itself is refused.
  const socket = tlsConnect({ host: '127.0.0.1', port: server.agentPort, ca: w.pki.trustBundlePem, servername: 'localhost', ALPNProtocols: ['h2'] });
  const failure = await new Promise<string>((resolve) => {
    socket.on('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
    socket.on('close', () => resolve('closed'));
  });
  socket.destroy();
  t.regex(failure, /CERTIFICATE_REQUIRED|closed|ECONNRESET/);
  await server.drain(1_000);
});

test('control-plane restart: the run started before it finishes, its phases are recorded exactly once, ABORTING is re-sent', async (t) => {
  const w = await world(t);
  let server = await w.start();
  await seed(server);
  const running = await newRun(server);
  const toAbort = await newRun(server);
  let agent = await w.agent(server);
  agent.hello('a1');
  await agent.next('assignment', (a) => a.runId === running.id);
  await agent.next('assignment', (a) => a.runId === toAbort.id);
  agent.events('1', [{ runId: running.id, phase: Phase.RUNNING }, { runId: toAbort.id, phase: Phase.RUNNING }]);
  await agent.next('eventsAck');
  await server.close();
  t.true((await agent.ended).status > 0);
  agent.close();

  // While the control plane is down, the run finishes; someone asks to abort the other (next start).
  server = await w.start();
  await server.service.abortRun(alice, toAbort.id, 'later');
  agent = await w.agent(server);
  agent.hello('a1', [running.id, toAbort.id]);
  await agent.next('welcome');
  t.like(await agent.next('abort'), { runId: toAbort.id });
  // The outbox is replayed from the start: RUNNING again (a duplicate), then SUCCEEDED.
  agent.events('7', [{ runId: running.id, phase: Phase.RUNNING }, { runId: running.id, phase: Phase.SUCCEEDED }, { runId: toAbort.id, phase: Phase.ABORTED }]);
  t.deepEqual((await agent.next('eventsAck')).outcomes.map((o) => o.status), ['DUPLICATE', 'APPLIED', 'APPLIED']);
  t.deepEqual((await server.service.phaseHistory(alice, running.id)).map((e) => e.phase), [Phase.RUNNING, Phase.SUCCEEDED]);
  // Not offered again: the agent named it as running.
  t.false(agent.received.some((m) => m.kind.case === 'assignment'));
  await server.drain(1_000);
});


test('a lease without any event expires and the run is offered to another agent; a claimed run is not', async (t) => {
  const w = await world(t, { leaseMs: 300, pollMs: 50 });
  const server = await w.start();
  await seed(server);
  const silent = await w.agent(server, 'c1', 'a1');
  silent.hello('a1');
  const run = await newRun(server);
  const claimed = await newRun(server);
  t.is((await silent.next('assignment', (a) => a.runId === run.id)).runId, run.id);
  await silent.next('assignment', (a) => a.runId === claimed.id);
  // a1 claims one run (INITIALIZING) and sits on the other.
  silent.events('1', [{ runId: claimed.id, phase: Phase.INITIALIZING }]);
  await silent.next('eventsAck');
  const other = await w.agent(server, 'c1', 'a2');
  other.hello('a2');
  await other.next('welcome');
  const leasedAgain = await other.next('assignment');
  t.is(leasedAgain.runId, run.id);
  // With a1 gone, a later run reaches a2; the claimed one (older, offered first if at all) never did.
  silent.close();
  await until(() => JSON.stringify(server.agentChannel?.connected()) === JSON.stringify({ c1: ['a2'] }));
  const later = await newRun(server);
  await other.next('assignment', (a) => a.runId === later.id);
  t.false(other.received.some((m) => m.kind.case === 'assignment' && m.kind.value.runId === claimed.id));
  await server.drain(1_000);
});
