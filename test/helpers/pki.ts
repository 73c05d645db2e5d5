/**
 * A test PKI: one CA per trust domain and algorithm per test process (so each file pays for key
 * generation once), plus ready-made certificates for gateways and agents, including the bad ones
 * the verifiers must refuse. Materials spread straight into `tls` options: `{ key, cert, ca }`.
 */
import { CertificateAuthority, spiffeIdFor, type IssuedCertificate, type KeyAlgorithm } from '../../certs/index.js';

export interface TestPkiOptions {
  /** Default `tether.test`. */
  trustDomain?: string;
  /** Default `ecdsa-p256`. */
  algorithm?: KeyAlgorithm;
}

/** An issued certificate with the fields `tls.createSecureContext` wants. */
export interface TlsMaterial extends IssuedCertificate {
  /** Private key PEM. */
  key: string;
  /** Leaf + intermediate PEM. */
  cert: string;
  /** Trust bundle (roots) of the PKI that issued it. */
  ca: string;
  spiffeId?: string;
}

export interface AgentCertOptions {
  clusterId?: string;
  agentId?: string;
  ttlMs?: number;
  notBefore?: Date;
}

export interface GatewayCertOptions {
  dnsNames?: string[];
  ipAddresses?: string[];
  ttlMs?: number;
  notBefore?: Date;
}

export interface TestPki {
  trustDomain: string;
  ca: CertificateAuthority;
  /** Roots to trust (`ca` option of tls). */
  trustBundlePem: string;
  /** A second CA, trust domain `foreign.test`, that `trustBundlePem` does not trust. */
  foreign: CertificateAuthority;
  /** Server certificate; default SANs localhost, 127.0.0.1, ::1; 1 h. */
  gatewayCert(opts?: GatewayCertOptions): Promise<TlsMaterial>;
  /** Workload certificate `spiffe://<td>/cluster/<c>/agent/<a>`; defaults cluster `c1`, agent `a1`, 1 h. */
  agentCert(opts?: AgentCertOptions): Promise<TlsMaterial>;
  /** Valid from 2 h ago to 1 h ago. */
  expiredAgentCert(opts?: AgentCertOptions): Promise<TlsMaterial>;
  /** Valid from 1 h from now. */
  notYetValidAgentCert(opts?: AgentCertOptions): Promise<TlsMaterial>;
  /** Issued by `foreign` (trust domain `foreign.test`): refused as CERT_UNTRUSTED. */
  untrustedAgentCert(opts?: AgentCertOptions): Promise<TlsMaterial>;
  /** Issued by the trusted CA but naming trust domain `foreign.test`: CERT_IDENTITY_MISMATCH. */
  wrongTrustDomainAgentCert(opts?: AgentCertOptions): Promise<TlsMaterial>;
  /** Gateway certificate from `foreign`: a client trusting only our bundle refuses it. */
  untrustedGatewayCert(opts?: GatewayCertOptions): Promise<TlsMaterial>;
  expiredGatewayCert(opts?: GatewayCertOptions): Promise<TlsMaterial>;
}

export const FOREIGN_TRUST_DOMAIN = 'foreign.test';
const HOUR = 3_600_000;

const cache = new Map<string, Promise<CertificateAuthority>>();

function cachedCa(trustDomain: string, algorithm: KeyAlgorithm): Promise<CertificateAuthority> {
  const key = `${trustDomain}/${algorithm}`;
  let ca = cache.get(key);
  if (ca === undefined) {
    ca = CertificateAuthority.create({ trustDomain, algorithm });
    cache.set(key, ca);
  }
  return ca;
}

function material(issued: IssuedCertificate, ca: CertificateAuthority): TlsMaterial {
  if (issued.privateKeyPem === undefined) throw new Error('issued certificate has no private key');
  return { ...issued, key: issued.privateKeyPem, cert: issued.chainPem, ca: ca.trustBundlePem() };
}

export async function createTestPki(opts: TestPkiOptions = {}): Promise<TestPki> {
  const trustDomain = opts.trustDomain ?? 'tether.test';
  const algorithm = opts.algorithm ?? 'ecdsa-p256';
  const ca = await cachedCa(trustDomain, algorithm);
  const foreign = await cachedCa(trustDomain === FOREIGN_TRUST_DOMAIN ? 'foreign2.test' : FOREIGN_TRUST_DOMAIN, algorithm);
  const agent = (issuer: CertificateAuthority, o: AgentCertOptions, ttlMs: number, notBefore?: Date): Promise<IssuedCertificate> =>
    issuer.issueWorkload({ clusterId: o.clusterId ?? 'c1', agentId: o.agentId ?? 'a1', ttlMs: o.ttlMs ?? ttlMs, notBefore: o.notBefore ?? notBefore });
  const gateway = (issuer: CertificateAuthority, o: GatewayCertOptions, ttlMs: number, notBefore?: Date): Promise<IssuedCertificate> =>
    issuer.issueServer({
      dnsNames: o.dnsNames ?? ['localhost'],
      ipAddresses: o.ipAddresses ?? ['127.0.0.1', '::1'],
      ttlMs: o.ttlMs ?? ttlMs,
      notBefore: o.notBefore ?? notBefore,
    });
  return {
    trustDomain,
    ca,
    trustBundlePem: ca.trustBundlePem(),
    foreign,
    gatewayCert: async (o = {}) => material(await gateway(ca, o, HOUR), ca),
    agentCert: async (o = {}) => material(await agent(ca, o, HOUR), ca),
    expiredAgentCert: async (o = {}) => material(await agent(ca, o, HOUR, new Date(Date.now() - 2 * HOUR)), ca),
    notYetValidAgentCert: async (o = {}) => material(await agent(ca, o, HOUR, new Date(Date.now() + HOUR)), ca),
    untrustedAgentCert: async (o = {}) => material(await agent(foreign, o, HOUR), ca),
    wrongTrustDomainAgentCert: async (o = {}) => {
      const spiffeId = spiffeIdFor(FOREIGN_TRUST_DOMAIN, o.clusterId ?? 'c1', o.agentId ?? 'a1');
      const issued = await ca.unsafeIssue({ uris: [spiffeId], commonName: o.agentId ?? 'a1', ttlMs: o.ttlMs ?? HOUR, notBefore: o.notBefore });
      return { ...material(issued, ca), spiffeId };
    },
    untrustedGatewayCert: async (o = {}) => material(await gateway(foreign, o, HOUR), ca),
    expiredGatewayCert: async (o = {}) => material(await gateway(ca, o, HOUR, new Date(Date.now() - 2 * HOUR)), ca),
  };
}
