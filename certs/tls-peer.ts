/**
 * Identity checks for endpoints that let OpenSSL verify the chain (`tls` with `ca`,
 * `requestCert`): map the socket's verification result to our codes, then apply the leaf rules,
 * the SPIFFE identity and the revocation deny-list that OpenSSL does not know about.
 */
import type { TLSSocket } from 'node:tls';
import { TetherError, getErrorCode, getErrorMessage } from '../common/errors.js';
import { checkLeaf, revokedIn, type VerifiedPeer } from './verify-chain.js';
import { x509 } from './x509.js';

/** OpenSSL / Node verification error names → our codes. */
const OPENSSL_CODES: Readonly<Record<string, string>> = {
  CERT_HAS_EXPIRED: 'CERT_EXPIRED',
  CERT_NOT_YET_VALID: 'CERT_NOT_YET_VALID',
  ERROR_IN_CERT_NOT_BEFORE_FIELD: 'CERT_MALFORMED',
  ERROR_IN_CERT_NOT_AFTER_FIELD: 'CERT_MALFORMED',
  UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY: 'CERT_MALFORMED',
  UNABLE_TO_GET_ISSUER_CERT: 'CERT_UNTRUSTED',
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: 'CERT_UNTRUSTED',
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: 'CERT_UNTRUSTED',
  SELF_SIGNED_CERT_IN_CHAIN: 'CERT_UNTRUSTED',
  DEPTH_ZERO_SELF_SIGNED_CERT: 'CERT_UNTRUSTED',
  CERT_SIGNATURE_FAILURE: 'CERT_UNTRUSTED',
  CERT_CHAIN_TOO_LONG: 'CERT_UNTRUSTED',
  CERT_UNTRUSTED: 'CERT_UNTRUSTED',
  CERT_REJECTED: 'CERT_UNTRUSTED',
  INVALID_CA: 'CERT_UNTRUSTED',
  PATH_LENGTH_EXCEEDED: 'CERT_UNTRUSTED',
  INVALID_PURPOSE: 'CERT_BAD_USAGE',
  CERT_REVOKED: 'CERT_REVOKED',
  HOSTNAME_MISMATCH: 'CERT_IDENTITY_MISMATCH',
  ERR_TLS_CERT_ALTNAME_INVALID: 'CERT_IDENTITY_MISMATCH',
};

/** Our code for an OpenSSL/Node verification error name (`CERT_HAS_EXPIRED`, …). */
export function certErrorCodeFor(opensslCode: string): string {
  return OPENSSL_CODES[opensslCode] ?? 'CERT_UNTRUSTED';
}

/**
 * A TetherError for a failed TLS handshake or connection, when the failure was certificate
 * verification (e.g. a client with `rejectUnauthorized` meeting an expired server certificate);
 * `null` when it was something else.
 */
export function tlsVerifyError(reason: unknown): TetherError | null {
  const code = getErrorCode(reason);
  if (code === null || !(code in OPENSSL_CODES)) return null;
  return new TetherError(certErrorCodeFor(code), `TLS peer verification failed: ${getErrorMessage(reason)}`, { cause: reason, details: { opensslCode: code } });
}

export interface CheckTlsPeerOptions {
  revokedSerials?: ReadonlySet<string>;
  /** A SPIFFE ID in the peer certificate must be in this trust domain. */
  expectedTrustDomain?: string;
  /** The peer must carry a SPIFFE ID (workloads); default false. */
  requireSpiffe?: boolean;
  /** The EKU the peer needs: `client` when we are the server. */
  usage?: 'client' | 'server';
}

export type TlsPeerResult = { ok: true; peer: VerifiedPeer } | { ok: false; error: TetherError };

/** Check the peer of a connected TLS socket. Never throws. */
export function checkTlsPeer(socket: TLSSocket, opts: CheckTlsPeerOptions = {}): TlsPeerResult {
  try {
    const peerCert = socket.getPeerX509Certificate();
    if (peerCert === undefined) return { ok: false, error: new TetherError('CERT_MISSING', 'the peer presented no certificate') };
    if (!socket.authorized) {
      const reason = socket.authorizationError;
      const name = typeof reason === 'string' ? reason : getErrorCode(reason) ?? getErrorMessage(reason);
      return {
        ok: false,
        error: new TetherError(certErrorCodeFor(name), `peer certificate refused: ${name}`, { details: { opensslCode: name, serialNumber: peerCert.serialNumber.toLowerCase() } }),
      };
    }
    const path: x509.X509Certificate[] = [];
    for (let cert: typeof peerCert | undefined = peerCert; cert !== undefined && path.length < 8; cert = cert.issuerCertificate) {
      path.push(new x509.X509Certificate(new Uint8Array(cert.raw)));
      if (cert.issuerCertificate !== undefined && cert.issuerCertificate.fingerprint256 === cert.fingerprint256) break;
    }
    const leaf = path[0] as x509.X509Certificate;
    const revoked = revokedIn(path, opts.revokedSerials);
    if (revoked !== undefined) {
      return { ok: false, error: new TetherError('CERT_REVOKED', `certificate serial ${revoked} is revoked`, { details: { serialNumber: revoked } }) };
    }
    return { ok: true, peer: checkLeaf(leaf, opts) };
  } catch (reason) {
    return { ok: false, error: TetherError.from(reason, 'CERT_MALFORMED') };
  }
}
