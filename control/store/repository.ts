/**
 * The control plane's storage contract. The embedded implementation is SQLite (sqlite-store.ts);
 * a PostgreSQL one would implement the same interface (row locks where SQLite has one writer).
 * Methods are async so that a networked database fits; every method is one transaction.
 */
import type { Phase, PhaseDecision, PhaseEventInput, RunPhaseState } from '../phases.js';

export interface Scope {
  org: string;
  project: string;
  domain: string;
}

export interface TaskSpec {
  command: string;
  args: string[];
  env: Record<string, string>;
  /** Wall-clock limit of one run; 0 = none. */
  timeoutSec: number;
  /** Limit on captured output (logs) per run; 0 = default of the executor. */
  maxOutputBytes: number;
  description: string;
}

export interface TaskRecord extends Scope {
  name: string;
  version: string;
  /** sha256 (hex) of the canonical spec; equal digests = identical registrations. */
  digest: string;
  spec: TaskSpec;
  createdAt: number;
  createdBy: string;
}

export interface RunSpec {
  /** Input name → URI. */
  inputs: Record<string, string>;
  /** Where outputs go (a URI prefix); empty = the cluster's default. */
  outputPrefix: string;
  /** Extra environment for this run (merged over the task's). */
  env: Record<string, string>;
  labels: Record<string, string>;
}

export interface RunError {
  code: string;
  message: string;
  kind: 'USER' | 'SYSTEM' | 'UNKNOWN';
}

export interface RunResult {
  error: RunError | null;
  /** Output name → URI. */
  outputs: Record<string, string>;
}

export interface RunRecord extends Scope {
  id: string;
  taskName: string;
  taskVersion: string;
  clusterId: string;
  phase: Phase;
  /** Number of phase events recorded. */
  eventSeq: number;
  spec: RunSpec;
  result: RunResult;
  scheduleId: string | null;
  fireTime: number | null;
  createdBy: string;
  createdAt: number;
  updatedAt: number;
  startedAt: number | null;
  endedAt: number | null;
}

export interface PhaseEvent {
  runId: string;
  phase: number;
  producerCluster: string | null;
  occurredAt: number;
  message: string;
  error: RunError | null;
  outputs: Record<string, string>;
}

export interface PhaseEventRecord {
  runId: string;
  seq: number;
  phase: Phase;
  clusterId: string;
  occurredAt: number;
  recordedAt: number;
  message: string;
  error: RunError | null;
  outputs: Record<string, string>;
}

export type EventOutcome =
  | { runId: string; status: 'applied'; seq: number; phase: Phase }
  | { runId: string; status: 'duplicate'; phase: Phase }
  | { runId: string; status: 'refused'; code: string; message: string };

/** The phase rule the store applies inside its transaction (phases.decideEvent). */
export type PhaseRule = (current: RunPhaseState, event: PhaseEventInput) => PhaseDecision;

export type ClusterMode = 'tunnel' | 'sovereign';

export interface ClusterIdentityConfig {
  issuer: string;
  audience: string;
  allowedSubjects: string[];
  /** A fixed JWKS (JSON) for an issuer the control plane cannot reach; empty = discovery. */
  jwksJson: string;
}

export interface ClusterRecord {
  id: string;
  org: string;
  mode: ClusterMode;
  /** Where the data plane is reached: tunnel hostname, or the customer LB's name in sovereign mode. */
  endpoint: string;
  identity: ClusterIdentityConfig;
  createdAt: number;
  updatedAt: number;
}

export interface ScheduleSpec {
  inputs: Record<string, string>;
  outputPrefix: string;
  env: Record<string, string>;
}

export interface ScheduleRecord extends Scope {
  id: string;
  taskName: string;
  taskVersion: string;
  clusterId: string;
  kind: 'cron' | 'rate';
  cron: string | null;
  rateMs: number | null;
  active: boolean;
  /** Fires come strictly after this (rate schedules fire at startAt + k·rate, k ≥ 1). */
  startAt: number;
  /** The latest fire time already launched; null = none yet. */
  lastFire: number | null;
  spec: ScheduleSpec;
  createdBy: string;
  createdAt: number;
}

export type RbacEntry =
  | { id: string; kind: 'membership'; group: string; user: string }
  | { id: string; kind: 'binding'; principal: string; role: string; scope: { org: string; project?: string; domain?: string } };

export interface AuditEntry {
  at: number;
  principal: string;
  operation: string;
  resource: string;
  /** `OK` or the error code. */
  result: string;
  /**
   * The org the row belongs to (who may read it with ListAudit). When absent, the store takes it
   * from the resource: `org/<org>/…`, or `cluster/<id>…` by the cluster's registration; otherwise
   * '' (refusals before any org is known: only the store's operators see those).
   */
  org?: string;
}

export interface AuditRecord extends AuditEntry {
  seq: number;
}

export interface Page<T> {
  items: T[];
  /** Opaque; empty when there are no more items. */
  nextPageToken: string;
}

export interface RunFilter {
  org: string;
  project?: string;
  domain?: string;
  phase?: Phase;
  clusterId?: string;
  taskName?: string;
  scheduleId?: string;
}

export interface ControlRepository {
  /** `created` (new), `identical` (same digest already there) or `conflict` (another body at that version). */
  putTask(task: TaskRecord): Promise<'created' | 'identical' | 'conflict'>;
  getTask(scope: Scope, name: string, version: string): Promise<TaskRecord | undefined>;
  listTasks(scope: Scope, name: string | undefined, limit: number, pageToken: string): Promise<Page<TaskRecord>>;

  /**
   * Insert runs in one transaction. `skip-existing`: a run whose id (or schedule fire) exists is
   * skipped; `all-or-nothing`: any such clash rolls the batch back with CONTROL_ALREADY_EXISTS.
   * Returns the ids inserted.
   */
  insertRuns(runs: RunRecord[], mode: 'skip-existing' | 'all-or-nothing'): Promise<string[]>;
  getRun(id: string): Promise<RunRecord | undefined>;
  listRuns(filter: RunFilter, limit: number, pageToken: string): Promise<Page<RunRecord>>;
  /** Apply phase events in order, each checked with `rule` against the run's state at that moment. */
  recordEvents(events: PhaseEvent[], rule: PhaseRule): Promise<EventOutcome[]>;
  listEvents(runId: string): Promise<PhaseEventRecord[]>;
  /**
   * Lease up to `max` QUEUED runs of a cluster to an agent, oldest first: runs never leased,
   * whose lease expired, or already leased to this agent (re-sent after a reconnect). Runs in
   * `exclude` (already sent on this stream) are skipped.
   */
  leaseRuns(clusterId: string, agentId: string, max: number, now: number, leaseMs: number, exclude: ReadonlySet<string>): Promise<RunRecord[]>;
  /** Runs of a cluster in one phase, oldest first (reconciliation: ABORTING runs to abort). */
  listClusterRuns(clusterId: string, phase: Phase, limit: number): Promise<RunRecord[]>;

  putCluster(cluster: ClusterRecord): Promise<void>;
  getCluster(id: string): Promise<ClusterRecord | undefined>;
  listClusters(org: string): Promise<ClusterRecord[]>;
  /**
   * Remove a cluster's registration, in one transaction with the check that nothing still needs
   * it: no run of the cluster in a non-terminal phase and no active schedule targeting it (then
   * nothing is removed and the counts say why). Finished runs and their events stay.
   */
  deleteCluster(id: string): Promise<ClusterDeletion>;

  /** Insert; false when the id exists. */
  insertSchedule(schedule: ScheduleRecord): Promise<boolean>;
  getSchedule(id: string): Promise<ScheduleRecord | undefined>;
  listSchedules(filter: { org?: string; activeOnly?: boolean }): Promise<ScheduleRecord[]>;
  setScheduleActive(id: string, active: boolean): Promise<boolean>;
  deleteSchedule(id: string): Promise<boolean>;
  /** Insert the fired runs and move `lastFire` forward (never back) in one transaction. */
  fireSchedule(id: string, runs: RunRecord[], lastFire: number): Promise<string[]>;

  putRbacEntry(entry: RbacEntry): Promise<void>;
  deleteRbacEntry(id: string): Promise<boolean>;
  listRbacEntries(): Promise<RbacEntry[]>;
  /** Bumped by every RBAC write (for caches, also across processes sharing the store). */
  rbacRevision(): Promise<number>;

  appendAudit(entries: AuditEntry[]): Promise<void>;
  listAudit(filter: { org?: string; principal?: string; operation?: string }, limit: number, pageToken: string): Promise<Page<AuditRecord>>;

  close(): Promise<void>;
}

/** What `deleteCluster` did: removed, or what still uses the cluster. */
export interface ClusterDeletion {
  deleted: boolean;
  activeRuns: number;
  activeSchedules: number;
}
