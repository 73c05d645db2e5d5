/**
 * The tether certificate authority: a self-signed root and one issuing intermediate (pathLen 0)
 * for a trust domain. It issues server certificates (DNS/IP SANs) and workload certificates
 * (exactly one SPIFFE URI SAN), and signs CSRs with an identity the caller has verified: the
 * CSR contributes only its public key.
 *
 * On disk (`save`/`load`): `ca.json` (trust domain, algorithm), `root-ca.crt`, `root-ca.key`,
 * `intermediate-ca.crt`, `intermediate-ca.key`, `trust-bundle.pem` (the root plus any roots kept
 * for a CA rotation). Key files are written with mode 0600.
 */
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { x509 } from './x509.js';
import { TetherError, getErrorCode } from '../common/errors.js';
import { checkCsr } from './csr.js';
import {
  exportPrivateKeyPem,
  generateKeyPair,
  importPrivateKeyPem,
  isKeyAlgorithm,
  keyParamsFor,
  signingAlgorithmFor,
  type CryptoKey,
  type KeyAlgorithm,
  type KeyParams,
} from './keys.js';
import { certificatesToPem, joinPem, normalizeSerial, parseCertificates, parseOneCertificate } from './pem.js';
import { assertTrustDomain, spiffeIdFor, trustDomainId } from './spiffe-id.js';

export interface IssuedCertificate {
  /** The leaf certificate. */
  certificatePem: string;
  /** Leaf + intermediate: what a TLS endpoint presents (the `cert` option of `tls`). */
  chainPem: string;
  /** PKCS#8 PEM, only when the issuer generated the key (CLI, tests). */
  privateKeyPem?: string;
  /** Lowercase hex, no leading zeros. */
  serialNumber: string;
  notBefore: Date;
  notAfter: Date;
  /** The SPIFFE ID, for workload certificates. */
  spiffeId?: string;
}

export type CsrIdentity =
  | { kind: 'workload'; clusterId: string; agentId: string }
  | { kind: 'server'; dnsNames?: string[]; ipAddresses?: string[]; commonName?: string };

export interface CreateCaOptions {
  trustDomain: string;
  algorithm?: KeyAlgorithm;
  /** Default 10 years. */
  rootTtlMs?: number;
  /** Default 1 year (never beyond the root). */
  intermediateTtlMs?: number;
}

export interface ServerCertificateOptions {
  dnsNames?: string[];
  ipAddresses?: string[];
  ttlMs?: number;
  commonName?: string;
  /** Exact start of validity; default: now minus the clock-skew allowance. */
  notBefore?: Date;
  algorithm?: KeyAlgorithm;
}

export interface WorkloadCertificateOptions {
  clusterId: string;
  agentId: string;
  /** Default 1 hour. */
  ttlMs?: number;
  notBefore?: Date;
  algorithm?: KeyAlgorithm;
}

/** Free-form leaf for tests and tools that need certificates our checks must refuse. */
export interface UnsafeLeafOptions {
  uris?: string[];
  dnsNames?: string[];
  ipAddresses?: string[];
  commonName?: string;
  ttlMs?: number;
  notBefore?: Date;
  algorithm?: KeyAlgorithm;
  /** Mark the leaf as a CA (basicConstraints cA=true, keyCertSign). */
  ca?: boolean;
  /** Extended key usages; default serverAuth + clientAuth; `[]` leaves the extension out. */
  extendedKeyUsages?: string[];
}

export const DEFAULT_ROOT_TTL_MS = 10 * 365 * 86_400_000;
export const DEFAULT_INTERMEDIATE_TTL_MS = 365 * 86_400_000;
export const DEFAULT_WORKLOAD_TTL_MS = 3_600_000;
export const DEFAULT_SERVER_TTL_MS = 30 * 86_400_000;
/** Upper bound on any leaf lifetime. */
export const MAX_LEAF_TTL_MS = 398 * 86_400_000;
/** Leaves start this much in the past so peers with slightly slow clocks accept them. */
export const CLOCK_SKEW_MS = 60_000;

const CA_FILES = {
  meta: 'ca.json',
  rootCert: 'root-ca.crt',
  rootKey: 'root-ca.key',
  intermediateCert: 'intermediate-ca.crt',
  intermediateKey: 'intermediate-ca.key',
  bundle: 'trust-bundle.pem',
} as const;

const DNS_NAME = /^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/i;

/** A random positive 128-bit serial, hex, without a leading zero byte. */
export function randomSerial(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0] ?? 0) & 0x7f || 0x01;
  return bytes.toString('hex');
}

interface SigningIdentity {
  certificate: x509.X509Certificate;
  privateKey: CryptoKey;
  privateKeyPem: string;
  params: KeyParams;
}

function checkTtl(ttlMs: number, what: string): void {
  if (!(ttlMs > 0) || !Number.isFinite(ttlMs)) throw new TetherError('CERT_BAD_REQUEST', `${what} must be a positive number of ms`);
}

function checkSans(dnsNames: readonly string[], ipAddresses: readonly string[]): void {
  for (const name of dnsNames) {
    if (name.length > 253 || !DNS_NAME.test(name)) throw new TetherError('CERT_BAD_REQUEST', `invalid DNS name ${JSON.stringify(name)}`);
  }
  for (const ip of ipAddresses) {
    if (isIP(ip) === 0) throw new TetherError('CERT_BAD_REQUEST', `invalid IP address ${JSON.stringify(ip)}`);
  }
}

function keyIdOf(cert: x509.X509Certificate): string | undefined {
  return cert.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId;
}

export class CertificateAuthority {
  readonly trustDomain: string;
  readonly algorithm: KeyAlgorithm;
  private readonly root: SigningIdentity;
  private readonly intermediate: SigningIdentity;
  /** Roots trusted besides our own (kept across a CA rotation). */
  private readonly extraRoots: x509.X509Certificate[];

  private constructor(trustDomain: string, algorithm: KeyAlgorithm, root: SigningIdentity, intermediate: SigningIdentity, extraRoots: x509.X509Certificate[]) {
    this.trustDomain = trustDomain;
    this.algorithm = algorithm;
    this.root = root;
    this.intermediate = intermediate;
    this.extraRoots = extraRoots;
  }

  static async create(opts: CreateCaOptions): Promise<CertificateAuthority> {
    assertTrustDomain(opts.trustDomain);
    const algorithm = opts.algorithm ?? 'ecdsa-p256';
    const rootTtl = opts.rootTtlMs ?? DEFAULT_ROOT_TTL_MS;
    checkTtl(rootTtl, 'rootTtlMs');
    const now = Date.now();
    const params = keyParamsFor(algorithm);
    const domainUri = trustDomainId(opts.trustDomain);
    const stamp = new Date(now).toISOString().slice(0, 10);

    const rootKeys = await generateKeyPair(algorithm);
    const rootNotAfter = new Date(now + rootTtl);
    const rootCert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: randomSerial(),
      name: [{ O: ['tether'] }, { CN: [`${opts.trustDomain} root CA ${stamp}`.slice(0, 64)] }],
      notBefore: new Date(now - CLOCK_SKEW_MS),
      notAfter: rootNotAfter,
      keys: rootKeys,
      signingAlgorithm: signingAlgorithmFor(params),
      extensions: [
        new x509.BasicConstraintsExtension(true, 1, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature, true),
        await x509.SubjectKeyIdentifierExtension.create(rootKeys.publicKey),
        new x509.SubjectAlternativeNameExtension([{ type: 'url', value: domainUri }]),
      ],
    });
    const root: SigningIdentity = { certificate: rootCert, privateKey: rootKeys.privateKey, privateKeyPem: await exportPrivateKeyPem(rootKeys.privateKey), params };

    const intermediateTtl = Math.min(opts.intermediateTtlMs ?? DEFAULT_INTERMEDIATE_TTL_MS, rootNotAfter.getTime() - now);
    checkTtl(intermediateTtl, 'intermediateTtlMs');
    const intermediateKeys = await generateKeyPair(algorithm);
    const intermediateCert = await x509.X509CertificateGenerator.create({
      serialNumber: randomSerial(),
      subject: [{ O: ['tether'] }, { CN: [`${opts.trustDomain} issuing CA ${stamp}`.slice(0, 64)] }],
      issuer: rootCert.subjectName,
      notBefore: new Date(now - CLOCK_SKEW_MS),
      notAfter: new Date(now + intermediateTtl),
      publicKey: intermediateKeys.publicKey,
      signingKey: rootKeys.privateKey,
      signingAlgorithm: signingAlgorithmFor(params),
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature, true),
        await x509.SubjectKeyIdentifierExtension.create(intermediateKeys.publicKey),
        new x509.AuthorityKeyIdentifierExtension(keyIdOf(rootCert) ?? ''),
        new x509.SubjectAlternativeNameExtension([{ type: 'url', value: domainUri }]),
      ],
    });
    const intermediate: SigningIdentity = {
      certificate: intermediateCert,
      privateKey: intermediateKeys.privateKey,
      privateKeyPem: await exportPrivateKeyPem(intermediateKeys.privateKey),
      params,
    };
    return new CertificateAuthority(opts.trustDomain, algorithm, root, intermediate, []);
  }

  /** Load a CA saved by `save()`. Throws CA_NOT_FOUND when the folder holds none. */
  static async load(dir: string): Promise<CertificateAuthority> {
    const read = async (name: string): Promise<string> => {
      try {
        return await readFile(join(dir, name), 'utf8');
      } catch (reason) {
        if (getErrorCode(reason) === 'ENOENT') throw new TetherError('CA_NOT_FOUND', `no CA in ${dir} (missing ${name}; run "tether certs init")`, { cause: reason });
        throw new TetherError('CA_UNREADABLE', `cannot read ${join(dir, name)}`, { cause: reason });
      }
    };
    let meta: { trustDomain?: unknown; algorithm?: unknown };
    try {
      meta = JSON.parse(await read(CA_FILES.meta)) as { trustDomain?: unknown; algorithm?: unknown };
    } catch (reason) {
      if (reason instanceof TetherError) throw reason;
      throw new TetherError('CA_UNREADABLE', `${join(dir, CA_FILES.meta)} is not JSON`, { cause: reason });
    }
    if (typeof meta.trustDomain !== 'string' || typeof meta.algorithm !== 'string' || !isKeyAlgorithm(meta.algorithm)) {
      throw new TetherError('CA_UNREADABLE', `${join(dir, CA_FILES.meta)} lacks trustDomain/algorithm`);
    }
    const identity = async (certFile: string, keyFile: string): Promise<SigningIdentity> => {
      const certificate = parseOneCertificate(await read(certFile), certFile);
      const privateKeyPem = await read(keyFile);
      const { privateKey, params } = await importPrivateKeyPem(privateKeyPem);
      return { certificate, privateKey, privateKeyPem, params };
    };
    const root = await identity(CA_FILES.rootCert, CA_FILES.rootKey);
    const intermediate = await identity(CA_FILES.intermediateCert, CA_FILES.intermediateKey);
    const rootDer = Buffer.from(root.certificate.rawData);
    const extraRoots = parseCertificates(await read(CA_FILES.bundle), CA_FILES.bundle).filter((cert) => !Buffer.from(cert.rawData).equals(rootDer));
    return new CertificateAuthority(meta.trustDomain, meta.algorithm, root, intermediate, extraRoots);
  }

  async save(dir: string): Promise<void> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const writeKey = async (name: string, pem: string): Promise<void> => {
      const path = join(dir, name);
      await writeFile(path, pem, { mode: 0o600 });
      await chmod(path, 0o600); // an existing file keeps its old mode on write
    };
    await writeFile(join(dir, CA_FILES.meta), `${JSON.stringify({ trustDomain: this.trustDomain, algorithm: this.algorithm }, null, 2)}\n`);
    await writeFile(join(dir, CA_FILES.rootCert), this.rootCertificatePem);
    await writeKey(CA_FILES.rootKey, this.root.privateKeyPem);
    await writeFile(join(dir, CA_FILES.intermediateCert), this.intermediateCertificatePem);
    await writeKey(CA_FILES.intermediateKey, this.intermediate.privateKeyPem);
    await writeFile(join(dir, CA_FILES.bundle), this.trustBundlePem());
  }

  get rootCertificatePem(): string {
    return `${this.root.certificate.toString('pem')}\n`;
  }

  get intermediateCertificatePem(): string {
    return `${this.intermediate.certificate.toString('pem')}\n`;
  }

  get rootNotAfter(): Date {
    return this.root.certificate.notAfter;
  }

  get intermediateNotAfter(): Date {
    return this.intermediate.certificate.notAfter;
  }

  /** Our root first, then roots kept from before a rotation. */
  trustBundlePem(): string {
    return certificatesToPem([this.root.certificate, ...this.extraRoots]);
  }

  /**
   * Also trust the roots in `pem` (e.g. the previous CA's during a rotation). Returns how many
   * were new.
   */
  addTrustedRoots(pem: string): number {
    let added = 0;
    for (const cert of parseCertificates(pem, 'trusted roots')) {
      const der = Buffer.from(cert.rawData);
      const known = [this.root.certificate, ...this.extraRoots].some((c) => Buffer.from(c.rawData).equals(der));
      if (!known) {
        this.extraRoots.push(cert);
        added++;
      }
    }
    return added;
  }

  /** Stop trusting every root but our own (end of a rotation). Returns how many were dropped. */
  removeAllTrustedRoots(): number {
    return this.extraRoots.splice(0).length;
  }

  /** Stop trusting the root with this serial (end of a rotation). */
  removeTrustedRoot(serialNumber: string): boolean {
    const index = this.extraRoots.findIndex((c) => normalizeSerial(c.serialNumber) === normalizeSerial(serialNumber));
    if (index < 0) return false;
    this.extraRoots.splice(index, 1);
    return true;
  }

  async issueServer(opts: ServerCertificateOptions): Promise<IssuedCertificate> {
    const dnsNames = opts.dnsNames ?? [];
    const ipAddresses = opts.ipAddresses ?? [];
    if (dnsNames.length + ipAddresses.length === 0) throw new TetherError('CERT_BAD_REQUEST', 'a server certificate needs at least one DNS name or IP address');
    checkSans(dnsNames, ipAddresses);
    const algorithm = opts.algorithm ?? this.algorithm;
    const keys = await generateKeyPair(algorithm);
    const issued = await this.sign({
      publicKey: keys.publicKey,
      rsa: algorithm === 'rsa-3072',
      commonName: opts.commonName ?? dnsNames[0] ?? ipAddresses[0] ?? 'tether server',
      uris: [],
      dnsNames,
      ipAddresses,
      ttlMs: opts.ttlMs ?? DEFAULT_SERVER_TTL_MS,
      notBefore: opts.notBefore,
    });
    return { ...issued, privateKeyPem: await exportPrivateKeyPem(keys.privateKey) };
  }

  async issueWorkload(opts: WorkloadCertificateOptions): Promise<IssuedCertificate> {
    const spiffeId = spiffeIdFor(this.trustDomain, opts.clusterId, opts.agentId);
    const algorithm = opts.algorithm ?? 'ecdsa-p256';
    const keys = await generateKeyPair(algorithm);
    const issued = await this.sign({
      publicKey: keys.publicKey,
      rsa: algorithm === 'rsa-3072',
      commonName: opts.agentId,
      uris: [spiffeId],
      dnsNames: [],
      ipAddresses: [],
      ttlMs: opts.ttlMs ?? DEFAULT_WORKLOAD_TTL_MS,
      notBefore: opts.notBefore,
    });
    return { ...issued, privateKeyPem: await exportPrivateKeyPem(keys.privateKey), spiffeId };
  }

  /**
   * Sign a CSR for an identity the caller has already verified. Only the CSR's public key is
   * used (after its signature, type and size are checked); names and extensions in the CSR are
   * ignored.
   */
  async signCsr(csrPem: string, identity: CsrIdentity, opts: { ttlMs?: number; notBefore?: Date } = {}): Promise<IssuedCertificate> {
    const { publicKey } = await checkCsr(csrPem);
    const rsa = publicKey.algorithm.name.startsWith('RSA');
    if (identity.kind === 'workload') {
      const spiffeId = spiffeIdFor(this.trustDomain, identity.clusterId, identity.agentId);
      const issued = await this.sign({
        publicKey,
        rsa,
        commonName: identity.agentId,
        uris: [spiffeId],
        dnsNames: [],
        ipAddresses: [],
        ttlMs: opts.ttlMs ?? DEFAULT_WORKLOAD_TTL_MS,
        notBefore: opts.notBefore,
      });
      return { ...issued, spiffeId };
    }
    const dnsNames = identity.dnsNames ?? [];
    const ipAddresses = identity.ipAddresses ?? [];
    if (dnsNames.length + ipAddresses.length === 0) throw new TetherError('CERT_BAD_REQUEST', 'a server certificate needs at least one DNS name or IP address');
    checkSans(dnsNames, ipAddresses);
    return this.sign({
      publicKey,
      rsa,
      commonName: identity.commonName ?? dnsNames[0] ?? ipAddresses[0] ?? 'tether server',
      uris: [],
      dnsNames,
      ipAddresses,
      ttlMs: opts.ttlMs ?? DEFAULT_SERVER_TTL_MS,
      notBefore: opts.notBefore,
    });
  }

  /**
   * Issue a leaf with arbitrary names and flags and no identity checks. For tests and tools that
   * need certificates the verifiers must refuse (several URI SANs, a CA as leaf, no EKU, a foreign
   * trust domain). Never reachable from the network.
   */
  async unsafeIssue(opts: UnsafeLeafOptions): Promise<IssuedCertificate> {
    const algorithm = opts.algorithm ?? 'ecdsa-p256';
    const keys = await generateKeyPair(algorithm);
    const issued = await this.sign({
      publicKey: keys.publicKey,
      rsa: algorithm === 'rsa-3072',
      commonName: opts.commonName ?? 'tether test leaf',
      uris: opts.uris ?? [],
      dnsNames: opts.dnsNames ?? [],
      ipAddresses: opts.ipAddresses ?? [],
      ttlMs: opts.ttlMs ?? DEFAULT_WORKLOAD_TTL_MS,
      notBefore: opts.notBefore,
      ca: opts.ca ?? false,
      extendedKeyUsages: opts.extendedKeyUsages,
    });
    return { ...issued, privateKeyPem: await exportPrivateKeyPem(keys.privateKey) };
  }

  private async sign(leaf: {
    publicKey: CryptoKey | x509.PublicKey;
    rsa: boolean;
    commonName: string;
    uris: string[];
    dnsNames: string[];
    ipAddresses: string[];
    ttlMs: number;
    notBefore: Date | undefined;
    ca?: boolean;
    extendedKeyUsages?: string[] | undefined;
  }): Promise<IssuedCertificate> {
    checkTtl(leaf.ttlMs, 'ttlMs');
    if (leaf.ttlMs > MAX_LEAF_TTL_MS) throw new TetherError('CERT_BAD_REQUEST', `leaf lifetime above the ${MAX_LEAF_TTL_MS / 86_400_000}-day maximum`);
    const start = leaf.notBefore?.getTime() ?? Date.now();
    const notBefore = new Date(leaf.notBefore === undefined ? start - CLOCK_SKEW_MS : start);
    // X.509 times have whole seconds: round the end up so a leaf never lives shorter than asked.
    const notAfter = new Date(Math.min(Math.ceil((start + leaf.ttlMs) / 1000) * 1000, this.intermediate.certificate.notAfter.getTime()));
    const usage = leaf.ca
      ? x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.digitalSignature
      : x509.KeyUsageFlags.digitalSignature | (leaf.rsa ? x509.KeyUsageFlags.keyEncipherment : 0);
    const ekus = leaf.extendedKeyUsages ?? [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth];
    const names: x509.JsonGeneralNames = [
      ...leaf.uris.map((value) => ({ type: 'url' as const, value })),
      ...leaf.dnsNames.map((value) => ({ type: 'dns' as const, value })),
      ...leaf.ipAddresses.map((value) => ({ type: 'ip' as const, value })),
    ];
    const extensions: x509.Extension[] = [
      new x509.BasicConstraintsExtension(leaf.ca ?? false, undefined, true),
      new x509.KeyUsagesExtension(usage, true),
      await x509.SubjectKeyIdentifierExtension.create(leaf.publicKey),
      new x509.AuthorityKeyIdentifierExtension(keyIdOf(this.intermediate.certificate) ?? ''),
    ];
    if (ekus.length > 0) extensions.push(new x509.ExtendedKeyUsageExtension(ekus, false));
    if (names.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(names, false));
    const certificate = await x509.X509CertificateGenerator.create({
      serialNumber: randomSerial(),
      subject: [{ CN: [leaf.commonName.slice(0, 64)] }],
      issuer: this.intermediate.certificate.subjectName,
      notBefore,
      notAfter,
      publicKey: leaf.publicKey,
      signingKey: this.intermediate.privateKey,
      signingAlgorithm: signingAlgorithmFor(this.intermediate.params),
      extensions,
    });
    const certificatePem = `${certificate.toString('pem')}\n`;
    return {
      certificatePem,
      chainPem: joinPem(certificatePem, this.intermediateCertificatePem),
      serialNumber: normalizeSerial(certificate.serialNumber),
      notBefore: certificate.notBefore,
      notAfter: certificate.notAfter,
    };
  }
}
