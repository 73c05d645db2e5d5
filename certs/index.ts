export type { KeyAlgorithm } from './keys.js';
export { KEY_ALGORITHMS, generateKeyPair, exportPrivateKeyPem, importPrivateKeyPem } from './keys.js';
export { x509 } from './x509.js';
export { spiffeIdFor, parseSpiffeId, trustDomainId, isValidTrustDomain, type SpiffeIdentity } from './spiffe-id.js';
export { parseDuration, formatDuration } from './duration.js';
export { pemBlocks, parseCertificates, parseOneCertificate, joinPem, normalizeSerial } from './pem.js';
export { createCsr, generateCsr, checkCsr, type CheckedCsr } from './csr.js';
export {
  CertificateAuthority,
  CLOCK_SKEW_MS,
  DEFAULT_SERVER_TTL_MS,
  DEFAULT_WORKLOAD_TTL_MS,
  type CreateCaOptions,
  type CsrIdentity,
  type IssuedCertificate,
  type ServerCertificateOptions,
  type UnsafeLeafOptions,
  type WorkloadCertificateOptions,
} from './certificate-authority.js';
export { verifyCertificateChain, subjectAltNames, type VerifiedPeer, type VerifyChainOptions } from './verify-chain.js';
export { checkTlsPeer, certErrorCodeFor, tlsVerifyError, type CheckTlsPeerOptions, type TlsPeerResult } from './tls-peer.js';
