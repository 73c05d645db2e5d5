/**
 * The control plane's end of the agent's outbound channel (DESIGN.md §2.1): one bidi stream per
 * agent, on a listener that requires a client certificate from the control plane's CA. The
 * certificate's SPIFFE ID (`/cluster/<c>/agent/<a>`) is the stream's identity: it serves only
 * that cluster (I5), and its phase events are checked against each run's assigned cluster.
 *
 * After `Hello` the control plane sends `Welcome`, then `AbortRun` for the cluster's ABORTING
 * runs (and for runs the agent still runs that are already final), then leases QUEUED runs up to
 * the agent's capacity as `Assignment`s: at once, whenever runs are queued for the cluster in
 * this process, and every `pollMs` (runs queued through another control plane sharing the store).
 * A lease not followed by an event within `leaseMs` is offered again, to this or another agent.
 * Events are applied in order and answered with `EventsAck` carrying each outcome, so an agent
 * can retry a batch after a reconnect: repeats are DUPLICATE, never a second log row.
 */
import { EventEmitter } from 'node:events';
import { Metadata, status } from '@grpc/grpc-js';
import type { ServerDuplexStream } from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';
import type { MessageInitShape } from '@bufbuild/protobuf';
import { timestampMs } from '@bufbuild/protobuf/wkt';
import { parseSpiffeId } from '../certs/spiffe-id.js';
import { isTetherError, TetherError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { silentLogger } from '../common/log.js';
import * as pb from './gen/tether/control/v1/control_pb.js';
import { CODE_TRAILER } from './grpc-api.js';
import { isTerminal, Phase, phaseName } from './phases.js';
import type { AgentIdentity, ControlService, EventInput, Lease, RunChange } from './service.js';
import type { ClusterRecord, RunError } from './store/repository.js';

export const AgentChannelErrorCode = {
  /** The client certificate names no tether agent SPIFFE ID of our trust domain. */
  BAD_IDENTITY: 'AGENT_BAD_IDENTITY',
  /** The agent id in Hello differs from the certificate's. */
  ID_MISMATCH: 'AGENT_ID_MISMATCH',
  /** The certificate's cluster is not registered. */
  UNKNOWN_CLUSTER: 'AGENT_UNKNOWN_CLUSTER',
  /** The first message was not Hello, or Hello did not come in time (a later Welcome is a registration update). */
  NO_HELLO: 'AGENT_NO_HELLO',
  /** No message (heartbeat or other) for three heartbeat intervals. */
  SILENT: 'AGENT_SILENT',
  /** A mode report whose code is not a code (recorded in the audit log under this one instead). */
  BAD_MODE_REPORT: 'AGENT_BAD_MODE_REPORT',
} as const;

export interface AgentChannelOptions {
  service: ControlService;
  /** The trust domain agent certificates must name. */
  trustDomain: string;
  heartbeatIntervalMs?: number;
  leaseMs?: number;
  pollMs?: number;
  defaultCapacity?: number;
  helloTimeoutMs?: number;
  logger?: Logger;
}

type Stream = ServerDuplexStream<pb.AgentMessage, pb.ControlMessage>;

function errorOf(error: pb.RunError | undefined): RunError | null {
  if (error === undefined) return null;
  return { code: error.code, message: error.message, kind: error.kind === 'USER' || error.kind === 'SYSTEM' ? error.kind : 'UNKNOWN' };
}

function assignment(lease: Lease): MessageInitShape<typeof pb.AssignmentSchema> {
  const { run, task } = lease;
  return {
    runId: run.id,
    scope: { org: run.org, project: run.project, domain: run.domain },
    taskName: run.taskName,
    taskVersion: run.taskVersion,
    command: task.spec.command,
    args: task.spec.args,
    env: { ...task.spec.env, ...run.spec.env },
    inputs: run.spec.inputs,
    outputPrefix: run.spec.outputPrefix,
    timeoutSec: task.spec.timeoutSec,
    maxOutputBytes: task.spec.maxOutputBytes,
  };
}

/** The agent identity a verified client certificate names, or AGENT_BAD_IDENTITY. */
export function agentIdentityOf(subjectAltName: string | undefined, trustDomain: string): AgentIdentity {
  const uris = (subjectAltName ?? '')
    .split(/,\s*/)
    .filter((entry) => entry.startsWith('URI:'))
    .map((entry) => entry.slice(4));
  if (uris.length !== 1) throw new TetherError(AgentChannelErrorCode.BAD_IDENTITY, `client certificate must carry exactly one URI SAN (has ${uris.length})`);
  let parsed;
  try {
    parsed = parseSpiffeId(uris[0]!);
  } catch (reason) {
    throw new TetherError(AgentChannelErrorCode.BAD_IDENTITY, `client certificate names no agent: ${isTetherError(reason) ? reason.rawMessage : String(reason)}`, { cause: reason });
  }
  if (parsed.trustDomain !== trustDomain) throw new TetherError(AgentChannelErrorCode.BAD_IDENTITY, `client certificate is for trust domain ${parsed.trustDomain}, not ${trustDomain}`);
  return { clusterId: parsed.clusterId, agentId: parsed.agentId };
}

class Session {
  readonly agent: AgentIdentity;
  readonly #stream: Stream;
  readonly #channel: AgentChannel;
  readonly #sent = new Set<string>();
  readonly #inFlight = new Set<string>();
  #capacity = 0;
  #welcomed = false;
  #offering = false;
  #offerAgain = false;
  #closed = false;
  /** The end of this session is already in the audit log (a refusal). */
  #audited = false;
  #helloTimer: NodeJS.Timeout | null;
  #pollTimer: NodeJS.Timeout | null = null;
  #watchdog: NodeJS.Timeout | null = null;
  #queue: Promise<void> = Promise.resolve();

  constructor(channel: AgentChannel, stream: Stream, agent: AgentIdentity) {
    this.#channel = channel;
    this.#stream = stream;
    this.agent = agent;
    this.#helloTimer = setTimeout(() => this.fail(AgentChannelErrorCode.NO_HELLO, status.FAILED_PRECONDITION, 'no Hello in time'), channel.helloTimeoutMs);
    stream.on('data', (message: pb.AgentMessage) => {
      // Messages are handled one at a time, in order.
      this.#queue = this.#queue.then(() => this.#handle(message)).catch((reason: unknown) => this.#channel.logger.error({ err: reason, ...this.agent }, 'agent message failed'));
    });
    stream.on('end', () => {
      this.close();
      stream.end();
    });
    stream.on('error', () => this.close());
    stream.on('cancelled', () => this.close());
    stream.on('close', () => this.close());
  }

  #resetWatchdog(): void {
    if (this.#watchdog !== null) clearTimeout(this.#watchdog);
    this.#watchdog = setTimeout(() => this.fail(AgentChannelErrorCode.SILENT, status.UNAVAILABLE, 'no heartbeat'), this.#channel.heartbeatIntervalMs * 3);
  }

  async #handle(message: pb.AgentMessage): Promise<void> {
    if (this.#closed) return;
    this.#resetWatchdog();
    const kind = message.kind;
    if (!this.#welcomed) {
      if (kind.case !== 'hello') return this.fail(AgentChannelErrorCode.NO_HELLO, status.FAILED_PRECONDITION, 'the first message must be Hello');
      return this.#hello(kind.value);
    }
    switch (kind.case) {
      case 'hello':
        return this.fail(AgentChannelErrorCode.NO_HELLO, status.FAILED_PRECONDITION, 'Hello may be sent once');
      case 'heartbeat':
        return;
      case 'events':
        return this.#events(kind.value);
      case 'modeReport':
        return this.#modeReport(kind.value);
      default:
        return;
    }
  }

  async #hello(hello: pb.AgentHello): Promise<void> {
    if (this.#helloTimer !== null) clearTimeout(this.#helloTimer);
    this.#helloTimer = null;
    if (hello.agentId !== this.agent.agentId) {
      return this.fail(AgentChannelErrorCode.ID_MISMATCH, status.PERMISSION_DENIED, `Hello names agent ${JSON.stringify(hello.agentId)}, the certificate ${JSON.stringify(this.agent.agentId)}`);
    }
    const cluster = await this.#channel.service.store.getCluster(this.agent.clusterId);
    if (cluster === undefined) return this.fail(AgentChannelErrorCode.UNKNOWN_CLUSTER, status.NOT_FOUND, `cluster ${this.agent.clusterId} is not registered`);
    this.#capacity = hello.capacity > 0 ? hello.capacity : this.#channel.defaultCapacity;
    this.#welcomed = true;
    this.#audit('agent.connect', 'OK');
    this.#sendWelcome(cluster);
    // Reconcile: what the agent runs and what the store says.
    for (const runId of hello.runningRunIds) {
      const run = await this.#channel.service.store.getRun(runId);
      if (run === undefined || run.clusterId !== this.agent.clusterId) continue;
      this.#sent.add(runId);
      if (isTerminal(run.phase) || run.phase === Phase.ABORTING) this.write({ kind: { case: 'abort', value: { runId, reason: `run is ${phaseName(run.phase)}` } } });
      else this.#inFlight.add(runId);
    }
    for (const run of await this.#channel.service.abortingRuns(this.agent.clusterId)) {
      if (!hello.runningRunIds.includes(run.id)) this.write({ kind: { case: 'abort', value: { runId: run.id, reason: 'abort requested' } } });
    }
    this.#pollTimer = setInterval(() => this.offer(), this.#channel.pollMs);
    this.offer();
  }

  async #events(batch: pb.AgentEvents): Promise<void> {
    const events: EventInput[] = batch.events.map((event) => ({
      runId: event.runId,
      phase: event.phase,
      occurredAt: event.occurredAt === undefined ? undefined : timestampMs(event.occurredAt),
      message: event.message,
      error: errorOf(event.error),
      outputs: event.outputs,
    }));
    let outcomes;
    try {
      outcomes = await this.#channel.service.reportAgentEvents(this.agent, events);
    } catch (reason) {
      // A malformed batch (oversize, bad URI): refuse every event with the code; nothing applied.
      const error = TetherError.from(reason);
      outcomes = events.map((event) => ({ runId: event.runId, status: 'refused' as const, code: error.code, message: error.rawMessage }));
    }
    let freed = false;
    for (const [index, outcome] of outcomes.entries()) {
      const phase = batch.events[index]?.phase ?? 0;
      if (isTerminal(phase) && this.#inFlight.delete(outcome.runId)) freed = true;
      if (outcome.status === 'refused' && outcome.code === 'PHASE_TERMINAL' && this.#inFlight.delete(outcome.runId)) freed = true;
    }
    this.write({
      kind: {
        case: 'eventsAck',
        value: {
          batchId: batch.batchId,
          outcomes: outcomes.map((outcome) =>
            outcome.status === 'refused'
              ? { runId: outcome.runId, status: 'REFUSED', code: outcome.code, message: outcome.message }
              : { runId: outcome.runId, status: outcome.status === 'applied' ? 'APPLIED' : 'DUPLICATE', phase: outcome.phase as number as pb.Phase, seq: outcome.status === 'applied' ? outcome.seq : 0 },
          ),
        },
      },
    });
    if (freed) this.offer();
  }

  /**
   * The agent answered a Welcome's mode with the mode its customer approved (DESIGN.md I6): the
   * cluster's data plane stays in its local mode whatever the registration says. Recorded in the
   * audit log (operation `agent.mode`, result the agent's code) and logged; nothing else changes.
   */
  async #modeReport(report: pb.AgentModeReport): Promise<void> {
    const mode = (m: pb.ClusterMode): string => (m === pb.ClusterMode.SOVEREIGN ? 'sovereign' : m === pb.ClusterMode.TUNNEL ? 'tunnel' : 'unspecified');
    // The code is the agent's; keep only what looks like one (the audit log is read by people and tools).
    const code = /^[A-Z][A-Z0-9_]{0,63}$/.test(report.code) ? report.code : AgentChannelErrorCode.BAD_MODE_REPORT;
    const seq = /^\d{1,20}$/.test(report.documentSeq) ? report.documentSeq : '0';
    const claimed = mode(report.claimedMode);
    const local = mode(report.localMode);
    this.#channel.logger.warn({ ...this.agent, code, claimed, local, seq }, `agent keeps its customer-approved ${local} mode; the registration says ${claimed}`);
    const resource = `cluster/${this.agent.clusterId}/mode(claimed=${claimed},local=${local},seq=${seq})`;
    try {
      await this.#channel.service.audit({ principal: `agent:${this.agent.clusterId}/${this.agent.agentId}`, operation: 'agent.mode', resource, result: code });
    } catch (reason) {
      this.#channel.logger.error({ err: reason }, 'audit write failed');
    }
    this.#channel.events.emit('modeReport', { ...this.agent, claimed, local, code, seq });
  }

  #sendWelcome(cluster: ClusterRecord): void {
    this.write({
      kind: {
        case: 'welcome',
        value: {
          clusterId: cluster.id,
          mode: cluster.mode === 'sovereign' ? pb.ClusterMode.SOVEREIGN : pb.ClusterMode.TUNNEL,
          heartbeatIntervalMs: this.#channel.heartbeatIntervalMs,
          leaseMs: this.#channel.leaseMs,
        },
      },
    });
  }

  /** The cluster's registration changed: a Welcome again carries the new mode. */
  async welcomeAgain(): Promise<void> {
    if (!this.#welcomed || this.#closed) return;
    const cluster = await this.#channel.service.store.getCluster(this.agent.clusterId);
    if (cluster !== undefined) this.#sendWelcome(cluster);
    else this.fail(AgentChannelErrorCode.UNKNOWN_CLUSTER, status.NOT_FOUND, `cluster ${this.agent.clusterId} was deleted`);
  }

  /** Lease queued runs up to capacity (one lease round at a time; a request during one repeats it). */
  offer(): void {
    if (!this.#welcomed || this.#closed) return;
    if (this.#offering) {
      this.#offerAgain = true;
      return;
    }
    this.#offering = true;
    void (async () => {
      try {
        do {
          this.#offerAgain = false;
          const free = this.#capacity - this.#inFlight.size;
          if (free <= 0) break;
          const leases = await this.#channel.service.leaseRuns(this.agent, free, this.#channel.leaseMs, this.#sent);
          for (const lease of leases) {
            if (this.#closed) return;
            this.#sent.add(lease.run.id);
            this.#inFlight.add(lease.run.id);
            this.write({ kind: { case: 'assignment', value: assignment(lease) } });
          }
        } while (this.#offerAgain && !this.#closed);
      } catch (reason) {
        this.#channel.logger.error({ err: reason, ...this.agent }, 'leasing runs failed');
      } finally {
        this.#offering = false;
      }
    })();
  }

  /** Abort a run if this agent may be running it. */
  abort(runId: string, reason: string): void {
    if (this.#welcomed && !this.#closed) this.write({ kind: { case: 'abort', value: { runId, reason } } });
  }

  write(message: MessageInitShape<typeof pb.ControlMessageSchema>): void {
    if (this.#closed) return;
    this.#stream.write(create(pb.ControlMessageSchema, message));
  }

  #audit(operation: string, result: string): void {
    void this.#channel.service
      .audit({ principal: `agent:${this.agent.clusterId}/${this.agent.agentId}`, operation, resource: `cluster/${this.agent.clusterId}`, result })
      .catch((reason: unknown) => this.#channel.logger.error({ err: reason }, 'audit write failed'));
  }

  fail(code: string, grpcStatus: status, message: string): void {
    if (this.#closed) return;
    this.#audit(this.#welcomed ? 'agent.disconnect' : 'agent.connect', code);
    this.#audited = true;
    const trailer = new Metadata();
    trailer.set(CODE_TRAILER, code);
    this.#channel.logger.info({ ...this.agent, code }, `agent stream refused: ${message}`);
    this.#stream.emit('error', { code: grpcStatus, details: `[${code}] ${message}`, metadata: trailer });
    this.close();
  }

  close(): void {
    if (this.#closed) return;
    if (this.#welcomed && !this.#audited) this.#audit('agent.disconnect', 'OK');
    this.#closed = true;
    for (const timer of [this.#helloTimer, this.#watchdog]) if (timer !== null) clearTimeout(timer);
    if (this.#pollTimer !== null) clearInterval(this.#pollTimer);
    this.#helloTimer = this.#watchdog = this.#pollTimer = null;
    this.#channel.forget(this);
  }

  cancel(): void {
    if (this.#closed) return;
    this.fail('CONTROL_SHUTTING_DOWN', status.UNAVAILABLE, 'control plane is shutting down');
  }
}

/** An agent's mode report, once it is in the audit log. */
export interface ModeReportRecord extends AgentIdentity {
  claimed: string;
  local: string;
  code: string;
  seq: string;
}

export class AgentChannel {
  /** `modeReport`: an agent kept its customer-approved mode against the registration (already audited). */
  readonly events = new EventEmitter<{ modeReport: [ModeReportRecord] }>();
  readonly service: ControlService;
  readonly logger: Logger;
  readonly trustDomain: string;
  readonly heartbeatIntervalMs: number;
  readonly leaseMs: number;
  readonly pollMs: number;
  readonly defaultCapacity: number;
  readonly helloTimeoutMs: number;
  readonly #sessions = new Map<string, Set<Session>>();
  readonly #unsubscribe: () => void;

  constructor(options: AgentChannelOptions) {
    this.service = options.service;
    this.logger = options.logger ?? silentLogger();
    this.trustDomain = options.trustDomain;
    this.heartbeatIntervalMs = options.heartbeatIntervalMs ?? 10_000;
    this.leaseMs = options.leaseMs ?? 30_000;
    this.pollMs = options.pollMs ?? 2_000;
    this.defaultCapacity = options.defaultCapacity ?? 4;
    this.helloTimeoutMs = options.helloTimeoutMs ?? 10_000;
    this.#unsubscribe = this.service.onRunChange((change) => this.#onChange(change));
  }

  #onChange(change: RunChange): void {
    for (const session of this.#sessions.get(change.clusterId) ?? []) {
      if (change.kind === 'queued') session.offer();
      else if (change.kind === 'aborting') session.abort(change.runId, change.reason);
      else void session.welcomeAgain();
    }
  }

  /** Agents connected now, per cluster. */
  connected(): Record<string, string[]> {
    const out: Record<string, string[]> = {};
    for (const [clusterId, sessions] of this.#sessions) out[clusterId] = [...sessions].map((session) => session.agent.agentId);
    return out;
  }

  /** The grpc-js handler for AgentService.Connect. */
  handle(stream: Stream): void {
    let agent: AgentIdentity;
    try {
      agent = agentIdentityOf(stream.getAuthContext().sslPeerCertificate?.subjectaltname, this.trustDomain);
    } catch (reason) {
      const error = TetherError.from(reason);
      void this.service.audit({ principal: 'anonymous', operation: 'agent.connect', resource: '', result: error.code }).catch(() => {});
      const trailer = new Metadata();
      trailer.set(CODE_TRAILER, error.code);
      stream.emit('error', { code: status.UNAUTHENTICATED, details: `[${error.code}] ${error.rawMessage}`, metadata: trailer });
      return;
    }
    const session = new Session(this, stream, agent);
    let sessions = this.#sessions.get(agent.clusterId);
    if (sessions === undefined) this.#sessions.set(agent.clusterId, (sessions = new Set()));
    sessions.add(session);
  }

  forget(session: Session): void {
    const sessions = this.#sessions.get(session.agent.clusterId);
    sessions?.delete(session);
    if (sessions?.size === 0) this.#sessions.delete(session.agent.clusterId);
  }

  /** End every stream (agents reconnect elsewhere or later) and stop listening to run changes. */
  close(): void {
    this.#unsubscribe();
    for (const sessions of [...this.#sessions.values()]) for (const session of [...sessions]) session.cancel();
  }
}
