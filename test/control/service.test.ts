import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { isTetherError } from '../../common/errors.js';
import { ControlErrorCode } from '../../control/errors.js';
import { Phase } from '../../control/phases.js';
import { ControlService, userCaller } from '../../control/service.js';
import type { CreateRunInput } from '../../control/service.js';
import { Keyring, newKek } from '../../control/store/keyring.js';
import type { TaskSpec } from '../../control/store/repository.js';
import { SqliteStore } from '../../control/store/sqlite-store.js';

const SCOPE = { org: 'acme', project: 'p1', domain: 'dev' };
const admin = userCaller('admin');
const contributor = userCaller('carol');
const viewer = userCaller('victor');
const stranger = userCaller('mallory');
const SPEC: TaskSpec = { command: 'python', args: ['train.py'], env: { MODE: 'fast' }, timeoutSec: 60, maxOutputBytes: 0, description: 'trains' };

async function setup(t: ExecutionContext, options: { path?: string; allowFileUris?: boolean; now?: () => number; keyring?: Keyring } = {}): Promise<ControlService> {
  const store = SqliteStore.open({ path: options.path ?? ':memory:', keyring: options.keyring ?? new Keyring([newKek('k1')]) });
  t.teardown(() => store.close());
  const service = new ControlService({ store, allowFileUris: options.allowFileUris, now: options.now });
  await service.ensureAdmins('acme', ['admin']);
  await service.bind(admin, 'user:carol', 'Contributor', { org: 'acme', project: 'p1' });
  await service.bind(admin, 'user:victor', 'Viewer', { org: 'acme' });
  await service.registerCluster(admin, {
    org: 'acme', id: 'c1', mode: 'tunnel', endpoint: 'https://c1.tunnel.example', issuer: 'https://oidc.c1.example', audience: 'tether', allowedSubjects: ['system:serviceaccount:tether:agent'],
  });
  await service.registerTask(admin, { ...SCOPE, name: 'train', version: 'v1', spec: SPEC });
  return service;
}

function runInput(extra: Partial<CreateRunInput> = {}): CreateRunInput {
  return { ...SCOPE, taskName: 'train', taskVersion: 'v1', inputs: { data: 's3://bucket/in.parquet' }, ...extra };
}

async function code(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
    return 'OK';
  } catch (reason) {
    return isTetherError(reason) ? reason.code : `THREW ${String(reason)}`;
  }
}

test('task versions are immutable: identical re-registration is idempotent, another body under the same version is refused', async (t) => {
  const service = await setup(t);
  const cases: Array<[string, TaskSpec, string, boolean | string]> = [
    ['identical body, same version', SPEC, 'v1', false],
    ['identical body, env keys in another order', { ...SPEC, env: { MODE: 'fast' } }, 'v1', false],
    ['changed command', { ...SPEC, command: 'python3' }, 'v1', ControlErrorCode.TASK_VERSION_CONFLICT],
    ['changed env value', { ...SPEC, env: { MODE: 'slow' } }, 'v1', ControlErrorCode.TASK_VERSION_CONFLICT],
    ['changed args', { ...SPEC, args: ['train.py', '--x'] }, 'v1', ControlErrorCode.TASK_VERSION_CONFLICT],
    ['changed timeout', { ...SPEC, timeoutSec: 61 }, 'v1', ControlErrorCode.TASK_VERSION_CONFLICT],
    ['changed body, new version', { ...SPEC, command: 'python3' }, 'v2', true],
    ['same again under v2', { ...SPEC, command: 'python3' }, 'v2', false],
  ];
  for (const [label, spec, version, want] of cases) {
    try {
      const { created } = await service.registerTask(admin, { ...SCOPE, name: 'train', version, spec });
      t.is(created as boolean | string, want, label);
    } catch (reason) {
      t.true(isTetherError(reason, String(want)), `${label}: ${String(reason)}`);
    }
  }
  t.is((await service.getTask(viewer, SCOPE, 'train', 'v1')).spec.command, 'python');
  t.is(await code(service.registerTask(viewer, { ...SCOPE, name: 'x', version: 'v1', spec: SPEC })), ControlErrorCode.PERMISSION_DENIED);
});

test('metadata only: inputs must be URIs of allowed schemes; oversize fields are refused', async (t) => {
  const service = await setup(t);
  const big = 'x'.repeat(5000);
  const cases: Array<[string, Partial<CreateRunInput>, string]> = [
    ['s3 URI', { inputs: { a: 's3://bucket/key' } }, 'OK'],
    ['gs, abfs, tether-blob URIs', { inputs: { a: 'gs://b/k', b: 'abfs://c@acct.dfs.core.windows.net/k', c: 'tether-blob://c1/objects/abc' } }, 'OK'],
    ['inline literal', { inputs: { a: '42' } }, ControlErrorCode.METADATA_PAYLOAD_REFUSED],
    ['inline JSON', { inputs: { a: '{"rows":[1,2,3]}' } }, ControlErrorCode.METADATA_PAYLOAD_REFUSED],
    ['data: URI', { inputs: { a: 'data:application/octet-stream;base64,AAAA' } }, ControlErrorCode.METADATA_PAYLOAD_REFUSED],
    ['http URI', { inputs: { a: 'https://example.com/file' } }, ControlErrorCode.METADATA_URI_SCHEME],
    ['file URI outside dev', { inputs: { a: 'file:///tmp/x' } }, ControlErrorCode.METADATA_URI_SCHEME],
    ['URI carrying a payload', { inputs: { a: `s3://bucket/${'A'.repeat(4000)}` } }, ControlErrorCode.METADATA_FIELD_TOO_LARGE],
    ['oversize env value', { env: { BLOB: big } }, ControlErrorCode.METADATA_FIELD_TOO_LARGE],
    ['too many inputs', { inputs: Object.fromEntries(Array.from({ length: 200 }, (_, i) => [`i${i}`, 's3://b/k'])) }, ControlErrorCode.METADATA_FIELD_TOO_LARGE],
    ['bad input name', { inputs: { '../x': 's3://b/k' } }, ControlErrorCode.INVALID_ARGUMENT],
    ['unknown task', { taskVersion: 'v9' }, ControlErrorCode.NOT_FOUND],
    ['unknown cluster', { clusterId: 'c9' }, ControlErrorCode.CLUSTER_UNKNOWN],
  ];
  for (const [label, extra, want] of cases) t.is(await code(service.createRun(contributor, runInput(extra))), want, label);
  t.is(
    await code(service.registerTask(admin, { ...SCOPE, name: 't2', version: 'v1', spec: { ...SPEC, args: [big] } })),
    ControlErrorCode.METADATA_FIELD_TOO_LARGE,
  );
  const dev = await setup(t, { allowFileUris: true });
  t.is(await code(dev.createRun(admin, runInput({ inputs: { a: 'file:///tmp/x' } }))), 'OK');
});

test('runs: create, get, list with filters and paging, abort, phase history; events follow the phase rules and repeats write nothing', async (t) => {
  const service = await setup(t);
  const created = [];
  for (let i = 0; i < 7; i += 1) created.push(await service.createRun(contributor, runInput({ labels: { i: String(i) } })));
  const [first, second] = created as [(typeof created)[0], (typeof created)[0]];
  t.is(first.phase, Phase.QUEUED);
  t.is(first.clusterId, 'c1');
  t.is((await service.getRun(viewer, first.id)).spec.inputs.data, 's3://bucket/in.parquet');

  const seen: string[] = [];
  let token = '';
  let pages = 0;
  do {
    const page = await service.listRuns(viewer, { org: 'acme', project: 'p1' }, 3, token);
    seen.push(...page.items.map((run) => run.id));
    token = page.nextPageToken;
    pages += 1;
  } while (token !== '');
  t.is(pages, 3);
  t.deepEqual([...seen].sort(), created.map((run) => run.id).sort());

  const report = (runId: string, phase: number, cluster = 'c1') => service.reportEvents(admin, 'acme', cluster, [{ runId, phase, message: `to ${phase}` }]);
  t.is((await report(first.id, Phase.RUNNING))[0]?.status, 'applied');
  t.is((await report(first.id, Phase.RUNNING))[0]?.status, 'duplicate');
  t.like((await report(first.id, Phase.QUEUED))[0], { status: 'refused', code: ControlErrorCode.PHASE_BACKWARDS });
  t.like((await report(first.id, Phase.SUCCEEDED, 'c2'))[0], { status: 'refused', code: ControlErrorCode.PHASE_WRONG_CLUSTER });
  const [done] = await service.reportEvents(admin, 'acme', 'c1', [{ runId: first.id, phase: Phase.SUCCEEDED, outputs: { model: 's3://bucket/out/model.bin' } }]);
  t.is(done?.status, 'applied');
  t.like((await report(first.id, Phase.FAILED))[0], { status: 'refused', code: ControlErrorCode.PHASE_TERMINAL });
  t.is((await report(first.id, Phase.SUCCEEDED))[0]?.status, 'duplicate');
  const history = await service.phaseHistory(viewer, first.id);
  t.deepEqual(history.map((event) => event.phase), [Phase.RUNNING, Phase.SUCCEEDED]);
  t.deepEqual(history.map((event) => event.seq), [1, 2]);
  const finished = await service.getRun(viewer, first.id);
  t.is(finished.result.outputs.model, 's3://bucket/out/model.bin');
  t.truthy(finished.startedAt);
  t.truthy(finished.endedAt);
  t.is((await service.listRuns(viewer, { org: 'acme', phase: Phase.SUCCEEDED }, 10, '')).items.length, 1);
  t.is(await code(service.reportEvents(contributor, 'acme', 'c1', [{ runId: second.id, phase: Phase.RUNNING }])), ControlErrorCode.PERMISSION_DENIED);

  // Abort: QUEUED → ABORTED at once; RUNNING → ABORTING, then the agent's ABORTED.
  t.is((await service.abortRun(contributor, second.id, 'not needed')).phase, Phase.ABORTED);
  const third = created[2]!;
  await report(third.id, Phase.RUNNING);
  t.is((await service.abortRun(contributor, third.id, '')).phase, Phase.ABORTING);
  t.like((await report(third.id, Phase.RUNNING))[0], { status: 'refused', code: ControlErrorCode.PHASE_BACKWARDS });
  t.is((await report(third.id, Phase.ABORTED))[0]?.status, 'applied');
  t.is(await code(service.abortRun(contributor, first.id, '')), ControlErrorCode.PHASE_TERMINAL);
  t.is(await code(service.abortRun(viewer, created[3]!.id, '')), ControlErrorCode.PERMISSION_DENIED);
  t.is(await code(service.getRun(viewer, 'rnope')), ControlErrorCode.NOT_FOUND);

  // A caller-chosen id is unique; a clash rolls back the whole batch.
  t.is(await code(service.createRun(contributor, runInput({ runId: 'my-run' }))), 'OK');
  t.is(await code(service.createRuns(contributor, [runInput({ runId: 'fresh' }), runInput({ runId: 'my-run' })])), ControlErrorCode.ALREADY_EXISTS);
  t.is(await code(service.getRun(viewer, 'fresh')), ControlErrorCode.NOT_FOUND);
});

test('every call is audited with who, what, resource and result, including refusals; only Admin reads the log', async (t) => {
  const service = await setup(t);
  await service.createRun(contributor, runInput({ runId: 'audited' }));
  await code(service.createRun(stranger, runInput()));
  await code(service.createRun(contributor, runInput({ inputs: { a: 'inline' } })));
  const log = (await service.listAudit(admin, 'acme', {}, 100, '')).items;
  t.like(log.find((entry) => entry.principal === 'user:carol' && entry.result === 'OK' && entry.operation === 'run.create'), { resource: 'org/acme/project/p1/domain/dev/run/audited' });
  t.truthy(log.find((entry) => entry.principal === 'user:mallory' && entry.result === ControlErrorCode.PERMISSION_DENIED));
  t.truthy(log.find((entry) => entry.principal === 'user:carol' && entry.result === ControlErrorCode.METADATA_PAYLOAD_REFUSED));
  t.is(await code(service.listAudit(contributor, 'acme', {}, 10, '')), ControlErrorCode.PERMISSION_DENIED);
});

test('SelectCluster answers where the data plane is reached: by cluster, by run, or the org\'s only cluster', async (t) => {
  const service = await setup(t);
  const run = await service.createRun(contributor, runInput());
  t.deepEqual(await service.selectCluster(viewer, { ...SCOPE }), { clusterId: 'c1', mode: 'tunnel', endpoint: 'https://c1.tunnel.example' });
  t.is((await service.selectCluster(viewer, { ...SCOPE, runId: run.id })).clusterId, 'c1');
  await service.registerCluster(admin, { org: 'acme', id: 'c2', mode: 'sovereign', endpoint: 'https://router.corp.internal', issuer: 'https://i', audience: 'a', allowedSubjects: ['s'] });
  t.deepEqual(await service.selectCluster(viewer, { ...SCOPE, clusterId: 'c2' }), { clusterId: 'c2', mode: 'sovereign', endpoint: 'https://router.corp.internal' });
  t.is(await code(service.selectCluster(viewer, { ...SCOPE })), ControlErrorCode.CLUSTER_UNKNOWN);
  t.is(await code(service.selectCluster(stranger, { ...SCOPE, clusterId: 'c1' })), ControlErrorCode.PERMISSION_DENIED);
});

test("ListAudit shows an org's admins their own org's rows only, never another tenant's", async (t) => {
  const service = await setup(t);
  const gina = userCaller('gina');
  await service.ensureAdmins('globex', ['gina']);
  await service.registerCluster(gina, { org: 'globex', id: 'g1', mode: 'tunnel', endpoint: 'https://g1.example', issuer: 'https://i', audience: 'a', allowedSubjects: ['s'] });
  await service.audit({ principal: 'agent:g1/a1', operation: 'agent.connect', resource: 'cluster/g1', result: 'OK' });
  await service.audit({ principal: 'agent:c1/a1', operation: 'agent.connect', resource: 'cluster/c1', result: 'OK' });
  t.is(await code(service.getCluster(admin, 'globex', 'g1')), ControlErrorCode.PERMISSION_DENIED);
  const acme = (await service.listAudit(admin, 'acme', {}, 200, '')).items;
  const globex = (await service.listAudit(gina, 'globex', {}, 200, '')).items;
  t.true(acme.length > 0 && globex.length > 0);
  t.deepEqual(acme.filter((entry) => entry.org !== 'acme'), []);
  t.deepEqual(globex.filter((entry) => entry.org !== 'globex'), []);
  t.false(acme.some((entry) => entry.resource.includes('g1') || entry.resource.startsWith('org/globex')), "acme's admin sees nothing of globex's cluster, nor its own refused call there");
  t.true(globex.some((entry) => entry.principal === 'agent:g1/a1'), "an agent's row belongs to its cluster's org");
  t.true(globex.some((entry) => entry.principal === 'user:admin' && entry.result === ControlErrorCode.PERMISSION_DENIED), "acme's admin knocking at globex is globex's to see");
  t.is(await code(service.listAudit(admin, 'globex', {}, 10, '')), ControlErrorCode.PERMISSION_DENIED);
});

test('DeleteCluster: Admin only, refused while a run is unfinished or a schedule active, audited; finished runs stay; watchers hear of it', async (t) => {
  const service = await setup(t);
  const changes: string[] = [];
  const unsubscribe = service.onRunChange((change) => {
    if (change.kind === 'cluster') changes.push(change.clusterId);
  });
  t.teardown(unsubscribe);
  t.is(await code(service.deleteCluster(contributor, 'acme', 'c1')), ControlErrorCode.PERMISSION_DENIED);
  t.is(await code(service.deleteCluster(viewer, 'acme', 'c1')), ControlErrorCode.PERMISSION_DENIED);
  t.is(await code(service.deleteCluster(admin, 'acme', 'nope')), ControlErrorCode.NOT_FOUND);
  t.is(await code(service.deleteCluster(admin, 'other-org', 'c1')), ControlErrorCode.PERMISSION_DENIED, 'not an admin of that org');

  const run = await service.createRun(contributor, runInput());
  t.is(await code(service.deleteCluster(admin, 'acme', 'c1')), ControlErrorCode.CLUSTER_IN_USE, 'a queued run');
  await service.abortRun(contributor, run.id, 'not needed');
  await service.createSchedule(contributor, { ...SCOPE, id: 'nightly', taskName: 'train', taskVersion: 'v1', cron: '0 3 * * *', inputs: { data: 's3://b/k' } });
  t.is(await code(service.deleteCluster(admin, 'acme', 'c1')), ControlErrorCode.CLUSTER_IN_USE, 'an active schedule');
  await service.setScheduleActive(contributor, 'nightly', false);
  t.deepEqual(changes, [], 'nothing changed yet');

  t.is(await code(service.deleteCluster(admin, 'acme', 'c1')), 'OK');
  t.deepEqual(changes, ['c1']);
  t.is(await code(service.getCluster(viewer, 'acme', 'c1')), ControlErrorCode.NOT_FOUND);
  t.deepEqual(await service.listClusters(viewer, 'acme'), []);
  t.is((await service.getRun(viewer, run.id)).phase, Phase.ABORTED, 'the finished run and its history stay');
  t.is(await code(service.deleteCluster(admin, 'acme', 'c1')), ControlErrorCode.NOT_FOUND, 'once');
  t.is(await code(service.createRun(contributor, runInput())), ControlErrorCode.CLUSTER_UNKNOWN, 'no cluster to run on');
  const audit = (await service.listAudit(admin, 'acme', { operation: 'cluster.delete' }, 20, '')).items.map((entry) => `${entry.principal} ${entry.result}`);
  t.deepEqual(audit.sort(), ['user:admin CLUSTER_IN_USE', 'user:admin CLUSTER_IN_USE', 'user:admin CONTROL_NOT_FOUND', 'user:admin CONTROL_NOT_FOUND', 'user:admin OK', 'user:carol CONTROL_PERMISSION_DENIED', 'user:victor CONTROL_PERMISSION_DENIED']);
});

test('schedules: two control planes sharing a store fire each run once; a restart after missed fires catches them up', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tether-control-sched-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'control.db');
  const keyring = new Keyring([newKek('k1')]);
  let clock = Date.UTC(2026, 0, 1, 0, 0, 0);
  const now = (): number => clock;
  const a = await setup(t, { path, keyring, now });
  const b = new ControlService({ store: SqliteStore.open({ path, keyring }), now });
  t.teardown(() => b.store.close());
  await a.createSchedule(contributor, { ...SCOPE, id: 'every-10s', taskName: 'train', taskVersion: 'v1', rateMs: 10_000, startAt: clock, inputs: { data: 's3://b/k' } });
  await a.createSchedule(contributor, { ...SCOPE, id: 'each-minute', taskName: 'train', taskVersion: 'v1', cron: '* * * * *', startAt: clock, inputs: { data: 's3://b/k' } });
  t.is(await code(a.createSchedule(contributor, { ...SCOPE, id: 'bad', taskName: 'train', taskVersion: 'v1', cron: 'not a cron', inputs: {} })), ControlErrorCode.SCHEDULE_INVALID);
  t.is(await code(a.createSchedule(viewer, { ...SCOPE, id: 'v', taskName: 'train', taskVersion: 'v1', rateMs: 10_000, inputs: {} })), ControlErrorCode.PERMISSION_DENIED);

  const count = async (id: string): Promise<number> => (await a.listRuns(admin, { org: 'acme', scheduleId: id }, 500, '')).items.length;
  for (let step = 0; step < 12; step += 1) {
    clock += 5_000;
    // Both control planes scan at the same moment, in either order.
    await Promise.all(step % 2 === 0 ? [a.fireDue(clock), b.fireDue(clock)] : [b.fireDue(clock), a.fireDue(clock)]);
  }
  t.is(await count('every-10s'), 6);
  t.is(await count('each-minute'), 1);

  // Both stop; 5 minutes pass; a fresh control plane catches up on every missed fire, once.
  clock += 5 * 60_000;
  const c = new ControlService({ store: SqliteStore.open({ path, keyring }), now });
  t.teardown(() => c.store.close());
  const next = await c.fireDue(clock);
  t.is(await count('every-10s'), 6 + 30);
  t.is(await count('each-minute'), 6);
  t.is(next, clock + 10_000);
  await b.fireDue(clock);
  t.is(await count('every-10s'), 36);
  // Run ids derive from (schedule, fire time): the same on every control plane.
  const runs = (await a.listRuns(admin, { org: 'acme', scheduleId: 'every-10s' }, 500, '')).items;
  t.is(new Set(runs.map((run) => run.fireTime)).size, runs.length);
  // A paused schedule does not fire.
  await a.setScheduleActive(contributor, 'every-10s', false);
  clock += 60_000;
  await a.fireDue(clock);
  t.is(await count('every-10s'), 36);
});
