/**
 * One xDS stream (SotW or Delta; ADS or one per-type service) and its subscription state machine.
 *
 * The rules, by research/xds.md (b) ID:
 * - node is cached from the first request (S3); ADS requests need a type URL (S4); each type is
 *   its own sub-stream with its own nonce and versions (S5).
 * - nonces: a request echoing the last response's nonce ACKs it, or NACKs it when it carries
 *   `error_detail` (V4). A stale nonce (V6) is ignored unless it changes the subscription, which
 *   is then answered at once (never lost: V5, V6 caveat, V7).
 * - at most one un-ACKed response per type; changes that arrive meanwhile coalesce into the next
 *   one (U2). Nothing is sent when nothing changed (U1). NACKed versions are remembered as sent,
 *   so they are never re-pushed in a loop (V8); a later change or a resubscribe sends again.
 * - newly requested names are sent even if sent before (U3, U5); requested-but-missing names are
 *   remembered and sent when they appear (U4).
 * - SotW LDS/CDS carry the full requested set (R1); other types carry what changed (R2).
 * - Delta: removals and not-found in removed_resources (R5, R6), `initial_resource_versions` on
 *   reconnect (Δ1), phantom unsubscribes ignored (Δ3), unsubscribe needs no response (Δ4) except
 *   under a wildcard (W3).
 * - ADS ordering, make-before-break (O1-O3): listeners and routes wait while clusters or
 *   endpoints are un-ACKed; clusters that disappear stay in CDS until listeners and routes have
 *   converged; for Envoy, a changed cluster's load assignment is re-sent (O3, envoy#31535).
 */
import { BinaryWriter, WireType } from '@bufbuild/protobuf/wire';
import type { Logger } from '../common/log.js';
import type { ClientKind } from './client-kind.js';
import { clientKindOf } from './client-kind.js';
import type { DeltaDiscoveryRequest, DiscoveryRequest } from './gen/envoy/service/discovery/v3/discovery_pb.js';
import type { Node } from './gen/envoy/config/core/v3/base_pb.js';
import type { Cluster } from './gen/envoy/config/cluster/v3/cluster_pb.js';
import type { XdsMetrics } from './metrics.js';
import { edsNameOf } from './references.js';
import { formatProblem, problemsOf } from './validate.js';
import { RESOURCE_TYPES, TypeUrl, resourceTypeByUrl } from './resource-types.js';
import type { ResourceType } from './resource-types.js';
import type { EncodedResource, Snapshot } from './snapshot.js';
import { ABSENT, TypeState, internNames } from './type-state.js';
import type { NackRecord } from './type-state.js';

export type Protocol = 'sotw' | 'delta';

/** What a session needs from its server. */
export interface SessionHost {
  snapshotFor(session: StreamSession): Snapshot;
  metrics: XdsMetrics;
  logger: Logger;
  /** Called once the first request told us who the client is. */
  identified(session: StreamSession): void;
  /** Called on every ACK and NACK. */
  settled(event: SettleEvent): void;
}

/** An ACK or NACK of one response. */
export interface SettleEvent {
  session: string;
  nodeId: string;
  client: ClientKind;
  type: ResourceType['kind'];
  outcome: 'ack' | 'nack';
  /** Type version of the response being ACKed or NACKed. */
  version: string;
  names: string[];
  /** NACK only: error_detail.message. */
  message?: string;
}

/** Where responses go: bytes already encoded as (Delta)DiscoveryResponse. */
export interface ResponseSink {
  write(bytes: Uint8Array): void;
  /** End the stream with a gRPC status code and message. */
  fail(code: number, message: string): void;
}

/** gRPC status INVALID_ARGUMENT. */
const INVALID_ARGUMENT = 3;

export const FEATURE_TTL = 'xds.config.supports-resource-ttl';
export const FEATURE_RESOURCE_IN_SOTW = 'xds.config.resource-in-sotw';

interface SotwOut {
  resources: EncodedResource[];
  /** Full-state types: the complete set the client will hold. */
  full: ReadonlyMap<string, EncodedResource> | null;
  /** Retired clusters kept for make-before-break: re-evaluate once routing converges. */
  retained: boolean;
}

interface DeltaOut {
  resources: EncodedResource[];
  removed: string[];
  /** Removals held back for make-before-break. */
  retained: boolean;
}

let sessionCounter = 0;

export class StreamSession {
  readonly id = `s${++sessionCounter}`;
  node: Node | undefined;
  kind: ClientKind = 'other';
  readonly connectedAt = new Date();
  readonly states = new Map<string, TypeState>();
  #nonce = 0;
  #closed = false;
  /** T1/T2: the client advertises TTL support (and, for SotW, Resource-wrapped resources). */
  #ttl = false;
  #heartbeat: NodeJS.Timeout | null = null;

  constructor(
    readonly protocol: Protocol,
    /** null on ADS; the served type on a per-type stream. */
    readonly fixedType: ResourceType | null,
    private readonly host: SessionHost,
    private readonly sink: ResponseSink,
  ) {}

  get ads(): boolean {
    return this.fixedType === null;
  }

  get nodeId(): string {
    return this.node?.id ?? '';
  }

  close(): void {
    this.#closed = true;
    if (this.#heartbeat !== null) clearTimeout(this.#heartbeat);
    this.#heartbeat = null;
  }

  // ---- requests -------------------------------------------------------------------------

  #identify(node: Node | undefined): boolean {
    if (this.node !== undefined) return true;
    if (node === undefined) {
      this.sink.fail(INVALID_ARGUMENT, 'the first request on a stream must carry node (S3)');
      return false;
    }
    this.node = node;
    this.kind = clientKindOf(node);
    // T2: honour client features. TTLs only for clients that support them; SotW clients must
    // also accept Resource-wrapped resources.
    const features = new Set(node.clientFeatures);
    this.#ttl = features.has(FEATURE_TTL) && (this.protocol === 'delta' || features.has(FEATURE_RESOURCE_IN_SOTW));
    this.host.identified(this);
    return true;
  }

  #typeFor(typeUrl: string): ResourceType | null | 'invalid' {
    if (this.fixedType !== null) {
      if (typeUrl !== '' && typeUrl !== this.fixedType.typeUrl) {
        this.sink.fail(INVALID_ARGUMENT, `type_url ${typeUrl} on the ${this.fixedType.kind} service`);
        return 'invalid';
      }
      return this.fixedType;
    }
    if (typeUrl === '') {
      this.sink.fail(INVALID_ARGUMENT, 'type_url is required on ADS requests (S4)');
      return 'invalid';
    }
    const type = resourceTypeByUrl(typeUrl);
    if (type === undefined) {
      this.host.logger.warn({ session: this.id, node: this.nodeId, typeUrl }, 'xDS request for an unsupported type; not answered');
      return null;
    }
    return type;
  }

  #state(type: ResourceType): { state: TypeState; first: boolean } {
    const existing = this.states.get(type.typeUrl);
    if (existing) return { state: existing, first: false };
    const state = new TypeState(type);
    this.states.set(type.typeUrl, state);
    return { state, first: true };
  }

  onSotwRequest(request: DiscoveryRequest): void {
    if (this.#closed || !this.#identify(request.node)) return;
    const type = this.#typeFor(request.typeUrl);
    if (type === null || type === 'invalid') return;
    const { state, first } = this.#state(type);
    const now = performance.now();
    const names = request.resourceNames;
    if (names.length > 0) state.explicit = true;
    const wildcard = names.includes('*') || (!state.explicit && type.legacyWildcard);
    const explicitNames = names.includes('*') ? names.filter((n) => n !== '*') : names;
    const changed = first || wildcard !== state.wildcard || !sameNames(state.names, explicitNames);
    if (changed) {
      state.wildcard = wildcard;
      state.names = internNames(explicitNames);
      state.dirty = true;
      // Forget what left the subscription, so a later resubscribe is answered (U3).
      for (const name of state.sent.keys()) if (!state.interested(name)) state.sent.delete(name);
    }

    const nonce = request.responseNonce;
    if (state.lastNonce !== '' && nonce !== state.lastNonce) {
      // Stale (or missing) nonce (V6): ignore, unless the subscription changed (never lose it: V5).
      if (!changed) return;
      state.supersede();
    } else if (nonce !== '' && state.pending !== null && state.pending.nonce === nonce) {
      this.#settle(state, request.versionInfo, request.errorDetail, now);
    } else if (nonce === '' && first && request.versionInfo !== '' && type.fullStateInSotw && state.wildcard) {
      // Reconnect with a version (V3): for a wildcard full-state type the client already holds
      // exactly this version's set, so nothing needs to be re-sent.
      const view = this.host.snapshotFor(this);
      if (request.versionInfo === view.version(type.typeUrl)) {
        state.sent.replace(view.get(type.typeUrl));
        state.ackedVersion = request.versionInfo;
        state.responded = true;
        return;
      }
    }
    if (changed) {
      state.noteChange(now);
      state.asked = true;
      if (first || type.fullStateInSotw) state.forceRespond = true;
    }
    this.#evaluateAll(now);
  }

  onDeltaRequest(request: DeltaDiscoveryRequest): void {
    if (this.#closed || !this.#identify(request.node)) return;
    const type = this.#typeFor(request.typeUrl);
    if (type === null || type === 'invalid') return;
    const { state, first } = this.#state(type);
    const now = performance.now();
    const view = this.host.snapshotFor(this);
    const byName = view.get(type.typeUrl);
    const initial = first ? request.initialResourceVersions : {};
    if (first) {
      for (const [name, version] of Object.entries(initial)) state.known.set(name, version); // Δ1
      if (request.resourceNamesSubscribe.length === 0 && type.legacyWildcard) state.wildcard = true;
    }
    for (const name of request.resourceNamesSubscribe) {
      state.explicit = true;
      if (name === '*') {
        state.wildcard = true;
        continue;
      }
      state.names.add(name);
      // Subscribed names are always answered (U5), unless the client just told us its version (Δ1).
      if (!(name in initial)) state.known.delete(name);
    }
    for (const name of request.resourceNamesUnsubscribe) {
      if (name === '*') {
        state.wildcard = false;
        for (const held of [...state.known.keys()]) if (!state.names.has(held)) state.known.delete(held);
        continue;
      }
      if (!state.names.has(name)) continue; // phantom unsubscribe (Δ3)
      state.names.delete(name);
      if (state.wildcard) {
        // W3: still covered by the wildcard → resend it; not covered → report it removed.
        if (byName.has(name)) state.known.delete(name);
        else state.forcedRemovals.add(name);
      } else {
        state.known.delete(name); // Δ4: no response needed
      }
    }
    const changed = first || request.resourceNamesSubscribe.length > 0 || state.forcedRemovals.size > 0;

    const nonce = request.responseNonce;
    if (nonce !== '' && state.pending !== null && state.pending.nonce === nonce) {
      this.#settle(state, '', request.errorDetail, now);
    } else if (nonce !== '' && nonce !== state.lastNonce && changed) {
      // V7: a stale nonce never blocks a subscription change.
      state.supersede();
    }
    if (changed) {
      state.noteChange(now);
      state.asked = true;
    }
    state.dirty = true;
    if (first && state.wildcard) state.forceRespond = true;
    this.#evaluateAll(now);
  }

  /** ACK or NACK of the pending response. */
  #settle(state: TypeState, clientVersion: string, errorDetail: { code: number; message: string } | undefined, now: number): void {
    const pending = state.pending;
    if (pending === null) return;
    state.pending = null;
    // Routing converging may let retired clusters go (O1).
    if (state.type.kind === 'listener' || state.type.kind === 'route') {
      const clusters = this.states.get(TypeUrl.cluster);
      if (clusters) clusters.dirty = true;
    }
    state.lastUpdated = new Date();
    const label = state.type.kind;
    if (errorDetail !== undefined) {
      const record: NackRecord = {
        version: pending.version,
        nonce: pending.nonce,
        code: errorDetail.code,
        message: errorDetail.message,
        clientVersion,
        at: new Date(),
        names: pending.names,
      };
      state.lastNack = record;
      for (const name of pending.names) state.nacked.set(name, record);
      this.host.metrics.nacks.inc({ type: label });
      this.host.settled({ session: this.id, nodeId: this.nodeId, client: this.kind, type: label, outcome: 'nack', version: pending.version, names: pending.names, message: errorDetail.message });
      this.host.logger.warn(
        { session: this.id, node: this.nodeId, kind: this.kind, type: label, version: pending.version, error: errorDetail.message },
        'xDS NACK',
      );
      return;
    }
    state.ackedVersion = this.protocol === 'sotw' ? clientVersion : pending.version;
    for (const name of pending.versions.keys()) {
      state.prevAcked.delete(name);
      state.nacked.delete(name);
    }
    this.host.metrics.acks.inc({ type: label });
    if (pending.heartbeat !== true) this.host.metrics.convergence.observe({ type: label }, (now - pending.changeTime) / 1000);
    this.host.settled({ session: this.id, nodeId: this.nodeId, client: this.kind, type: label, outcome: 'ack', version: pending.version, names: pending.names });
  }

  // ---- snapshot changes -----------------------------------------------------------------

  /** A new snapshot applies to this stream. */
  onSnapshot(snapshot: Snapshot, changedAt = snapshot.createdAt): void {
    if (this.#closed) return;
    for (const state of this.states.values()) state.noteChange(changedAt);
    this.#evaluateAll(performance.now());
  }

  #evaluateAll(now: number): void {
    for (const type of RESOURCE_TYPES) {
      const state = this.states.get(type.typeUrl);
      if (state) this.#evaluate(state, now);
    }
  }

  /**
   * Listeners and routes wait while clusters or endpoints are in flight (O1, O2) — for pushes the
   * server starts. What the client itself just asked for is answered at once (no silent holds).
   */
  #gated(state: TypeState): boolean {
    if (!this.ads || state.asked || (state.type.kind !== 'listener' && state.type.kind !== 'route')) return false;
    return this.states.get(TypeUrl.cluster)?.pending != null || this.states.get(TypeUrl.endpoint)?.pending != null;
  }

  /** Listeners and routes hold nothing unsent (so retired clusters may go: O1). */
  #routingConverged(view: Snapshot): boolean {
    for (const url of [TypeUrl.listener, TypeUrl.route]) {
      const state = this.states.get(url);
      if (!state) continue;
      if (state.pending !== null) return false;
      if (!state.dirty && state.cleanVersion === view.version(url)) continue;
      const out = this.protocol === 'sotw' ? this.#computeSotw(state, view, false) : this.#computeDelta(state, view, false);
      if (out !== null) return false;
    }
    return true;
  }

  #evaluate(state: TypeState, now: number): void {
    if (state.pending !== null || this.#gated(state)) return; // coalesce until ACK
    const view = this.host.snapshotFor(this);
    const current = view.version(state.type.typeUrl);
    if (!state.dirty && !state.forceRespond && state.cleanVersion === current) {
      state.changeSince = null; // nothing of this type changed for this client
      return;
    }
    // Endpoint fast path: clean at the version this snapshot was patched from → only the patched
    // names can differ.
    const diff = view.diff;
    const candidates =
      diff !== null &&
      !state.dirty &&
      !state.forceRespond &&
      state.forcedRemovals.size === 0 &&
      (this.protocol === 'delta' || !state.type.fullStateInSotw) &&
      state.cleanVersion === diff.from.get(state.type.typeUrl)
        ? diff.changed.get(state.type.typeUrl)
        : undefined;
    const out = this.protocol === 'sotw' ? this.#computeSotw(state, view, true, candidates) : this.#computeDelta(state, view, true, candidates);
    if (out === null) {
      state.changeSince = null;
      state.asked = false;
      state.cleanVersion = current;
      state.dirty = state.heldBack; // retired clusters still held: routing convergence decides later
      return;
    }
    // Once sent, the client holds everything this version has for it: clean, unless clusters
    // were kept back for make-before-break (then routing's convergence will change the answer).
    state.cleanVersion = current;
    state.dirty = out.retained;
    if ('full' in out) this.#sendSotw(state, view, out, now);
    else this.#sendDelta(state, view, out, now);
  }

  #computeSotw(state: TypeState, view: Snapshot, allowForce: boolean, candidates?: ReadonlySet<string>): SotwOut | null {
    const type = state.type;
    const byName = view.get(type.typeUrl);
    const force = allowForce && state.forceRespond;
    if (type.fullStateInSotw) {
      const retain = this.ads && type.kind === 'cluster' && !this.#routingConverged(view);
      state.heldBack = retain;
      let desired: ReadonlyMap<string, EncodedResource>;
      if (state.wildcard && !retain) {
        desired = byName; // shared with every wildcard client
      } else {
        const built = new Map<string, EncodedResource>();
        if (state.wildcard) for (const [name, resource] of byName) built.set(name, resource);
        for (const name of state.names) {
          const resource = byName.get(name);
          if (resource) built.set(name, resource);
        }
        if (retain) for (const [name, resource] of state.sent) if (!built.has(name) && state.interested(name)) built.set(name, resource);
        desired = built;
      }
      let same = state.sent.isExactly(desired) || desired.size === state.sent.size;
      if (same && !state.sent.isExactly(desired)) for (const [name, resource] of desired) if (state.sent.get(name)?.version !== resource.version) same = false;
      if (same && !force) return null;
      return { resources: [...desired.values()], full: desired, retained: retain };
    }
    const resources: EncodedResource[] = [];
    const consider = (name: string, resource: EncodedResource | undefined) => {
      if (resource !== undefined && state.sent.get(name)?.version !== resource.version) resources.push(resource);
    };
    if (candidates !== undefined) {
      for (const name of candidates) if (state.interested(name)) consider(name, byName.get(name));
    } else if (state.wildcard) {
      for (const [name, resource] of byName) consider(name, resource);
    } else {
      for (const name of state.names) consider(name, byName.get(name));
    }
    if (resources.length === 0 && !force) return null;
    return { resources, full: null, retained: false };
  }

  #computeDelta(state: TypeState, view: Snapshot, allowForce: boolean, candidates?: ReadonlySet<string>): DeltaOut | null {
    const type = state.type;
    const byName = view.get(type.typeUrl);
    const resources: EncodedResource[] = [];
    const removed: string[] = [];
    const holdRemovals = this.ads && type.kind === 'cluster' && !this.#routingConverged(view);
    let held = false;
    const consider = (name: string) => {
      const resource = byName.get(name);
      const known = state.known.get(name);
      if (resource !== undefined) {
        if (known !== resource.version) resources.push(resource);
      } else if (known !== ABSENT) {
        if (holdRemovals && known !== undefined) {
          held = true;
          return;
        }
        if (known !== undefined || state.names.has(name)) removed.push(name);
      }
    };
    if (candidates !== undefined) {
      for (const name of candidates) if (state.interested(name) || state.known.has(name)) consider(name);
    } else if (state.wildcard) {
      const names = new Set<string>([...byName.keys(), ...state.known.keys(), ...state.names]);
      for (const name of names) consider(name);
    } else {
      for (const name of state.names) consider(name);
    }
    for (const name of state.forcedRemovals) if (!removed.includes(name)) removed.push(name);
    state.heldBack = held;
    if (resources.length === 0 && removed.length === 0 && !(allowForce && state.forceRespond)) return null;
    return { resources, removed, retained: held };
  }

  #nextNonce(): string {
    this.#nonce += 1;
    return this.#nonce.toString(36);
  }

  /** Remember what the client runs until it ACKs the response about to replace it. */
  #holdPrevious(state: TypeState, name: string, held: string | undefined): void {
    if (!state.prevAcked.has(name)) state.prevAcked.set(name, held === undefined || held === ABSENT ? '' : held);
  }

  #sendSotw(state: TypeState, view: Snapshot, out: SotwOut, now: number): void {
    const type = state.type;
    const version = view.version(type.typeUrl);
    const nonce = this.#nextNonce();
    const writer = new BinaryWriter();
    writer.tag(1, WireType.LengthDelimited).string(version);
    for (const resource of out.resources) {
      writer.tag(2, WireType.LengthDelimited).bytes(this.#ttl && resource.ttlMs !== null ? resource.wrappedAnyBytes : resource.anyBytes);
    }
    writer.tag(4, WireType.LengthDelimited).string(type.typeUrl);
    writer.tag(5, WireType.LengthDelimited).string(nonce);
    const bytes = writer.finish();

    // `versions`: the names whose held version this response changes (ABSENT = removed).
    const versions = new Map<string, string>();
    const changedClusters: EncodedResource[] = [];
    if (out.full !== null) {
      for (const [name, resource] of out.full) {
        const held = state.sent.get(name);
        if (held?.version === resource.version) continue;
        versions.set(name, resource.version);
        this.#holdPrevious(state, name, held?.version);
        if (type.kind === 'cluster') changedClusters.push(resource);
      }
      for (const [name, held] of state.sent) {
        if (out.full.has(name)) continue;
        versions.set(name, ABSENT);
        this.#holdPrevious(state, name, held.version);
      }
      state.sent.replace(out.full);
    } else {
      for (const resource of out.resources) {
        versions.set(resource.name, resource.version);
        this.#holdPrevious(state, resource.name, state.sent.get(resource.name)?.version);
        state.sent.set(resource.name, resource);
      }
      state.sent.shareOrCompact(view.get(type.typeUrl));
    }
    this.#recordSend(state, nonce, version, versions, now, bytes.byteLength, out.resources.length);
    this.#warnInvalid(state, out.full === null ? out.resources : out.resources.filter((r) => versions.has(r.name)));
    this.sink.write(bytes);
    this.#resendEndpointsOf(changedClusters);
  }

  #sendDelta(state: TypeState, view: Snapshot, out: DeltaOut, now: number): void {
    const type = state.type;
    const version = view.version(type.typeUrl);
    const nonce = this.#nextNonce();
    const writer = new BinaryWriter();
    writer.tag(1, WireType.LengthDelimited).string(version);
    for (const resource of out.resources) writer.tag(2, WireType.LengthDelimited).bytes(resource.deltaBytes(this.#ttl));
    writer.tag(4, WireType.LengthDelimited).string(type.typeUrl);
    writer.tag(5, WireType.LengthDelimited).string(nonce);
    for (const name of out.removed) writer.tag(6, WireType.LengthDelimited).string(name);
    const bytes = writer.finish();

    const changedClusters: EncodedResource[] = [];
    const versions = new Map<string, string>();
    const shareable = view.get(type.typeUrl);
    for (const resource of out.resources) {
      if (type.kind === 'cluster') changedClusters.push(resource);
      this.#holdPrevious(state, resource.name, state.known.get(resource.name));
      state.known.set(resource.name, resource.version);
      versions.set(resource.name, resource.version);
    }
    for (const name of out.removed) {
      this.#holdPrevious(state, name, state.known.get(name));
      if (state.names.has(name)) state.known.set(name, ABSENT);
      else state.known.delete(name);
      versions.set(name, ABSENT);
    }
    state.known.shareIfEqual(shareable);
    state.forcedRemovals.clear();
    this.#recordSend(state, nonce, version, versions, now, bytes.byteLength, out.resources.length);
    this.#warnInvalid(state, out.resources);
    this.sink.write(bytes);
    this.#resendEndpointsOf(changedClusters);
  }

  /**
   * Validation by the rules of the client that asks: resources published before a client of this
   * kind subscribed were not checked for it. They are still sent (withholding would only make the
   * client wait for a timeout) but counted and logged, naming resource and field.
   */
  #warnInvalid(state: TypeState, resources: EncodedResource[]): void {
    for (const resource of resources) {
      const problems = problemsOf(this.kind, state.type.kind, resource);
      if (problems.length === 0) continue;
      this.host.metrics.servedInvalid.inc({ kind: this.kind, type: state.type.kind });
      this.host.logger.warn(
        { session: this.id, node: this.nodeId, kind: this.kind, problems: problems.map(formatProblem) },
        'serving a resource this client kind is expected to reject',
      );
    }
  }

  #recordSend(state: TypeState, nonce: string, version: string, versions: Map<string, string>, now: number, byteLength: number, count: number): void {
    // An ACK of this response also covers a superseded one: responses arrive in order.
    const carried = state.superseded;
    let changeTime = state.changeSince ?? now;
    if (carried !== null) {
      for (const [name, v] of carried.versions) if (!versions.has(name)) versions.set(name, v);
      changeTime = Math.min(changeTime, carried.changeTime);
      state.superseded = null;
    }
    state.pending = { nonce, version, names: [...versions.keys()], versions, changeTime };
    state.lastNonce = nonce;
    state.changeSince = null;
    state.forceRespond = false;
    state.asked = false;
    state.responded = true;
    state.lastUpdated = new Date();
    const label = state.type.kind;
    this.host.metrics.responses.inc({ type: label });
    this.host.metrics.bytesSent.inc({ type: label }, byteLength);
    this.host.metrics.resourcesSent.inc({ type: label }, count);
    this.#scheduleHeartbeat();
  }

  // ---- TTL heartbeats (T1) ---------------------------------------------------------------

  /** Resources this client holds at their current version that carry a TTL, per type. */
  #ttlHeld(view: Snapshot): Map<TypeState, EncodedResource[]> {
    const held = new Map<TypeState, EncodedResource[]>();
    for (const state of this.states.values()) {
      const list: EncodedResource[] = [];
      for (const resource of view.get(state.type.typeUrl).values()) {
        if (resource.ttlMs === null) continue;
        const holds = this.protocol === 'sotw' ? state.sent.get(resource.name)?.version === resource.version : state.known.get(resource.name) === resource.version;
        if (holds) list.push(resource);
      }
      if (list.length > 0) held.set(state, list);
    }
    return held;
  }

  #scheduleHeartbeat(): void {
    if (!this.#ttl || this.#heartbeat !== null || this.#closed) return;
    const held = this.#ttlHeld(this.host.snapshotFor(this));
    let shortest = Infinity;
    for (const list of held.values()) for (const resource of list) shortest = Math.min(shortest, resource.ttlMs ?? Infinity);
    if (shortest === Infinity) return;
    this.#heartbeat = setTimeout(() => {
      this.#heartbeat = null;
      this.#sendHeartbeats();
      this.#scheduleHeartbeat();
    }, Math.max(10, Math.floor(shortest / 2)));
  }

  /** Refresh TTLs: a response of Resources without their payload, at the current version. */
  #sendHeartbeats(): void {
    if (this.#closed) return;
    const view = this.host.snapshotFor(this);
    for (const [state, list] of this.#ttlHeld(view)) {
      if (state.pending !== null) continue; // the un-ACKed response will be ACKed first; next tick
      const nonce = this.#nextNonce();
      const writer = new BinaryWriter();
      writer.tag(1, WireType.LengthDelimited).string(view.version(state.type.typeUrl));
      for (const resource of list) writer.tag(2, WireType.LengthDelimited).bytes(resource.heartbeatBytes(this.protocol === 'sotw'));
      writer.tag(4, WireType.LengthDelimited).string(state.type.typeUrl);
      writer.tag(5, WireType.LengthDelimited).string(nonce);
      const bytes = writer.finish();
      state.pending = { nonce, version: view.version(state.type.typeUrl), names: [], versions: new Map(), changeTime: performance.now(), heartbeat: true };
      state.lastNonce = nonce;
      this.host.metrics.responses.inc({ type: state.type.kind });
      this.host.metrics.bytesSent.inc({ type: state.type.kind }, bytes.byteLength);
      this.sink.write(bytes);
    }
  }

  /** Envoy finishes warming a changed cluster only after a new EDS response (O3). */
  #resendEndpointsOf(clusters: EncodedResource[]): void {
    if (this.kind !== 'envoy' || clusters.length === 0 || !this.ads) return;
    const endpoints = this.states.get(TypeUrl.endpoint);
    if (!endpoints) return;
    for (const cluster of clusters) {
      const name = edsNameOf(cluster.message as Cluster);
      if (name === null) continue;
      this.#holdPrevious(endpoints, name, this.protocol === 'sotw' ? endpoints.sent.get(name)?.version : endpoints.known.get(name));
      endpoints.sent.delete(name);
      endpoints.known.delete(name);
      endpoints.dirty = true;
    }
  }
}

/** Same names (ignoring order and duplicates)? Linear, no sorting. */
function sameNames(current: ReadonlySet<string>, next: string[]): boolean {
  let count = 0;
  const seen = next.length > current.size ? new Set<string>() : null;
  for (const name of next) {
    if (!current.has(name)) return false;
    if (seen) {
      if (!seen.has(name)) {
        seen.add(name);
        count += 1;
      }
    }
  }
  if (seen) return count === current.size;
  // next.length <= current.size and every name is in current: equal iff equal length and no
  // duplicates. Duplicates are checked for short lists only; for long ones (thousands of ACKs
  // each carrying a thousand names) a client repeating a name while dropping another is
  // taken as unchanged until its next request.
  if (next.length !== current.size) return false;
  return next.length > 64 || new Set(next).size === next.length;
}
