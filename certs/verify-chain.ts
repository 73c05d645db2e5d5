/**
 * Chain verification against a trust bundle (which may hold several roots during a CA rotation),
 * plus the leaf rules of an X.509-SVID: not a CA, digitalSignature without certificate signing,
 * the EKU the use needs, at most one URI SAN and that one a SPIFFE ID of the expected trust
 * domain. Each refusal carries its own TetherError code.
 */
import { TetherError } from '../common/errors.js';
import { normalizeSerial, parseCertificates } from './pem.js';
import { parseSpiffeId } from './spiffe-id.js';
import { x509 } from './x509.js';

export interface VerifiedPeer {
  spiffeId?: string;
  clusterId?: string;
  agentId?: string;
  trustDomain?: string;
  /** Lowercase hex, no leading zeros. */
  serialNumber: string;
  notBefore: Date;
  notAfter: Date;
  dnsNames: string[];
  ipAddresses: string[];
}

export interface VerifyChainOptions {
  /** PEM roots to trust. */
  trustBundlePem: string;
  now?: Date;
  /** Serials (hex, any case) refused wherever they appear in the path. */
  revokedSerials?: ReadonlySet<string>;
  /** When the leaf carries a SPIFFE ID it must be in this trust domain. */
  expectedTrustDomain?: string;
  /** Require a SPIFFE ID (workload certificates); otherwise server-only leaves pass. */
  requireSpiffe?: boolean;
  /** The EKU the leaf must allow; default: either. */
  usage?: 'client' | 'server';
}

const MAX_DEPTH = 4;

function sameDer(a: x509.X509Certificate, b: x509.X509Certificate): boolean {
  return Buffer.from(a.rawData).equals(Buffer.from(b.rawData));
}

/** Does `issuer` sign `subject`? Names must match and the signature must verify. */
async function issuedBy(subject: x509.X509Certificate, issuer: x509.X509Certificate): Promise<boolean> {
  if (subject.issuer !== issuer.subject) return false;
  try {
    return await subject.verify({ publicKey: issuer.publicKey, signatureOnly: true });
  } catch {
    return false;
  }
}

function isCa(cert: x509.X509Certificate): { ca: boolean; pathLength: number | undefined } {
  const bc = cert.getExtension(x509.BasicConstraintsExtension);
  return { ca: bc?.ca === true, pathLength: bc?.pathLength };
}

function hasUsage(cert: x509.X509Certificate, flag: x509.KeyUsageFlags): boolean | undefined {
  const ku = cert.getExtension(x509.KeyUsagesExtension);
  if (ku === null) return undefined;
  return (ku.usages & flag) !== 0;
}

/** Names of a certificate's SAN extension, grouped by type. */
export function subjectAltNames(cert: x509.X509Certificate): { uris: string[]; dnsNames: string[]; ipAddresses: string[] } {
  const san = cert.getExtension(x509.SubjectAlternativeNameExtension);
  const items = san?.names.items ?? [];
  return {
    uris: items.filter((n) => n.type === 'url').map((n) => n.value),
    dnsNames: items.filter((n) => n.type === 'dns').map((n) => n.value),
    ipAddresses: items.filter((n) => n.type === 'ip').map((n) => n.value),
  };
}

/**
 * Leaf rules that do not depend on the path: not a CA, digitalSignature without keyCertSign /
 * cRLSign, the right EKU, and the SPIFFE identity. Shared with `checkTlsPeer`.
 */
export function checkLeaf(leaf: x509.X509Certificate, opts: Pick<VerifyChainOptions, 'expectedTrustDomain' | 'requireSpiffe' | 'usage'>): VerifiedPeer {
  if (isCa(leaf).ca) throw new TetherError('CERT_BAD_USAGE', 'a CA certificate cannot be used as a leaf');
  if (hasUsage(leaf, x509.KeyUsageFlags.keyCertSign) === true || hasUsage(leaf, x509.KeyUsageFlags.cRLSign) === true) {
    throw new TetherError('CERT_BAD_USAGE', 'the leaf may sign certificates (keyCertSign/cRLSign)');
  }
  if (hasUsage(leaf, x509.KeyUsageFlags.digitalSignature) === false) throw new TetherError('CERT_BAD_USAGE', 'the leaf lacks digitalSignature key usage');
  const eku = leaf.getExtension(x509.ExtendedKeyUsageExtension);
  if (eku === null) throw new TetherError('CERT_BAD_USAGE', 'the leaf has no extended key usage');
  const usages = eku.usages.map(String);
  const wanted =
    opts.usage === 'client' ? [x509.ExtendedKeyUsage.clientAuth] : opts.usage === 'server' ? [x509.ExtendedKeyUsage.serverAuth] : [x509.ExtendedKeyUsage.clientAuth, x509.ExtendedKeyUsage.serverAuth];
  if (!wanted.some((w) => usages.includes(w))) {
    throw new TetherError('CERT_BAD_USAGE', `the leaf is not valid for ${opts.usage ?? 'TLS'} authentication (extended key usage)`);
  }
  const { uris, dnsNames, ipAddresses } = subjectAltNames(leaf);
  const peer: VerifiedPeer = {
    serialNumber: normalizeSerial(leaf.serialNumber),
    notBefore: leaf.notBefore,
    notAfter: leaf.notAfter,
    dnsNames,
    ipAddresses,
  };
  if (uris.length > 1) throw new TetherError('CERT_IDENTITY_MISMATCH', `the leaf has ${uris.length} URI SANs (exactly one allowed)`);
  const [uri] = uris;
  if (uri === undefined) {
    if (opts.requireSpiffe === true) throw new TetherError('CERT_IDENTITY_MISMATCH', 'the leaf has no SPIFFE ID (URI SAN)');
    return peer;
  }
  const identity = parseSpiffeId(uri);
  if (opts.expectedTrustDomain !== undefined && identity.trustDomain !== opts.expectedTrustDomain) {
    throw new TetherError('CERT_IDENTITY_MISMATCH', `SPIFFE ID ${uri} is not in trust domain ${opts.expectedTrustDomain}`);
  }
  return { ...peer, spiffeId: uri, ...identity };
}

/** The first serial of `path` found in `revoked` (both normalised), if any. */
export function revokedIn(path: readonly x509.X509Certificate[], revoked: ReadonlySet<string> | undefined): string | undefined {
  if (revoked === undefined || revoked.size === 0) return undefined;
  const normalized = new Set([...revoked].map(normalizeSerial));
  return path.map((c) => normalizeSerial(c.serialNumber)).find((s) => normalized.has(s));
}

/**
 * Verify `chainPem` (leaf first, then intermediates) against `trustBundlePem`. Returns the peer's
 * identity or throws CERT_MALFORMED, CERT_UNTRUSTED, CERT_EXPIRED, CERT_NOT_YET_VALID,
 * CERT_BAD_USAGE, CERT_REVOKED, CERT_IDENTITY_MISMATCH or CERT_BAD_SPIFFE_ID.
 */
export async function verifyCertificateChain(chainPem: string, opts: VerifyChainOptions): Promise<VerifiedPeer> {
  const presented = parseCertificates(chainPem, 'chain');
  const [leaf, ...intermediates] = presented;
  if (leaf === undefined) throw new TetherError('CERT_MALFORMED', 'the chain holds no certificate');
  const roots = parseCertificates(opts.trustBundlePem, 'trust bundle');
  if (roots.length === 0) throw new TetherError('CERT_UNTRUSTED', 'the trust bundle holds no certificate');
  const now = opts.now ?? new Date();

  // Build the path leaf → … → trusted root, using the presented intermediates.
  const path: x509.X509Certificate[] = [leaf];
  let trusted = false;
  for (let current = leaf; path.length <= MAX_DEPTH; ) {
    let root: x509.X509Certificate | undefined;
    for (const candidate of roots) {
      if (sameDer(candidate, current) || (await issuedBy(current, candidate))) {
        root = candidate;
        break;
      }
    }
    if (root !== undefined) {
      if (!sameDer(root, current)) path.push(root);
      trusted = true;
      break;
    }
    let next: x509.X509Certificate | undefined;
    for (const candidate of intermediates) {
      if (!path.some((c) => sameDer(c, candidate)) && (await issuedBy(current, candidate))) {
        next = candidate;
        break;
      }
    }
    if (next === undefined) break;
    path.push(next);
    current = next;
  }
  if (!trusted) throw new TetherError('CERT_UNTRUSTED', `no path from ${leaf.subject} to a trusted root`);

  // Issuers must be CAs allowed to sign certificates, within their path length.
  for (let i = 1; i < path.length; i++) {
    const issuer = path[i] as x509.X509Certificate;
    const { ca, pathLength } = isCa(issuer);
    if (!ca || hasUsage(issuer, x509.KeyUsageFlags.keyCertSign) === false) {
      throw new TetherError('CERT_UNTRUSTED', `${issuer.subject} is not a certificate authority`);
    }
    const casBelow = i - 1; // CA certificates between this issuer and the leaf
    if (pathLength !== undefined && casBelow > pathLength) throw new TetherError('CERT_UNTRUSTED', `${issuer.subject} path length ${pathLength} exceeded`);
  }

  for (const cert of path) {
    if (now.getTime() > cert.notAfter.getTime()) {
      throw new TetherError('CERT_EXPIRED', `${cert === leaf ? 'certificate' : cert.subject} expired at ${cert.notAfter.toISOString()}`, {
        details: { serialNumber: normalizeSerial(cert.serialNumber) },
      });
    }
    if (now.getTime() < cert.notBefore.getTime()) {
      throw new TetherError('CERT_NOT_YET_VALID', `${cert === leaf ? 'certificate' : cert.subject} is valid from ${cert.notBefore.toISOString()}`, {
        details: { serialNumber: normalizeSerial(cert.serialNumber) },
      });
    }
  }

  const revoked = revokedIn(path, opts.revokedSerials);
  if (revoked !== undefined) throw new TetherError('CERT_REVOKED', `certificate serial ${revoked} is revoked`, { details: { serialNumber: revoked } });
  return checkLeaf(leaf, opts);
}
