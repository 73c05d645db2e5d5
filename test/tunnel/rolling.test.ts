/**
 * Gateway replicas as real child processes (`tether gateway --config`) under continuous load:
 * SIGKILL of one replica, and a rolling restart (with drain) of every replica and then of the
 * agents.
 *
 * Clients reach a specific replica, so the test models what an L4 load balancer in front of the
 * replicas does (`ClientLb` in test/helpers/tunnel-replicas.ts): new requests go only to replicas
 * in rotation; a connection-level failure (refused, reset: no HTTP answer) takes the replica out
 * of rotation and the request is retried ONCE on another replica. For a planned restart the LB
 * takes the replica out of rotation just before SIGTERM (as a failing health check would) and
 * puts it back once its replacement is listening and holds tunnels from every agent.
 */
import test from 'ava';
import { mkdtemp, rm } from 'node:fs/promises';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, type AgentEvent } from '../../agent/index.js';
import { getErrorMessage } from '../../common/errors.js';
import { silentLogger } from '../../common/log.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { createTestPki, type TestPki } from '../helpers/pki.js';
import { h1Request } from '../helpers/tunnel-clients.js';
import { AUDIENCE, ISSUER, createTokenIssuer, type TokenIssuer } from '../helpers/tunnel-env.js';
import { ClientLb, startReplicaProcess, stopReplicaProcess, waitForTunnelsTo, type LbOutcome, type ReplicaProcess } from '../helpers/tunnel-replicas.js';
import { startHttp1Upstream, type Upstream } from '../helpers/tunnel-upstreams.js';

failOnLeaks(test);

/** Upstream latency per request, so that requests are in flight when replicas die or drain. */
const UPSTREAM_DELAY_MS = 5;
const LOADERS = 4;

let pki: TestPki;
let issuer: TokenIssuer;
let upstream: Upstream;
let dir: string;
let gatewayConfig: Record<string, unknown>;
let token: string;

test.before(async () => {
  pki = await createTestPki();
  issuer = await createTokenIssuer();
  dir = await mkdtemp(join(tmpdir(), 'tether-rolling-'));
  const gw = await pki.gatewayCert();
  upstream = await startHttp1Upstream((req: http.IncomingMessage, res: http.ServerResponse) => {
    req.resume();
    const timer = setTimeout(() => res.end('ok'), UPSTREAM_DELAY_MS);
    res.once('close', () => clearTimeout(timer));
  });
  gatewayConfig = {
    listen: { host: '127.0.0.1', port: 0 },
    tls: { key: gw.key, cert: gw.cert, ca: pki.trustBundlePem },
    trustDomain: pki.trustDomain,
    clusters: ['c1'],
    baseDomain: 'tether.localhost',
    auth: { mode: 'jwt', issuers: [{ issuer: ISSUER, audiences: [AUDIENCE], jwks: issuer.jwks }] },
    pingIntervalMs: 1000,
    pingTimeoutMs: 2000,
    agentRetryAfterMs: 100,
    drainGraceMs: 5000,
  };
  token = await issuer.sign({ clusters: ['c1'] });
});

test.after.always(async () => {
  await upstream?.close();
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
});

async function startAgent(agentId: string, gateways: string[]): Promise<Agent> {
  const material = await pki.agentCert({ clusterId: 'c1', agentId });
  const agent = new Agent({
    gateways,
    serverName: 'localhost',
    tls: { key: material.key, cert: material.cert, ca: pki.trustBundlePem },
    routes: [{ prefix: '/', upstream: upstream.url }],
    connectionsPerGateway: 2,
    logger: silentLogger(),
    pingIntervalMs: 1000,
    pingTimeoutMs: 2000,
    backoff: { initialDelayMs: 50, maxDelayMs: 500 },
  });
  await agent.start();
  return agent;
}

/** `LOADERS` request loops through the LB until stopped; `after(n)` waits for n more completions. */
class Load {
  readonly outcomes: LbOutcome[] = [];
  private stopped = false;
  private waiters: Array<() => void> = [];
  private readonly loops: Promise<void>[];

  constructor(private readonly lb: ClientLb) {
    this.loops = Array.from({ length: LOADERS }, () => this.loop());
  }

  private async loop(): Promise<void> {
    while (!this.stopped) {
      this.outcomes.push(await this.lb.request({ cluster: 'c1', token }));
      const waiters = this.waiters;
      this.waiters = [];
      for (const w of waiters) w();
    }
  }

  /** Resolves once `n` more requests have completed; rejects after `timeoutMs`. */
  async after(n: number, timeoutMs = 10_000): Promise<void> {
    const target = this.outcomes.length + n;
    const deadline = Date.now() + timeoutMs;
    while (this.outcomes.length < target) {
      if (Date.now() >= deadline) throw new Error(`load made no progress: ${this.outcomes.length}/${target} after ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, deadline - Date.now());
        function done(): void {
          clearTimeout(timer);
          resolve();
        }
        this.waiters.push(done);
      });
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all(this.loops);
  }
}

const failed = (o: LbOutcome): boolean => o.reply?.status !== 200;
const describe = (o: LbOutcome, origin = 0): string => `${o.startedAt - origin}…${o.endedAt - origin} ms ${o.replica} ${o.reply === null ? String(o.error) : `${o.reply.status} ${String(o.reply.headers['tether-error'])}`}`;

function withDeadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

test.serial('SIGKILL of one gateway replica under load: the agent keeps its tunnels to the survivor and every request started after the kill succeeds', async (t) => {
  const replicas: ReplicaProcess[] = [];
  const agents: Agent[] = [];
  const lb = new ClientLb(pki.trustBundlePem);
  let load: Load | null = null;
  try {
    const [a, b] = await Promise.all([startReplicaProcess(dir, 'kill-a', gatewayConfig), startReplicaProcess(dir, 'kill-b', gatewayConfig)]);
    replicas.push(a, b);
    const agent = await startAgent('k1', [a.address, b.address]);
    agents.push(agent);
    await Promise.all([waitForTunnelsTo(agent, a.id, 2), waitForTunnelsTo(agent, b.id, 2)]);
    const survivorClosed: string[] = [];
    agent.events.on('closed', (e: AgentEvent) => {
      if (e.gatewayId === b.id) survivorClosed.push(e.code ?? '?');
    });
    lb.add(a.id, a.address);
    lb.add(b.id, b.address);
    load = new Load(lb);
    await load.after(60);
    t.true(load.outcomes.some((o) => o.replica === a.id && !failed(o)), 'the doomed replica carried traffic before the kill');

    const inFlightAtKill = lb.inFlight(a.id);
    const killAt = Date.now();
    a.child.kill('SIGKILL');
    t.is(await withDeadline(a.exited, 5000, 'SIGKILLed replica exit'), 'SIGKILL');
    await load.after(200);
    await load.stop();
    const all = load.outcomes;
    const before = all.filter((o) => o.startedAt < killAt);
    const after = all.filter((o) => o.startedAt >= killAt);
    const retried = after.filter((o) => o.retried);
    const lastToDead = Math.max(killAt, ...after.filter((o) => o.retried).map((o) => o.startedAt));
    t.log(`${inFlightAtKill} requests in flight to the killed replica at the kill`);
    t.log(`${all.length} requests: ${before.length} started before the kill (${before.filter(failed).length} failed), ${after.length} after (${after.filter(failed).length} failed)`);
    t.log(`retried once on the survivor after a connection error at the killed replica: ${before.filter((o) => o.retried).length} started before the kill (in flight), ${retried.length} after`);
    t.log(`after the kill: ${retried.length} retried once on the survivor (connection error at the dead replica), the last one started ${lastToDead - killAt} ms after the kill; slowest request ${Math.max(...after.map((o) => o.endedAt - o.startedAt))} ms`);
    t.deepEqual(after.filter(failed).map(describe), [], 'every request started after the kill succeeds');
    t.true(after.length >= 200);
    t.true(after.every((o) => o.replica === b.id), 'every request after the kill was answered by the survivor');
    t.false(lb.has(a.id), 'the LB took the dead replica out of rotation');
    t.is(agent.liveConnections().filter((c) => c.gatewayId === b.id).length, 2, 'the agent still holds both tunnels to the survivor');
    t.deepEqual(survivorClosed, [], 'no tunnel to the survivor was closed');
    t.true(agent.readiness().ready);
  } finally {
    await load?.stop();
    lb.close();
    await Promise.all(agents.map((x) => x.close()));
    await Promise.all(replicas.map((r) => stopReplicaProcess(r)));
  }
});

test.serial('rolling restart of every gateway replica (SIGTERM drain) and then of the agent under continuous load: zero failed requests', async (t) => {
  const replicas: ReplicaProcess[] = [];
  const agents: Agent[] = [];
  const lb = new ClientLb(pki.trustBundlePem);
  let load: Load | null = null;
  const steps: string[] = [];
  const began = Date.now();
  const mark = (what: string): void => {
    steps.push(`${String(Date.now() - began).padStart(5)} ms  ${what}`);
  };
  try {
    const initial = await Promise.all([startReplicaProcess(dir, 'roll-a', gatewayConfig), startReplicaProcess(dir, 'roll-b', gatewayConfig)]);
    replicas.push(...initial);
    const seeds = initial.map((r) => r.address);
    const first = await startAgent('r1', seeds);
    agents.push(first);
    await Promise.all(initial.map((r) => waitForTunnelsTo(first, r.id, 2)));
    for (const r of initial) lb.add(r.id, r.address);
    load = new Load(lb);
    await load.after(40);
    mark(`load running, ${load.outcomes.length} requests done`);

    const current = [...initial];
    for (let i = 0; i < current.length; i++) {
      const old = current[i] as ReplicaProcess;
      lb.remove(old.id);
      const inFlight = lb.inFlight(old.id);
      // The LB keeps LOADERS requests outstanding at all times, spread over the replicas in rotation.
      t.true(inFlight > 0, `requests are in flight to ${old.id} when it leaves rotation`);
      // No deregistration delay: the replica gets SIGTERM with requests in flight, and its drain
      // must carry them.
      mark(`${old.id} out of rotation with ${inFlight} requests in flight; SIGTERM`);
      old.child.kill('SIGTERM');
      const code = await withDeadline(old.exited, 10_000, `${old.id} drain and exit`);
      t.is(code, 0, `${old.id} exits 0 after draining`);
      mark(`${old.id} drained and exited ${String(code)}`);
      const replacement = await startReplicaProcess(dir, `${old.id}-2`, { ...gatewayConfig, listen: { host: '127.0.0.1', port: old.port } });
      replicas.push(replacement);
      t.is(replacement.address, old.address);
      mark(`${replacement.id} listening on the same port`);
      await Promise.all(agents.filter((x) => x.readiness().ready).map((x) => waitForTunnelsTo(x, replacement.id, 2)));
      current[i] = replacement;
      lb.add(replacement.id, replacement.address);
      mark(`${replacement.id} holds the agent's tunnels, back in rotation`);
      await load.after(40);
    }
    t.true(load.outcomes.some((o) => o.replica.endsWith('-2') && !failed(o)), 'replacements carry traffic');

    // Then the agents: start the next one, drain the previous one.
    let previous = first;
    for (const agentId of ['r2', 'r3']) {
      const next = await startAgent(agentId, seeds);
      agents.push(next);
      await Promise.all(current.map((r) => waitForTunnelsTo(next, r.id, 2)));
      mark(`agent ${agentId} has 2 tunnels to each replica`);
      await load.after(20);
      await withDeadline(previous.drain(5000), 10_000, 'agent drain');
      mark(`previous agent drained`);
      await load.after(40);
      previous = next;
    }
    await load.stop();
    mark('load stopped');
    const all = load.outcomes;
    const byReplica = new Map<string, number>();
    for (const o of all) byReplica.set(o.replica, (byReplica.get(o.replica) ?? 0) + 1);
    t.log(steps.join('\n'));
    t.log(`${all.length} requests, ${all.filter(failed).length} failed, ${all.filter((o) => o.retried).length} retried; per replica: ${[...byReplica].map(([id, n]) => `${id}=${n}`).join(' ')}`);
    t.deepEqual(all.filter(failed).map((o) => describe(o, began)), [], 'zero failed requests');
    t.is(all.filter((o) => o.retried).length, 0, 'no request needed the LB retry');
    t.true(all.length >= 300);
    t.true(previous.readiness().ready);
  } finally {
    await load?.stop();
    lb.close();
    await Promise.all(agents.map((x) => x.close()));
    await Promise.all(replicas.map((r) => stopReplicaProcess(r)));
  }
});

/**
 * A client request the gateway accepted before SIGTERM but for which it has not yet opened a
 * tunnel stream (here: held in JWT verification by a slow JWKS fetch) is carried through the
 * drain: the drain counts requests being admitted, the gateway keeps using its own tunnels, and
 * the agent serves streams on a connection whose gateway announced a drain (it refuses new
 * streams only when it drains itself). Answered 200 within the grace period.
 */
test.serial('a request accepted before SIGTERM but still in authentication is carried through the drain', async (t) => {
  let fetched: () => void = () => undefined;
  const jwksFetched = new Promise<void>((resolve) => {
    fetched = resolve;
  });
  let release: () => void = () => undefined;
  const released = new Promise<void>((resolve) => {
    release = resolve;
  });
  const jwksServer = http.createServer((req, res) => {
    req.resume();
    fetched();
    void released.then(() => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(issuer.jwks));
    });
  });
  await new Promise<void>((resolve) => jwksServer.listen(0, '127.0.0.1', resolve));
  const { port } = jwksServer.address() as AddressInfo;
  let replica: ReplicaProcess | null = null;
  let agent: Agent | null = null;
  try {
    replica = await startReplicaProcess(dir, 'auth-drain', {
      ...gatewayConfig,
      auth: { mode: 'jwt', issuers: [{ issuer: ISSUER, audiences: [AUDIENCE], jwksUrl: `http://127.0.0.1:${port}/jwks` }] },
    });
    agent = await startAgent('d1', [replica.address]);
    await waitForTunnelsTo(agent, replica.id, 2);
    const reply = h1Request(replica.address, pki.trustBundlePem, { cluster: 'c1', token }).then(
      (r) => `${r.status} ${String(r.headers['tether-error'] ?? '')}`.trim(),
      (reason: unknown) => `connection error: ${getErrorMessage(reason)}`,
    );
    await withDeadline(jwksFetched, 10_000, 'the gateway fetching the JWKS');
    replica.child.kill('SIGTERM');
    // No event tells the agent's owner that a gateway announced its drain: poll, bounded.
    const deadline = Date.now() + 5000;
    const current = agent;
    const id = replica.id;
    while (current.liveConnections().some((c) => c.gatewayId === id) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
    release();
    const outcome = await withDeadline(reply, 10_000, 'the held request');
    t.log(`request held in authentication across SIGTERM: ${outcome}`);
    t.is(outcome, '200');
    t.is(await withDeadline(replica.exited, 10_000, 'replica exit'), 0);
  } finally {
    release();
    await agent?.close();
    if (replica !== null) await stopReplicaProcess(replica);
    await new Promise<void>((resolve) => jwksServer.close(() => resolve()));
  }
});
