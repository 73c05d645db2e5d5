/**
 * The control plane's operations, independent of transport: each call is authorised against the
 * RBAC graph (rbac.ts), checked for metadata-only limits (metadata-limits.ts), applied to the
 * repository and audited (who, what, which resource, result). The gRPC service and the JSON
 * gateway call these methods; nothing else writes the store.
 */
import { createHash, randomBytes } from 'node:crypto';
import { isTetherError, TetherError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { silentLogger } from '../common/log.js';
import { ControlErrorCode } from './errors.js';
import { checkList, checkMap, checkName, checkText, checkUri, checkUriMap, LIMITS } from './metadata-limits.js';
import type { UriPolicy } from './metadata-limits.js';
import { decideEvent, isTerminal, Phase, phaseName } from './phases.js';
import { describeScope, isOperation, isRole, RbacGraph } from './rbac.js';
import type { Binding, Membership, Operation, Principal, ResourceScope, Role } from './rbac.js';
import { checkCron, fireTimes, MIN_RATE_MS, nextFireTime, scheduleRunId, DEFAULT_MAX_CATCH_UP } from './schedules.js';
import type {
  AuditRecord,
  ClusterMode,
  ClusterRecord,
  ControlRepository,
  EventOutcome,
  Page,
  PhaseEvent,
  PhaseEventRecord,
  RbacEntry,
  RunError,
  RunFilter,
  RunRecord,
  ScheduleRecord,
  Scope,
  TaskRecord,
  TaskSpec,
} from './store/repository.js';

export const DEFAULT_PAGE = 50;
export const MAX_PAGE = 500;

/** Who is calling: the verified token's subject and groups. */
export interface Caller extends Principal {
  /** For the audit log, e.g. `user:alice` or `system:scheduler`. */
  readonly name: string;
  /** When the caller's token expires (ms since the epoch): a stream it opened ends then. */
  readonly expiresAt?: number;
}

export function userCaller(subject: string, groups: readonly string[] = []): Caller {
  return { subject, groups, name: `user:${subject}` };
}

export const SYSTEM_SCHEDULER: Caller = { subject: 'system:scheduler', groups: [], name: 'system:scheduler' };

export interface RegisterTaskInput extends Scope {
  name: string;
  version: string;
  spec: TaskSpec;
}

export interface CreateRunInput extends Scope {
  taskName: string;
  taskVersion: string;
  /** Optional client-chosen id (idempotency); default a random one. */
  runId?: string;
  clusterId?: string;
  inputs: Record<string, string>;
  outputPrefix?: string;
  env?: Record<string, string>;
  labels?: Record<string, string>;
}

export interface EventInput {
  runId: string;
  phase: number;
  occurredAt?: number;
  message?: string;
  error?: RunError | null;
  outputs?: Record<string, string>;
}

export interface RegisterClusterInput {
  org: string;
  id: string;
  mode: ClusterMode;
  endpoint: string;
  issuer: string;
  audience: string;
  allowedSubjects: string[];
  jwksJson?: string;
}

export interface CreateScheduleInput extends Scope {
  id: string;
  taskName: string;
  taskVersion: string;
  clusterId?: string;
  cron?: string;
  rateMs?: number;
  startAt?: number;
  inputs: Record<string, string>;
  outputPrefix?: string;
  env?: Record<string, string>;
}

export interface SelectClusterInput extends Scope {
  clusterId?: string;
  runId?: string;
  operation?: string;
}

export interface SelectedCluster {
  clusterId: string;
  mode: ClusterMode;
  endpoint: string;
}

/** What the agent channel hears about: runs queued for a cluster, runs to abort. */
export type RunChange =
  | { kind: 'queued'; clusterId: string }
  | { kind: 'aborting'; clusterId: string; runId: string; reason: string }
  /** A cluster was registered or its registration changed (mode, endpoint): connected agents get a fresh Welcome, watching gateways a new list. */
  | { kind: 'cluster'; clusterId: string };

/** An agent authenticated by its workload certificate (the channel), not by RBAC. */
export interface AgentIdentity {
  clusterId: string;
  agentId: string;
}

export interface Lease {
  run: RunRecord;
  task: TaskRecord;
}

export interface ControlServiceOptions {
  store: ControlRepository;
  /** Accept `file://` URIs (dev mode). */
  allowFileUris?: boolean;
  logger?: Logger;
  now?: () => number;
  maxCatchUp?: number;
  /** Called after a schedule is created, paused or deleted (the scheduler rescans). */
  onSchedulesChanged?: () => void;
}

function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([key, item]) => `${JSON.stringify(key)}:${canonical(item)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

export function taskDigest(spec: TaskSpec): string {
  return createHash('sha256').update(canonical(spec)).digest('hex');
}

function checkJwks(text: string): string {
  if (text === '') return text;
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = null;
  }
  const keys = typeof parsed === 'object' && parsed !== null ? (parsed as { keys?: unknown }).keys : undefined;
  if (!Array.isArray(keys) || keys.length === 0) throw new TetherError(ControlErrorCode.INVALID_ARGUMENT, 'jwksJson must be a JWKS: {"keys": [...]}');
  return text;
}

function notFound(what: string): TetherError {
  return new TetherError(ControlErrorCode.NOT_FOUND, `${what} not found`);
}

function pageSize(limit: number | undefined): number {
  if (limit === undefined || limit <= 0) return DEFAULT_PAGE;
  return Math.min(limit, MAX_PAGE);
}

function checkScope(scope: Scope): Scope {
  return { org: checkName('org', scope.org), project: checkName('project', scope.project), domain: checkName('domain', scope.domain) };
}

function bindingId(principal: string, role: string, scope: ResourceScope): string {
  return `b-${createHash('sha256').update(canonical([principal, role, scope])).digest('hex').slice(0, 20)}`;
}

function membershipId(group: string, user: string): string {
  return `m-${createHash('sha256').update(canonical([group, user])).digest('hex').slice(0, 20)}`;
}

export class ControlService {
  readonly store: ControlRepository;
  readonly #uriPolicy: UriPolicy;
  readonly #logger: Logger;
  readonly #now: () => number;
  readonly #maxCatchUp: number;
  readonly #onSchedulesChanged: () => void;
  #graph: { rev: number; graph: RbacGraph } | null = null;
  readonly #listeners = new Set<(change: RunChange) => void>();

  constructor(options: ControlServiceOptions) {
    this.store = options.store;
    this.#uriPolicy = { allowFile: options.allowFileUris ?? false };
    this.#logger = options.logger ?? silentLogger();
    this.#now = options.now ?? Date.now;
    this.#maxCatchUp = options.maxCatchUp ?? DEFAULT_MAX_CATCH_UP;
    this.#onSchedulesChanged = options.onSchedulesChanged ?? (() => {});
  }

  /** Subscribe to run changes (in this process); returns the unsubscribe function. */
  onRunChange(listener: (change: RunChange) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #emit(change: RunChange): void {
    for (const listener of this.#listeners) {
      try {
        listener(change);
      } catch (reason) {
        this.#logger.error({ err: reason }, 'run change listener failed');
      }
    }
  }

  // ---- authorisation and audit

  async graph(): Promise<RbacGraph> {
    const rev = await this.store.rbacRevision();
    if (this.#graph?.rev !== rev) {
      const entries = await this.store.listRbacEntries();
      const bindings: Binding[] = [];
      const memberships: Membership[] = [];
      for (const entry of entries) {
        if (entry.kind === 'membership') memberships.push(entry);
        else if (isRole(entry.role)) bindings.push({ ...entry, role: entry.role });
      }
      this.#graph = { rev, graph: new RbacGraph(bindings, memberships) };
    }
    return this.#graph.graph;
  }

  /** The decision alone (the gateway's authorizer uses it too). */
  async authorize(caller: Principal, operation: Operation, resource: ResourceScope): Promise<boolean> {
    return (await this.graph()).authorize(caller, operation, resource).allowed;
  }

  async #require(caller: Caller, operation: Operation, resource: ResourceScope): Promise<void> {
    if (caller === SYSTEM_SCHEDULER) return;
    if (!(await this.authorize(caller, operation, resource))) {
      throw new TetherError(ControlErrorCode.PERMISSION_DENIED, `${caller.name} may not ${operation} on ${describeScope(resource)}`, {
        details: { operation, resource: describeScope(resource) },
      });
    }
  }

  /** Authorise, run, audit. The audit row is written whatever the outcome. */
  async #call<T>(caller: Caller, operation: Operation, resource: ResourceScope | null, target: string, fn: () => Promise<T>): Promise<T> {
    let result = 'OK';
    try {
      if (resource !== null) await this.#require(caller, operation, resource);
      return await fn();
    } catch (reason) {
      result = isTetherError(reason) ? reason.code : 'INTERNAL';
      throw reason;
    } finally {
      const where = resource === null ? '' : describeScope(resource);
      const entry = { at: this.#now(), principal: caller.name, operation, resource: target === '' ? where : `${where}/${target}`, result };
      await this.store.appendAudit([entry]).catch((reason: unknown) => this.#logger.error({ err: reason }, 'audit write failed'));
    }
  }

  /** Append one audit record (calls that are not ControlService operations, e.g. the identity exchange). */
  async audit(entry: { principal: string; operation: string; resource: string; result: string }): Promise<void> {
    await this.store.appendAudit([{ at: this.#now(), ...entry }]);
  }

  /** Record a call refused before it reached an operation (e.g. no valid token). */
  async auditRefusal(principal: string, operation: string, code: string): Promise<void> {
    await this.store.appendAudit([{ at: this.#now(), principal, operation, resource: '', result: code }]);
  }

  /** An addressed record does not exist: audited, answered NOT_FOUND (no scope to authorise against). */
  #missing(caller: Caller, operation: Operation, target: string): Promise<never> {
    return this.#call(caller, operation, null, target, () => Promise.reject(notFound(target.replace('/', ' '))));
  }

  // ---- tasks

  #checkTaskSpec(spec: TaskSpec): TaskSpec {
    return {
      command: checkText('spec.command', spec.command, LIMITS.text),
      args: checkList('spec.args', spec.args),
      env: checkMap('spec.env', spec.env),
      timeoutSec: Math.max(0, Math.floor(spec.timeoutSec)),
      maxOutputBytes: Math.max(0, Math.floor(spec.maxOutputBytes)),
      description: checkText('spec.description', spec.description),
    };
  }

  async registerTask(caller: Caller, input: RegisterTaskInput): Promise<{ task: TaskRecord; created: boolean }> {
    const scope = checkScope(input);
    return this.#call(caller, 'task.register', scope, `task/${input.name}/${input.version}`, async () => {
      const name = checkName('name', input.name);
      const version = checkName('version', input.version);
      if (input.spec.command === '') throw new TetherError(ControlErrorCode.INVALID_ARGUMENT, 'spec.command is required');
      const spec = this.#checkTaskSpec(input.spec);
      const task: TaskRecord = { ...scope, name, version, digest: taskDigest(spec), spec, createdAt: this.#now(), createdBy: caller.name };
      const outcome = await this.store.putTask(task);
      if (outcome === 'conflict') {
        throw new TetherError(ControlErrorCode.TASK_VERSION_CONFLICT, `task ${name} version ${version} exists with a different body; register a new version`, {
          details: { name, version },
        });
      }
      if (outcome === 'identical') return { task: (await this.store.getTask(scope, name, version)) ?? task, created: false };
      return { task, created: true };
    });
  }

  async getTask(caller: Caller, scope: Scope, name: string, version: string): Promise<TaskRecord> {
    return this.#call(caller, 'task.read', scope, `task/${name}/${version}`, async () => {
      const task = await this.store.getTask(scope, name, version);
      if (task === undefined) throw notFound(`task ${name} version ${version}`);
      return task;
    });
  }

  async listTasks(caller: Caller, scope: Scope, name: string, limit: number | undefined, pageToken: string): Promise<Page<TaskRecord>> {
    return this.#call(caller, 'task.read', scope, 'tasks', () => this.store.listTasks(scope, name, pageSize(limit), pageToken));
  }

  // ---- clusters

  /**
   * Register a cluster, or change its registration (its mode included): `cluster.register` on the
   * org (Admin), audited with the mode asked for, e.g. `org/acme/cluster/c1(mode=sovereign)`. The
   * gateways watching the org (`watchClusters`) and the cluster's connected agents hear of it.
   */
  async registerCluster(caller: Caller, input: RegisterClusterInput): Promise<ClusterRecord> {
    const org = checkName('org', input.org);
    return this.#call(caller, 'cluster.register', { org }, `cluster/${input.id}(mode=${String(input.mode).slice(0, 16)})`, async () => {
      const id = checkName('id', input.id);
      if (input.mode !== 'tunnel' && input.mode !== 'sovereign') throw new TetherError(ControlErrorCode.INVALID_ARGUMENT, 'mode must be tunnel or sovereign');
      const existing = await this.store.getCluster(id);
      if (existing !== undefined && existing.org !== org) throw new TetherError(ControlErrorCode.ALREADY_EXISTS, `cluster ${id} belongs to another org`);
      if (input.allowedSubjects.length === 0) throw new TetherError(ControlErrorCode.INVALID_ARGUMENT, 'allowedSubjects must name at least one subject');
      const now = this.#now();
      const cluster: ClusterRecord = {
        id,
        org,
        mode: input.mode,
        endpoint: checkText('endpoint', input.endpoint),
        identity: {
          issuer: checkText('issuer', input.issuer),
          audience: checkText('audience', input.audience, LIMITS.name * 2),
          allowedSubjects: checkList('allowedSubjects', input.allowedSubjects, LIMITS.text),
          jwksJson: checkJwks(checkText('jwksJson', input.jwksJson ?? '', LIMITS.message * 2)),
        },
        createdAt: existing?.createdAt ?? now,
        updatedAt: now,
      };
      await this.store.putCluster(cluster);
      this.#emit({ kind: 'cluster', clusterId: id });
      return cluster;
    });
  }

  /**
   * Remove a cluster's registration: `cluster.delete` on the org (Admin), audited. Refused with
   * `CLUSTER_IN_USE` while a run of it is unfinished or an active schedule targets it (abort or
   * pause those first); finished runs and their history stay. The watching gateways drop it and
   * its connected agents are disconnected with `UNKNOWN_CLUSTER`.
   */
  async deleteCluster(caller: Caller, org: string, id: string): Promise<void> {
    return this.#call(caller, 'cluster.delete', { org: checkName('org', org) }, `cluster/${id}`, async () => {
      const existing = await this.store.getCluster(id);
      if (existing === undefined || existing.org !== org) throw notFound(`cluster ${id}`);
      const { deleted, activeRuns, activeSchedules } = await this.store.deleteCluster(id);
      if (activeRuns > 0 || activeSchedules > 0) {
        throw new TetherError(ControlErrorCode.CLUSTER_IN_USE, `cluster ${id} still has ${activeRuns} unfinished run(s) and ${activeSchedules} active schedule(s)`);
      }
      if (!deleted) throw notFound(`cluster ${id}`);
      this.#emit({ kind: 'cluster', clusterId: id });
    });
  }

  async getCluster(caller: Caller, org: string, id: string): Promise<ClusterRecord> {
    return this.#call(caller, 'cluster.read', { org }, `cluster/${id}`, async () => {
      const cluster = await this.store.getCluster(id);
      if (cluster === undefined || cluster.org !== org) throw notFound(`cluster ${id}`);
      return cluster;
    });
  }

  async listClusters(caller: Caller, org: string): Promise<ClusterRecord[]> {
    return this.#call(caller, 'cluster.read', { org }, 'clusters', () => this.store.listClusters(org));
  }

  /**
   * A gateway starts following these orgs' clusters (control/cluster-watch.ts): `cluster.watch` on
   * each org (the Gateway role, or Admin), audited once per org here; the stream's later lists are
   * read with `watchedClusters`, which asks the graph again without an audit row each time.
   */
  async watchClusters(caller: Caller, orgs: readonly string[]): Promise<ClusterRecord[]> {
    if (orgs.length === 0) throw new TetherError(ControlErrorCode.INVALID_ARGUMENT, 'orgs must name at least one org');
    for (const org of orgs) await this.#call(caller, 'cluster.watch', { org: checkName('org', org) }, 'clusters(watch)', () => Promise.resolve());
    return this.watchedClusters(caller, orgs);
  }

  /** The watched orgs' clusters now, if the caller may still watch every one (else PERMISSION_DENIED). */
  async watchedClusters(caller: Caller, orgs: readonly string[]): Promise<ClusterRecord[]> {
    const clusters: ClusterRecord[] = [];
    for (const org of orgs) {
      await this.#require(caller, 'cluster.watch', { org });
      clusters.push(...(await this.store.listClusters(org)));
    }
    return clusters;
  }

  async #resolveCluster(org: string, clusterId: string | undefined): Promise<ClusterRecord> {
    if (clusterId !== undefined && clusterId !== '') {
      const cluster = await this.store.getCluster(clusterId);
      if (cluster === undefined || cluster.org !== org) throw new TetherError(ControlErrorCode.CLUSTER_UNKNOWN, `cluster ${clusterId} is not registered in org ${org}`);
      return cluster;
    }
    const clusters = await this.store.listClusters(org);
    if (clusters.length === 1) return clusters[0]!;
    throw new TetherError(ControlErrorCode.CLUSTER_UNKNOWN, clusters.length === 0 ? `org ${org} has no registered cluster` : `org ${org} has ${clusters.length} clusters; name one`);
  }

  /** Where a cluster's data plane is reached (tunnel hostname, or the customer LB in sovereign mode). */
  async selectCluster(caller: Caller, input: SelectClusterInput): Promise<SelectedCluster> {
    const scope = checkScope(input);
    return this.#call(caller, 'cluster.select', scope, input.runId ? `run/${input.runId}` : 'cluster', async () => {
      let clusterId = input.clusterId;
      if (input.runId !== undefined && input.runId !== '') {
        const run = await this.store.getRun(input.runId);
        if (run === undefined || run.org !== scope.org || run.project !== scope.project || run.domain !== scope.domain) throw notFound(`run ${input.runId}`);
        clusterId = run.clusterId;
      }
      const cluster = await this.#resolveCluster(scope.org, clusterId);
      return { clusterId: cluster.id, mode: cluster.mode, endpoint: cluster.endpoint };
    });
  }

  // ---- runs

  async #buildRun(
    caller: Caller,
    input: CreateRunInput,
    scope: Scope,
    extra: { id?: string; scheduleId?: string; fireTime?: number } = {},
    /** Lookups already made in this batch (task exists; cluster by requested id). */
    seen: Map<string, Promise<unknown>> = new Map(),
  ): Promise<RunRecord> {
    const taskName = checkName('taskName', input.taskName);
    const taskVersion = checkName('taskVersion', input.taskVersion);
    const taskKey = `task\0${taskName}\0${taskVersion}`;
    if (!seen.has(taskKey)) seen.set(taskKey, this.store.getTask(scope, taskName, taskVersion));
    const task = (await seen.get(taskKey)) as TaskRecord | undefined;
    if (task === undefined) throw notFound(`task ${taskName} version ${taskVersion}`);
    const clusterKey = `cluster\0${input.clusterId ?? ''}`;
    if (!seen.has(clusterKey)) seen.set(clusterKey, this.#resolveCluster(scope.org, input.clusterId));
    const cluster = (await seen.get(clusterKey)) as ClusterRecord;
    const now = this.#now();
    return {
      id: extra.id ?? (input.runId !== undefined && input.runId !== '' ? checkName('runId', input.runId) : `r${randomBytes(10).toString('hex')}`),
      org: scope.org,
      project: scope.project,
      domain: scope.domain,
      taskName,
      taskVersion,
      clusterId: cluster.id,
      phase: Phase.QUEUED,
      eventSeq: 0,
      spec: {
        inputs: checkUriMap('inputs', input.inputs, this.#uriPolicy),
        outputPrefix: input.outputPrefix === undefined || input.outputPrefix === '' ? '' : checkUri('outputPrefix', input.outputPrefix, this.#uriPolicy),
        env: checkMap('env', input.env ?? {}),
        labels: checkMap('labels', input.labels ?? {}, LIMITS.text),
      },
      result: { error: null, outputs: {} },
      scheduleId: extra.scheduleId ?? null,
      fireTime: extra.fireTime ?? null,
      createdBy: caller.name,
      createdAt: now,
      updatedAt: now,
      startedAt: null,
      endedAt: null,
    };
  }

  async createRun(caller: Caller, input: CreateRunInput): Promise<RunRecord> {
    return (await this.createRuns(caller, [input]))[0]!;
  }

  /** Create several runs in one transaction (all in the same scope); refused as a whole on any error. */
  async createRuns(caller: Caller, inputs: CreateRunInput[]): Promise<RunRecord[]> {
    if (inputs.length === 0) return [];
    const scope = checkScope(inputs[0]!);
    for (const input of inputs) {
      if (input.org !== scope.org || input.project !== scope.project || input.domain !== scope.domain) {
        throw new TetherError(ControlErrorCode.INVALID_ARGUMENT, 'all runs of one batch must share org, project and domain');
      }
    }
    if (inputs.length > LIMITS.listEntries * 8) throw new TetherError(ControlErrorCode.METADATA_FIELD_TOO_LARGE, `at most ${LIMITS.listEntries * 8} runs per batch`);
    return this.#call(caller, 'run.create', scope, inputs.length === 1 ? `run/${inputs[0]!.runId ?? ''}` : `runs(${inputs.length})`, async () => {
      const runs: RunRecord[] = [];
      const seen = new Map<string, Promise<unknown>>();
      for (const input of inputs) runs.push(await this.#buildRun(caller, input, scope, {}, seen));
      await this.store.insertRuns(runs, 'all-or-nothing');
      for (const clusterId of new Set(runs.map((run) => run.clusterId))) this.#emit({ kind: 'queued', clusterId });
      return runs;
    });
  }

  async #visibleRun(runId: string): Promise<RunRecord> {
    const run = await this.store.getRun(runId);
    if (run === undefined) throw notFound(`run ${runId}`);
    return run;
  }

  async getRun(caller: Caller, runId: string): Promise<RunRecord> {
    const run = await this.store.getRun(runId);
    // Authorise against the run's own scope; an unknown run is audited against the caller only.
    if (run === undefined) return this.#missing(caller, 'run.read', `run/${runId}`);
    return this.#call(caller, 'run.read', run, `run/${runId}`, async () => run);
  }

  async listRuns(caller: Caller, filter: RunFilter, limit: number | undefined, pageToken: string): Promise<Page<RunRecord>> {
    const scope: ResourceScope = { org: checkName('org', filter.org) };
    if (filter.project !== undefined && filter.project !== '') scope.project = checkName('project', filter.project);
    if (filter.domain !== undefined && filter.domain !== '') scope.domain = checkName('domain', filter.domain);
    return this.#call(caller, 'run.read', scope, 'runs', () => this.store.listRuns(filter, pageSize(limit), pageToken));
  }

  async phaseHistory(caller: Caller, runId: string): Promise<PhaseEventRecord[]> {
    const run = await this.store.getRun(runId);
    if (run === undefined) return this.#missing(caller, 'run.read', `run/${runId}`);
    return this.#call(caller, 'run.read', run, `run/${runId}/phases`, () => this.store.listEvents(runId));
  }

  /** Abort: a QUEUED run becomes ABORTED at once; a leased one ABORTING (its agent then reports ABORTED). */
  async abortRun(caller: Caller, runId: string, reason: string): Promise<RunRecord> {
    const run = await this.store.getRun(runId);
    if (run === undefined) return this.#missing(caller, 'run.abort', `run/${runId}`);
    return this.#call(caller, 'run.abort', run, `run/${runId}`, async () => {
      const message = checkText('reason', reason, LIMITS.message);
      const phase = run.phase === Phase.QUEUED ? Phase.ABORTED : Phase.ABORTING;
      const [outcome] = await this.store.recordEvents(
        [{ runId, phase, producerCluster: null, occurredAt: this.#now(), message: message === '' ? `aborted by ${caller.name}` : message, error: null, outputs: {} }],
        decideEvent,
      );
      if (outcome?.status === 'refused') throw new TetherError(outcome.code, outcome.message);
      if (outcome?.status === 'applied' && phase === Phase.ABORTING) this.#emit({ kind: 'aborting', clusterId: run.clusterId, runId, reason: message });
      return this.#visibleRun(runId);
    });
  }

  /**
   * Phase events from a cluster's agent (or a principal allowed to report for it), applied in
   * order in one transaction; each gets its own outcome (applied, duplicate, refused with a code).
   */
  async reportEvents(caller: Caller, org: string, clusterId: string, events: EventInput[]): Promise<EventOutcome[]> {
    return this.#call(caller, 'run.report', { org }, `cluster/${clusterId}/events(${events.length})`, async () => {
      return this.store.recordEvents(this.#checkEvents(clusterId, events), decideEvent);
    });
  }

  /** Phase events from an agent on its channel: authorised by its certificate's cluster, audited. */
  async reportAgentEvents(agent: AgentIdentity, events: EventInput[]): Promise<EventOutcome[]> {
    let result = 'OK';
    try {
      const outcomes = await this.store.recordEvents(this.#checkEvents(agent.clusterId, events), decideEvent);
      const refused = outcomes.filter((outcome) => outcome.status === 'refused').length;
      if (refused > 0) result = `OK refused=${refused}`;
      return outcomes;
    } catch (reason) {
      result = isTetherError(reason) ? reason.code : 'INTERNAL';
      throw reason;
    } finally {
      await this.audit({ principal: `agent:${agent.clusterId}/${agent.agentId}`, operation: 'run.report', resource: `cluster/${agent.clusterId}/events(${events.length})`, result }).catch(() => {});
    }
  }

  /** Lease QUEUED runs of the agent's cluster, with their task definitions. */
  async leaseRuns(agent: AgentIdentity, max: number, leaseMs: number, exclude: ReadonlySet<string>): Promise<Lease[]> {
    const runs = await this.store.leaseRuns(agent.clusterId, agent.agentId, max, this.#now(), leaseMs, exclude);
    const leases: Lease[] = [];
    for (const run of runs) {
      const task = await this.store.getTask(run, run.taskName, run.taskVersion);
      if (task !== undefined) leases.push({ run, task });
    }
    return leases;
  }

  /** Runs of a cluster waiting to be aborted (sent again to an agent that reconnects). */
  async abortingRuns(clusterId: string): Promise<RunRecord[]> {
    return this.store.listClusterRuns(clusterId, Phase.ABORTING, MAX_PAGE);
  }

  #checkEvents(clusterId: string, events: EventInput[]): PhaseEvent[] {
    if (events.length > LIMITS.listEntries * 8) throw new TetherError(ControlErrorCode.METADATA_FIELD_TOO_LARGE, `at most ${LIMITS.listEntries * 8} events per report`);
    const now = this.#now();
    return events.map((event, index) => ({
      runId: checkName(`events[${index}].runId`, event.runId),
      phase: event.phase,
      producerCluster: clusterId,
      occurredAt: event.occurredAt ?? now,
      message: checkText(`events[${index}].message`, event.message ?? '', LIMITS.message),
      error:
        event.error === undefined || event.error === null
          ? null
          : { code: checkText(`events[${index}].error.code`, event.error.code, LIMITS.name), message: checkText(`events[${index}].error.message`, event.error.message, LIMITS.message), kind: event.error.kind },
      outputs: checkUriMap(`events[${index}].outputs`, event.outputs ?? {}, this.#uriPolicy),
    }));
  }

  // ---- schedules

  async createSchedule(caller: Caller, input: CreateScheduleInput): Promise<ScheduleRecord> {
    const scope = checkScope(input);
    return this.#call(caller, 'schedule.write', scope, `schedule/${input.id}`, async () => {
      const id = checkName('id', input.id);
      const hasCron = input.cron !== undefined && input.cron !== '';
      const hasRate = input.rateMs !== undefined && input.rateMs > 0;
      if (hasCron === hasRate) throw new TetherError(ControlErrorCode.SCHEDULE_INVALID, 'give exactly one of cron and rate');
      if (hasCron) checkCron(checkText('cron', input.cron!, LIMITS.name));
      if (hasRate && input.rateMs! < MIN_RATE_MS) throw new TetherError(ControlErrorCode.SCHEDULE_INVALID, `rate must be at least ${MIN_RATE_MS} ms`);
      // Validate the run it would launch now, so a broken schedule is refused at creation.
      const probe = await this.#buildRun(caller, { ...scope, taskName: input.taskName, taskVersion: input.taskVersion, clusterId: input.clusterId, inputs: input.inputs, outputPrefix: input.outputPrefix, env: input.env }, scope);
      const now = this.#now();
      const schedule: ScheduleRecord = {
        id,
        ...scope,
        taskName: probe.taskName,
        taskVersion: probe.taskVersion,
        clusterId: probe.clusterId,
        kind: hasCron ? 'cron' : 'rate',
        cron: hasCron ? input.cron! : null,
        rateMs: hasRate ? Math.floor(input.rateMs!) : null,
        active: true,
        startAt: input.startAt ?? now,
        lastFire: null,
        spec: { inputs: probe.spec.inputs, outputPrefix: probe.spec.outputPrefix, env: probe.spec.env },
        createdBy: caller.name,
        createdAt: now,
      };
      if (!(await this.store.insertSchedule(schedule))) throw new TetherError(ControlErrorCode.ALREADY_EXISTS, `schedule ${id} already exists`);
      this.#onSchedulesChanged();
      return schedule;
    });
  }

  async listSchedules(caller: Caller, org: string): Promise<ScheduleRecord[]> {
    return this.#call(caller, 'schedule.read', { org }, 'schedules', () => this.store.listSchedules({ org }));
  }

  async setScheduleActive(caller: Caller, id: string, active: boolean): Promise<ScheduleRecord> {
    const schedule = await this.store.getSchedule(id);
    if (schedule === undefined) return this.#missing(caller, 'schedule.write', `schedule/${id}`);
    return this.#call(caller, 'schedule.write', schedule, `schedule/${id}`, async () => {
      await this.store.setScheduleActive(id, active);
      this.#onSchedulesChanged();
      return { ...schedule, active };
    });
  }

  async deleteSchedule(caller: Caller, id: string): Promise<void> {
    const schedule = await this.store.getSchedule(id);
    if (schedule === undefined) return this.#missing(caller, 'schedule.write', `schedule/${id}`);
    return this.#call(caller, 'schedule.write', schedule, `schedule/${id}`, async () => {
      await this.store.deleteSchedule(id);
      this.#onSchedulesChanged();
    });
  }

  /** Launch every due fire (including missed ones) of every active schedule; the next fire time. */
  async fireDue(now: number): Promise<number | null> {
    let next: number | null = null;
    for (const schedule of await this.store.listSchedules({ activeOnly: true })) {
      const after = schedule.lastFire ?? schedule.startAt;
      try {
        const times = fireTimes(schedule, after, now, this.#maxCatchUp);
        if (times.length > 0) {
          const runs: RunRecord[] = [];
          const seen = new Map<string, Promise<unknown>>();
          for (const fireTime of times) {
            runs.push(
              await this.#buildRun(
                SYSTEM_SCHEDULER,
                { ...schedule, inputs: schedule.spec.inputs, outputPrefix: schedule.spec.outputPrefix, env: schedule.spec.env, labels: { schedule: schedule.id, fireTime: new Date(fireTime).toISOString() } },
                schedule,
                { id: scheduleRunId(schedule.id, fireTime), scheduleId: schedule.id, fireTime },
                seen,
              ),
            );
          }
          const inserted = await this.store.fireSchedule(schedule.id, runs, times[times.length - 1]!);
          if (inserted.length > 0) this.#emit({ kind: 'queued', clusterId: schedule.clusterId });
          await this.store.appendAudit([{ at: this.#now(), principal: SYSTEM_SCHEDULER.name, operation: 'run.create', resource: `${describeScope(schedule)}/schedule/${schedule.id}`, result: `OK fired=${inserted.length}/${times.length}` }]);
        }
        const upcoming = nextFireTime(schedule, Math.max(now, times[times.length - 1] ?? now));
        next = next === null ? upcoming : Math.min(next, upcoming);
      } catch (reason) {
        this.#logger.error({ err: reason, schedule: schedule.id }, 'schedule fire failed');
      }
    }
    return next;
  }

  // ---- RBAC

  #bindingScope(input: ResourceScope): ResourceScope {
    const scope: ResourceScope = { org: checkName('org', input.org) };
    if (input.project !== undefined && input.project !== '') scope.project = checkName('project', input.project);
    if (input.domain !== undefined && input.domain !== '') scope.domain = checkName('domain', input.domain);
    return scope;
  }

  async bind(caller: Caller, principal: string, role: string, scopeInput: ResourceScope): Promise<RbacEntry> {
    const scope = this.#bindingScope(scopeInput);
    return this.#call(caller, 'rbac.write', { org: scope.org }, `binding/${principal}/${role}`, async () => {
      if (!isRole(role)) throw new TetherError(ControlErrorCode.INVALID_ARGUMENT, `role must be Viewer, Contributor, Admin or Gateway`);
      if (!/^(user|group):./.test(principal)) throw new TetherError(ControlErrorCode.INVALID_ARGUMENT, 'principal must be user:<subject> or group:<name>');
      checkText('principal', principal, LIMITS.text);
      const entry: RbacEntry = { id: bindingId(principal, role, scope), kind: 'binding', principal, role, scope };
      await this.store.putRbacEntry(entry);
      return entry;
    });
  }

  async unbind(caller: Caller, org: string, id: string): Promise<boolean> {
    return this.#call(caller, 'rbac.write', { org }, `rbac/${id}`, async () => {
      const entry = (await this.store.listRbacEntries()).find((item) => item.id === id);
      if (entry === undefined || (entry.kind === 'binding' && entry.scope.org !== org)) throw notFound(`rbac entry ${id}`);
      return this.store.deleteRbacEntry(id);
    });
  }

  async addMember(caller: Caller, org: string, group: string, user: string): Promise<RbacEntry> {
    return this.#call(caller, 'rbac.write', { org }, `group/${group}`, async () => {
      const entry: RbacEntry = { id: membershipId(checkText('group', group, LIMITS.text), checkText('user', user, LIMITS.text)), kind: 'membership', group, user };
      await this.store.putRbacEntry(entry);
      return entry;
    });
  }

  async listRbac(caller: Caller, org: string): Promise<RbacEntry[]> {
    return this.#call(caller, 'rbac.read', { org }, 'rbac', async () =>
      (await this.store.listRbacEntries()).filter((entry) => entry.kind === 'membership' || entry.scope.org === org),
    );
  }

  /** The caller's roles on a scope (no permission needed to ask about oneself). */
  async whoAmI(caller: Caller, scope: ResourceScope): Promise<{ subject: string; groups: string[]; roles: Role[] }> {
    const graph = await this.graph();
    const groups = [...graph.principalNames(caller)].filter((name) => name.startsWith('group:')).map((name) => name.slice(6));
    return { subject: caller.subject, groups, roles: graph.rolesOn(caller, scope) };
  }

  /**
   * May `subject` reach cluster `clusterId`'s data plane? The gateway's question: `data.read` in
   * the cluster's org, asked as the subject itself (so it is audited as that subject). An unknown
   * cluster is a no.
   */
  async mayReachCluster(subject: string, groups: readonly string[], clusterId: string): Promise<boolean> {
    const cluster = await this.store.getCluster(clusterId);
    if (cluster === undefined) return false;
    return (await this.check(userCaller(subject, groups), '', [], 'data.read', { org: cluster.org })).allowed;
  }

  /** May `subject` do `operation` on `scope`? About oneself: anyone; about others: rbac.read. */
  async check(caller: Caller, subject: string, groups: readonly string[], operation: string, scopeInput: ResourceScope): Promise<{ allowed: boolean; roles: Role[] }> {
    const scope = this.#bindingScope(scopeInput);
    const self = subject === '' || subject === caller.subject;
    return this.#call(caller, 'rbac.read', self ? null : { org: scope.org }, `check/${operation}`, async () => {
      if (!isOperation(operation)) throw new TetherError(ControlErrorCode.INVALID_ARGUMENT, `unknown operation ${JSON.stringify(operation)}`);
      const principal = self ? caller : { subject, groups };
      return (await this.graph()).authorize(principal, operation, scope);
    });
  }

  /** Grant org Admin to bootstrap subjects (idempotent), so a fresh store has someone who can act. */
  async ensureAdmins(org: string, subjects: readonly string[]): Promise<void> {
    for (const subject of subjects) {
      const principal = `user:${subject}`;
      const scope = { org };
      await this.store.putRbacEntry({ id: bindingId(principal, 'Admin', scope), kind: 'binding', principal, role: 'Admin', scope });
    }
  }

  // ---- audit

  async listAudit(caller: Caller, org: string, filter: { principal?: string; operation?: string }, limit: number | undefined, pageToken: string): Promise<Page<AuditRecord>> {
    // Only the org's own rows: an org's Admin never reads another tenant's audit trail.
    return this.#call(caller, 'audit.read', { org }, 'audit', () => this.store.listAudit({ ...filter, org }, pageSize(limit), pageToken));
  }
}

export { isTerminal, phaseName };
