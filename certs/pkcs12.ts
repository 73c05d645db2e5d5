/**
 * PKCS#12 (PFX) export for load balancers and appliances that import a key and chain as one
 * password-protected file. node-forge supplies the ASN.1 writer, PBES2 key encryption and the
 * PKCS#12 MAC key derivation; we assemble the PFX ourselves because forge's own builder only
 * handles RSA keys, and our keys are usually ECDSA.
 *
 * Layout: the private key in a pkcs8ShroudedKeyBag (PBES2, PBKDF2-HMAC-SHA256, AES-256-CBC), the
 * certificates (leaf first) in certBags, the leaf and key tied by a localKeyId, an HMAC-SHA256
 * MAC over the whole.
 */
import { createHash, createPrivateKey, createPublicKey } from 'node:crypto';
import forge from 'node-forge';
import { TetherError } from '../common/errors.js';
import { parseCertificates } from './pem.js';

const { asn1, pki } = forge;
/** Key-derivation rounds for the key encryption and the MAC (OpenSSL's default is 2048). */
export const DEFAULT_PKCS12_ITERATIONS = 20_000;
const OID_SHA256 = '2.16.840.1.101.3.4.2.1';

export interface Pkcs12Options {
  keyPem: string;
  /** Leaf first, then intermediates (and the root if the importer wants it). */
  chainPem: string;
  password: string;
  friendlyName?: string;
  /** Default DEFAULT_PKCS12_ITERATIONS. */
  iterations?: number;
}

function seq(items: forge.asn1.Asn1[]): forge.asn1.Asn1 {
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, items);
}
function set(items: forge.asn1.Asn1[]): forge.asn1.Asn1 {
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SET, true, items);
}
function oid(id: string): forge.asn1.Asn1 {
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OID, false, asn1.oidToDer(id).getBytes());
}
function octets(bytes: string): forge.asn1.Asn1 {
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OCTETSTRING, false, bytes);
}
function explicit0(inner: forge.asn1.Asn1): forge.asn1.Asn1 {
  return asn1.create(asn1.Class.CONTEXT_SPECIFIC, 0, true, [inner]);
}
function der(node: forge.asn1.Asn1): string {
  return asn1.toDer(node).getBytes();
}
/** A PKCS#7 `data` ContentInfo wrapping DER bytes. */
function dataContent(bytes: string): forge.asn1.Asn1 {
  return seq([oid(pki.oids.data as string), explicit0(octets(bytes))]);
}
function attribute(id: string, value: forge.asn1.Asn1): forge.asn1.Asn1 {
  return seq([oid(id), set([value])]);
}

export function exportPkcs12(opts: Pkcs12Options): Buffer {
  if (opts.password.length === 0) throw new TetherError('PKCS12_BAD_PASSWORD', 'a PKCS#12 export needs a non-empty password');
  const iterations = opts.iterations ?? DEFAULT_PKCS12_ITERATIONS;
  if (!Number.isInteger(iterations) || iterations < 1000) throw new RangeError('iterations: must be an integer >= 1000');
  const certs = parseCertificates(opts.chainPem, 'chain');
  const [leaf] = certs;
  if (leaf === undefined) throw new TetherError('CERT_MALFORMED', 'the chain holds no certificate');
  let pkcs8: Buffer;
  let keySpki: Buffer;
  try {
    const key = createPrivateKey(opts.keyPem);
    pkcs8 = key.export({ format: 'der', type: 'pkcs8' });
    keySpki = createPublicKey(key).export({ format: 'der', type: 'spki' });
  } catch (reason) {
    throw new TetherError('KEY_MALFORMED', 'the private key does not parse', { cause: reason });
  }
  if (!keySpki.equals(Buffer.from(leaf.publicKey.rawData))) {
    throw new TetherError('CERT_KEY_MISMATCH', 'the private key does not belong to the first certificate of the chain');
  }

  const localKeyId = createHash('sha256').update(Buffer.from(leaf.rawData)).digest().subarray(0, 20).toString('binary');
  const attrs = [attribute(pki.oids.localKeyId as string, octets(localKeyId))];
  if (opts.friendlyName !== undefined) {
    attrs.push(attribute(pki.oids.friendlyName as string, asn1.create(asn1.Class.UNIVERSAL, asn1.Type.BMPSTRING, false, opts.friendlyName)));
  }

  const passwordUtf8 = forge.util.encodeUtf8(opts.password);
  const privateKeyInfo = asn1.fromDer(forge.util.createBuffer(pkcs8.toString('binary')));
  const encryptedKey = pki.encryptPrivateKeyInfo(privateKeyInfo, passwordUtf8, {
    algorithm: 'aes256',
    count: iterations,
    saltSize: 16,
    prfAlgorithm: 'sha256',
  } as Parameters<typeof pki.encryptPrivateKeyInfo>[2]);
  const keyBag = seq([oid(pki.oids.pkcs8ShroudedKeyBag as string), explicit0(encryptedKey), set(attrs)]);

  const certBags = certs.map((cert, index) =>
    seq([
      oid(pki.oids.certBag as string),
      explicit0(seq([oid(pki.oids.x509Certificate as string), explicit0(octets(Buffer.from(cert.rawData).toString('binary')))])),
      ...(index === 0 ? [set(attrs)] : []),
    ]),
  );

  const authSafe = der(seq([dataContent(der(seq(certBags))), dataContent(der(seq([keyBag])))]));

  const macSalt = forge.random.getBytesSync(16);
  const macKey = forge.pkcs12.generateKey(opts.password, forge.util.createBuffer(macSalt), 3, iterations, 32, forge.md.sha256.create());
  const hmac = forge.hmac.create();
  hmac.start('sha256', macKey);
  hmac.update(authSafe);
  const macData = seq([
    seq([seq([oid(OID_SHA256), asn1.create(asn1.Class.UNIVERSAL, asn1.Type.NULL, false, '')]), octets(hmac.digest().getBytes())]),
    octets(macSalt),
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.INTEGER, false, asn1.integerToDer(iterations).getBytes()),
  ]);

  const pfx = seq([asn1.create(asn1.Class.UNIVERSAL, asn1.Type.INTEGER, false, asn1.integerToDer(3).getBytes()), dataContent(authSafe), macData]);
  return Buffer.from(der(pfx), 'binary');
}
