/**
 * SPIFFE IDs of tether workloads: `spiffe://<trust-domain>/cluster/<cluster-id>/agent/<agent-id>`.
 * Trust domains follow the SPIFFE rules (lowercase letters, digits, `.`, `-`, `_`; at most 255
 * bytes); cluster and agent ids are single path segments of unreserved characters.
 */
import { TetherError } from '../common/errors.js';

const TRUST_DOMAIN = /^[a-z0-9._-]{1,255}$/;
const SEGMENT = /^[A-Za-z0-9._-]{1,128}$/;

export interface SpiffeIdentity {
  trustDomain: string;
  clusterId: string;
  agentId: string;
}

export function isValidTrustDomain(trustDomain: string): boolean {
  return TRUST_DOMAIN.test(trustDomain) && trustDomain !== '.' && trustDomain !== '..';
}

function isValidSegment(segment: string): boolean {
  return SEGMENT.test(segment) && segment !== '.' && segment !== '..';
}

export function assertTrustDomain(trustDomain: string): void {
  if (!isValidTrustDomain(trustDomain)) {
    throw new TetherError('CERT_BAD_SPIFFE_ID', `invalid trust domain ${JSON.stringify(trustDomain)} (lowercase letters, digits, ".", "-", "_")`);
  }
}

export function spiffeIdFor(trustDomain: string, clusterId: string, agentId: string): string {
  assertTrustDomain(trustDomain);
  for (const [what, value] of [['cluster id', clusterId], ['agent id', agentId]] as const) {
    if (!isValidSegment(value)) {
      throw new TetherError('CERT_BAD_SPIFFE_ID', `invalid ${what} ${JSON.stringify(value)} (letters, digits, ".", "-", "_"; at most 128)`);
    }
  }
  return `spiffe://${trustDomain}/cluster/${clusterId}/agent/${agentId}`;
}

/** The SPIFFE ID of a trust domain itself (what CA certificates carry). */
export function trustDomainId(trustDomain: string): string {
  assertTrustDomain(trustDomain);
  return `spiffe://${trustDomain}`;
}

/** Parse a tether workload SPIFFE ID; anything else throws `CERT_BAD_SPIFFE_ID`. */
export function parseSpiffeId(uri: string): SpiffeIdentity {
  const bad = (why: string): TetherError => new TetherError('CERT_BAD_SPIFFE_ID', `${JSON.stringify(uri.slice(0, 300))}: ${why}`);
  if (uri.length > 2048) throw bad('longer than 2048 bytes');
  if (!uri.startsWith('spiffe://')) throw bad('scheme must be spiffe');
  const rest = uri.slice('spiffe://'.length);
  const slash = rest.indexOf('/');
  if (slash < 0) throw bad('no path (a trust-domain ID names no workload)');
  const trustDomain = rest.slice(0, slash);
  if (!isValidTrustDomain(trustDomain)) throw bad('invalid trust domain (no userinfo, port or uppercase)');
  const path = rest.slice(slash);
  const parts = path.split('/');
  if (parts.length !== 5 || parts[0] !== '' || parts[1] !== 'cluster' || parts[3] !== 'agent') {
    throw bad('path must be /cluster/<cluster-id>/agent/<agent-id>');
  }
  const clusterId = parts[2] ?? '';
  const agentId = parts[4] ?? '';
  if (!isValidSegment(clusterId)) throw bad('invalid cluster id');
  if (!isValidSegment(agentId)) throw bad('invalid agent id');
  return { trustDomain, clusterId, agentId };
}
