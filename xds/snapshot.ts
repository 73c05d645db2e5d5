/**
 * Immutable snapshots of xDS resources. Each resource is encoded once, when it enters a snapshot:
 * its bytes, its `Any` encoding and its content-hash version are computed here and the same object
 * is shared by every stream that sends it (responses are assembled from these bytes, never
 * re-encoded per client). A resource whose content did not change keeps its object across
 * snapshots (`previous`), so unchanged resources cost nothing on republish.
 */
import { createHash } from 'node:crypto';
import { create, toBinary } from '@bufbuild/protobuf';
import { BinaryWriter, WireType } from '@bufbuild/protobuf/wire';
import type { Message } from '@bufbuild/protobuf';
import { AnySchema } from '@bufbuild/protobuf/wkt';
import { TetherError } from '../common/errors.js';
import type { Cluster } from './gen/envoy/config/cluster/v3/cluster_pb.js';
import type { ClusterLoadAssignment } from './gen/envoy/config/endpoint/v3/endpoint_pb.js';
import type { Listener } from './gen/envoy/config/listener/v3/listener_pb.js';
import type { RouteConfiguration } from './gen/envoy/config/route/v3/route_pb.js';
import type { Secret } from './gen/envoy/extensions/transport_sockets/tls/v3/secret_pb.js';
import { RESOURCE_TYPES, TypeUrl } from './resource-types.js';
import type { ResourceKind } from './resource-types.js';

/** `envoy.service.discovery.v3.Resource` as an `Any` type URL (SotW resources wrapped for TTL). */
export const RESOURCE_WRAPPER_TYPE_URL = 'type.googleapis.com/envoy.service.discovery.v3.Resource';

/** Encode `envoy.service.discovery.v3.Resource{name=3, version=1, resource=2, ttl=6}`. */
function resourceBytes(name: string, version: string, anyBytes: Uint8Array | null, ttlMs: number | null): Uint8Array {
  const out = new BinaryWriter();
  out.tag(3, WireType.LengthDelimited).string(name);
  out.tag(1, WireType.LengthDelimited).string(version);
  if (anyBytes !== null) out.tag(2, WireType.LengthDelimited).bytes(anyBytes);
  if (ttlMs !== null) {
    const duration = new BinaryWriter();
    const seconds = Math.floor(ttlMs / 1000);
    if (seconds !== 0) duration.tag(1, WireType.Varint).int64(seconds);
    const nanos = (ttlMs % 1000) * 1_000_000;
    if (nanos !== 0) duration.tag(2, WireType.Varint).int32(nanos);
    out.tag(6, WireType.LengthDelimited).bytes(duration.finish());
  }
  return out.finish();
}

function wrap(typeUrl: string, value: Uint8Array): Uint8Array {
  return toBinary(AnySchema, create(AnySchema, { typeUrl, value }));
}

/** One resource version, encoded once and shared. */
export class EncodedResource {
  /** `Any` encoding, ready to be placed in `DiscoveryResponse.resources`. */
  readonly anyBytes: Uint8Array;
  #delta: Uint8Array | null = null;
  #deltaTtl: Uint8Array | null = null;
  #wrapped: Uint8Array | null = null;

  constructor(
    readonly typeUrl: string,
    readonly name: string,
    /** Content hash of `value` (and of the TTL, when there is one). */
    readonly version: string,
    /** The decoded message (for validation, CSDS, consistency checks). */
    readonly message: Message,
    /** The message's protobuf encoding. */
    readonly value: Uint8Array,
    /** Time to live for clients that support it (research/xds.md T1), or null. */
    readonly ttlMs: number | null = null,
  ) {
    this.anyBytes = wrap(typeUrl, value);
  }

  /** `Resource{name, version, resource}` for Delta, with the TTL for clients that support it. */
  deltaBytes(withTtl: boolean): Uint8Array {
    if (withTtl && this.ttlMs !== null) return (this.#deltaTtl ??= resourceBytes(this.name, this.version, this.anyBytes, this.ttlMs));
    return (this.#delta ??= resourceBytes(this.name, this.version, this.anyBytes, null));
  }

  /** SotW `Any` of a `Resource` wrapper carrying the TTL (for `xds.config.resource-in-sotw` clients). */
  get wrappedAnyBytes(): Uint8Array {
    return (this.#wrapped ??= wrap(RESOURCE_WRAPPER_TYPE_URL, resourceBytes(this.name, this.version, this.anyBytes, this.ttlMs)));
  }

  /** Heartbeat: the wrapper without the resource, refreshing the TTL of this version (T1). */
  heartbeatBytes(sotw: boolean): Uint8Array {
    const bytes = resourceBytes(this.name, this.version, null, this.ttlMs);
    return sotw ? wrap(RESOURCE_WRAPPER_TYPE_URL, bytes) : bytes;
  }

  /** Approximate retained size, for accounting. */
  get byteLength(): number {
    return this.value.byteLength + this.anyBytes.byteLength;
  }
}

/** What a snapshot is built from: messages, by kind. */
export interface SnapshotInput {
  clusters?: Cluster[];
  endpoints?: ClusterLoadAssignment[];
  listeners?: Listener[];
  routes?: RouteConfiguration[];
  secrets?: Secret[];
  /** Time to live of some resources, for clients advertising `xds.config.supports-resource-ttl`. */
  ttl?: Array<{ kind: ResourceKind; name: string; ttlMs: number }>;
}

const NAME_OF: Record<ResourceKind, (message: Message) => string> = {
  cluster: (m) => (m as Cluster).name,
  endpoint: (m) => (m as ClusterLoadAssignment).clusterName,
  listener: (m) => (m as Listener).name,
  route: (m) => (m as RouteConfiguration).name,
  secret: (m) => (m as Secret).name,
};

const INPUT_KEY: Record<ResourceKind, keyof SnapshotInput> = {
  cluster: 'clusters',
  endpoint: 'endpoints',
  listener: 'listeners',
  route: 'routes',
  secret: 'secrets',
};

function hash(bytes: Uint8Array | string): string {
  return createHash('sha256').update(bytes).digest('base64url').slice(0, 16);
}

function versionOf(value: Uint8Array, ttlMs: number | null): string {
  const content = hash(value);
  return ttlMs === null ? content : `${content}.ttl${ttlMs}`;
}

function ttlOf(input: SnapshotInput, kind: ResourceKind, name: string): number | null {
  const entry = input.ttl?.find((t) => t.kind === kind && t.name === name);
  if (entry === undefined) return null;
  if (!Number.isInteger(entry.ttlMs) || entry.ttlMs <= 0) {
    throw new TetherError('XDS_INVALID_RESOURCE', `${kind} "${name}": ttlMs must be a positive integer`);
  }
  return entry.ttlMs;
}

export class Snapshot {
  /** Per type URL: name → resource. */
  readonly resources: ReadonlyMap<string, ReadonlyMap<string, EncodedResource>>;
  /** Per type URL: a hash over every (name, version) of that type; changes iff any resource does. */
  readonly versions: ReadonlyMap<string, string>;
  /** `performance.now()` when built: the change time that convergence is measured from. */
  readonly createdAt: number;
  /** Set by `patch`: the versions it was patched from and the names it changed, per type URL. */
  diff: { from: ReadonlyMap<string, string>; changed: ReadonlyMap<string, ReadonlySet<string>> } | null = null;

  constructor(resources: Map<string, ReadonlyMap<string, EncodedResource>>) {
    this.resources = resources;
    const versions = new Map<string, string>();
    for (const type of RESOURCE_TYPES) {
      const byName = resources.get(type.typeUrl) ?? new Map<string, EncodedResource>();
      if (!resources.has(type.typeUrl)) resources.set(type.typeUrl, byName);
      const names = [...byName.keys()].sort();
      versions.set(type.typeUrl, byName.size === 0 ? 'empty' : hash(names.map((n) => `${n}\u0000${byName.get(n)?.version}`).join('\u0001')));
    }
    this.versions = versions;
    this.createdAt = performance.now();
  }

  static empty(): Snapshot {
    return new Snapshot(new Map());
  }

  /**
   * Encode `input` into a snapshot. Resources equal in content to one in `previous` reuse its
   * object (and its bytes). Duplicate names within a type are refused (research/xds.md R3).
   */
  static build(input: SnapshotInput, previous?: Snapshot): Snapshot {
    const resources = new Map<string, ReadonlyMap<string, EncodedResource>>();
    for (const type of RESOURCE_TYPES) {
      const byName = new Map<string, EncodedResource>();
      const old = previous?.resources.get(type.typeUrl);
      const list = (input[INPUT_KEY[type.kind]] ?? []) as Message[];
      for (const message of list) {
        const name = NAME_OF[type.kind](message);
        if (name === '') {
          throw new TetherError('XDS_INVALID_RESOURCE', `a ${type.kind} has an empty name`, { details: { type: type.typeUrl } });
        }
        if (byName.has(name)) {
          throw new TetherError('XDS_DUPLICATE_RESOURCE', `${type.kind} "${name}" appears twice`, { details: { type: type.typeUrl, name } });
        }
        const value = toBinary(type.schema, message);
        const ttlMs = ttlOf(input, type.kind, name);
        const version = versionOf(value, ttlMs);
        const reused = old?.get(name);
        byName.set(name, reused !== undefined && reused.version === version ? reused : new EncodedResource(type.typeUrl, name, version, message, value, ttlMs));
      }
      // An unchanged type keeps its map object: streams holding it compare by identity.
      let unchanged = old !== undefined && old.size === byName.size;
      if (unchanged) for (const [name, resource] of byName) if (old?.get(name) !== resource) unchanged = false;
      resources.set(type.typeUrl, unchanged && old !== undefined ? old : byName);
    }
    return new Snapshot(resources);
  }

  /**
   * A snapshot equal to `previous` with the resources in `changes` added or replaced and the names
   * in `remove` deleted; untouched types keep their maps, so only what changed is encoded (the
   * endpoint fast path).
   */
  static patch(previous: Snapshot, changes: SnapshotInput, remove: Partial<Record<ResourceKind, string[]>> = {}): Snapshot {
    const resources = new Map<string, ReadonlyMap<string, EncodedResource>>();
    const changed = new Map<string, ReadonlySet<string>>();
    for (const type of RESOURCE_TYPES) {
      const old = previous.get(type.typeUrl);
      const list = (changes[INPUT_KEY[type.kind]] ?? []) as Message[];
      const removals = remove[type.kind] ?? [];
      if (list.length === 0 && removals.length === 0) {
        resources.set(type.typeUrl, old);
        continue;
      }
      const byName = new Map(old);
      const seen = new Set<string>();
      for (const message of list) {
        const name = NAME_OF[type.kind](message);
        if (name === '') throw new TetherError('XDS_INVALID_RESOURCE', `a ${type.kind} has an empty name`, { details: { type: type.typeUrl } });
        if (seen.has(name)) throw new TetherError('XDS_DUPLICATE_RESOURCE', `${type.kind} "${name}" appears twice`, { details: { type: type.typeUrl, name } });
        seen.add(name);
        const value = toBinary(type.schema, message);
        const ttlMs = ttlOf(changes, type.kind, name);
        const version = versionOf(value, ttlMs);
        const current = byName.get(name);
        if (current?.version !== version) byName.set(name, new EncodedResource(type.typeUrl, name, version, message, value, ttlMs));
      }
      for (const name of removals) if (byName.delete(name)) seen.add(name);
      resources.set(type.typeUrl, byName);
      changed.set(type.typeUrl, seen);
    }
    const snapshot = new Snapshot(resources);
    snapshot.diff = { from: previous.versions, changed };
    return snapshot;
  }

  get(typeUrl: string): ReadonlyMap<string, EncodedResource> {
    return this.resources.get(typeUrl) ?? new Map();
  }

  version(typeUrl: string): string {
    return this.versions.get(typeUrl) ?? 'empty';
  }

  /** Messages by kind (for validation). */
  messages<T extends Message>(kind: ResourceKind): T[] {
    return [...this.get(TypeUrl[kind]).values()].map((r) => r.message as T);
  }
}
