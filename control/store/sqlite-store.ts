/**
 * The embedded store: one SQLite file (WAL) through better-sqlite3, with the sensitive columns
 * (`*_sealed`) envelope-encrypted (envelope.ts). Several processes may share the file (two
 * control planes, or `tether control rotate-key` next to a running server): writes take SQLite's
 * write lock and wait up to the busy timeout.
 */
import { isTetherError, TetherError } from '../../common/errors.js';
import { ControlErrorCode } from '../errors.js';
import { isTerminal, Phase, TERMINAL_PHASES } from '../phases.js';
import { Envelope, fieldAad } from './envelope.js';
import type { EnvelopeOptions } from './envelope.js';
import type { Keyring } from './keyring.js';
import { migrate } from './migrations.js';
import { openDatabase } from './sqlite.js';
import type { Database, Row, Statement } from './sqlite.js';
import type {
  AuditEntry,
  AuditRecord,
  ClusterDeletion,
  ClusterRecord,
  ControlRepository,
  EventOutcome,
  Page,
  PhaseEvent,
  PhaseEventRecord,
  PhaseRule,
  RbacEntry,
  RunFilter,
  RunRecord,
  RunResult,
  RunSpec,
  ScheduleRecord,
  ScheduleSpec,
  Scope,
  TaskRecord,
  TaskSpec,
} from './repository.js';

/** Tables with sealed columns; each gets its own data key per process. */
const SEALED_TABLES = ['tasks', 'runs', 'run_events', 'schedules', 'rbac_entries'] as const;
type SealedTable = (typeof SEALED_TABLES)[number];

export interface SqliteStoreOptions {
  /** Database file, or `:memory:`. */
  path: string;
  keyring: Keyring;
  busyTimeoutMs?: number;
  envelope?: EnvelopeOptions;
  /**
   * Make this process's data keys at open (default). Maintenance tools that only re-wrap
   * (rotate-key) pass false and make none; keys are then made before the first write.
   */
  prepareKeys?: boolean;
}

function encodeToken(value: unknown[]): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

function decodeToken(token: string): unknown[] | null {
  if (token === '') return null;
  try {
    const value: unknown = JSON.parse(Buffer.from(token, 'base64url').toString('utf8'));
    if (Array.isArray(value)) return value;
  } catch {
    // fall through
  }
  throw new TetherError(ControlErrorCode.INVALID_ARGUMENT, 'page token is not one this server issued');
}

function num(value: unknown): number {
  return Number(value);
}

function numOrNull(value: unknown): number | null {
  return value === null || value === undefined ? null : Number(value);
}

function taskKey(scope: Scope, name: string, version: string): string {
  return JSON.stringify([scope.org, scope.project, scope.domain, name, version]);
}

export class SqliteStore implements ControlRepository {
  readonly db: Database;
  readonly envelope: Envelope;
  readonly #statements = new Map<string, Statement>();
  #closed = false;
  #prepared = false;

  private constructor(db: Database, envelope: Envelope) {
    this.db = db;
    this.envelope = envelope;
  }

  static open(options: SqliteStoreOptions): SqliteStore {
    const db = openDatabase(options.path, { busyTimeoutMs: options.busyTimeoutMs });
    try {
      migrate(db);
      const store = new SqliteStore(db, new Envelope(db, options.keyring, options.envelope));
      if (options.prepareKeys !== false) store.#prepareKeys();
      return store;
    } catch (reason) {
      db.close();
      throw reason;
    }
  }

  #stmt(sql: string): Statement {
    let statement = this.#statements.get(sql);
    if (statement === undefined) {
      statement = this.db.prepare(sql);
      this.#statements.set(sql, statement);
    }
    return statement;
  }

  #prepareKeys(): void {
    this.envelope.prepare(SEALED_TABLES);
    this.#prepared = true;
  }

  #checkOpen(): void {
    if (this.#closed) throw new TetherError('CONTROL_STORE_CLOSED', 'store is closed');
  }

  /** Before a write: make or replace used-up data keys, outside any transaction. */
  #beforeWrite(): void {
    this.#checkOpen();
    if (!this.#prepared || this.envelope.needsPrepare) this.#prepareKeys();
  }

  #seal(table: SealedTable, key: string, column: string, value: unknown): Buffer {
    return this.envelope.seal(table, fieldAad(table, key, column), Buffer.from(JSON.stringify(value)));
  }

  #open<T>(table: SealedTable, key: string, column: string, sealed: unknown): T {
    return JSON.parse(this.envelope.open(fieldAad(table, key, column), sealed as Buffer).toString('utf8')) as T;
  }

  // ---- tasks

  async putTask(task: TaskRecord): Promise<'created' | 'identical' | 'conflict'> {
    this.#beforeWrite();
    const key = taskKey(task, task.name, task.version);
    const put = this.db.transaction(() => {
      const existing = this.#stmt('SELECT digest FROM tasks WHERE org = ? AND project = ? AND domain = ? AND name = ? AND version = ?').get(
        task.org, task.project, task.domain, task.name, task.version,
      );
      if (existing !== undefined) return existing.digest === task.digest ? 'identical' : 'conflict';
      this.#stmt(
        'INSERT INTO tasks (org, project, domain, name, version, digest, spec_sealed, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
      ).run(task.org, task.project, task.domain, task.name, task.version, task.digest, this.#seal('tasks', key, 'spec', task.spec), task.createdAt, task.createdBy);
      return 'created';
    });
    return put.immediate();
  }

  #taskFrom(row: Row): TaskRecord {
    const scope = { org: String(row.org), project: String(row.project), domain: String(row.domain) };
    const name = String(row.name);
    const version = String(row.version);
    return {
      ...scope,
      name,
      version,
      digest: String(row.digest),
      spec: this.#open<TaskSpec>('tasks', taskKey(scope, name, version), 'spec', row.spec_sealed),
      createdAt: num(row.created_at),
      createdBy: String(row.created_by),
    };
  }

  async getTask(scope: Scope, name: string, version: string): Promise<TaskRecord | undefined> {
    const row = this.#stmt('SELECT * FROM tasks WHERE org = ? AND project = ? AND domain = ? AND name = ? AND version = ?').get(
      scope.org, scope.project, scope.domain, name, version,
    );
    return row === undefined ? undefined : this.#taskFrom(row);
  }

  async listTasks(scope: Scope, name: string | undefined, limit: number, pageToken: string): Promise<Page<TaskRecord>> {
    const cursor = decodeToken(pageToken);
    const where = ['org = ?', 'project = ?', 'domain = ?'];
    const params: unknown[] = [scope.org, scope.project, scope.domain];
    if (name !== undefined && name !== '') {
      where.push('name = ?');
      params.push(name);
    }
    if (cursor !== null) {
      where.push('(created_at < ? OR (created_at = ? AND (name || char(0) || version) < ?))');
      params.push(cursor[0], cursor[0], cursor[1]);
    }
    const rows = this.db
      .prepare(`SELECT * FROM tasks WHERE ${where.join(' AND ')} ORDER BY created_at DESC, (name || char(0) || version) DESC LIMIT ?`)
      .all(...params, limit + 1);
    const items = rows.slice(0, limit).map((row) => this.#taskFrom(row));
    const last = items[items.length - 1];
    return { items, nextPageToken: rows.length > limit && last !== undefined ? encodeToken([last.createdAt, `${last.name}\0${last.version}`]) : '' };
  }

  // ---- runs

  #insertRun(run: RunRecord): boolean {
    const result = this.#stmt(
      `INSERT INTO runs (id, org, project, domain, task_name, task_version, cluster_id, phase, event_seq, spec_sealed, result_sealed,
                         schedule_id, fire_time, created_by, created_at, updated_at, started_at, ended_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
    ).run(
      run.id, run.org, run.project, run.domain, run.taskName, run.taskVersion, run.clusterId, run.phase, run.eventSeq,
      this.#seal('runs', run.id, 'spec', run.spec),
      run.result.error === null && Object.keys(run.result.outputs).length === 0 ? null : this.#seal('runs', run.id, 'result', run.result),
      run.scheduleId, run.fireTime, run.createdBy, run.createdAt, run.updatedAt, run.startedAt, run.endedAt,
    );
    return result.changes === 1;
  }

  async insertRuns(runs: RunRecord[], mode: 'skip-existing' | 'all-or-nothing'): Promise<string[]> {
    this.#beforeWrite();
    const insert = this.db.transaction(() =>
      runs
        .filter((run) => {
          const inserted = this.#insertRun(run);
          if (!inserted && mode === 'all-or-nothing') throw new TetherError(ControlErrorCode.ALREADY_EXISTS, `run ${run.id} already exists`, { details: { runId: run.id } });
          return inserted;
        })
        .map((run) => run.id),
    );
    return insert.immediate();
  }

  #runFrom(row: Row): RunRecord {
    const id = String(row.id);
    return {
      id,
      org: String(row.org),
      project: String(row.project),
      domain: String(row.domain),
      taskName: String(row.task_name),
      taskVersion: String(row.task_version),
      clusterId: String(row.cluster_id),
      phase: num(row.phase) as Phase,
      eventSeq: num(row.event_seq),
      spec: this.#open<RunSpec>('runs', id, 'spec', row.spec_sealed),
      result: row.result_sealed === null ? { error: null, outputs: {} } : this.#open<RunResult>('runs', id, 'result', row.result_sealed),
      scheduleId: row.schedule_id === null ? null : String(row.schedule_id),
      fireTime: numOrNull(row.fire_time),
      createdBy: String(row.created_by),
      createdAt: num(row.created_at),
      updatedAt: num(row.updated_at),
      startedAt: numOrNull(row.started_at),
      endedAt: numOrNull(row.ended_at),
    };
  }

  async getRun(id: string): Promise<RunRecord | undefined> {
    const row = this.#stmt('SELECT * FROM runs WHERE id = ?').get(id);
    return row === undefined ? undefined : this.#runFrom(row);
  }

  async listRuns(filter: RunFilter, limit: number, pageToken: string): Promise<Page<RunRecord>> {
    const cursor = decodeToken(pageToken);
    const where = ['org = ?'];
    const params: unknown[] = [filter.org];
    const add = (column: string, value: string | number | undefined): void => {
      if (value === undefined || value === '') return;
      where.push(`${column} = ?`);
      params.push(value);
    };
    add('project', filter.project);
    add('domain', filter.domain);
    add('phase', filter.phase);
    add('cluster_id', filter.clusterId);
    add('task_name', filter.taskName);
    add('schedule_id', filter.scheduleId);
    if (cursor !== null) {
      where.push('(created_at < ? OR (created_at = ? AND id < ?))');
      params.push(cursor[0], cursor[0], cursor[1]);
    }
    const rows = this.db.prepare(`SELECT * FROM runs WHERE ${where.join(' AND ')} ORDER BY created_at DESC, id DESC LIMIT ?`).all(...params, limit + 1);
    const items = rows.slice(0, limit).map((row) => this.#runFrom(row));
    const last = items[items.length - 1];
    return { items, nextPageToken: rows.length > limit && last !== undefined ? encodeToken([last.createdAt, last.id]) : '' };
  }

  async recordEvents(events: PhaseEvent[], rule: PhaseRule): Promise<EventOutcome[]> {
    this.#beforeWrite();
    const select = this.#stmt('SELECT phase, cluster_id, event_seq, result_sealed FROM runs WHERE id = ?');
    const insert = this.#stmt('INSERT INTO run_events (run_id, seq, phase, cluster_id, occurred_at, recorded_at, body_sealed) VALUES (?, ?, ?, ?, ?, ?, ?)');
    const update = this.#stmt(
      `UPDATE runs SET phase = ?, event_seq = ?, updated_at = ?,
              started_at = COALESCE(started_at, ?), ended_at = COALESCE(ended_at, ?),
              result_sealed = COALESCE(?, result_sealed)
        WHERE id = ? AND event_seq = ?`,
    );
    const apply = this.db.transaction(() => {
      const now = Date.now();
      return events.map((event): EventOutcome => {
        const row = select.get(event.runId);
        if (row === undefined) return { runId: event.runId, status: 'refused', code: ControlErrorCode.NOT_FOUND, message: `no run ${event.runId}` };
        let decision;
        try {
          decision = rule({ phase: num(row.phase) as Phase, clusterId: String(row.cluster_id) }, { phase: event.phase, producerCluster: event.producerCluster });
        } catch (reason) {
          if (!isTetherError(reason)) throw reason;
          return { runId: event.runId, status: 'refused', code: reason.code, message: reason.rawMessage };
        }
        if (decision.kind === 'duplicate') return { runId: event.runId, status: 'duplicate', phase: decision.phase };
        const seq = num(row.event_seq) + 1;
        const body = { message: event.message, error: event.error, outputs: event.outputs };
        insert.run(event.runId, seq, decision.to, event.producerCluster ?? '', event.occurredAt, now, this.#seal('run_events', `${event.runId}/${seq}`, 'body', body));
        let result: Buffer | null = null;
        if (event.error !== null || Object.keys(event.outputs).length > 0) {
          const old: RunResult = row.result_sealed === null ? { error: null, outputs: {} } : this.#open<RunResult>('runs', event.runId, 'result', row.result_sealed);
          result = this.#seal('runs', event.runId, 'result', { error: event.error ?? old.error, outputs: { ...old.outputs, ...event.outputs } });
        }
        update.run(
          decision.to, seq, now,
          decision.to === Phase.RUNNING ? event.occurredAt : null,
          isTerminal(decision.to) ? event.occurredAt : null,
          result, event.runId, seq - 1,
        );
        return { runId: event.runId, status: 'applied', seq, phase: decision.to };
      });
    });
    return apply.immediate();
  }

  async leaseRuns(clusterId: string, agentId: string, max: number, now: number, leaseMs: number, exclude: ReadonlySet<string>): Promise<RunRecord[]> {
    if (max <= 0) return [];
    this.#beforeWrite();
    const select = this.#stmt(
      `SELECT * FROM runs WHERE cluster_id = ? AND phase = ? AND (lease_until IS NULL OR lease_until < ? OR lease_agent = ?)
        ORDER BY created_at, id LIMIT ?`,
    );
    const lease = this.#stmt('UPDATE runs SET lease_agent = ?, lease_until = ? WHERE id = ? AND phase = ?');
    const take = this.db.transaction(() => {
      const rows = select.all(clusterId, Phase.QUEUED, now, agentId, max + exclude.size).filter((row) => !exclude.has(String(row.id))).slice(0, max);
      for (const row of rows) lease.run(agentId, now + leaseMs, row.id, Phase.QUEUED);
      return rows.map((row) => this.#runFrom(row));
    });
    return take.immediate();
  }

  async listClusterRuns(clusterId: string, phase: Phase, limit: number): Promise<RunRecord[]> {
    return this.#stmt('SELECT * FROM runs WHERE cluster_id = ? AND phase = ? ORDER BY created_at, id LIMIT ?').all(clusterId, phase, limit).map((row) => this.#runFrom(row));
  }

  async listEvents(runId: string): Promise<PhaseEventRecord[]> {
    return this.#stmt('SELECT * FROM run_events WHERE run_id = ? ORDER BY seq').all(runId).map((row) => {
      const seq = num(row.seq);
      const body = this.#open<Pick<PhaseEventRecord, 'message' | 'error' | 'outputs'>>('run_events', `${runId}/${seq}`, 'body', row.body_sealed);
      return {
        runId,
        seq,
        phase: num(row.phase) as Phase,
        clusterId: String(row.cluster_id),
        occurredAt: num(row.occurred_at),
        recordedAt: num(row.recorded_at),
        message: body.message,
        error: body.error,
        outputs: body.outputs,
      };
    });
  }

  // ---- clusters (registration metadata; not on the encrypted list)

  async putCluster(cluster: ClusterRecord): Promise<void> {
    this.#beforeWrite();
    this.#stmt(
      `INSERT INTO clusters (id, org, mode, endpoint, identity_json, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (id) DO UPDATE SET mode = excluded.mode, endpoint = excluded.endpoint, identity_json = excluded.identity_json, updated_at = excluded.updated_at`,
    ).run(cluster.id, cluster.org, cluster.mode, cluster.endpoint, JSON.stringify(cluster.identity), cluster.createdAt, cluster.updatedAt);
  }

  #clusterFrom(row: Row): ClusterRecord {
    return {
      id: String(row.id),
      org: String(row.org),
      mode: String(row.mode) === 'sovereign' ? 'sovereign' : 'tunnel',
      endpoint: String(row.endpoint),
      identity: JSON.parse(String(row.identity_json)) as ClusterRecord['identity'],
      createdAt: num(row.created_at),
      updatedAt: num(row.updated_at),
    };
  }

  async getCluster(id: string): Promise<ClusterRecord | undefined> {
    const row = this.#stmt('SELECT * FROM clusters WHERE id = ?').get(id);
    return row === undefined ? undefined : this.#clusterFrom(row);
  }

  async listClusters(org: string): Promise<ClusterRecord[]> {
    return this.#stmt('SELECT * FROM clusters WHERE org = ? ORDER BY id').all(org).map((row) => this.#clusterFrom(row));
  }

  async deleteCluster(id: string): Promise<ClusterDeletion> {
    this.#beforeWrite();
    return this.db.transaction((): ClusterDeletion => {
      const runs = this.#stmt(`SELECT COUNT(*) AS n FROM runs WHERE cluster_id = ? AND phase NOT IN (${TERMINAL_PHASES.join(', ')})`).get(id);
      const schedules = this.#stmt('SELECT COUNT(*) AS n FROM schedules WHERE cluster_id = ? AND active = 1').get(id);
      const activeRuns = num(runs?.n);
      const activeSchedules = num(schedules?.n);
      if (activeRuns > 0 || activeSchedules > 0) return { deleted: false, activeRuns, activeSchedules };
      const result = this.#stmt('DELETE FROM clusters WHERE id = ?').run(id);
      return { deleted: result.changes > 0, activeRuns, activeSchedules };
    })();
  }

  // ---- schedules

  async insertSchedule(schedule: ScheduleRecord): Promise<boolean> {
    this.#beforeWrite();
    const result = this.#stmt(
      `INSERT INTO schedules (id, org, project, domain, task_name, task_version, cluster_id, kind, cron, rate_ms, active, start_at, last_fire, spec_sealed, created_by, created_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
    ).run(
      schedule.id, schedule.org, schedule.project, schedule.domain, schedule.taskName, schedule.taskVersion, schedule.clusterId,
      schedule.kind, schedule.cron, schedule.rateMs, schedule.active ? 1 : 0, schedule.startAt, schedule.lastFire,
      this.#seal('schedules', schedule.id, 'spec', schedule.spec), schedule.createdBy, schedule.createdAt,
    );
    return result.changes === 1;
  }

  #scheduleFrom(row: Row): ScheduleRecord {
    const id = String(row.id);
    return {
      id,
      org: String(row.org),
      project: String(row.project),
      domain: String(row.domain),
      taskName: String(row.task_name),
      taskVersion: String(row.task_version),
      clusterId: String(row.cluster_id),
      kind: String(row.kind) === 'rate' ? 'rate' : 'cron',
      cron: row.cron === null ? null : String(row.cron),
      rateMs: numOrNull(row.rate_ms),
      active: num(row.active) === 1,
      startAt: num(row.start_at),
      lastFire: numOrNull(row.last_fire),
      spec: this.#open<ScheduleSpec>('schedules', id, 'spec', row.spec_sealed),
      createdBy: String(row.created_by),
      createdAt: num(row.created_at),
    };
  }

  async getSchedule(id: string): Promise<ScheduleRecord | undefined> {
    const row = this.#stmt('SELECT * FROM schedules WHERE id = ?').get(id);
    return row === undefined ? undefined : this.#scheduleFrom(row);
  }

  async listSchedules(filter: { org?: string; activeOnly?: boolean }): Promise<ScheduleRecord[]> {
    const where: string[] = [];
    const params: unknown[] = [];
    if (filter.org !== undefined) {
      where.push('org = ?');
      params.push(filter.org);
    }
    if (filter.activeOnly === true) where.push('active = 1');
    const sql = `SELECT * FROM schedules ${where.length > 0 ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id`;
    return this.db.prepare(sql).all(...params).map((row) => this.#scheduleFrom(row));
  }

  async setScheduleActive(id: string, active: boolean): Promise<boolean> {
    this.#beforeWrite();
    return this.#stmt('UPDATE schedules SET active = ? WHERE id = ?').run(active ? 1 : 0, id).changes === 1;
  }

  async deleteSchedule(id: string): Promise<boolean> {
    this.#beforeWrite();
    return this.#stmt('DELETE FROM schedules WHERE id = ?').run(id).changes === 1;
  }

  async fireSchedule(id: string, runs: RunRecord[], lastFire: number): Promise<string[]> {
    this.#beforeWrite();
    const fire = this.db.transaction(() => {
      const inserted = runs.filter((run) => this.#insertRun(run)).map((run) => run.id);
      this.#stmt('UPDATE schedules SET last_fire = MAX(COALESCE(last_fire, ?), ?) WHERE id = ?').run(lastFire, lastFire, id);
      return inserted;
    });
    return fire.immediate();
  }

  // ---- rbac graph (each entry sealed)

  async putRbacEntry(entry: RbacEntry): Promise<void> {
    this.#beforeWrite();
    const put = this.db.transaction(() => {
      this.#stmt(
        'INSERT INTO rbac_entries (id, kind, body_sealed, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, body_sealed = excluded.body_sealed',
      ).run(entry.id, entry.kind, this.#seal('rbac_entries', entry.id, 'body', entry), Date.now());
      this.#stmt('UPDATE rbac_revision SET rev = rev + 1 WHERE id = 1').run();
    });
    put.immediate();
  }

  async deleteRbacEntry(id: string): Promise<boolean> {
    this.#beforeWrite();
    const remove = this.db.transaction(() => {
      const changed = this.#stmt('DELETE FROM rbac_entries WHERE id = ?').run(id).changes === 1;
      if (changed) this.#stmt('UPDATE rbac_revision SET rev = rev + 1 WHERE id = 1').run();
      return changed;
    });
    return remove.immediate();
  }

  async listRbacEntries(): Promise<RbacEntry[]> {
    return this.#stmt('SELECT id, body_sealed FROM rbac_entries ORDER BY id').all().map((row) => this.#open<RbacEntry>('rbac_entries', String(row.id), 'body', row.body_sealed));
  }

  async rbacRevision(): Promise<number> {
    return num(this.#stmt('SELECT rev FROM rbac_revision WHERE id = 1').get()?.rev ?? 0);
  }

  // ---- audit

  async appendAudit(entries: AuditEntry[]): Promise<void> {
    if (entries.length === 0) return;
    this.#beforeWrite();
    const insert = this.#stmt('INSERT INTO audit_log (at, principal, operation, resource, result, org) VALUES (?, ?, ?, ?, ?, ?)');
    const append = this.db.transaction(() => {
      for (const entry of entries) insert.run(entry.at, entry.principal, entry.operation, entry.resource, entry.result, entry.org ?? this.#orgOf(entry.resource));
    });
    append.immediate();
  }

  /** The org of an audit row's resource: `org/<org>…`, or `cluster/<id>…` by its registration; else ''. */
  #orgOf(resource: string): string {
    const [kind, name] = resource.split('/', 2);
    if (kind === 'org') return name ?? '';
    if (kind === 'cluster' && name !== undefined) {
      const row = this.#stmt('SELECT org FROM clusters WHERE id = ?').get(name.replace(/\(.*$/, ''));
      return row === undefined ? '' : String(row.org);
    }
    return '';
  }

  async listAudit(filter: { org?: string; principal?: string; operation?: string }, limit: number, pageToken: string): Promise<Page<AuditRecord>> {
    const cursor = decodeToken(pageToken);
    const where: string[] = [];
    const params: unknown[] = [];
    if (filter.org !== undefined) {
      where.push('org = ?');
      params.push(filter.org);
    }
    if (filter.principal !== undefined && filter.principal !== '') {
      where.push('principal = ?');
      params.push(filter.principal);
    }
    if (filter.operation !== undefined && filter.operation !== '') {
      where.push('operation = ?');
      params.push(filter.operation);
    }
    if (cursor !== null) {
      where.push('seq < ?');
      params.push(cursor[0]);
    }
    const rows = this.db.prepare(`SELECT * FROM audit_log ${where.length > 0 ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY seq DESC LIMIT ?`).all(...params, limit + 1);
    const items = rows.slice(0, limit).map((row) => ({
      seq: num(row.seq),
      at: num(row.at),
      principal: String(row.principal),
      operation: String(row.operation),
      resource: String(row.resource),
      result: String(row.result),
      org: String(row.org),
    }));
    const last = items[items.length - 1];
    return { items, nextPageToken: rows.length > limit && last !== undefined ? encodeToken([last.seq]) : '' };
  }

  // ---- keys and maintenance

  /** Re-wrap every data key under the primary KEK, `batchSize` per transaction, yielding between batches. */
  async rewrapAll(batchSize = 256): Promise<number> {
    let total = 0;
    for (;;) {
      this.#checkOpen();
      const done = this.envelope.rewrapBatch(batchSize);
      total += done;
      if (done === 0) return total;
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
  }

  /** Copy the WAL into the main file and truncate it. */
  checkpoint(): void {
    this.db.pragma('wal_checkpoint(TRUNCATE)');
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#statements.clear();
    this.db.close();
  }
}
