/**
 * Key pairs for the PKI, through Node's WebCrypto (`globalThis.crypto`), which is also the provider
 * `@peculiar/x509` uses. Keys travel as PKCS#8 PEM; the algorithm of a PEM key is read from the key
 * itself (via `node:crypto`), so callers never have to say what a key file holds.
 */
import { createPrivateKey, createPublicKey, type webcrypto } from 'node:crypto';
import { x509 } from './x509.js';
import { TetherError } from '../common/errors.js';


export type CryptoKey = webcrypto.CryptoKey;
export type CryptoKeyPair = webcrypto.CryptoKeyPair;
type Algorithm = webcrypto.Algorithm;
type EcdsaParams = webcrypto.EcdsaParams;

/** Key algorithms tether issues. CSRs may also carry P-384 and RSA >= 2048 keys. */
export type KeyAlgorithm = 'ecdsa-p256' | 'rsa-3072';

export const KEY_ALGORITHMS: readonly KeyAlgorithm[] = ['ecdsa-p256', 'rsa-3072'];

export const subtle = globalThis.crypto.subtle;

/** WebCrypto parameters that generate, import and sign with a key of one of our shapes. */
export type KeyParams =
  | { name: 'ECDSA'; namedCurve: 'P-256' | 'P-384' }
  | { name: 'RSASSA-PKCS1-v1_5'; hash: 'SHA-256'; modulusLength: number };

export function keyParamsFor(algorithm: KeyAlgorithm): KeyParams {
  return algorithm === 'ecdsa-p256'
    ? { name: 'ECDSA', namedCurve: 'P-256' }
    : { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256', modulusLength: 3072 };
}

export function isKeyAlgorithm(value: string): value is KeyAlgorithm {
  return (KEY_ALGORITHMS as readonly string[]).includes(value);
}

/** The signature algorithm a key of these parameters signs certificates and CSRs with. */
export function signingAlgorithmFor(params: KeyParams): Algorithm | EcdsaParams {
  if (params.name === 'ECDSA') return { name: 'ECDSA', hash: params.namedCurve === 'P-384' ? 'SHA-384' : 'SHA-256' };
  return { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' };
}

/** A fresh extractable key pair (extractable so the private half can be handed to `tls`). */
export async function generateKeyPair(algorithm: KeyAlgorithm): Promise<CryptoKeyPair> {
  const params = keyParamsFor(algorithm);
  const generate =
    params.name === 'ECDSA'
      ? params
      : { ...params, publicExponent: new Uint8Array([1, 0, 1]) };
  return (await subtle.generateKey(generate, true, ['sign', 'verify'])) as CryptoKeyPair;
}

export async function exportPrivateKeyPem(key: CryptoKey): Promise<string> {
  const der = await subtle.exportKey('pkcs8', key);
  return x509.PemConverter.encode(der, 'PRIVATE KEY');
}

/** The WebCrypto parameters of a PEM private key (PKCS#8, or PKCS#1/SEC1 which node reads too). */
export function keyParamsOfPrivateKeyPem(pem: string): KeyParams {
  let keyObject;
  try {
    keyObject = createPrivateKey(pem);
  } catch (reason) {
    throw new TetherError('KEY_MALFORMED', 'not a readable private key', { cause: reason });
  }
  const details = keyObject.asymmetricKeyDetails ?? {};
  if (keyObject.asymmetricKeyType === 'ec') {
    const curve = details.namedCurve;
    if (curve === 'prime256v1' || curve === 'P-256') return { name: 'ECDSA', namedCurve: 'P-256' };
    if (curve === 'secp384r1' || curve === 'P-384') return { name: 'ECDSA', namedCurve: 'P-384' };
    throw new TetherError('KEY_UNSUPPORTED', `EC curve ${String(curve)} is not supported (P-256 or P-384)`);
  }
  if (keyObject.asymmetricKeyType === 'rsa') {
    return { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256', modulusLength: details.modulusLength ?? 0 };
  }
  throw new TetherError('KEY_UNSUPPORTED', `key type ${String(keyObject.asymmetricKeyType)} is not supported`);
}

/** Import a PEM private key for signing; the matching public key is derived from it. */
export async function importPrivateKeyPem(pem: string): Promise<{ privateKey: CryptoKey; publicKey: CryptoKey; params: KeyParams }> {
  const params = keyParamsOfPrivateKeyPem(pem);
  const keyObject = createPrivateKey(pem);
  const pkcs8 = keyObject.export({ format: 'der', type: 'pkcs8' });
  const spki = createPublicKey(keyObject).export({ format: 'der', type: 'spki' });
  const privateKey = await subtle.importKey('pkcs8', pkcs8, params, true, ['sign']);
  const publicKey = await subtle.importKey('spki', spki, params, true, ['verify']);
  return { privateKey, publicKey, params };
}

/** Human name of a key's algorithm, e.g. `ECDSA P-256` or `RSA 3072`. */
export function describeKeyParams(params: KeyParams): string {
  return params.name === 'ECDSA' ? `ECDSA ${params.namedCurve}` : `RSA ${params.modulusLength}`;
}

/** Type and size of a public key (SubjectPublicKeyInfo DER), as read by node:crypto. */
export function describePublicKey(spki: ArrayBuffer | Uint8Array): { type: 'ec' | 'rsa' | 'other'; curve?: string; bits?: number; text: string } {
  const key = createPublicKey({ key: Buffer.from(spki instanceof Uint8Array ? spki : new Uint8Array(spki)), format: 'der', type: 'spki' });
  const details = key.asymmetricKeyDetails ?? {};
  if (key.asymmetricKeyType === 'ec') {
    const curve = details.namedCurve === 'prime256v1' ? 'P-256' : details.namedCurve === 'secp384r1' ? 'P-384' : String(details.namedCurve);
    return { type: 'ec', curve, text: `ECDSA ${curve}` };
  }
  if (key.asymmetricKeyType === 'rsa') {
    const bits = details.modulusLength ?? 0;
    return { type: 'rsa', bits, text: `RSA ${bits}` };
  }
  return { type: 'other', text: String(key.asymmetricKeyType) };
}
