/**
 * The control plane cannot switch a cluster's mode (DESIGN.md I6): the real control plane, its
 * real mutual-TLS agents' channel, the agent's orchestration side (Orchestration, with its
 * workload certificate from a CertificateSource) wired to the tunnel side (Agent), and a real
 * gateway. A registration claiming `tunnel` for a cluster whose customer-signed document says
 * sovereign opens no tunnel; the agent answers CLUSTER_SOVEREIGN and the control plane's audit
 * log records it. A registration claiming `sovereign` for a cluster the customer keeps in tunnel
 * mode closes nothing; the answer is MODE_NOT_APPROVED.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import type { ExecutionContext } from 'ava';
import type { Agent, ModeClaim } from '../../agent/agent.js';
import { Orchestration } from '../../agent/orchestration.js';
import type { ModeChange } from '../../agent/sovereignty.js';
import { CertificateSource, DevOidcIssuer } from '../../certs/index.js';
import type { AgentChannel, ModeReportRecord } from '../../control/agent-channel.js';
import { parseControlConfig } from '../../control/config.js';
import { ControlServer } from '../../control/server.js';
import { userCaller } from '../../control/service.js';
import { newKek } from '../../control/store/keyring.js';
import type { AuditRecord } from '../../control/store/repository.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { h1Request } from '../helpers/tunnel-clients.js';
import { startTunnelEnv, type TunnelEnv } from '../helpers/tunnel-env.js';
import { startHttp1Upstream } from '../helpers/tunnel-upstreams.js';
import { createCustomer, nextEvent, writeModeFile, type Customer } from './mode-fixtures.js';

failOnLeaks(test);

const alice = userCaller('alice');

interface World {
  control: ControlServer;
  channel: AgentChannel;
  env: TunnelEnv;
  agent: Agent;
  orchestration: Orchestration;
  customer: Customer;
  modeFile: string;
  register(mode: 'tunnel' | 'sovereign'): Promise<void>;
  modeAudit(): Promise<AuditRecord[]>;
}

/**
 * Everything up, the cluster registered as `registered`, the agent's mode file holding
 * `initial` (signed by the customer). Resolves once the agent's orchestration side is welcomed.
 */
async function world(t: ExecutionContext, registered: 'tunnel' | 'sovereign', initial: { mode: 'tunnel' | 'sovereign'; seq: number }): Promise<World> {
  const dir = await mkdtemp(join(tmpdir(), 'tether-mode-control-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const customer = createCustomer('p-256');
  const modeFile = join(dir, 'mode.jws');
  await writeModeFile(modeFile, await customer.sign(initial));

  const env = await startTunnelEnv({ clusters: ['c1'] });
  t.teardown(() => env.close());
  const upstream = await startHttp1Upstream((req, res) => {
    req.resume();
    res.end('ok');
  });
  t.teardown(() => upstream.close());

  const issuer = new DevOidcIssuer();
  const issuerUrl = await issuer.listen();
  t.teardown(() => issuer.close());
  const control = await ControlServer.start(
    parseControlConfig({
      org: 'acme',
      store: { path: join(dir, 'control.db') },
      grpc: { port: 0 },
      http: { enabled: false, port: 0 },
      auth: { issuers: [{ issuer: issuerUrl, audience: 'tether' }] },
      bootstrapAdmins: ['alice'],
      agents: { port: 0, heartbeatIntervalMs: 60_000, pollMs: 60_000 },
      scheduler: { enabled: false },
    }),
    { ca: env.pki.ca, env: { TETHER_CONTROL_KEK: `k1:${newKek('k1').key.toString('base64')}` } },
  );
  t.teardown(() => control.close());
  const register = async (mode: 'tunnel' | 'sovereign'): Promise<void> => {
    await control.service.registerCluster(alice, { org: 'acme', id: 'c1', mode, endpoint: 'c1.example', issuer: issuerUrl, audience: 'tether-identity', allowedSubjects: ['s'] });
  };
  await register(registered);

  // One workload certificate (in-memory key) for both of the agent's outbound channels.
  const certificates = new CertificateSource({ issue: (csrPem) => env.pki.ca.signCsr(csrPem, { kind: 'workload', clusterId: 'c1', agentId: 'a1' }) });
  await certificates.start();
  t.teardown(() => certificates.close());
  const material = certificates.current();
  const agent = await env.startAgent({
    clusterId: 'c1',
    cert: { key: material.keyPem, cert: material.chainPem },
    routes: [{ prefix: '/', upstream: upstream.url }],
    drainGraceMs: 1_000,
    sovereignty: { clusterId: 'c1', customerKey: customer.publicPem, modeFile, pollMs: 60_000, drainGraceMs: 1_000 },
  });
  const channel = control.agentChannel;
  if (channel === null) throw new Error('the control plane has no agents channel');
  // The first Welcome's answer (if any) must not be missed: listen before the orchestration dials.
  const firstReport = registered !== initial.mode ? nextEvent<[ModeReportRecord]>(channel.events, 'modeReport') : null;
  const orchestration = await Orchestration.start({
    controlAddress: `localhost:${control.agentPort}`,
    agentId: 'a1',
    certificates,
    trustBundlePem: env.pki.trustBundlePem,
    workDir: join(dir, 'runs'),
    dataproxy: { root: join(dir, 'blobs'), bucket: 'c1-data', clusterId: 'c1', signingKeys: [randomBytes(32)] },
    mode: agent,
  });
  t.teardown(() => orchestration.close());
  await orchestration.client.whenConnected();
  await firstReport;
  return {
    control,
    channel,
    env,
    agent,
    orchestration,
    customer,
    modeFile,
    register,
    modeAudit: async () => (await control.store.listAudit({ operation: 'agent.mode' }, 100, '')).items,
  };
}

test('the control plane claiming tunnel opens no tunnel for a cluster the customer made sovereign; the agent answers CLUSTER_SOVEREIGN and the control plane audits it', async (t) => {
  const claims: ModeClaim[] = [];
  const w = await world(t, 'tunnel', { mode: 'sovereign', seq: 1 });
  w.agent.events.on('modeClaim', (claim) => claims.push(claim));

  // The first Welcome (registration says tunnel) was answered, and the answer is in the audit log.
  const [record] = await w.modeAudit();
  t.like(record, { principal: 'agent:c1/a1', operation: 'agent.mode', resource: 'cluster/c1/mode(claimed=tunnel,local=sovereign,seq=1)', result: 'CLUSTER_SOVEREIGN' });
  t.is(w.agent.mode, 'sovereign');
  t.deepEqual(w.agent.readiness().details?.knownGateways, [], 'no gateway dialed');
  t.is(w.env.gateway.tunnels.count('c1'), 0);
  t.deepEqual((await w.agent.metrics.tunnelConnections.get()).values.filter((v) => v.value > 0), []);
  t.deepEqual((await w.agent.metrics.handshakes.get()).values, [], 'no handshake was attempted');

  // A registration change claims it again (sovereign first, which the agent agrees with, then tunnel).
  const report = nextEvent<[ModeReportRecord]>(w.channel.events, 'modeReport');
  await w.register('sovereign');
  await w.register('tunnel');
  t.like((await report)[0], { clusterId: 'c1', agentId: 'a1', claimed: 'tunnel', local: 'sovereign', code: 'CLUSTER_SOVEREIGN', seq: '1' });
  t.deepEqual(claims, [{ claimed: 'tunnel', local: 'sovereign', code: 'CLUSTER_SOVEREIGN' }]);
  t.deepEqual((await w.modeAudit()).map((r) => r.result), ['CLUSTER_SOVEREIGN', 'CLUSTER_SOVEREIGN']);
  const claimsMetric = Object.fromEntries((await w.agent.metrics.modeClaims.get()).values.map((v) => [`${String(v.labels.claimed)}:${String(v.labels.result)}`, v.value]));
  t.deepEqual(claimsMetric, { 'tunnel:CLUSTER_SOVEREIGN': 2, 'sovereign:agreed': 1 });
  t.is(w.agent.mode, 'sovereign');
  t.deepEqual(w.agent.readiness().details?.knownGateways, []);
  t.is(w.env.gateway.tunnels.count('c1'), 0);
  const reply = await h1Request(w.env.gateway.address, w.env.pki.trustBundlePem, { cluster: 'c1', token: await w.env.token(['c1']) });
  t.is(reply.headers['tether-error'], 'NO_TUNNEL', 'nothing carries the request: the gateway has no tunnel');

  // Only the customer's signed document opens the tunnel; then requests succeed.
  const change = nextEvent<[ModeChange]>(w.agent.events, 'mode', (c) => c.mode === 'tunnel');
  await writeModeFile(w.modeFile, await w.customer.sign({ mode: 'tunnel', seq: 2 }));
  await w.agent.reloadMode();
  await change;
  await w.agent.waitForConnections(2);
  t.is((await h1Request(w.env.gateway.address, w.env.pki.trustBundlePem, { cluster: 'c1', token: await w.env.token(['c1']) })).status, 200);
});

test('the control plane claiming sovereign closes nothing the customer keeps in tunnel mode: the agent answers MODE_NOT_APPROVED, audited', async (t) => {
  const w = await world(t, 'tunnel', { mode: 'tunnel', seq: 1 });
  await w.agent.waitForConnections(2);
  t.deepEqual(await w.modeAudit(), [], 'agreement is not reported');

  const report = nextEvent<[ModeReportRecord]>(w.channel.events, 'modeReport');
  await w.register('sovereign');
  t.like((await report)[0], { claimed: 'sovereign', local: 'tunnel', code: 'MODE_NOT_APPROVED', seq: '1' });
  t.like((await w.modeAudit())[0], { principal: 'agent:c1/a1', resource: 'cluster/c1/mode(claimed=sovereign,local=tunnel,seq=1)', result: 'MODE_NOT_APPROVED' });
  t.is(w.agent.mode, 'tunnel');
  t.is(w.agent.liveConnections().length, 2, 'no tunnel closed');
  t.is((await h1Request(w.env.gateway.address, w.env.pki.trustBundlePem, { cluster: 'c1', token: await w.env.token(['c1']) })).status, 200);
});
