/**
 * PKCS#10 certificate signing requests. A CSR only proves possession of a key: the issuer takes
 * the public key from it after checking the signature and that the key is strong enough, and
 * ignores every name and extension the CSR asks for.
 */
import { x509 } from './x509.js';
import { TetherError } from '../common/errors.js';
import { describePublicKey, exportPrivateKeyPem, generateKeyPair, keyParamsFor, signingAlgorithmFor, type CryptoKeyPair, type KeyAlgorithm } from './keys.js';
import { pemBlocks } from './pem.js';

const MIN_RSA_BITS = 2048;
const MAX_RSA_BITS = 8192;
const ALLOWED_CURVES = new Set(['P-256', 'P-384']);

/** A CSR over `keys` (subject is informational only: the issuer never copies it). */
export async function createCsr(keys: CryptoKeyPair, algorithm: KeyAlgorithm, commonName = 'tether'): Promise<string> {
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: [{ CN: [commonName] }],
    keys,
    signingAlgorithm: signingAlgorithmFor(keyParamsFor(algorithm)),
  });
  return `${csr.toString('pem')}\n`;
}

/** A fresh key pair and a CSR for it: `{ csrPem, keyPem, keys }`. */
export async function generateCsr(algorithm: KeyAlgorithm = 'ecdsa-p256', commonName = 'tether'): Promise<{ csrPem: string; keyPem: string; keys: CryptoKeyPair }> {
  const keys = await generateKeyPair(algorithm);
  return { csrPem: await createCsr(keys, algorithm, commonName), keyPem: await exportPrivateKeyPem(keys.privateKey), keys };
}

export interface CheckedCsr {
  publicKey: x509.PublicKey;
  keyDescription: string;
}

/** Parse a CSR, verify its self-signature and key strength; return its public key. */
export async function checkCsr(csrPem: string): Promise<CheckedCsr> {
  const block = pemBlocks(csrPem).find((b) => b.label === 'CERTIFICATE REQUEST' || b.label === 'NEW CERTIFICATE REQUEST');
  if (block === undefined) throw new TetherError('CSR_MALFORMED', 'no PEM CERTIFICATE REQUEST block found');
  let csr: x509.Pkcs10CertificateRequest;
  try {
    csr = new x509.Pkcs10CertificateRequest(block.der);
  } catch (reason) {
    throw new TetherError('CSR_MALFORMED', 'the certificate request does not parse', { cause: reason });
  }
  let key;
  try {
    key = describePublicKey(csr.publicKey.rawData);
  } catch (reason) {
    throw new TetherError('CSR_MALFORMED', 'the public key of the certificate request does not parse', { cause: reason });
  }
  if (key.type === 'rsa') {
    if ((key.bits ?? 0) < MIN_RSA_BITS || (key.bits ?? 0) > MAX_RSA_BITS) {
      throw new TetherError('CSR_WEAK_KEY', `RSA key of ${key.bits} bits (need ${MIN_RSA_BITS}..${MAX_RSA_BITS})`);
    }
  } else if (key.type === 'ec') {
    if (!ALLOWED_CURVES.has(key.curve ?? '')) throw new TetherError('CSR_WEAK_KEY', `EC curve ${key.curve} is not allowed (P-256, P-384)`);
  } else {
    throw new TetherError('CSR_WEAK_KEY', `key type ${key.text} is not allowed (ECDSA P-256/P-384, RSA >= ${MIN_RSA_BITS})`);
  }
  let valid = false;
  try {
    valid = await csr.verify();
  } catch (reason) {
    throw new TetherError('CSR_BAD_SIGNATURE', 'the certificate request signature cannot be checked', { cause: reason });
  }
  if (!valid) throw new TetherError('CSR_BAD_SIGNATURE', 'the certificate request is not signed by its own key');
  return { publicKey: csr.publicKey, keyDescription: key.text };
}
