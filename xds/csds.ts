/**
 * Client status (CSDS, `envoy.service.status.v3.ClientStatusDiscoveryService`): per connected
 * stream, per resource it subscribes to, what it ACKed, what it NACKed and why. The same facts
 * are available as plain objects (`ClientStatus`) for the CLI and tests.
 */
import { create } from '@bufbuild/protobuf';
import { AnySchema, timestampFromDate } from '@bufbuild/protobuf/wkt';
import { ClientResourceStatus, UpdateFailureStateSchema } from './gen/envoy/admin/v3/config_dump_shared_pb.js';
import type { ClientStatusRequest, ClientStatusResponse } from './gen/envoy/service/status/v3/csds_pb.js';
import {
  ClientConfigSchema,
  ClientConfig_GenericXdsConfigSchema,
  ClientStatusResponseSchema,
  ConfigStatus,
} from './gen/envoy/service/status/v3/csds_pb.js';
import type { ClientKind } from './client-kind.js';
import { TypeUrl } from './resource-types.js';
import type { ResourceKind } from './resource-types.js';
import type { Snapshot } from './snapshot.js';
import type { StreamSession } from './stream-session.js';
import { ABSENT } from './type-state.js';

export type ResourceStatus = 'ACKED' | 'NACKED' | 'REQUESTED' | 'DOES_NOT_EXIST';
export type SyncStatus = 'SYNCED' | 'STALE' | 'NOT_SENT' | 'ERROR';

export interface ResourceClientStatus {
  kind: ResourceKind;
  name: string;
  /** The version the client ACKed for this resource ('' if none). */
  ackedVersion: string;
  /** The version the server currently has for it ('' if it does not exist). */
  currentVersion: string;
  status: ResourceStatus;
  sync: SyncStatus;
  /** Set when the latest sent version was NACKed. */
  nack?: { version: string; message: string; at: Date };
}

export interface ClientStatus {
  session: string;
  nodeId: string;
  kind: ClientKind;
  protocol: 'sotw' | 'delta';
  ads: boolean;
  connectedAt: Date;
  /** Per type: last ACKed type version and the last NACK. */
  types: Array<{ kind: ResourceKind; ackedVersion: string; lastNack: { version: string; message: string; at: Date } | null }>;
  resources: ResourceClientStatus[];
}

export function clientStatusOf(session: StreamSession, view: Snapshot): ClientStatus {
  const types: ClientStatus['types'] = [];
  const resources: ResourceClientStatus[] = [];
  for (const state of session.states.values()) {
    const byName = view.get(state.type.typeUrl);
    types.push({
      kind: state.type.kind,
      ackedVersion: state.ackedVersion,
      lastNack: state.lastNack && { version: state.lastNack.version, message: state.lastNack.message, at: state.lastNack.at },
    });
    const names = new Set<string>(state.names);
    if (state.wildcard) {
      for (const name of byName.keys()) names.add(name);
      if (session.protocol === 'sotw') for (const name of state.sent.keys()) names.add(name);
      else for (const [name, version] of state.known) if (version !== ABSENT) names.add(name);
    }
    for (const name of [...names].sort()) {
      const current = byName.get(name)?.version ?? '';
      const acked = state.ackedVersionOf(name, session.protocol);
      const nack = state.nacked.get(name);
      let status: ResourceStatus;
      let sync: SyncStatus;
      if (nack) {
        status = 'NACKED';
        sync = 'ERROR';
      } else if (acked !== '') {
        status = 'ACKED';
        sync = acked === current ? 'SYNCED' : 'STALE';
      } else if (current === '' && (state.responded || state.known.get(name) === ABSENT)) {
        status = 'DOES_NOT_EXIST';
        sync = 'SYNCED';
      } else {
        status = 'REQUESTED';
        sync = state.pending?.versions.has(name) ? 'STALE' : 'NOT_SENT';
      }
      const entry: ResourceClientStatus = { kind: state.type.kind, name, ackedVersion: acked, currentVersion: current, status, sync };
      if (nack) entry.nack = { version: nack.version, message: nack.message, at: nack.at };
      resources.push(entry);
    }
  }
  return {
    session: session.id,
    nodeId: session.nodeId,
    kind: session.kind,
    protocol: session.protocol,
    ads: session.ads,
    connectedAt: session.connectedAt,
    types,
    resources,
  };
}

const RESOURCE_STATUS: Record<ResourceStatus, ClientResourceStatus> = {
  ACKED: ClientResourceStatus.ACKED,
  NACKED: ClientResourceStatus.NACKED,
  REQUESTED: ClientResourceStatus.REQUESTED,
  DOES_NOT_EXIST: ClientResourceStatus.DOES_NOT_EXIST,
};

const CONFIG_STATUS: Record<SyncStatus, ConfigStatus> = {
  SYNCED: ConfigStatus.SYNCED,
  STALE: ConfigStatus.STALE,
  NOT_SENT: ConfigStatus.NOT_SENT,
  ERROR: ConfigStatus.ERROR,
};

/** Does a session match the request's node matchers (exact/prefix/suffix/contains on node id)? */
function matches(request: ClientStatusRequest, session: StreamSession): boolean {
  if (request.nodeMatchers.length === 0) return true;
  return request.nodeMatchers.some((matcher) => {
    const pattern = matcher.nodeId?.matchPattern;
    const id = session.nodeId;
    switch (pattern?.case) {
      case 'exact':
        return id === pattern.value;
      case 'prefix':
        return id.startsWith(pattern.value);
      case 'suffix':
        return id.endsWith(pattern.value);
      case 'contains':
        return id.includes(pattern.value);
      case undefined:
        return true;
      default:
        return false;
    }
  });
}

export function clientStatusResponse(
  request: ClientStatusRequest,
  sessions: Iterable<StreamSession>,
  viewOf: (session: StreamSession) => Snapshot,
): ClientStatusResponse {
  const config = [];
  for (const session of sessions) {
    if (session.node === undefined || !matches(request, session)) continue;
    const view = viewOf(session);
    const status = clientStatusOf(session, view);
    const generic = status.resources.map((resource) => {
      const typeUrl = TypeUrl[resource.kind];
      const current = view.get(typeUrl).get(resource.name);
      const showConfig = !request.excludeResourceContents && current !== undefined && current.version === resource.ackedVersion;
      return create(ClientConfig_GenericXdsConfigSchema, {
        typeUrl,
        name: resource.name,
        versionInfo: resource.ackedVersion,
        xdsConfig: showConfig ? create(AnySchema, { typeUrl, value: current.value }) : undefined,
        configStatus: CONFIG_STATUS[resource.sync],
        clientStatus: RESOURCE_STATUS[resource.status],
        errorState: resource.nack
          ? create(UpdateFailureStateSchema, { details: resource.nack.message, versionInfo: resource.nack.version, lastUpdateAttempt: timestampFromDate(resource.nack.at) })
          : undefined,
      });
    });
    config.push(create(ClientConfigSchema, { node: session.node, genericXdsConfigs: generic }));
  }
  return create(ClientStatusResponseSchema, { config });
}
