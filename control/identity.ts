/**
 * The identity exchange (certs/identity-exchange.ts) served by the control plane: the cluster
 * registry it consults is the store's cluster table, so registering or updating a cluster
 * changes which workload tokens are accepted (the exchange rebuilds a cluster's verifier when its
 * registration changes).
 */
import type { JSONWebKeySet } from 'jose';
import type { ClusterIdentity, ClusterIdentityRegistry } from '../certs/identity-exchange.js';
import type { ControlRepository } from './store/repository.js';

export function storeClusterIdentities(store: ControlRepository): ClusterIdentityRegistry {
  return {
    async get(clusterId: string): Promise<ClusterIdentity | undefined> {
      const cluster = await store.getCluster(clusterId);
      if (cluster === undefined) return undefined;
      const { issuer, audience, allowedSubjects, jwksJson } = cluster.identity;
      return {
        clusterId: cluster.id,
        issuer,
        audience,
        allowedSubjects,
        ...(jwksJson === '' ? {} : { jwks: JSON.parse(jwksJson) as JSONWebKeySet }),
      };
    },
  };
}
