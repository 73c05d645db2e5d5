/** `tether certs inspect`: a human summary of every certificate, CSR or key in a PEM file. */
import { createHash } from 'node:crypto';
import { TetherError } from '../common/errors.js';
import { formatDuration } from './duration.js';
import { describePublicKey, keyParamsOfPrivateKeyPem, describeKeyParams } from './keys.js';
import { normalizeSerial, pemBlocks, type PemBlock } from './pem.js';
import { subjectAltNames } from './verify-chain.js';
import { x509 } from './x509.js';

const SAN_OID = '2.5.29.17';

const EKU_NAMES: Readonly<Record<string, string>> = {
  [x509.ExtendedKeyUsage.serverAuth]: 'serverAuth',
  [x509.ExtendedKeyUsage.clientAuth]: 'clientAuth',
  [x509.ExtendedKeyUsage.codeSigning]: 'codeSigning',
  [x509.ExtendedKeyUsage.emailProtection]: 'emailProtection',
  [x509.ExtendedKeyUsage.timeStamping]: 'timeStamping',
  [x509.ExtendedKeyUsage.ocspSigning]: 'ocspSigning',
};

function keyUsageNames(flags: number): string[] {
  const names: string[] = [];
  for (const [name, bit] of Object.entries(x509.KeyUsageFlags)) {
    if (typeof bit === 'number' && (flags & bit) !== 0) names.push(name);
  }
  return names;
}

function validity(cert: x509.X509Certificate, now: Date): string {
  const t = now.getTime();
  if (t < cert.notBefore.getTime()) return `NOT YET VALID (starts in ${formatDuration(cert.notBefore.getTime() - t)})`;
  if (t > cert.notAfter.getTime()) return `EXPIRED ${formatDuration(t - cert.notAfter.getTime())} ago`;
  return `valid, expires in ${formatDuration(cert.notAfter.getTime() - t)}`;
}

function describeCertificate(cert: x509.X509Certificate, now: Date): string[] {
  const lines: string[] = [];
  const bc = cert.getExtension(x509.BasicConstraintsExtension);
  const role = bc?.ca === true ? `CA${bc.pathLength === undefined ? '' : ` (pathLen ${bc.pathLength})`}` : 'leaf';
  lines.push(`  Subject:     ${cert.subject || '(empty)'}`);
  lines.push(`  Issuer:      ${cert.issuer}${cert.subject === cert.issuer ? ' (self-issued)' : ''}`);
  lines.push(`  Role:        ${role}`);
  lines.push(`  Serial:      ${normalizeSerial(cert.serialNumber)}`);
  lines.push(`  Not before:  ${cert.notBefore.toISOString()}`);
  lines.push(`  Not after:   ${cert.notAfter.toISOString()}`);
  lines.push(`  Status:      ${validity(cert, now)}`);
  lines.push(`  Key:         ${describePublicKey(cert.publicKey.rawData).text}`);
  const ku = cert.getExtension(x509.KeyUsagesExtension);
  if (ku !== null) lines.push(`  Key usage:   ${keyUsageNames(ku.usages).join(', ')}${ku.critical ? ' (critical)' : ''}`);
  const eku = cert.getExtension(x509.ExtendedKeyUsageExtension);
  if (eku !== null) lines.push(`  Ext. usage:  ${eku.usages.map((u) => EKU_NAMES[String(u)] ?? String(u)).join(', ')}`);
  const { uris, dnsNames, ipAddresses } = subjectAltNames(cert);
  for (const uri of uris) lines.push(`  URI:         ${uri}`);
  if (dnsNames.length > 0) lines.push(`  DNS:         ${dnsNames.join(', ')}`);
  if (ipAddresses.length > 0) lines.push(`  IP:          ${ipAddresses.join(', ')}`);
  const ski = cert.getExtension(x509.SubjectKeyIdentifierExtension);
  if (ski !== null) lines.push(`  Subject key id:   ${ski.keyId}`);
  const aki = cert.getExtension(x509.AuthorityKeyIdentifierExtension);
  if (aki?.keyId !== undefined) lines.push(`  Authority key id: ${aki.keyId}`);
  lines.push(`  SHA-256:     ${createHash('sha256').update(Buffer.from(cert.rawData)).digest('hex')}`);
  return lines;
}

function describeBlock(block: PemBlock, now: Date): string[] {
  switch (block.label) {
    case 'CERTIFICATE':
      return describeCertificate(new x509.X509Certificate(block.der), now);
    case 'CERTIFICATE REQUEST':
    case 'NEW CERTIFICATE REQUEST': {
      const csr = new x509.Pkcs10CertificateRequest(block.der);
      const { uris, dnsNames, ipAddresses } = (() => {
        const san = csr.extensions.find((e) => e.type === SAN_OID);
        const names = san === undefined ? [] : new x509.SubjectAlternativeNameExtension(san.rawData).names.items;
        return {
          uris: names.filter((n) => n.type === 'url').map((n) => n.value),
          dnsNames: names.filter((n) => n.type === 'dns').map((n) => n.value),
          ipAddresses: names.filter((n) => n.type === 'ip').map((n) => n.value),
        };
      })();
      const lines = [`  Subject:     ${csr.subject || '(empty)'}`, `  Key:         ${describePublicKey(csr.publicKey.rawData).text}`];
      const requested = [...uris.map((u) => `URI:${u}`), ...dnsNames.map((d) => `DNS:${d}`), ...ipAddresses.map((i) => `IP:${i}`)];
      if (requested.length > 0) lines.push(`  Requested names (ignored by tether issuers): ${requested.join(', ')}`);
      return lines;
    }
    case 'PRIVATE KEY':
    case 'EC PRIVATE KEY':
    case 'RSA PRIVATE KEY':
      return [`  Key:         ${describeKeyParams(keyParamsOfPrivateKeyPem(block.pem))} (private key material not shown)`];
    default:
      return ['  (not a certificate, request or key)'];
  }
}

function blockTitle(label: string): string {
  if (label === 'CERTIFICATE') return 'Certificate';
  if (label.endsWith('CERTIFICATE REQUEST')) return 'Certificate request';
  if (label.endsWith('PRIVATE KEY')) return 'Private key';
  return label;
}

/** A human summary of every PEM block in `pem`. Throws CERT_MALFORMED when there is none. */
export function inspectCertificate(pem: string, now: Date = new Date()): string {
  const blocks = pemBlocks(pem);
  if (blocks.length === 0) throw new TetherError('CERT_MALFORMED', 'no PEM blocks found');
  const out: string[] = [];
  blocks.forEach((block, index) => {
    if (index > 0) out.push('');
    out.push(`${blockTitle(block.label)} ${index + 1} of ${blocks.length}`);
    try {
      out.push(...describeBlock(block, now));
    } catch (reason) {
      throw new TetherError('CERT_MALFORMED', `PEM block ${index + 1} (${block.label}) does not parse`, { cause: reason });
    }
  });
  return `${out.join('\n')}\n`;
}
