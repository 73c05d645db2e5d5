/**
 * The mode switch on the data plane (DESIGN.md I6), with a real gateway, real agents and real
 * mutual-TLS tunnels: the agent dials only while the customer-signed document says `tunnel`;
 * unsigned, wrongly signed and replayed switches are refused in both directions; a valid switch
 * to sovereign drains every tunnel (metric 0) and the gateway, told the mode, answers
 * `CLUSTER_SOVEREIGN` in both binding paths and refuses the cluster's tunnels at the handshake;
 * a valid switch back reopens the tunnels.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import * as https from 'node:https';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import type { ExecutionContext } from 'ava';
import type { Agent, AgentEvent } from '../../agent/index.js';
import type { ModeChange, ModeRefusal } from '../../agent/sovereignty.js';
import type { Gateway } from '../../gateway/index.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { closeH2, connectH2, h1Request, h2Request, plainH1Request, splitHostPort, type Reply } from '../helpers/tunnel-clients.js';
import { startTunnelEnv, type TunnelEnv } from '../helpers/tunnel-env.js';
import { startHttp1Upstream, type Upstream } from '../helpers/tunnel-upstreams.js';
import { createCustomer, forged, nextEvent, whenTrue, writeModeFile, type Customer, type ModeFields } from './mode-fixtures.js';

failOnLeaks(test);

interface World {
  env: TunnelEnv;
  upstream: Upstream;
  customer: Customer;
  dir: string;
  modeFile: string;
  stateFile: string;
  /** The gateway binding HTTP/1.1 connections, and one carrying each request as its own stream. */
  bound: Gateway;
  perRequest: Gateway;
  startAgent(extra?: { pollMs?: number; stateFile?: boolean }): Promise<Agent>;
}

async function world(t: ExecutionContext, initial: string | null): Promise<World> {
  const dir = await mkdtemp(join(tmpdir(), 'tether-mode-switch-'));
  const modeFile = join(dir, 'mode.jws');
  const stateFile = join(dir, 'mode-state.json');
  const customer = createCustomer();
  if (initial !== null) await writeModeFile(modeFile, initial);
  const upstream = await startHttp1Upstream((req, res) => {
    req.resume();
    res.end(`ok ${String(req.headers['tether-cluster'])}`);
  });
  const env = await startTunnelEnv({ clusters: ['c1'], gateway: { binding: 'connection' } });
  const perRequest = await env.startGateway({ binding: 'request' });
  t.teardown(async () => {
    await env.close();
    await upstream.close();
    await rm(dir, { recursive: true, force: true });
  });
  return {
    env,
    upstream,
    customer,
    dir,
    modeFile,
    stateFile,
    bound: env.gateway,
    perRequest,
    startAgent: (extra = {}) =>
      env.startAgent({
        clusterId: 'c1',
        routes: [{ prefix: '/', upstream: upstream.url }],
        drainGraceMs: 2_000,
        sovereignty: {
          clusterId: 'c1',
          customerKey: customer.publicPem,
          modeFile,
          pollMs: extra.pollMs ?? 60_000,
          drainGraceMs: 2_000,
          ...(extra.stateFile === true ? { stateFile } : {}),
        },
      }),
  };
}

const LIVE_PER_AGENT = 4; // 2 connections x 2 gateways

async function tunnelMetric(agent: Agent): Promise<number> {
  return (await agent.metrics.tunnelConnections.get()).values.reduce((sum, v) => sum + v.value, 0);
}

async function modeGauge(agent: Agent): Promise<Record<string, number>> {
  return Object.fromEntries((await agent.metrics.mode.get()).values.map((v) => [String(v.labels.mode), v.value]));
}

async function documentResults(agent: Agent): Promise<Record<string, number>> {
  return Object.fromEntries((await agent.metrics.modeDocuments.get()).values.map((v) => [String(v.labels.result), v.value]));
}

/** Write `text` as the mode file and have the agent read it; resolves with the refusal it causes. */
async function refused(agent: Agent, modeFile: string, text: string): Promise<string> {
  const refusal = nextEvent<[ModeRefusal]>(agent.events, 'modeRefused');
  await writeModeFile(modeFile, text);
  await agent.reloadMode();
  return (await refusal)[0].code;
}

/** Write a valid document and wait until the agent has switched to its mode. */
async function switched(agent: Agent, modeFile: string, text: string, mode: 'tunnel' | 'sovereign'): Promise<ModeChange> {
  const change = nextEvent<[ModeChange]>(agent.events, 'mode', (c) => c.mode === mode);
  await writeModeFile(modeFile, text);
  await agent.reloadMode();
  return (await change)[0];
}

/** Every gateway holds no tunnel of c1 (waits for the sessions the agent closed to be gone). */
async function gatewaysHoldNoTunnel(w: World): Promise<void> {
  for (const gateway of [w.bound, w.perRequest]) {
    await whenTrue((wake) => gateway.tunnels.onChange(wake), () => gateway.tunnels.count('c1') === 0, `gateway ${gateway.config.id} still holds a c1 tunnel`);
  }
}

/** One request per path: HTTP/1.1 bound, HTTP/2 per request, HTTP/1.1 per request (cleartext). */
async function requestEveryPath(w: World): Promise<Reply[]> {
  const token = await w.env.token(['c1']);
  const session = await connectH2(w.bound.url, w.env.pki.trustBundlePem);
  try {
    return [
      await h1Request(w.bound.address, w.env.pki.trustBundlePem, { cluster: 'c1', token }),
      await h2Request(session, { cluster: 'c1', token }),
      await plainH1Request(w.perRequest.plainUrl as string, { cluster: 'c1', token }),
    ];
  } finally {
    await closeH2(session);
  }
}

/** One request on a kept-alive HTTP/1.1 connection to the binding gateway; the connection stays open (bound). */
async function boundConnection(t: ExecutionContext, w: World): Promise<{ status: number; socket: Socket }> {
  const keepAlive = new https.Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => keepAlive.destroy());
  const token = await w.env.token(['c1']);
  const [host, port] = splitHostPort(w.bound.address);
  return new Promise((resolve, reject) => {
    const req = https.request({ host, port, servername: 'localhost', ca: w.env.pki.trustBundlePem, agent: keepAlive, path: '/', headers: { host: 'c1.tether.localhost', authorization: `Bearer ${token}` } }, (res) => {
      const socket = res.socket;
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, socket }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function boundGauge(gateway: Gateway): Promise<number> {
  return (await gateway.metrics.bindings.get()).values.find((v) => v.labels.cluster === 'c1')?.value ?? 0;
}

/** What a refusal looks like at the client: status, code, mode; never a retry hint. */
const answer = (reply: Reply): { status: number; code: unknown; mode: unknown; retryAfter: unknown } => ({
  status: reply.status,
  code: reply.headers['tether-error'],
  mode: reply.headers['tether-cluster-mode'],
  retryAfter: reply.headers['retry-after'],
});
const SOVEREIGN_ANSWER = { status: 403, code: 'CLUSTER_SOVEREIGN', mode: 'sovereign', retryAfter: undefined };

test('with a customer key but no valid document the agent is sovereign: it dials nothing; unsigned and wrongly signed tunnel documents change nothing; a signed one opens the tunnels', async (t) => {
  const w = await world(t, null);
  const agent = await w.startAgent();
  t.is(agent.mode, 'sovereign', 'fail-safe: no document, no tunnel');
  t.deepEqual(agent.readiness().details?.knownGateways, [], 'no gateway is dialed');
  t.deepEqual(await modeGauge(agent), { tunnel: 0, sovereign: 1 });
  t.deepEqual(await documentResults(agent), { MODE_FILE_UNREADABLE: 1 });

  const tunnel: ModeFields = { mode: 'tunnel', seq: 1 };
  t.is(await refused(agent, w.modeFile, forged.bareJson(tunnel)), 'MODE_UNSIGNED');
  t.is(await refused(agent, w.modeFile, forged.algNone(tunnel)), 'MODE_UNSIGNED');
  t.is(await refused(agent, w.modeFile, await forged.otherKey(tunnel)), 'MODE_BAD_SIGNATURE');
  t.is(await refused(agent, w.modeFile, await forged.hmacWithPublicKey(tunnel, w.customer)), 'MODE_BAD_SIGNATURE');
  t.is(await refused(agent, w.modeFile, await w.customer.sign({ ...tunnel, cluster: 'c2' })), 'MODE_WRONG_CLUSTER');
  t.is(await refused(agent, w.modeFile, 'garbage'), 'MODE_MALFORMED');
  t.is(agent.mode, 'sovereign');
  t.deepEqual(agent.readiness().details?.knownGateways, []);
  t.deepEqual((await agent.metrics.handshakes.get()).values, [], 'no handshake was ever attempted');
  t.is(w.bound.tunnels.count('c1') + w.perRequest.tunnels.count('c1'), 0);
  t.like(await documentResults(agent), { MODE_UNSIGNED: 2, MODE_BAD_SIGNATURE: 2, MODE_WRONG_CLUSTER: 1, MODE_MALFORMED: 1 });
  const refusal = (await requestEveryPath(w)).map((reply) => reply.headers['tether-error']);
  t.deepEqual(refusal, ['NO_TUNNEL', 'NO_TUNNEL', 'NO_TUNNEL']);

  const change = await switched(agent, w.modeFile, await w.customer.sign(tunnel), 'tunnel');
  t.deepEqual(change, { mode: 'tunnel', previous: 'sovereign', seq: 1 });
  await agent.waitForConnections(LIVE_PER_AGENT);
  t.is(await tunnelMetric(agent), LIVE_PER_AGENT);
  t.deepEqual(await modeGauge(agent), { tunnel: 1, sovereign: 0 });
  t.deepEqual((await requestEveryPath(w)).map((reply) => [reply.status, reply.body.toString()]), [
    [200, 'ok c1'],
    [200, 'ok c1'],
    [200, 'ok c1'],
  ]);
});

test('a switch to sovereign needs the customer signature: unsigned, wrongly signed and swapped documents are refused and the tunnels stay', async (t) => {
  const w = await world(t, null);
  await writeModeFile(w.modeFile, await w.customer.sign({ mode: 'tunnel', seq: 1 }));
  const agent = await w.startAgent();
  t.is(agent.mode, 'tunnel');
  await agent.waitForConnections(LIVE_PER_AGENT);

  const sovereign: ModeFields = { mode: 'sovereign', seq: 2 };
  t.is(await refused(agent, w.modeFile, forged.bareJson(sovereign)), 'MODE_UNSIGNED');
  t.is(await refused(agent, w.modeFile, forged.algNone(sovereign)), 'MODE_UNSIGNED');
  t.is(await refused(agent, w.modeFile, await forged.otherKey(sovereign)), 'MODE_BAD_SIGNATURE');
  t.is(await refused(agent, w.modeFile, await forged.swappedPayload(sovereign, w.customer)), 'MODE_BAD_SIGNATURE');
  t.is(agent.mode, 'tunnel');
  t.is(agent.liveConnections().length, LIVE_PER_AGENT, 'no tunnel was closed');
  t.is(await tunnelMetric(agent), LIVE_PER_AGENT);
  t.like(await documentResults(agent), { accepted: 1, MODE_UNSIGNED: 2, MODE_BAD_SIGNATURE: 2 });
  t.deepEqual((await requestEveryPath(w)).map((reply) => reply.status), [200, 200, 200]);
});

test('a signed switch to sovereign drains every tunnel (metric 0); the gateway told the mode answers CLUSTER_SOVEREIGN on both paths; the vendor alone cannot reopen; a signed switch back can', async (t) => {
  const w = await world(t, null);
  await writeModeFile(w.modeFile, await w.customer.sign({ mode: 'tunnel', seq: 10 }));
  // Followed by fs.watch (and a 200 ms poll): no reloadMode() in this test.
  const agent = await w.startAgent({ pollMs: 200 });
  await agent.waitForConnections(LIVE_PER_AGENT);
  t.deepEqual((await requestEveryPath(w)).map((reply) => reply.status), [200, 200, 200]);

  // A client connection bound to a tunnel stream, kept alive across the switch.
  const bound = await boundConnection(t, w);
  t.is(bound.status, 200);
  t.is(await boundGauge(w.bound), 1);

  const closedEvents: AgentEvent[] = [];
  agent.events.on('closed', (event) => closedEvents.push(event));
  const change = nextEvent<[ModeChange]>(agent.events, 'mode');
  await writeModeFile(w.modeFile, await w.customer.sign({ mode: 'sovereign', seq: 11 }));
  t.deepEqual((await change)[0], { mode: 'sovereign', previous: 'tunnel', seq: 11 });
  t.is(agent.mode, 'sovereign');
  t.is(await tunnelMetric(agent), 0, 'tether_agent_tunnel_connections drops to 0 at the switch');
  t.deepEqual(await modeGauge(agent), { tunnel: 0, sovereign: 1 });
  t.deepEqual(agent.readiness().details?.knownGateways, [], 'nothing is dialed any more');
  await gatewaysHoldNoTunnel(w);
  t.is(await boundGauge(w.bound), 0, 'the bound tunnel stream went with its tunnel');
  t.is(closedEvents.length, LIVE_PER_AGENT, 'every tunnel connection closed');
  t.is(agent.liveConnections().length, 0);

  // The gateway not yet told: no tunnel, the transient answer.
  t.deepEqual((await requestEveryPath(w)).map((reply) => reply.headers['tether-error']), ['NO_TUNNEL', 'NO_TUNNEL', 'NO_TUNNEL']);
  // Told: a final answer naming the mode, on the bound and the per-request path alike.
  for (const gateway of [w.bound, w.perRequest]) gateway.setSovereignClusters(['c1']);
  t.deepEqual((await requestEveryPath(w)).map(answer), [SOVEREIGN_ANSWER, SOVEREIGN_ANSWER, SOVEREIGN_ANSWER]);
  const body = (await h1Request(w.bound.address, w.env.pki.trustBundlePem, { cluster: 'c1', token: await w.env.token(['c1']) })).body.toString();
  t.regex(body, /^CLUSTER_SOVEREIGN: cluster c1 is in sovereign mode/);
  // An identity that may not reach c1 learns nothing about its mode.
  t.is((await h1Request(w.bound.address, w.env.pki.trustBundlePem, { cluster: 'c1', token: await w.env.token(['c9']) })).headers['tether-error'], 'FORBIDDEN');

  // The vendor side alone switching back (gateways told tunnel) opens nothing: the agent does not dial.
  for (const gateway of [w.bound, w.perRequest]) gateway.setSovereignClusters([]);
  t.deepEqual((await requestEveryPath(w)).map((reply) => reply.headers['tether-error']), ['NO_TUNNEL', 'NO_TUNNEL', 'NO_TUNNEL']);
  t.deepEqual(agent.readiness().details?.knownGateways, []);
  t.is(agent.mode, 'sovereign');

  // The customer signs the switch back.
  const back = nextEvent<[ModeChange]>(agent.events, 'mode');
  await writeModeFile(w.modeFile, await w.customer.sign({ mode: 'tunnel', seq: 12 }));
  t.deepEqual((await back)[0], { mode: 'tunnel', previous: 'sovereign', seq: 12 });
  await agent.waitForConnections(LIVE_PER_AGENT);
  t.is(await tunnelMetric(agent), LIVE_PER_AGENT);
  t.deepEqual((await requestEveryPath(w)).map((reply) => [reply.status, reply.body.toString()]), [
    [200, 'ok c1'],
    [200, 'ok c1'],
    [200, 'ok c1'],
  ]);
});

test('an older document is refused as replayed, also across a restart with the state file; the mode in force stays', async (t) => {
  const w = await world(t, null);
  const tunnel5 = await w.customer.sign({ mode: 'tunnel', seq: 5 });
  const sovereign6 = await w.customer.sign({ mode: 'sovereign', seq: 6 });
  await writeModeFile(w.modeFile, tunnel5);
  const agent = await w.startAgent({ stateFile: true });
  await agent.waitForConnections(LIVE_PER_AGENT);
  await switched(agent, w.modeFile, sovereign6, 'sovereign');
  await gatewaysHoldNoTunnel(w);

  t.is(await refused(agent, w.modeFile, tunnel5), 'MODE_REPLAYED', 'the earlier tunnel document, byte for byte');
  t.is(await refused(agent, w.modeFile, await w.customer.sign({ mode: 'tunnel', seq: 6 })), 'MODE_REPLAYED', 'another document with the seq in force');
  t.is(await refused(agent, w.modeFile, await w.customer.sign({ mode: 'tunnel', seq: 4 })), 'MODE_REPLAYED');
  t.is(agent.mode, 'sovereign');
  t.deepEqual(agent.readiness().details?.knownGateways, []);
  t.is(agent.modeDocument?.seq, 6);
  t.like(JSON.parse(await readFile(w.stateFile, 'utf8')) as object, { cluster: 'c1', seq: 6, mode: 'sovereign' });

  // A restart with the old tunnel document put back: the state file remembers seq 6.
  await agent.close();
  await writeModeFile(w.modeFile, tunnel5);
  const restarted = await w.startAgent({ stateFile: true });
  t.is(restarted.mode, 'sovereign', 'fail-safe: the only document is older than the one in force before the restart');
  t.like(await documentResults(restarted), { MODE_REPLAYED: 1 });
  t.deepEqual(restarted.readiness().details?.knownGateways, []);
  // The document in force before the restart is taken again; a newer tunnel one switches.
  await switched(restarted, w.modeFile, sovereign6, 'sovereign');
  t.is(restarted.modeDocument?.seq, 6);
  await switched(restarted, w.modeFile, await w.customer.sign({ mode: 'tunnel', seq: 7 }), 'tunnel');
  await restarted.waitForConnections(LIVE_PER_AGENT);
  t.deepEqual((await requestEveryPath(w)).map((reply) => reply.status), [200, 200, 200]);
});

test('the gateway refuses a sovereign cluster by itself: live tunnels and bound connections close, new tunnels are refused at the handshake', async (t) => {
  const w = await world(t, null);
  // An agent without sovereignty configured: tunnel mode as before.
  const agent = await w.env.startAgent({ clusterId: 'c1', routes: [{ prefix: '/', upstream: w.upstream.url }] });
  t.is(agent.mode, 'tunnel');
  await agent.waitForConnections(LIVE_PER_AGENT);
  const bound = await boundConnection(t, w);
  t.is(bound.status, 200);
  t.is(await boundGauge(w.bound), 1);
  const boundClosed = new Promise<void>((resolve) => bound.socket.once('close', () => resolve()));
  const refusedEvent = nextEvent<[AgentEvent]>(agent.events, 'refused', (event) => event.code === 'CLUSTER_SOVEREIGN');
  for (const gateway of [w.bound, w.perRequest]) gateway.setSovereignClusters(['c1']);
  t.is(w.bound.clusterMode('c1'), 'sovereign');
  await boundClosed;
  t.is(await boundGauge(w.bound), 0, "the bound connection was closed with the cluster's tunnels");
  t.is(w.bound.tunnels.count('c1') + w.perRequest.tunnels.count('c1'), 0, 'live tunnels closed at once');
  t.deepEqual((await requestEveryPath(w)).map(answer), [SOVEREIGN_ANSWER, SOVEREIGN_ANSWER, SOVEREIGN_ANSWER]);
  // The agent dials again and is refused at the handshake with the mode's code.
  const [event] = await refusedEvent;
  t.is(event.code, 'CLUSTER_SOVEREIGN');
  const refusing = [w.bound, w.perRequest].find((gateway) => gateway.agentAddress === event.address);
  const counted = (await refusing?.metrics.handshakes.get())?.values.find((v) => v.labels.result === 'refused' && v.labels.reason === 'CLUSTER_SOVEREIGN');
  t.true((counted?.value ?? 0) >= 1, 'the refusing gateway counts it');
});
