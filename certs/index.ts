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
export { CertificateSource, type CertificateIssuer, type CertificateMaterial, type CertificateSourceOptions, type CertificateListener, type CertificateErrorListener } from './certificate-source.js';
export { exportPkcs12, DEFAULT_PKCS12_ITERATIONS, type Pkcs12Options } from './pkcs12.js';
export { inspectCertificate } from './inspect.js';
export { createWorkloadTokenVerifier, TokenErrorCode, ASYMMETRIC_JWS_ALGORITHMS, DEFAULT_TOKEN_ALGORITHMS, type WorkloadTokenVerifier, type WorkloadTokenVerifierOptions, type VerifiedWorkload, type SubjectPattern } from './workload-token.js';
export { readTokenFile, tokenFileSource, DEFAULT_SERVICE_ACCOUNT_TOKEN_PATH } from './workload-token-file.js';
export { DevOidcIssuer, DEV_ISSUER_KEYS_FILE, type DevOidcIssuerOptions, type DevIssuerAlgorithm, type MintOptions } from './dev-oidc-issuer.js';
export {
  createIdentityExchange,
  workloadCertificateIssuer,
  InMemoryClusterIdentityRegistry,
  ExchangeErrorCode,
  isValidAgentId,
  type ClusterIdentity,
  type ClusterIdentityRegistry,
  type ExchangeRequest,
  type ExchangeResult,
  type IdentityExchange,
  type IdentityExchangeOptions,
  type WorkloadCertificateIssuerOptions,
  type CertificateIssuerFunction,
} from './identity-exchange.js';
