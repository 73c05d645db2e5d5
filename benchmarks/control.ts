/**
 * Control-plane throughput with encryption at rest on: runs created per second and phase events
 * per second, through ControlService (RBAC check, metadata-only validation, sealing, audit) on a
 * SQLite file in WAL mode. Batches stand for what the API carries: CreateRuns of `RUN_BATCH`
 * runs, and an agent's ReportEvents of `EVENT_BATCH` events, each one transaction.
 *
 *   node --import tsx benchmarks/control.ts
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Phase } from '../control/phases.js';
import { ControlService, userCaller } from '../control/service.js';
import type { CreateRunInput, EventInput } from '../control/service.js';
import { Keyring, newKek } from '../control/store/keyring.js';
import { SqliteStore } from '../control/store/sqlite-store.js';

const RUNS = 20_000;
const RUN_BATCH = 100;
const EVENT_BATCH = 500;

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
