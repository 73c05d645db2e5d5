/** PEM text: splitting bundles into blocks and parsing certificate lists. */
import { x509 } from './x509.js';
import { TetherError } from '../common/errors.js';

export interface PemBlock {
  label: string;
  der: Uint8Array;
  pem: string;
}

const BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----\r?\n([\s\S]*?)-----END \1-----/g;

export function pemBlocks(text: string): PemBlock[] {
  const blocks: PemBlock[] = [];
  for (const match of text.matchAll(BLOCK)) {
    const label = match[1] ?? '';
    const body = (match[2] ?? '').replace(/\s+/g, '');
    blocks.push({ label, der: new Uint8Array(Buffer.from(body, 'base64')), pem: `${match[0]}\n` });
  }
  return blocks;
}

/** Every CERTIFICATE block of `text`, in order. Throws CERT_MALFORMED when one does not parse. */
export function parseCertificates(text: string, what = 'certificate'): x509.X509Certificate[] {
  const certs: x509.X509Certificate[] = [];
  for (const block of pemBlocks(text)) {
    if (block.label !== 'CERTIFICATE') continue;
    try {
      certs.push(new x509.X509Certificate(block.der));
    } catch (reason) {
      throw new TetherError('CERT_MALFORMED', `${what}: a CERTIFICATE block does not parse`, { cause: reason });
    }
  }
  return certs;
}

export function parseOneCertificate(text: string, what = 'certificate'): x509.X509Certificate {
  const [first] = parseCertificates(text, what);
  if (first === undefined) throw new TetherError('CERT_MALFORMED', `${what}: no PEM CERTIFICATE block found`);
  return first;
}

export function certificatesToPem(certs: readonly x509.X509Certificate[]): string {
  return certs.map((cert) => `${cert.toString('pem')}\n`).join('');
}

/** Join PEM texts with exactly one newline between blocks. */
export function joinPem(...parts: string[]): string {
  return parts.map((part) => (part.endsWith('\n') ? part : `${part}\n`)).join('');
}

/** Certificate serials as we compare them: lowercase hex without leading zeros. */
export function normalizeSerial(serial: string): string {
  const hex = serial.toLowerCase().replace(/[^0-9a-f]/g, '').replace(/^0+/, '');
  return hex === '' ? '0' : hex;
}
