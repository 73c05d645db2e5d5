/**
 * The workload identity exchange (DESIGN.md I4, I5): an agent presents its cluster's workload
 * token and a CSR for a key it generated in memory; if the token satisfies the issuer and subject
 * rules registered for the cluster it names, the CA signs the CSR with the identity
 * `spiffe://<trust-domain>/cluster/<cluster-id>/agent/<agent-id>`. The identity is set here from
 * the verified request, never taken from the CSR, and the certificate is short-lived (1 h by
 * default). The control plane will serve this function; the agent reaches it through
 * `workloadCertificateIssuer()`, which plugs into a `CertificateSource`.
 *
 * Refusals: `EXCHANGE_BAD_REQUEST`, `EXCHANGE_UNKNOWN_CLUSTER`, `EXCHANGE_BAD_AGENT_ID`, every
 * `TOKEN_*` code of the verifier, and the `CSR_*` codes of the CA. Each exchange counts once in
 * `tether_identity_exchanges_total{result}` (result = `ok` or the refusal code).
 */
import type { JSONWebKeySet } from 'jose';
import { Counter } from 'prom-client';
import type { Registry } from 'prom-client';
import { TetherError } from '../common/errors.js';
import { createLogger } from '../common/log.js';
import type { Logger } from '../common/log.js';
import { createRegistry } from '../common/metrics.js';
import { DEFAULT_WORKLOAD_TTL_MS } from './certificate-authority.js';
import type { CertificateAuthority, IssuedCertificate } from './certificate-authority.js';
import { createWorkloadTokenVerifier } from './workload-token.js';
import type { SubjectPattern, WorkloadTokenVerifier, WorkloadTokenVerifierOptions } from './workload-token.js';

export const ExchangeErrorCode = {
  /** A field of the request is missing or not a string. */
  BAD_REQUEST: 'EXCHANGE_BAD_REQUEST',
  /** No cluster with this id is registered for workload identity. */
  UNKNOWN_CLUSTER: 'EXCHANGE_UNKNOWN_CLUSTER',
  /** The agent id is not a single SPIFFE path segment (letters, digits, `.`, `-`, `_`; 1-128). */
  BAD_AGENT_ID: 'EXCHANGE_BAD_AGENT_ID',
} as const;

/** How a cluster's agents prove who they are: its token issuer and the subjects it may present. */
export interface ClusterIdentity {
  clusterId: string;
  /** Exact `iss` of the cluster's service-account tokens. */
  issuer: string;
  /** The audience the cluster's projected tokens are minted for (our identifier). */
  audience: string;
  allowedSubjects: string | SubjectPattern[];
  /** A fixed key set, for an issuer the control plane cannot reach. */
  jwks?: JSONWebKeySet;
  /** Allowed signature algorithms; default RS256 and ES256. */
  algorithms?: string[];
}

/** Where the exchange looks clusters up; the control plane backs this with its store. */
export interface ClusterIdentityRegistry {
  get(clusterId: string): ClusterIdentity | undefined | Promise<ClusterIdentity | undefined>;
}

export class InMemoryClusterIdentityRegistry implements ClusterIdentityRegistry {
  readonly #clusters = new Map<string, ClusterIdentity>();

  constructor(clusters: ClusterIdentity[] = []) {
    for (const cluster of clusters) this.register(cluster);
  }

  register(cluster: ClusterIdentity): void {
    this.#clusters.set(cluster.clusterId, { ...cluster });
  }

  remove(clusterId: string): boolean {
    return this.#clusters.delete(clusterId);
  }

  get(clusterId: string): ClusterIdentity | undefined {
    return this.#clusters.get(clusterId);
  }

  list(): ClusterIdentity[] {
    return [...this.#clusters.values()];
  }
}

export interface ExchangeRequest {
  /** The workload token (a projected service-account JWT) as read from its file. */
  token: string;
  /** PKCS#10 PEM for the agent's in-memory key. Only its public key is used. */
  csrPem: string;
  clusterId: string;
  agentId: string;
}

export interface ExchangeResult extends IssuedCertificate {
  spiffeId: string;
  /** The roots the agent should trust (several during a CA rotation). */
  trustBundlePem: string;
}

export type VerifierSettings = Pick<
  WorkloadTokenVerifierOptions,
  'clockToleranceSec' | 'maxTokenAgeSec' | 'jwksCacheMaxAgeMs' | 'jwksCooldownMs' | 'fetchTimeoutMs' | 'discoveryCacheMaxAgeMs'
>;

export interface IdentityExchangeOptions {
  ca: CertificateAuthority;
  clusters: ClusterIdentityRegistry;
  /** Lifetime of issued workload certificates; default 1 h. */
  certificateTtlMs?: number;
  /** Registry for `tether_identity_exchanges_total`; default a private one. */
  metrics?: Registry;
  /** Settings applied to every cluster's token verifier. */
  verifier?: VerifierSettings;
  logger?: Logger;
}

export interface IdentityExchange {
  exchange(request: ExchangeRequest): Promise<ExchangeResult>;
  /** Drop the cached verifier of a cluster (also happens by itself when its registration changes). */
  forgetCluster(clusterId: string): void;
}

const AGENT_ID = /^[A-Za-z0-9._-]{1,128}$/;

export function isValidAgentId(agentId: string): boolean {
  return AGENT_ID.test(agentId) && agentId !== '.' && agentId !== '..';
}

/** What a cached verifier was built from; a changed registration builds a new one. */
function fingerprint(cluster: ClusterIdentity): string {
  const subjects = typeof cluster.allowedSubjects === 'string' ? [cluster.allowedSubjects] : cluster.allowedSubjects;
  return JSON.stringify({
    issuer: cluster.issuer,
    audience: cluster.audience,
    subjects: subjects.map((entry) => (typeof entry === 'string' ? entry : `/${entry.source}/${entry.flags}`)),
    jwks: cluster.jwks ?? null,
    algorithms: cluster.algorithms ?? null,
  });
}

function requireString(value: unknown, field: string): string {
  if (typeof value !== 'string' || value === '') throw new TetherError(ExchangeErrorCode.BAD_REQUEST, `"${field}" must be a non-empty string`);
  return value;
}

export function createIdentityExchange(options: IdentityExchangeOptions): IdentityExchange {
  const { ca, clusters } = options;
  const ttlMs = options.certificateTtlMs ?? DEFAULT_WORKLOAD_TTL_MS;
  if (!Number.isFinite(ttlMs) || ttlMs <= 0) throw new TetherError('INVALID_OPTIONS', 'identityExchange.certificateTtlMs: expected a positive number');
  const logger = options.logger ?? createLogger('identity-exchange');
  const exchanges = new Counter({
    name: 'tether_identity_exchanges_total',
    help: 'Workload identity exchanges, by result (ok or the refusal code).',
    labelNames: ['result'],
    registers: [options.metrics ?? createRegistry()],
  });
  const verifiers = new Map<string, { fingerprint: string; verifier: WorkloadTokenVerifier }>();

  function verifierFor(cluster: ClusterIdentity): WorkloadTokenVerifier {
    const print = fingerprint(cluster);
    const cached = verifiers.get(cluster.clusterId);
    if (cached && cached.fingerprint === print) return cached.verifier;
    const verifier = createWorkloadTokenVerifier({
      ...options.verifier,
      issuer: cluster.issuer,
      audience: cluster.audience,
      allowedSubjects: cluster.allowedSubjects,
      ...(cluster.jwks ? { jwks: cluster.jwks } : {}),
      ...(cluster.algorithms ? { algorithms: cluster.algorithms } : {}),
    });
    verifiers.set(cluster.clusterId, { fingerprint: print, verifier });
    return verifier;
  }

  async function exchangeOnce(request: ExchangeRequest): Promise<ExchangeResult> {
    const clusterId = requireString(request?.clusterId, 'clusterId');
    const agentId = requireString(request.agentId, 'agentId');
    const token = requireString(request.token, 'token');
    const csrPem = requireString(request.csrPem, 'csrPem');
    const cluster = await clusters.get(clusterId);
    if (cluster === undefined || cluster.clusterId !== clusterId) {
      verifiers.delete(clusterId);
      throw new TetherError(ExchangeErrorCode.UNKNOWN_CLUSTER, `cluster ${JSON.stringify(clusterId.slice(0, 200))} is not registered for workload identity`);
    }
    if (!isValidAgentId(agentId)) {
      throw new TetherError(ExchangeErrorCode.BAD_AGENT_ID, `agent id ${JSON.stringify(agentId.slice(0, 200))} is not a single path segment (letters, digits, ".", "-", "_"; 1-128)`);
    }
    const workload = await verifierFor(cluster).verify(token);
    const issued = await ca.signCsr(csrPem, { kind: 'workload', clusterId, agentId }, { ttlMs });
    logger.info({ clusterId, agentId, subject: workload.subject, serial: issued.serialNumber, notAfter: issued.notAfter }, 'workload certificate issued');
    return { ...issued, spiffeId: issued.spiffeId ?? '', trustBundlePem: ca.trustBundlePem() };
  }

  return {
    async exchange(request) {
      try {
        const result = await exchangeOnce(request);
        exchanges.inc({ result: 'ok' });
        return result;
      } catch (reason) {
        const error = TetherError.from(reason, 'INTERNAL');
        exchanges.inc({ result: error.code });
        logger.info({ clusterId: request?.clusterId, agentId: request?.agentId, code: error.code }, `workload identity exchange refused: ${error.rawMessage}`);
        throw error;
      }
    },
    forgetCluster(clusterId) {
      verifiers.delete(clusterId);
    },
  };
}

/** What a `CertificateSource` calls to get a certificate for the CSR of its fresh key. */
export type CertificateIssuerFunction = (csrPem: string) => Promise<IssuedCertificate>;

export interface WorkloadCertificateIssuerOptions {
  /** Returns the current workload token; re-read the projected token file on each call (`tokenFileSource(path)`). */
  tokenSource: () => Promise<string>;
  /** Sends the exchange request (in-process, or over the control channel). */
  exchange: (request: ExchangeRequest) => Promise<IssuedCertificate>;
  clusterId: string;
  agentId: string;
}

/** The agent side: turn a CSR into a workload certificate through the exchange. */
export function workloadCertificateIssuer(options: WorkloadCertificateIssuerOptions): CertificateIssuerFunction {
  const { tokenSource, exchange, clusterId, agentId } = options;
  return async (csrPem) => exchange({ token: await tokenSource(), csrPem, clusterId, agentId });
}
