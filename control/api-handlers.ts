/**
 * The API surface: one handler per RPC of control/proto, converting protobuf messages to service
 * calls and back. The gRPC server and the JSON gateway both dispatch through `apiMethods()`, so
 * the two transports cannot drift apart.
 */
import { create } from '@bufbuild/protobuf';
import type { DescMessage, DescMethod, DescMethodUnary, MessageInitShape, MessageShape } from '@bufbuild/protobuf';
import { timestampFromMs, timestampMs } from '@bufbuild/protobuf/wkt';
import type { Timestamp } from '@bufbuild/protobuf/wkt';
import { isTetherError, TetherError } from '../common/errors.js';
import type { IdentityExchange } from '../certs/identity-exchange.js';
import { ControlErrorCode } from './errors.js';
import * as pb from './gen/tether/control/v1/control_pb.js';
import type { Phase } from './phases.js';
import type { Caller, ControlService, CreateRunInput } from './service.js';
import type { ClusterMode, ClusterRecord, PhaseEventRecord, RbacEntry, RunError, RunRecord, ScheduleRecord, Scope, TaskRecord } from './store/repository.js';

export const API_SERVICES = [pb.ClusterService, pb.TaskService, pb.RunService, pb.ScheduleService, pb.AccessService, pb.AuditService, pb.IdentityService] as const;

export interface ApiMethod {
  method: DescMethod;
  /** The audit/metrics name, e.g. `RunService.CreateRun`. */
  name: string;
  /** Takes no bearer token (the request carries its own credential, e.g. a workload token). */
  public: boolean;
  handle(request: unknown, caller: Caller): Promise<unknown>;
}

const ts = (ms: number | null): Timestamp | undefined => (ms === null ? undefined : timestampFromMs(ms));
const ms = (value: Timestamp | undefined): number | undefined => (value === undefined ? undefined : timestampMs(value));

function scopeOf(scope: pb.Scope | undefined): Scope {
  return { org: scope?.org ?? '', project: scope?.project ?? '', domain: scope?.domain ?? '' };
}

function scopeMessage(scope: Scope): MessageInitShape<typeof pb.ScopeSchema> {
  return { org: scope.org, project: scope.project, domain: scope.domain };
}

function modeOf(mode: pb.ClusterMode): ClusterMode {
  if (mode === pb.ClusterMode.TUNNEL) return 'tunnel';
  if (mode === pb.ClusterMode.SOVEREIGN) return 'sovereign';
  throw new TetherError(ControlErrorCode.INVALID_ARGUMENT, 'cluster.mode must be CLUSTER_MODE_TUNNEL or CLUSTER_MODE_SOVEREIGN');
}

const modeMessage = (mode: ClusterMode): pb.ClusterMode => (mode === 'sovereign' ? pb.ClusterMode.SOVEREIGN : pb.ClusterMode.TUNNEL);

function clusterMessage(cluster: ClusterRecord): MessageInitShape<typeof pb.ClusterSchema> {
  return {
    id: cluster.id,
    org: cluster.org,
    mode: modeMessage(cluster.mode),
    endpoint: cluster.endpoint,
    issuer: cluster.identity.issuer,
    audience: cluster.identity.audience,
    allowedSubjects: cluster.identity.allowedSubjects,
    jwksJson: cluster.identity.jwksJson,
    createdAt: ts(cluster.createdAt),
    updatedAt: ts(cluster.updatedAt),
  };
}

function taskMessage(task: TaskRecord): MessageInitShape<typeof pb.TaskSchema> {
  return { scope: scopeMessage(task), name: task.name, version: task.version, digest: task.digest, spec: task.spec, createdAt: ts(task.createdAt), createdBy: task.createdBy };
}

function errorMessage(error: RunError | null): MessageInitShape<typeof pb.RunErrorSchema> | undefined {
  return error === null ? undefined : { code: error.code, message: error.message, kind: error.kind };
}

function errorOf(error: pb.RunError | undefined): RunError | null {
  if (error === undefined) return null;
  const kind = error.kind === 'USER' || error.kind === 'SYSTEM' ? error.kind : 'UNKNOWN';
  return { code: error.code, message: error.message, kind };
}

function runMessage(run: RunRecord): MessageInitShape<typeof pb.RunSchema> {
  return {
    id: run.id,
    scope: scopeMessage(run),
    taskName: run.taskName,
    taskVersion: run.taskVersion,
    clusterId: run.clusterId,
    phase: run.phase as number as pb.Phase,
    inputs: run.spec.inputs,
    outputPrefix: run.spec.outputPrefix,
    env: run.spec.env,
    labels: run.spec.labels,
    outputs: run.result.outputs,
    error: errorMessage(run.result.error),
    scheduleId: run.scheduleId ?? '',
    fireTime: ts(run.fireTime),
    createdBy: run.createdBy,
    createdAt: ts(run.createdAt),
    updatedAt: ts(run.updatedAt),
    startedAt: ts(run.startedAt),
    endedAt: ts(run.endedAt),
  };
}

function eventMessage(event: PhaseEventRecord): MessageInitShape<typeof pb.PhaseEventSchema> {
  return {
    runId: event.runId,
    seq: event.seq,
    phase: event.phase as number as pb.Phase,
    clusterId: event.clusterId,
    occurredAt: ts(event.occurredAt),
    recordedAt: ts(event.recordedAt),
    message: event.message,
    error: errorMessage(event.error),
    outputs: event.outputs,
  };
}

function scheduleMessage(schedule: ScheduleRecord): MessageInitShape<typeof pb.ScheduleSchema> {
  return {
    id: schedule.id,
    scope: scopeMessage(schedule),
    taskName: schedule.taskName,
    taskVersion: schedule.taskVersion,
    clusterId: schedule.clusterId,
    cron: schedule.cron ?? '',
    rateMs: schedule.rateMs ?? 0,
    active: schedule.active,
    startAt: ts(schedule.startAt),
    lastFire: ts(schedule.lastFire),
    inputs: schedule.spec.inputs,
    outputPrefix: schedule.spec.outputPrefix,
    env: schedule.spec.env,
    createdBy: schedule.createdBy,
  };
}

function rbacMessage(entry: RbacEntry): MessageInitShape<typeof pb.RbacEntrySchema> {
  if (entry.kind === 'membership') return { id: entry.id, kind: 'MEMBERSHIP', group: entry.group, user: entry.user };
  return { id: entry.id, kind: 'BINDING', principal: entry.principal, role: entry.role, scope: { org: entry.scope.org, project: entry.scope.project ?? '', domain: entry.scope.domain ?? '' } };
}

function createRunInput(request: pb.CreateRunRequest): CreateRunInput {
  return {
    ...scopeOf(request.scope),
    taskName: request.taskName,
    taskVersion: request.taskVersion,
    runId: request.runId,
    clusterId: request.clusterId,
    inputs: request.inputs,
    outputPrefix: request.outputPrefix,
    env: request.env,
    labels: request.labels,
  };
}

export interface ApiOptions {
  /** Serves IdentityService.ExchangeToken; without it the call answers IDENTITY_EXCHANGE_DISABLED. */
  identity?: IdentityExchange;
}

export function apiMethods(service: ControlService, options: ApiOptions = {}): Map<string, ApiMethod> {
  const methods = new Map<string, ApiMethod>();
  function unary<I extends DescMessage, O extends DescMessage>(
    method: DescMethodUnary<I, O>,
    fn: (request: MessageShape<I>, caller: Caller) => Promise<MessageInitShape<O>>,
    isPublic = false,
  ): void {
    methods.set(`/${method.parent.typeName}/${method.name}`, {
      method,
      name: `${method.parent.name}.${method.name}`,
      public: isPublic,
      handle: async (request, caller) => create(method.output, await fn(request as MessageShape<I>, caller)),
    });
  }
  const C = pb.ClusterService.method;
  unary(C.registerCluster, async (request, caller) => {
    const cluster = request.cluster;
    if (cluster === undefined) throw new TetherError(ControlErrorCode.INVALID_ARGUMENT, 'cluster is required');
    const saved = await service.registerCluster(caller, {
      org: cluster.org, id: cluster.id, mode: modeOf(cluster.mode), endpoint: cluster.endpoint, issuer: cluster.issuer, audience: cluster.audience,
      allowedSubjects: cluster.allowedSubjects, jwksJson: cluster.jwksJson,
    });
    return { cluster: clusterMessage(saved) };
  });
  unary(C.getCluster, async (request, caller) => ({ cluster: clusterMessage(await service.getCluster(caller, request.org, request.id)) }));
  unary(C.listClusters, async (request, caller) => ({ clusters: (await service.listClusters(caller, request.org)).map(clusterMessage) }));
  unary(C.deleteCluster, async (request, caller) => {
    await service.deleteCluster(caller, request.org, request.id);
    return {};
  });
  unary(C.selectCluster, async (request, caller) => {
    const selected = await service.selectCluster(caller, { ...scopeOf(request.scope), clusterId: request.clusterId, runId: request.runId, operation: request.operation });
    return { clusterId: selected.clusterId, mode: modeMessage(selected.mode), clusterEndpoint: selected.endpoint };
  });

  const T = pb.TaskService.method;
  unary(T.registerTask, async (request, caller) => {
    const spec = request.spec;
    if (spec === undefined) throw new TetherError(ControlErrorCode.INVALID_ARGUMENT, 'spec is required');
    const { task, created } = await service.registerTask(caller, {
      ...scopeOf(request.scope), name: request.name, version: request.version,
      spec: { command: spec.command, args: spec.args, env: spec.env, timeoutSec: spec.timeoutSec, maxOutputBytes: spec.maxOutputBytes, description: spec.description },
    });
    return { task: taskMessage(task), created };
  });
  unary(T.getTask, async (request, caller) => ({ task: taskMessage(await service.getTask(caller, scopeOf(request.scope), request.name, request.version)) }));
  unary(T.listTasks, async (request, caller) => {
    const page = await service.listTasks(caller, scopeOf(request.scope), request.name, request.limit, request.pageToken);
    return { tasks: page.items.map(taskMessage), nextPageToken: page.nextPageToken };
  });

  const R = pb.RunService.method;
  unary(R.createRun, async (request, caller) => ({ run: runMessage(await service.createRun(caller, createRunInput(request))) }));
  unary(R.createRuns, async (request, caller) => ({ runs: (await service.createRuns(caller, request.runs.map(createRunInput))).map(runMessage) }));
  unary(R.getRun, async (request, caller) => ({ run: runMessage(await service.getRun(caller, request.runId)) }));
  unary(R.listRuns, async (request, caller) => {
    const page = await service.listRuns(
      caller,
      {
        org: request.org, project: request.project, domain: request.domain,
        phase: request.phase === pb.Phase.UNDEFINED ? undefined : (request.phase as number as Phase),
        clusterId: request.clusterId, taskName: request.taskName, scheduleId: request.scheduleId,
      },
      request.limit,
      request.pageToken,
    );
    return { runs: page.items.map(runMessage), nextPageToken: page.nextPageToken };
  });
  unary(R.abortRun, async (request, caller) => ({ run: runMessage(await service.abortRun(caller, request.runId, request.reason)) }));
  unary(R.getPhaseHistory, async (request, caller) => ({ events: (await service.phaseHistory(caller, request.runId)).map(eventMessage) }));
  unary(R.reportEvents, async (request, caller) => {
    const outcomes = await service.reportEvents(
      caller,
      request.org,
      request.clusterId,
      request.events.map((event) => ({ runId: event.runId, phase: event.phase, occurredAt: ms(event.occurredAt), message: event.message, error: errorOf(event.error), outputs: event.outputs })),
    );
    return {
      outcomes: outcomes.map((outcome) =>
        outcome.status === 'refused'
          ? { runId: outcome.runId, status: 'REFUSED', code: outcome.code, message: outcome.message }
          : { runId: outcome.runId, status: outcome.status === 'applied' ? 'APPLIED' : 'DUPLICATE', phase: outcome.phase as number as pb.Phase, seq: outcome.status === 'applied' ? outcome.seq : 0 },
      ),
    };
  });

  const S = pb.ScheduleService.method;
  unary(S.createSchedule, async (request, caller) => {
    const schedule = request.schedule;
    if (schedule === undefined) throw new TetherError(ControlErrorCode.INVALID_ARGUMENT, 'schedule is required');
    const saved = await service.createSchedule(caller, {
      ...scopeOf(schedule.scope), id: schedule.id, taskName: schedule.taskName, taskVersion: schedule.taskVersion, clusterId: schedule.clusterId,
      cron: schedule.cron, rateMs: schedule.rateMs, startAt: ms(schedule.startAt), inputs: schedule.inputs, outputPrefix: schedule.outputPrefix, env: schedule.env,
    });
    return { schedule: scheduleMessage(saved) };
  });
  unary(S.listSchedules, async (request, caller) => ({ schedules: (await service.listSchedules(caller, request.org)).map(scheduleMessage) }));
  unary(S.setScheduleActive, async (request, caller) => ({ schedule: scheduleMessage(await service.setScheduleActive(caller, request.id, request.active)) }));
  unary(S.deleteSchedule, async (request, caller) => {
    await service.deleteSchedule(caller, request.id);
    return {};
  });

  const A = pb.AccessService.method;
  unary(A.bind, async (request, caller) => {
    const scope = scopeOf(request.scope);
    return { entry: rbacMessage(await service.bind(caller, request.principal, request.role, { org: scope.org, project: scope.project || undefined, domain: scope.domain || undefined })) };
  });
  unary(A.unbind, async (request, caller) => {
    await service.unbind(caller, request.org, request.id);
    return {};
  });
  unary(A.addMember, async (request, caller) => ({ entry: rbacMessage(await service.addMember(caller, request.org, request.group, request.user)) }));
  unary(A.listRbac, async (request, caller) => ({ entries: (await service.listRbac(caller, request.org)).map(rbacMessage) }));
  unary(A.whoAmI, async (request, caller) => {
    const scope = scopeOf(request.scope);
    return service.whoAmI(caller, { org: scope.org, project: scope.project || undefined, domain: scope.domain || undefined });
  });

  unary(A.check, async (request, caller) => {
    const scope = scopeOf(request.scope);
    return service.check(caller, request.subject, request.groups, request.operation, { org: scope.org, project: scope.project || undefined, domain: scope.domain || undefined });
  });

  unary(pb.AuditService.method.listAudit, async (request, caller) => {
    const page = await service.listAudit(caller, request.org, { principal: request.principal, operation: request.operation }, request.limit, request.pageToken);
    return { records: page.items.map((record) => ({ seq: String(record.seq), at: ts(record.at), principal: record.principal, operation: record.operation, resource: record.resource, result: record.result })), nextPageToken: page.nextPageToken };
  });
  unary(
    pb.IdentityService.method.exchangeToken,
    async (request) => {
      const principal = `workload:${request.clusterId.slice(0, 128)}/${request.agentId.slice(0, 128)}`;
      let result = 'OK';
      try {
        if (options.identity === undefined) throw new TetherError(ControlErrorCode.IDENTITY_EXCHANGE_DISABLED, 'this control plane has no CA configured (identity.caDir)');
        const issued = await options.identity.exchange({ token: request.token, csrPem: request.csrPem, clusterId: request.clusterId, agentId: request.agentId });
        return {
          certificateChainPem: issued.chainPem,
          trustBundlePem: issued.trustBundlePem,
          spiffeId: issued.spiffeId,
          serialNumber: issued.serialNumber,
          notBefore: timestampFromMs(issued.notBefore.getTime()),
          notAfter: timestampFromMs(issued.notAfter.getTime()),
        };
      } catch (reason) {
        result = isTetherError(reason) ? reason.code : 'INTERNAL';
        throw reason;
      } finally {
        await service.audit({ principal, operation: 'identity.exchange', resource: `cluster/${request.clusterId.slice(0, 128)}`, result });
      }
    },
    true,
  );
  return methods;
}
