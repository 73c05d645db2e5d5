/**
 * The agent's end of its outbound channel to the control plane (DESIGN.md §2.1), as a library the
 * agent embeds: one bidi stream over mutual TLS with the agent's workload certificate, Hello with
 * the runs it is executing, heartbeats, assignments and aborts handed to callbacks, and an outbox
 * of phase events that survives disconnects. Events are sent in batches and dropped only when the
 * control plane acknowledges them; after a reconnect unacknowledged batches go first, in order.
 * A replayed event is harmless: the control plane answers DUPLICATE (or PHASE_TERMINAL /
 * PHASE_BACKWARDS when the run moved on), never writes it twice. Reconnects use jittered backoff;
 * credentials are read at every connect, so a renewed certificate serves the next stream.
 */
import { Client, credentials as grpcCredentials, Metadata } from '@grpc/grpc-js';
import type { ClientDuplexStream } from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';
import type { MessageInitShape } from '@bufbuild/protobuf';
import { timestampFromMs } from '@bufbuild/protobuf/wkt';
import { Backoff } from '../common/backoff.js';
import type { BackoffOptions } from '../common/backoff.js';
import { getErrorMessage } from '../common/errors.js';
import type { Closable } from '../common/lifecycle.js';
import type { Logger } from '../common/log.js';
import { silentLogger } from '../common/log.js';
import { deserializerFor, methodPath, serializerFor } from '../xds/grpc-service.js';
import * as pb from '../control/gen/tether/control/v1/control_pb.js';
import type { Phase } from '../control/phases.js';
import type { RunError } from '../control/store/repository.js';

export interface AgentCredentials {
  /** PEM private key (kept in memory only). */
  key: string;
  /** PEM certificate chain (workload certificate + intermediate). */
  cert: string;
  /** PEM roots that sign the control plane's server certificate. */
  ca: string;
}

export interface AgentEvent {
  runId: string;
  phase: Phase;
  occurredAt?: number;
  message?: string;
  error?: RunError | null;
  outputs?: Record<string, string>;
}

export interface AgentClientOptions {
  /** `host:port` of the control plane's agents' listener. */
  address: string;
  agentId: string;
  credentials: () => AgentCredentials | Promise<AgentCredentials>;
  capacity?: number;
  /** Runs executing now (sent in Hello after every connect). */
  running: () => string[];
  onAssignment: (assignment: pb.Assignment) => void;
  onAbort: (runId: string, reason: string) => void;
  /** Events for this run were refused as foreign or unknown: the run is not ours (any more). */
  onLost?: (runId: string, code: string) => void;
  onWelcome?: (welcome: pb.Welcome) => void;
  backoff?: BackoffOptions;
  /** Events per batch; default 256. */
  maxBatch?: number;
  /** Unacknowledged batches in flight; default 4. */
  maxInFlight?: number;
  logger?: Logger;
}

type Stream = ClientDuplexStream<pb.AgentMessage, pb.ControlMessage>;

interface Connection {
  client: Client;
  stream: Stream;
}

const connect = pb.AgentService.method.connect;
const LOST = new Set(['PHASE_WRONG_CLUSTER', 'CONTROL_NOT_FOUND']);

export class AgentClient implements Closable {
  readonly #options: AgentClientOptions;
  readonly #logger: Logger;
  readonly #backoff: Backoff;
  #pending: pb.PhaseEvent[] = [];
  readonly #inFlight = new Map<string, pb.PhaseEvent[]>();
  #batchSeq = 0;
  /** The stream in use (welcomed or not yet). */
  #current: Connection | null = null;
  /** A stream opened with renewed credentials, promoted when welcomed. */
  #next: { connection: Connection; welcomed: (welcome: pb.Welcome) => void; failed: (reason: Error) => void } | null = null;
  #welcome: pb.Welcome | null = null;
  #heartbeat: NodeJS.Timeout | null = null;
  #retry: NodeJS.Timeout | null = null;
  #closed = false;
  #started = false;
  #idleWaiters: Array<() => void> = [];
  #connectWaiters: Array<(welcome: pb.Welcome) => void> = [];
  /** Streams opened so far (1 + reconnects). */
  connects = 0;

  constructor(options: AgentClientOptions) {
    this.#options = options;
    this.#logger = options.logger ?? silentLogger();
    this.#backoff = new Backoff({ initialDelayMs: 500, maxDelayMs: 30_000, ...options.backoff });
  }

  start(): void {
    if (this.#started) return;
    this.#started = true;
    void this.#connect();
  }

  get connected(): boolean {
    return this.#welcome !== null;
  }

  /** Events not yet acknowledged (queued or in flight). */
  get pendingEvents(): number {
    let count = this.#pending.length;
    for (const batch of this.#inFlight.values()) count += batch.length;
    return count;
  }

  /** Queue a phase event; it is sent now if connected, else after the next connect. */
  report(event: AgentEvent): void {
    this.#pending.push(
      create(pb.PhaseEventSchema, {
        runId: event.runId,
        phase: event.phase as number as pb.Phase,
        occurredAt: timestampFromMs(event.occurredAt ?? Date.now()),
        message: event.message ?? '',
        error: event.error === undefined || event.error === null ? undefined : { code: event.error.code, message: event.error.message, kind: event.error.kind },
        outputs: event.outputs ?? {},
      }),
    );
    this.#flush();
  }

  /** Resolves once every reported event has been acknowledged. */
  whenIdle(): Promise<void> {
    if (this.pendingEvents === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  /** Resolves with the next Welcome (now, if connected). */
  whenConnected(): Promise<pb.Welcome> {
    if (this.#welcome !== null) return Promise.resolve(this.#welcome);
    return new Promise((resolve) => this.#connectWaiters.push(resolve));
  }

  async #connect(): Promise<void> {
    if (this.#closed) return;
    let connection: Connection;
    try {
      connection = await this.#open();
    } catch (reason) {
      this.#logger.warn({ err: reason }, 'agent credentials unavailable; retrying');
      this.#scheduleReconnect();
      return;
    }
    if (this.#closed) {
      connection.stream.cancel();
      connection.client.close();
      return;
    }
    this.#current = connection;
    this.#hello(connection);
  }

  /** Open a stream with the current credentials (not yet said Hello). */
  async #open(): Promise<Connection> {
    const creds = await this.#options.credentials();
    this.connects += 1;
    const client = new Client(this.#options.address, grpcCredentials.createSsl(Buffer.from(creds.ca), Buffer.from(creds.key), Buffer.from(creds.cert)));
    const stream: Stream = client.makeBidiStreamRequest(methodPath(connect), serializerFor(connect.input), deserializerFor(connect.output), new Metadata());
    const connection = { client, stream };
    let done = false;
    const finish = (why: string): void => {
      if (done) return;
      done = true;
      this.#disconnected(connection, why);
    };
    stream.on('data', (message: pb.ControlMessage) => this.#receive(message, connection));
    stream.on('error', (error: Error) => finish(getErrorMessage(error)));
    stream.on('end', () => finish('stream ended'));
    stream.on('close', () => finish('stream closed'));
    return connection;
  }

  #hello(connection: Connection): void {
    connection.stream.write(
      create(pb.AgentMessageSchema, { kind: { case: 'hello', value: { agentId: this.#options.agentId, version: 'tether', runningRunIds: this.#options.running(), capacity: this.#options.capacity ?? 0 } } }),
    );
  }

  /**
   * Make before break (after a certificate renewal): open a second stream with the credentials
   * now current; once it is welcomed it replaces the old one, whose unacknowledged events are
   * sent again on the new stream. Resolves when the new stream is in use.
   */
  renew(): Promise<pb.Welcome> {
    if (this.#closed) return Promise.reject(new Error('agent client is closed'));
    if (this.#current === null || this.#welcome === null) return this.whenConnected();
    if (this.#next !== null) {
      const pending = this.#next;
      return new Promise((resolve, reject) => {
        const { welcomed, failed } = pending;
        pending.welcomed = (welcome) => {
          welcomed(welcome);
          resolve(welcome);
        };
        pending.failed = (reason) => {
          failed(reason);
          reject(reason);
        };
      });
    }
    return new Promise((resolve, reject) => {
      void this.#open().then(
        (connection) => {
          if (this.#closed) {
            connection.stream.cancel();
            connection.client.close();
            reject(new Error('agent client is closed'));
            return;
          }
          this.#next = { connection, welcomed: resolve, failed: reject };
          this.#hello(connection);
        },
        (reason: unknown) => reject(reason instanceof Error ? reason : new Error(getErrorMessage(reason))),
      );
    });
  }

  /**
   * Tell the control plane that the mode its Welcome claimed is not the one the customer approved
   * (DESIGN.md I6): it records the answer in its audit log. Sent on the current stream; dropped
   * when there is none (the next Welcome is answered again).
   */
  reportMode(report: { claimed: 'tunnel' | 'sovereign'; local: 'tunnel' | 'sovereign'; code: string; seq: number; message: string }): boolean {
    if (this.#current === null || this.#welcome === null) return false;
    const mode = (m: 'tunnel' | 'sovereign'): pb.ClusterMode => (m === 'sovereign' ? pb.ClusterMode.SOVEREIGN : pb.ClusterMode.TUNNEL);
    this.#send({ kind: { case: 'modeReport', value: { claimedMode: mode(report.claimed), localMode: mode(report.local), code: report.code, documentSeq: String(report.seq), message: report.message } } });
    return true;
  }

  #send(message: MessageInitShape<typeof pb.AgentMessageSchema>): void {
    this.#current?.stream.write(create(pb.AgentMessageSchema, message));
  }

  /** The renewed stream is welcomed: it becomes current; the old one is closed. */
  #promote(connection: Connection): void {
    const next = this.#next;
    if (next === null || next.connection !== connection) return;
    this.#next = null;
    const old = this.#current;
    this.#current = connection;
    this.#requeueInFlight();
    if (old !== null) {
      old.stream.cancel();
      old.client.close();
    }
    return;
  }

  #requeueInFlight(): void {
    // Unacknowledged batches go out first again, in the order they were sent.
    const unacked = [...this.#inFlight.entries()].sort(([a], [b]) => Number(a) - Number(b)).flatMap(([, events]) => events);
    this.#inFlight.clear();
    this.#pending = [...unacked, ...this.#pending];
  }

  #receive(message: pb.ControlMessage, connection: Connection): void {
    const kind = message.kind;
    switch (kind.case) {
      case 'welcome': {
        const renewal = this.#next !== null && this.#next.connection === connection ? this.#next : null;
        if (renewal !== null) this.#promote(connection);
        else if (connection !== this.#current) return;
        this.#welcome = kind.value;
        this.#backoff.reset();
        this.#startHeartbeat(kind.value.heartbeatIntervalMs);
        this.#options.onWelcome?.(kind.value);
        for (const resolve of this.#connectWaiters.splice(0)) resolve(kind.value);
        renewal?.welcomed(kind.value);
        this.#flush();
        return;
      }
      case 'assignment':
        this.#options.onAssignment(kind.value);
        return;
      case 'abort':
        this.#options.onAbort(kind.value.runId, kind.value.reason);
        return;
      case 'eventsAck':
        this.#acknowledged(kind.value);
        return;
      default:
        return;
    }
  }

  #startHeartbeat(intervalMs: number): void {
    if (this.#heartbeat !== null) clearInterval(this.#heartbeat);
    const every = Math.max(100, intervalMs > 0 ? intervalMs : 10_000);
    this.#heartbeat = setInterval(() => this.#send({ kind: { case: 'heartbeat', value: { running: this.#options.running().length } } }), every);
  }

  #flush(): void {
    if (this.#welcome === null || this.#current === null) return;
    const maxBatch = this.#options.maxBatch ?? 256;
    const maxInFlight = this.#options.maxInFlight ?? 4;
    while (this.#pending.length > 0 && this.#inFlight.size < maxInFlight) {
      const events = this.#pending.splice(0, maxBatch);
      this.#batchSeq += 1;
      const batchId = String(this.#batchSeq);
      this.#inFlight.set(batchId, events);
      this.#send({ kind: { case: 'events', value: { batchId, events } } });
    }
  }

  #acknowledged(ack: pb.EventsAck): void {
    const events = this.#inFlight.get(ack.batchId);
    if (events === undefined) return;
    this.#inFlight.delete(ack.batchId);
    for (const outcome of ack.outcomes) {
      if (outcome.status !== 'REFUSED') continue;
      if (LOST.has(outcome.code)) this.#options.onLost?.(outcome.runId, outcome.code);
      else if (outcome.code !== 'PHASE_TERMINAL' && outcome.code !== 'PHASE_BACKWARDS') this.#logger.warn({ runId: outcome.runId, code: outcome.code }, `phase event refused: ${outcome.message}`);
    }
    this.#flush();
    if (this.pendingEvents === 0) for (const resolve of this.#idleWaiters.splice(0)) resolve();
  }

  #disconnected(connection: Connection, why: string): void {
    connection.client.close();
    if (this.#next !== null && this.#next.connection === connection) {
      // The renewal stream failed; the current one carries on.
      const { failed } = this.#next;
      this.#next = null;
      failed(new Error(`renewed stream failed: ${why}`));
      return;
    }
    if (this.#current !== connection) return;
    this.#current = null;
    this.#welcome = null;
    if (this.#heartbeat !== null) clearInterval(this.#heartbeat);
    this.#heartbeat = null;
    this.#requeueInFlight();
    if (this.#closed) return;
    this.#logger.info({ why }, 'control channel lost; reconnecting');
    this.#scheduleReconnect();
  }

  #scheduleReconnect(): void {
    if (this.#closed || this.#retry !== null) return;
    this.#retry = setTimeout(() => {
      this.#retry = null;
      void this.#connect();
    }, this.#backoff.next());
  }

  /** Wait (up to `graceMs`) for outstanding events to be acknowledged, then close. */
  async drain(graceMs = 5_000): Promise<void> {
    if (this.pendingEvents > 0 && this.connected) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.whenIdle(), new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs)))]);
      clearTimeout(timer);
    }
    await this.close();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#retry !== null) clearTimeout(this.#retry);
    if (this.#heartbeat !== null) clearInterval(this.#heartbeat);
    this.#retry = this.#heartbeat = null;
    for (const connection of [this.#current, this.#next?.connection]) {
      connection?.stream.cancel();
      connection?.client.close();
    }
    this.#next?.failed(new Error('agent client is closed'));
    this.#current = null;
    this.#next = null;
    this.#welcome = null;
  }
}
