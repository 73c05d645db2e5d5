/**
 * What the control plane knows about agents, for the console: every stream on the agents'
 * channel passes through `admit()` before the AgentChannel takes it, and every identity exchange
 * through `wrapExchange()`. From those it keeps, per agent (cluster + agent id): when it
 * connected, its Hello (version, capacity), when it last sent a heartbeat or any message, the
 * channel certificate's serial and expiry, and the last certificate the exchange issued to it.
 * It only watches; the AgentChannel still decides everything about the stream.
 *
 * Revocation (an admin action of the console): a revoked agent's open channel streams end at once
 * with `AGENT_REVOKED`, its later connections are refused with that code, and the identity
 * exchange refuses to issue it another certificate (CONTROL_PERMISSION_DENIED, the reason in the
 * message), so it cannot renew. Every serial it was seen with is handed to the revocation
 * listeners (`onRevokedSerials`): a gateway's `setRevokedSerials`, which closes its tunnels. The
 * durable record is the audit log: `agent.revoke` and `agent.reinstate` rows are replayed at start
 * (`restore()`), so a restart keeps the agent out.
 */
import { Metadata, status } from '@grpc/grpc-js';
import type { ServerDuplexStream } from '@grpc/grpc-js';
import type { IdentityExchange } from '../../certs/identity-exchange.js';
import { TetherError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import { agentIdentityOf } from '../agent-channel.js';
import { ControlErrorCode } from '../errors.js';
import type * as pb from '../gen/tether/control/v1/control_pb.js';
import { CODE_TRAILER } from '../grpc-api.js';
import type { AgentIdentity, ControlService } from '../service.js';
import { ConsoleErrorCode } from './errors.js';

export const REVOKE_OPERATION = 'agent.revoke';
export const REINSTATE_OPERATION = 'agent.reinstate';

/** The audit resource naming one agent (also parsed back by `restore()`). */
export function agentResource(org: string, agent: AgentIdentity): string {
  return `org/${org}/cluster/${agent.clusterId}/agent/${agent.agentId}`;
}

const RESOURCE = /^org\/[^/]+\/cluster\/([^/]+)\/agent\/([^/]+)$/;

export interface CertificateSeen {
  serial: string;
  notAfter: number;
}

export interface AgentView extends AgentIdentity {
  /** Channel streams open now. */
  streams: number;
  connectedAt: number | null;
  /** When the last stream ended (null while one is open, or never connected). */
  disconnectedAt: number | null;
  lastHeartbeatAt: number | null;
  lastMessageAt: number | null;
  /** Runs in flight, as its last heartbeat said. */
  running: number | null;
  version: string;
  capacity: number | null;
  peer: string;
  /** The client certificate of its latest channel stream. */
  channelCertificate: CertificateSeen | null;
  /** The latest certificate the identity exchange issued to it (through this process). */
  issuedCertificate: CertificateSeen | null;
  revoked: { at: number; by: string } | null;
}

interface AgentState {
  agent: AgentIdentity;
  streams: Set<ServerDuplexStream<pb.AgentMessage, pb.ControlMessage>>;
  connectedAt: number | null;
  disconnectedAt: number | null;
  lastHeartbeatAt: number | null;
  lastMessageAt: number | null;
  running: number | null;
  version: string;
  capacity: number | null;
  peer: string;
  channelCertificate: CertificateSeen | null;
  issuedCertificate: CertificateSeen | null;
  serials: Set<string>;
}

export interface AgentTrackerOptions {
  service: ControlService;
  /** The org whose audit log holds the revocations. */
  org: string;
  /** The trust domain agent certificates name (the identity CA's). */
  trustDomain: string;
  logger: Logger;
  now: () => number;
}

const keyOf = (agent: AgentIdentity): string => `${agent.clusterId}\0${agent.agentId}`;

/** Both spellings a gateway may compare a serial in (TLS peers give upper case, the CA lower case with leading zeros). */
function serialForms(serial: string): string[] {
  const lower = serial.toLowerCase().replace(/[^0-9a-f]/g, '');
  const trimmed = lower.replace(/^0+/, '') || '0';
  return [...new Set([lower, trimmed])];
}

export class AgentTracker {
  readonly #options: AgentTrackerOptions;
  readonly #agents = new Map<string, AgentState>();
  readonly #revoked = new Map<string, { agent: AgentIdentity; at: number; by: string }>();
  readonly #listeners = new Set<(serials: string[]) => void>();

  constructor(options: AgentTrackerOptions) {
    this.#options = options;
  }

  get trustDomain(): string {
    return this.#options.trustDomain;
  }

  #state(agent: AgentIdentity): AgentState {
    const key = keyOf(agent);
    let state = this.#agents.get(key);
    if (state === undefined) {
      state = {
        agent: { clusterId: agent.clusterId, agentId: agent.agentId },
        streams: new Set(),
        connectedAt: null,
        disconnectedAt: null,
        lastHeartbeatAt: null,
        lastMessageAt: null,
        running: null,
        version: '',
        capacity: null,
        peer: '',
        channelCertificate: null,
        issuedCertificate: null,
        serials: new Set(),
      };
      this.#agents.set(key, state);
    }
    return state;
  }

  /** Replay `agent.revoke` / `agent.reinstate` rows of the audit log (oldest first; the last one wins). */
  async restore(maxRows = 10_000): Promise<void> {
    const rows: Array<{ seq: number; at: number; principal: string; operation: string; resource: string }> = [];
    for (const operation of [REVOKE_OPERATION, REINSTATE_OPERATION]) {
      let pageToken = '';
      do {
        const page = await this.#options.service.store.listAudit({ operation }, 500, pageToken);
        for (const record of page.items) if (record.result === 'OK') rows.push(record);
        pageToken = page.nextPageToken;
      } while (pageToken !== '' && rows.length < maxRows);
    }
    rows.sort((a, b) => a.seq - b.seq);
    for (const row of rows) {
      const match = RESOURCE.exec(row.resource);
      if (match?.[1] === undefined || match[2] === undefined) continue;
      const agent = { clusterId: match[1], agentId: match[2] };
      if (row.operation === REVOKE_OPERATION) this.#revoked.set(keyOf(agent), { agent, at: row.at, by: row.principal });
      else this.#revoked.delete(keyOf(agent));
    }
  }

  isRevoked(agent: AgentIdentity): boolean {
    return this.#revoked.has(keyOf(agent));
  }

  /** Has the control plane seen this agent (channel or exchange) or revoked it? */
  knows(agent: AgentIdentity): boolean {
    return this.#agents.has(keyOf(agent)) || this.#revoked.has(keyOf(agent));
  }

  /**
   * The agents' channel handler, wrapped: `handle` gets the stream unless the agent is revoked.
   * Streams without an agent identity go to `handle` untouched (the AgentChannel refuses them).
   */
  admit(stream: ServerDuplexStream<pb.AgentMessage, pb.ControlMessage>, handle: () => void): void {
    let agent: AgentIdentity;
    const certificate = stream.getAuthContext().sslPeerCertificate;
    try {
      agent = agentIdentityOf(certificate?.subjectaltname, this.#options.trustDomain);
    } catch {
      handle();
      return;
    }
    const state = this.#state(agent);
    if (certificate !== undefined && certificate.serialNumber !== undefined) {
      state.channelCertificate = { serial: certificate.serialNumber, notAfter: Date.parse(certificate.valid_to) };
      state.serials.add(certificate.serialNumber);
    }
    if (this.isRevoked(agent)) {
      this.#refuse(stream, agent);
      // A control plane that restarted learns the serial here: hand it to the gateways too.
      this.#publish();
      void this.#options.service
        .audit({ principal: `agent:${agent.clusterId}/${agent.agentId}`, operation: 'agent.connect', resource: `cluster/${agent.clusterId}`, result: ConsoleErrorCode.AGENT_REVOKED })
        .catch((reason: unknown) => this.#options.logger.error({ err: reason }, 'audit write failed'));
      return;
    }
    handle();
    const now = this.#options.now();
    state.streams.add(stream);
    state.connectedAt = now;
    state.disconnectedAt = null;
    state.lastMessageAt = now;
    state.peer = stream.getPeer();
    stream.on('data', (message: pb.AgentMessage) => {
      const at = this.#options.now();
      state.lastMessageAt = at;
      if (message.kind.case === 'heartbeat') {
        state.lastHeartbeatAt = at;
        state.running = message.kind.value.running;
      } else if (message.kind.case === 'hello') {
        state.version = message.kind.value.version;
        state.capacity = message.kind.value.capacity;
      }
    });
    let ended = false;
    const end = (): void => {
      if (ended) return;
      ended = true;
      state.streams.delete(stream);
      if (state.streams.size === 0) state.disconnectedAt = this.#options.now();
    };
    for (const event of ['end', 'error', 'cancelled', 'close']) stream.once(event, end);
  }

  #refuse(stream: ServerDuplexStream<pb.AgentMessage, pb.ControlMessage>, agent: AgentIdentity): void {
    const trailer = new Metadata();
    trailer.set(CODE_TRAILER, ConsoleErrorCode.AGENT_REVOKED);
    stream.emit('error', { code: status.PERMISSION_DENIED, details: `[${ConsoleErrorCode.AGENT_REVOKED}] agent ${agent.clusterId}/${agent.agentId} is revoked`, metadata: trailer });
  }

  /** The identity exchange, refusing revoked agents and remembering what it issued. */
  wrapExchange(exchange: IdentityExchange): IdentityExchange {
    return {
      forgetCluster: (clusterId) => exchange.forgetCluster(clusterId),
      exchange: async (request) => {
        const agent = { clusterId: request.clusterId, agentId: request.agentId };
        if (typeof agent.clusterId === 'string' && typeof agent.agentId === 'string' && this.isRevoked(agent)) {
          throw new TetherError(ControlErrorCode.PERMISSION_DENIED, `agent ${agent.clusterId}/${agent.agentId} is revoked (${ConsoleErrorCode.AGENT_REVOKED})`, {
            details: { reason: ConsoleErrorCode.AGENT_REVOKED },
          });
        }
        const issued = await exchange.exchange(request);
        const state = this.#state(agent);
        state.issuedCertificate = { serial: issued.serialNumber, notAfter: issued.notAfter.getTime() };
        state.serials.add(issued.serialNumber);
        return issued;
      },
    };
  }

  /** Mark revoked, end its streams, tell the gateways. The caller authorises and audits. */
  revoke(agent: AgentIdentity, by: string): void {
    this.#revoked.set(keyOf(agent), { agent: { ...agent }, at: this.#options.now(), by });
    const state = this.#agents.get(keyOf(agent));
    for (const stream of [...(state?.streams ?? [])]) this.#refuse(stream, agent);
    this.#publish();
  }

  /** Lift a revocation (the agent may connect and exchange again). The caller authorises and audits. */
  reinstate(agent: AgentIdentity): void {
    this.#revoked.delete(keyOf(agent));
    this.#publish();
  }

  /** Every serial seen for a revoked agent, in both spellings. */
  revokedSerials(): string[] {
    const serials = new Set<string>();
    for (const key of this.#revoked.keys()) for (const serial of this.#agents.get(key)?.serials ?? []) for (const form of serialForms(serial)) serials.add(form);
    return [...serials].sort();
  }

  /** Called with the whole revoked-serial list now and whenever it changes; returns the unsubscribe. */
  onRevokedSerials(listener: (serials: string[]) => void): () => void {
    this.#listeners.add(listener);
    listener(this.revokedSerials());
    return () => this.#listeners.delete(listener);
  }

  #publish(): void {
    const serials = this.revokedSerials();
    for (const listener of this.#listeners) {
      try {
        listener(serials);
      } catch (reason) {
        this.#options.logger.error({ err: reason }, 'revocation listener failed');
      }
    }
  }

  /** Every agent seen or revoked, by cluster then agent id. */
  agents(): AgentView[] {
    const keys = new Set([...this.#agents.keys(), ...this.#revoked.keys()]);
    const views: AgentView[] = [];
    for (const key of keys) {
      const revoked = this.#revoked.get(key);
      const state = this.#agents.get(key) ?? this.#state(revoked!.agent);
      views.push({
        ...state.agent,
        streams: state.streams.size,
        connectedAt: state.connectedAt,
        disconnectedAt: state.disconnectedAt,
        lastHeartbeatAt: state.lastHeartbeatAt,
        lastMessageAt: state.lastMessageAt,
        running: state.running,
        version: state.version,
        capacity: state.capacity,
        peer: state.peer,
        channelCertificate: state.channelCertificate,
        issuedCertificate: state.issuedCertificate,
        revoked: revoked === undefined ? null : { at: revoked.at, by: revoked.by },
      });
    }
    return views.sort((a, b) => (a.clusterId === b.clusterId ? (a.agentId < b.agentId ? -1 : 1) : a.clusterId < b.clusterId ? -1 : 1));
  }
}
