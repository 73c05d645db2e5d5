import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { getErrorCode, isTetherError } from '../../common/errors.js';
import { ControlErrorCode } from '../../control/errors.js';
import { decideEvent, Phase } from '../../control/phases.js';
import { Keyring, newKek } from '../../control/store/keyring.js';
import { MIGRATIONS, migrate } from '../../control/store/migrations.js';
import type { RunRecord, TaskRecord } from '../../control/store/repository.js';
import { openDatabase } from '../../control/store/sqlite.js';
import { SqliteStore } from '../../control/store/sqlite-store.js';

const SECRET_ENV = 'env-secret-7f3a9c2e-do-not-store-in-clear';
const SECRET_ERROR = 'Traceback: customer row 55501 ssn=078-05-1120 leaked-into-error';
const SECRET_ARG = 'arg-secret-b0b1b2b3';
const SECRET_MESSAGE = 'event-message-secret-c4c5c6';
const SECRET_BINDING = 'rbac-user-secret-d7d8d9@example.com';
const PLAIN_MARKER = 'plaintext-endpoint-marker.example.internal';

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'tether-control-store-'));
}

function task(version: string, env: Record<string, string>): TaskRecord {
  return {
    org: 'acme', project: 'p1', domain: 'dev', name: 'train', version, digest: createHash('sha256').update(JSON.stringify([version, env])).digest('hex'),
    spec: { command: 'python', args: ['-m', 'train', SECRET_ARG], env, timeoutSec: 60, maxOutputBytes: 0, description: '' },
    createdAt: Date.now(), createdBy: 'alice',
  };
}

function run(id: string): RunRecord {
  const now = Date.now();
  return {
    id, org: 'acme', project: 'p1', domain: 'dev', taskName: 'train', taskVersion: 'v1', clusterId: 'c1', phase: Phase.QUEUED, eventSeq: 0,
    spec: { inputs: { data: 's3://bucket/in.parquet' }, outputPrefix: 's3://bucket/out/', env: { TOKEN_HINT: SECRET_ENV }, labels: {} },
    result: { error: null, outputs: {} }, scheduleId: null, fireTime: null, createdBy: 'alice', createdAt: now, updatedAt: now, startedAt: null, endedAt: null,
  };
}

function filesContaining(dir: string, needle: string): string[] {
  return readdirSync(dir).filter((name) => readFileSync(join(dir, name)).includes(Buffer.from(needle)));
}

async function populate(store: SqliteStore): Promise<void> {
  await store.putTask(task('v1', { API_HINT: SECRET_ENV }));
  await store.insertRuns([run('r1'), run('r2')], 'all-or-nothing');
  await store.recordEvents(
    [
      { runId: 'r1', phase: Phase.RUNNING, producerCluster: 'c1', occurredAt: Date.now(), message: SECRET_MESSAGE, error: null, outputs: {} },
      { runId: 'r1', phase: Phase.FAILED, producerCluster: 'c1', occurredAt: Date.now(), message: '', error: { code: 'EXIT_1', message: SECRET_ERROR, kind: 'USER' }, outputs: {} },
    ],
    decideEvent,
  );
  await store.putRbacEntry({ id: 'b1', kind: 'binding', principal: `user:${SECRET_BINDING}`, role: 'Admin', scope: { org: 'acme' } });
  await store.putCluster({
    id: 'c1', org: 'acme', mode: 'tunnel', endpoint: PLAIN_MARKER,
    identity: { issuer: 'https://issuer.example', audience: 'tether', allowedSubjects: ['system:serviceaccount:tether:agent'], jwksJson: '' },
    createdAt: Date.now(), updatedAt: Date.now(),
  });
}

test('secrets written to the store appear in no database file (db, WAL, shm), before and after a checkpoint', async (t) => {
  const dir = tempDir();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const store = SqliteStore.open({ path: join(dir, 'control.db'), keyring: new Keyring([newKek('k1')]) });
  await populate(store);
  // The records read back in full.
  t.is((await store.getTask({ org: 'acme', project: 'p1', domain: 'dev' }, 'train', 'v1'))?.spec.env.API_HINT, SECRET_ENV);
  t.is((await store.getRun('r1'))?.result.error?.message, SECRET_ERROR);
  t.is((await store.listEvents('r1'))[0]?.message, SECRET_MESSAGE);
  t.deepEqual(readdirSync(dir).sort(), ['control.db', 'control.db-shm', 'control.db-wal']);
  for (const phase of ['before checkpoint', 'after checkpoint']) {
    if (phase === 'after checkpoint') store.checkpoint();
    // The scan itself works: a plaintext column is found.
    t.true(filesContaining(dir, PLAIN_MARKER).length > 0, `scan finds the plaintext marker ${phase}`);
    for (const secret of [SECRET_ENV, SECRET_ERROR, SECRET_ARG, SECRET_MESSAGE, SECRET_BINDING]) {
      t.deepEqual(filesContaining(dir, secret), [], `${secret} ${phase}`);
    }
  }
  await store.close();
  t.deepEqual(readdirSync(dir).filter((name) => name.endsWith('-journal')), []);
});

test('a ciphertext moved to another row fails with STORE_DECRYPT_FAILED', async (t) => {
  const store = SqliteStore.open({ path: ':memory:', keyring: new Keyring([newKek('k1')]) });
  t.teardown(() => store.close());
  await store.insertRuns([run('ra'), run('rb')], 'all-or-nothing');
  t.truthy(await store.getRun('rb'));
  const sealedA = store.db.prepare('SELECT spec_sealed FROM runs WHERE id = ?').get('ra')?.spec_sealed;
  store.db.prepare('UPDATE runs SET spec_sealed = ? WHERE id = ?').run(sealedA, 'rb');
  const error = await t.throwsAsync(store.getRun('rb'));
  t.true(isTetherError(error, ControlErrorCode.STORE_DECRYPT_FAILED));
  // The same bytes still open at their own row.
  t.is((await store.getRun('ra'))?.spec.env.TOKEN_HINT, SECRET_ENV);
  // A flipped bit is refused the same way.
  const tampered = Buffer.from(sealedA as Buffer);
  tampered[tampered.length - 1]! ^= 1;
  store.db.prepare('UPDATE runs SET spec_sealed = ? WHERE id = ?').run(tampered, 'ra');
  t.true(isTetherError(await t.throwsAsync(store.getRun('ra')), ControlErrorCode.STORE_DECRYPT_FAILED));
});

test('rotation re-wraps data keys while another process keeps serving; every record stays readable; the old KEK can go', async (t) => {
  const dir = tempDir();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'control.db');
  const k1 = newKek('k1');
  const k2 = newKek('k2');
  const serving = SqliteStore.open({ path, keyring: new Keyring([k1]) });
  t.teardown(() => serving.close());
  await populate(serving);
  const sealedBefore = serving.db.prepare('SELECT spec_sealed FROM runs WHERE id = ?').get('r2')?.spec_sealed as Buffer;

  // The rotating process: k2 primary, k1 still present to unwrap.
  const rotating = SqliteStore.open({ path, keyring: new Keyring([k2, k1]) });
  const before = rotating.envelope.kekUsage();
  t.true((before.k1 ?? 0) >= 5, JSON.stringify(before));
  const rewrapped = await rotating.rewrapAll(2);
  t.is(rewrapped, before.k1);
  t.deepEqual(Object.keys(rotating.envelope.kekUsage()), ['k2']);
  await rotating.close();

  // Data was not re-encrypted, only the keys re-wrapped.
  t.deepEqual(serving.db.prepare('SELECT spec_sealed FROM runs WHERE id = ?').get('r2')?.spec_sealed, sealedBefore);
  // The serving process keeps working (its keys are cached) and writes new records.
  await serving.insertRuns([run('r3')], 'all-or-nothing');
  t.is((await serving.getRun('r1'))?.result.error?.message, SECRET_ERROR);

  // A fresh process with only k2 reads everything written before the rotation...
  const fresh = SqliteStore.open({ path, keyring: new Keyring([k2]) });
  t.teardown(() => fresh.close());
  t.is((await fresh.getTask({ org: 'acme', project: 'p1', domain: 'dev' }, 'train', 'v1'))?.spec.env.API_HINT, SECRET_ENV);
  t.is((await fresh.getRun('r1'))?.result.error?.message, SECRET_ERROR);
  t.is((await fresh.listEvents('r1')).length, 2);
  t.is((await fresh.listRbacEntries()).length, 1);
  // ...and what the serving process wrote after the sweep (its data keys were re-wrapped too).
  t.is((await fresh.getRun('r3'))?.spec.env.TOKEN_HINT, SECRET_ENV);
  // Without any KEK that wraps a data key, reading is refused with STORE_KEK_UNKNOWN.
  const stale = SqliteStore.open({ path, keyring: new Keyring([k1]) });
  t.true(isTetherError(await t.throwsAsync(stale.getRun('r1')), ControlErrorCode.STORE_KEK_UNKNOWN));
  await stale.close();
  // That process made its own data keys under k1 at open; a second sweep moves them too.
  const again = SqliteStore.open({ path, keyring: new Keyring([k2, k1]) });
  await again.rewrapAll();
  t.deepEqual(Object.keys(again.envelope.kekUsage()), ['k2']);
  await again.close();
});

test('migrations are recorded in schema_version and a newer schema is refused', (t) => {
  const db = openDatabase(':memory:');
  t.teardown(() => db.close());
  t.is(migrate(db), MIGRATIONS.length);
  t.is(migrate(db), MIGRATIONS.length);
  t.is(Number(db.prepare('SELECT COUNT(*) AS n FROM schema_version').get()?.n), MIGRATIONS.length);
  db.prepare('INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)').run(999, 'future', Date.now());
  t.true(isTetherError(t.throws(() => migrate(db)), ControlErrorCode.STORE_SCHEMA_TOO_NEW));
});

test('migration 4 gives existing audit rows their org, from the resource or the cluster registration, and keeps the log append-only', (t) => {
  const db = openDatabase(':memory:');
  t.teardown(() => db.close());
  migrate(db, MIGRATIONS.filter((m) => m.version <= 3));
  db.prepare("INSERT INTO clusters (id, org, mode, endpoint, identity_json, created_at, updated_at) VALUES ('c1', 'globex', 'tunnel', 'e', '{}', 1, 1)").run();
  const insert = db.prepare('INSERT INTO audit_log (at, principal, operation, resource, result) VALUES (1, ?, ?, ?, ?)');
  for (const resource of ['org/acme/p1/dev/run/r1', 'org/acme', 'cluster/c1', 'cluster/c1/events(2)', 'cluster/c9', '']) insert.run('p', 'op', resource, 'OK');
  t.is(migrate(db), MIGRATIONS.length);
  const rows = db.prepare('SELECT resource, org FROM audit_log ORDER BY seq').all().map((row) => `${String(row.resource)} -> ${String(row.org)}`);
  t.deepEqual(rows, ['org/acme/p1/dev/run/r1 -> acme', 'org/acme -> acme', 'cluster/c1 -> globex', 'cluster/c1/events(2) -> globex', 'cluster/c9 -> ', ' -> ']);
  let refusal = 'none';
  try {
    db.prepare("UPDATE audit_log SET org = 'acme'").run();
  } catch (reason) {
    refusal = getErrorCode(reason) ?? 'unknown';
  }
  t.is(refusal, 'SQLITE_CONSTRAINT_TRIGGER', 'the append-only trigger is back');
});

test('the phase-transition log and the audit log are append-only in the database itself', async (t) => {
  const store = SqliteStore.open({ path: ':memory:', keyring: new Keyring([newKek('k1')]) });
  t.teardown(() => store.close());
  await populate(store);
  await store.appendAudit([{ at: 1, principal: 'user:a', operation: 'run.read', resource: 'x', result: 'OK' }]);
  const refused = (sql: string): string | null => {
    try {
      store.db.prepare(sql).run();
      return null;
    } catch (reason) {
      return getErrorCode(reason);
    }
  };
  t.is(refused('UPDATE run_events SET phase = 1'), 'SQLITE_CONSTRAINT_TRIGGER');
  t.is(refused('DELETE FROM run_events'), 'SQLITE_CONSTRAINT_TRIGGER');
  t.is(refused("UPDATE audit_log SET result = 'OK'"), 'SQLITE_CONSTRAINT_TRIGGER');
  t.is(refused('DELETE FROM audit_log'), 'SQLITE_CONSTRAINT_TRIGGER');
  t.is(refused("UPDATE runs SET org = 'acme' WHERE id = 'r1'"), null);
  t.is((await store.listEvents('r1')).length, 2);
});
