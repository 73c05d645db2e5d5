/**
 * Control-plane throughput with encryption at rest on: runs created per second and phase events
 * per second, through ControlService (RBAC check, metadata-only validation, sealing, audit) on a
 * SQLite file in WAL mode. Batches stand for what the API carries: CreateRuns of `RUN_BATCH`
 * runs, and an agent's ReportEvents of `EVENT_BATCH` events, each one transaction. Then the same
 * over the network: CreateRuns over JSON/HTTP with a verified bearer token per request, and phase
 * events over the agents' mTLS channel (AgentClient).
 *
 *   node --import ./bin/typescript.js benchmarks/control.ts
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { AgentClient } from '../agent/control-client.js';
import { CertificateAuthority } from '../certs/certificate-authority.js';
import { silentLogger } from '../common/log.js';
import { DevOidcIssuer } from '../certs/dev-oidc-issuer.js';
import { parseControlConfig } from '../control/config.js';
import { Phase } from '../control/phases.js';
import { ControlServer } from '../control/server.js';
import { ControlService, userCaller } from '../control/service.js';
import type { CreateRunInput, EventInput } from '../control/service.js';
import { Keyring, newKek } from '../control/store/keyring.js';
import { SqliteStore } from '../control/store/sqlite-store.js';

const RUNS = 20_000;
const RUN_BATCH = 100;
const EVENT_BATCH = 500;

/**
 * The same work end to end over the network: CreateRuns over JSON/HTTP (100 per request, bearer
 * JWT verified on every call) and phase events over the agents' mTLS channel (AgentClient batches).
 */
async function overTheWire(dir: string): Promise<Record<string, number>> {
  const issuer = new DevOidcIssuer();
  const issuerUrl = await issuer.listen();
  const ca = await CertificateAuthority.create({ trustDomain: 'bench.test' });
  const server = await ControlServer.start(
    parseControlConfig({
      org: 'acme', store: { path: join(dir, 'wire.db') }, grpc: { port: 0 }, http: { port: 0 }, auth: { issuers: [{ issuer: issuerUrl, audience: 'tether' }] },
      bootstrapAdmins: ['bench'], agents: { port: 0, capacity: 100_000, pollMs: 60_000 }, scheduler: { enabled: false },
    }),
    { ca, env: { TETHER_CONTROL_KEK: newKek().key.toString('base64') }, logger: silentLogger() },
  );
  let agent: AgentClient | null = null;
  try {
    const token = await issuer.mint({ subject: 'bench', audience: 'tether' });
    const post = async (path: string, body: unknown): Promise<Record<string, unknown>> => {
      const response = await fetch(`http://127.0.0.1:${server.httpPort}/tether.control.v1.${path}`, { method: 'POST', headers: { authorization: `Bearer ${token}` }, body: JSON.stringify(body) });
      if (!response.ok) throw new Error(`${path}: ${response.status} ${await response.text()}`);
      return (await response.json()) as Record<string, unknown>;
    };
    const scope = { org: 'acme', project: 'bench', domain: 'dev' };
    await post('ClusterService/RegisterCluster', { cluster: { id: 'c1', org: 'acme', mode: 'CLUSTER_MODE_TUNNEL', endpoint: 'https://c1.example', issuer: 'https://i.example', audience: 'tether', allowedSubjects: ['agent'] } });
    await post('TaskService/RegisterTask', { scope, name: 'train', version: 'v1', spec: { command: 'python', args: ['-m', 'train'], env: { A: 'b' } } });
    const runs = 5_000;
    const ids: string[] = [];
    let started = process.hrtime.bigint();
    for (let i = 0; i < runs; i += RUN_BATCH) {
      const batch = Array.from({ length: RUN_BATCH }, (_, k) => ({ scope, taskName: 'train', taskVersion: 'v1', inputs: { data: `s3://bench-bucket/${i + k}/in.parquet` } }));
      const created = (await post('RunService/CreateRuns', { runs: batch })).runs as Array<{ id: string }>;
      for (const entry of created) ids.push(entry.id);
    }
    const httpSeconds = Number(process.hrtime.bigint() - started) / 1e9;

    const tls = await ca.issueWorkload({ clusterId: 'c1', agentId: 'bench-agent' });
    const client = new AgentClient({
      address: `localhost:${server.agentPort}`,
      agentId: 'bench-agent',
      credentials: () => ({ key: tls.privateKeyPem ?? '', cert: tls.chainPem, ca: ca.trustBundlePem() }),
      running: () => [],
      onAssignment: () => {},
      onAbort: () => {},
      maxBatch: EVENT_BATCH,
    });
    agent = client;
    client.start();
    await client.whenConnected();
    started = process.hrtime.bigint();
    for (const phase of [Phase.INITIALIZING, Phase.RUNNING, Phase.SUCCEEDED]) for (const id of ids) client.report({ runId: id, phase });
    await client.whenIdle();
    const channelSeconds = Number(process.hrtime.bigint() - started) / 1e9;
    return { httpRunsPerSec: Math.round(runs / httpSeconds), channelEventsPerSec: Math.round((ids.length * 3) / channelSeconds) };
  } finally {
    await agent?.close();
    await server.close();
    await issuer.close();
  }
}

export async function run(): Promise<Record<string, number>> {
  const dir = mkdtempSync(join(tmpdir(), 'tether-bench-control-'));
  const store = SqliteStore.open({ path: join(dir, 'control.db'), keyring: new Keyring([newKek('bench')]) });
  try {
    const service = new ControlService({ store });
    const admin = userCaller('bench-admin');
    const agent = userCaller('bench-agent');
    const scope = { org: 'acme', project: 'bench', domain: 'dev' };
    await service.ensureAdmins('acme', ['bench-admin', 'bench-agent']);
    await service.registerCluster(admin, { org: 'acme', id: 'c1', mode: 'tunnel', endpoint: 'https://c1.example', issuer: 'https://i.example', audience: 'tether', allowedSubjects: ['agent'] });
    await service.registerTask(admin, {
      ...scope, name: 'train', version: 'v1',
      spec: { command: 'python', args: ['-m', 'train'], env: { SECRET_HINT: 'x'.repeat(64) }, timeoutSec: 600, maxOutputBytes: 0, description: 'benchmark task' },
    });
    const input = (i: number): CreateRunInput => ({
      ...scope, taskName: 'train', taskVersion: 'v1',
      inputs: { data: `s3://bench-bucket/inputs/${i}/data.parquet`, config: `s3://bench-bucket/inputs/${i}/config.json` },
      outputPrefix: `s3://bench-bucket/outputs/${i}/`, env: { RUN_INDEX: String(i) }, labels: { team: 'ml' },
    });

    const ids: string[] = [];
    let started = process.hrtime.bigint();
    for (let i = 0; i < RUNS; i += RUN_BATCH) {
      const batch = Array.from({ length: RUN_BATCH }, (_, k) => input(i + k));
      for (const created of await service.createRuns(admin, batch)) ids.push(created.id);
    }
    const runSeconds = Number(process.hrtime.bigint() - started) / 1e9;

    const phases = [Phase.INITIALIZING, Phase.RUNNING, Phase.SUCCEEDED];
    const events: EventInput[] = [];
    for (const phase of phases) {
      for (const id of ids) {
        events.push({ runId: id, phase, message: `phase ${phase}`, outputs: phase === Phase.SUCCEEDED ? { model: `s3://bench-bucket/outputs/${id}/model.bin` } : {} });
      }
    }
    started = process.hrtime.bigint();
    let applied = 0;
    for (let i = 0; i < events.length; i += EVENT_BATCH) {
      for (const outcome of await service.reportEvents(agent, 'acme', 'c1', events.slice(i, i + EVENT_BATCH))) if (outcome.status === 'applied') applied += 1;
    }
    const eventSeconds = Number(process.hrtime.bigint() - started) / 1e9;
    if (applied !== events.length) throw new Error(`only ${applied} of ${events.length} events applied`);

    // Reads: get one run (decrypting spec and result) at a time.
    started = process.hrtime.bigint();
    const reads = 5_000;
    for (let i = 0; i < reads; i += 1) await service.getRun(admin, ids[(i * 7919) % ids.length]!);
    const readSeconds = Number(process.hrtime.bigint() - started) / 1e9;

    // One run / one event per call (no batching), for comparison.
    const single = 2_000;
    started = process.hrtime.bigint();
    const singles: string[] = [];
    for (let i = 0; i < single; i += 1) singles.push((await service.createRun(admin, input(RUNS + i))).id);
    const singleRunSeconds = Number(process.hrtime.bigint() - started) / 1e9;
    started = process.hrtime.bigint();
    for (const id of singles) await service.reportEvents(agent, 'acme', 'c1', [{ runId: id, phase: Phase.RUNNING }]);
    const singleEventSeconds = Number(process.hrtime.bigint() - started) / 1e9;

    const wire = await overTheWire(dir);

    return {
      runs: RUNS,
      runBatch: RUN_BATCH,
      runsPerSec: Math.round(RUNS / runSeconds),
      events: events.length,
      eventBatch: EVENT_BATCH,
      eventsPerSec: Math.round(events.length / eventSeconds),
      getRunPerSec: Math.round(reads / readSeconds),
      unbatchedRunsPerSec: Math.round(single / singleRunSeconds),
      unbatchedEventsPerSec: Math.round(single / singleEventSeconds),
      ...wire,
    };
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  run().then(
    (results) => process.stdout.write(`${JSON.stringify(results, null, 2)}\n`),
    (reason: unknown) => {
      process.stderr.write(`${String(reason)}\n`);
      process.exitCode = 1;
    },
  );
}
