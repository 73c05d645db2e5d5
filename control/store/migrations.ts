/**
 * Schema migrations, applied in order at open. `schema_version` holds one row per applied
 * migration; a database newer than this binary is refused (STORE_SCHEMA_TOO_NEW) rather than
 * written by code that does not know its shape. Columns named `*_sealed` hold envelope-encrypted
 * JSON (envelope.ts); everything else is plaintext and indexable.
 */
import { TetherError } from '../../common/errors.js';
import { ControlErrorCode } from '../errors.js';
import type { Database } from './sqlite.js';

export interface Migration {
  version: number;
  description: string;
  sql: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    description: 'data keys, tasks, runs, phase events, clusters, schedules, rbac, audit',
    sql: `
      CREATE TABLE data_keys (
        id INTEGER PRIMARY KEY,
        scope TEXT NOT NULL,
        kek_id TEXT NOT NULL,
        wrapped BLOB NOT NULL,
        created_at INTEGER NOT NULL
      );
      CREATE INDEX data_keys_kek ON data_keys (kek_id);

      CREATE TABLE tasks (
        org TEXT NOT NULL, project TEXT NOT NULL, domain TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL,
        digest TEXT NOT NULL,
        spec_sealed BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        PRIMARY KEY (org, project, domain, name, version)
      );
      CREATE INDEX tasks_by_time ON tasks (org, project, domain, created_at);

      CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        org TEXT NOT NULL, project TEXT NOT NULL, domain TEXT NOT NULL,
        task_name TEXT NOT NULL, task_version TEXT NOT NULL,
        cluster_id TEXT NOT NULL,
        phase INTEGER NOT NULL,
        event_seq INTEGER NOT NULL,
        spec_sealed BLOB NOT NULL,
        result_sealed BLOB,
        schedule_id TEXT,
        fire_time INTEGER,
        created_by TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        started_at INTEGER,
        ended_at INTEGER
      );
      CREATE INDEX runs_by_scope ON runs (org, project, domain, created_at DESC, id DESC);
      CREATE INDEX runs_by_cluster_phase ON runs (cluster_id, phase, created_at);
      CREATE UNIQUE INDEX runs_by_fire ON runs (schedule_id, fire_time) WHERE schedule_id IS NOT NULL;

      CREATE TABLE run_events (
        run_id TEXT NOT NULL REFERENCES runs (id),
        seq INTEGER NOT NULL,
        phase INTEGER NOT NULL,
        cluster_id TEXT NOT NULL,
        occurred_at INTEGER NOT NULL,
        recorded_at INTEGER NOT NULL,
        body_sealed BLOB NOT NULL,
        PRIMARY KEY (run_id, seq)
      ) WITHOUT ROWID;

      CREATE TABLE clusters (
        id TEXT PRIMARY KEY,
        org TEXT NOT NULL,
        mode TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        identity_json TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
      );

      CREATE TABLE schedules (
        id TEXT PRIMARY KEY,
        org TEXT NOT NULL, project TEXT NOT NULL, domain TEXT NOT NULL,
        task_name TEXT NOT NULL, task_version TEXT NOT NULL,
        cluster_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        cron TEXT,
        rate_ms INTEGER,
        active INTEGER NOT NULL,
        start_at INTEGER NOT NULL,
        last_fire INTEGER,
        spec_sealed BLOB NOT NULL,
        created_by TEXT NOT NULL,
        created_at INTEGER NOT NULL
      );

      CREATE TABLE rbac_entries (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        body_sealed BLOB NOT NULL,
        created_at INTEGER NOT NULL
      );
      CREATE TABLE rbac_revision (id INTEGER PRIMARY KEY CHECK (id = 1), rev INTEGER NOT NULL);
      INSERT INTO rbac_revision (id, rev) VALUES (1, 0);

      CREATE TABLE audit_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        principal TEXT NOT NULL,
        operation TEXT NOT NULL,
        resource TEXT NOT NULL,
        result TEXT NOT NULL
      );
    `,
  },
  {
    version: 2,
    description: 'run leases for agents (agent id, lease expiry)',
    sql: `
      ALTER TABLE runs ADD COLUMN lease_agent TEXT;
      ALTER TABLE runs ADD COLUMN lease_until INTEGER;
    `,
  },
  {
    version: 3,
    description: 'phase-transition log and audit log are append-only (triggers refuse UPDATE and DELETE)',
    sql: `
      CREATE TRIGGER run_events_append_only_update BEFORE UPDATE ON run_events BEGIN SELECT RAISE(ABORT, 'run_events is append-only'); END;
      CREATE TRIGGER run_events_append_only_delete BEFORE DELETE ON run_events BEGIN SELECT RAISE(ABORT, 'run_events is append-only'); END;
      CREATE TRIGGER audit_log_append_only_update BEFORE UPDATE ON audit_log BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
      CREATE TRIGGER audit_log_append_only_delete BEFORE DELETE ON audit_log BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
    `,
  },
  {
    version: 4,
    description: "audit rows carry their org (ListAudit shows an org's admins their org's rows only); existing rows get it from their resource",
    sql: `
      ALTER TABLE audit_log ADD COLUMN org TEXT NOT NULL DEFAULT '';
      DROP TRIGGER audit_log_append_only_update;
      UPDATE audit_log SET org = substr(resource, 5, instr(substr(resource, 5) || '/', '/') - 1) WHERE resource LIKE 'org/%';
      UPDATE audit_log SET org = COALESCE((SELECT c.org FROM clusters c WHERE c.id = substr(audit_log.resource, 9, instr(substr(audit_log.resource, 9) || '/', '/') - 1)), '')
        WHERE resource LIKE 'cluster/%';
      CREATE TRIGGER audit_log_append_only_update BEFORE UPDATE ON audit_log BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
      CREATE INDEX audit_by_org ON audit_log (org, seq);
    `,
  },
];

/** Apply pending migrations; returns the schema version now in force. */
export function migrate(db: Database, migrations: readonly Migration[] = MIGRATIONS): number {
  db.exec('CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at INTEGER NOT NULL)');
  const apply = db.transaction(() => {
    const row = db.prepare('SELECT MAX(version) AS v FROM schema_version').get();
    const current = row?.v === null || row?.v === undefined ? 0 : Number(row.v);
    const latest = migrations.length === 0 ? 0 : migrations[migrations.length - 1]!.version;
    if (current > latest) {
      throw new TetherError(ControlErrorCode.STORE_SCHEMA_TOO_NEW, `database schema is version ${current}; this build knows up to ${latest}`);
    }
    for (const migration of migrations) {
      if (migration.version <= current) continue;
      db.exec(migration.sql);
      db.prepare('INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)').run(migration.version, migration.description, Date.now());
    }
    return Math.max(current, latest);
  });
  return apply.immediate();
}
