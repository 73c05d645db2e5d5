/**
 * A certificate source for long-running processes (agents, gateways). It generates a key pair in
 * memory (never written to disk), obtains a certificate for it through a pluggable issuer
 * function, renews at half of the remaining lifetime (±10 % jitter, as SPIRE agents do), retries
 * failed renewals with backoff, and tells subscribers about every new certificate so TLS contexts
 * can be swapped (`server.setSecureContext`) without dropping connections.
 *
 * The half-life is measured from when the certificate arrived, not from its notBefore: leaves are
 * backdated for clock skew, which would otherwise eat most of a short lifetime.
 */
import type { SecureContextOptions, Server as TlsServer } from 'node:tls';
import { Backoff, type BackoffOptions } from '../common/backoff.js';
import { TetherError } from '../common/errors.js';
import { silentLogger, type Logger } from '../common/log.js';
import type { IssuedCertificate } from './certificate-authority.js';
import { createCsr } from './csr.js';
import { exportPrivateKeyPem, generateKeyPair, subtle, type CryptoKeyPair, type KeyAlgorithm } from './keys.js';
import { joinPem, normalizeSerial, parseCertificates } from './pem.js';
import { subjectAltNames } from './verify-chain.js';

/** Turns a CSR into a certificate chain (leaf first), e.g. the identity exchange or a local CA. */
export type CertificateIssuer = (csrPem: string) => Promise<{ chainPem: string } | IssuedCertificate>;

export interface CertificateMaterial {
  /** PKCS#8 PEM of the in-memory private key. */
  keyPem: string;
  /** Leaf + intermediates, as issued. */
  chainPem: string;
  certificatePem: string;
  serialNumber: string;
  notBefore: Date;
  notAfter: Date;
  spiffeId?: string;
  /** When this certificate arrived. */
  obtainedAt: Date;
}

/** setTimeout's longest wait. */
const MAX_TIMER_MS = 2_147_483_647;

export type CertificateListener = (material: CertificateMaterial) => void;
export type CertificateErrorListener = (error: TetherError) => void;

export interface CertificateSourceOptions {
  issue: CertificateIssuer;
  /** Default `ecdsa-p256`. */
  algorithm?: KeyAlgorithm;
  /** CN of the CSR (informational; issuers set the identity). */
  commonName?: string;
  /** Fraction of the remaining lifetime after which to renew. Default 0.5. */
  renewFraction?: number;
  /** Relative spread of the renewal time. Default 0.1 (±10 %). */
  jitter?: number;
  /** Retry schedule for failed issuance. Default 1 s doubling to 30 s, ±20 %. */
  retry?: BackoffOptions;
  /** A new key pair for each renewal (default true). */
  rotateKey?: boolean;
  random?: () => number;
  logger?: Logger;
}

export class CertificateSource {
  private readonly options: Required<Omit<CertificateSourceOptions, 'retry' | 'logger' | 'commonName'>> & { commonName: string };
  private readonly logger: Logger;
  private readonly backoff: Backoff;
  private readonly listeners = new Set<CertificateListener>();
  private readonly errorListeners = new Set<CertificateErrorListener>();
  private material: CertificateMaterial | undefined;
  private keys: { pair: CryptoKeyPair; pem: string } | undefined;
  private timer: NodeJS.Timeout | undefined;
  private inFlight: Promise<CertificateMaterial> | undefined;
  private renewAt: Date | undefined;
  private closed = false;

  constructor(options: CertificateSourceOptions) {
    this.options = {
      algorithm: 'ecdsa-p256',
      renewFraction: 0.5,
      jitter: 0.1,
      rotateKey: true,
      random: Math.random,
      ...options,
      commonName: options.commonName ?? 'tether',
    };
    if (!(this.options.renewFraction > 0 && this.options.renewFraction < 1)) throw new RangeError('renewFraction: must be within (0, 1)');
    if (!(this.options.jitter >= 0 && this.options.jitter < 1)) throw new RangeError('jitter: must be within [0, 1)');
    this.logger = options.logger ?? silentLogger();
    this.backoff = new Backoff({ initialDelayMs: 1000, multiplier: 2, maxDelayMs: 30_000, jitter: 0.2, ...options.retry });
  }

  /** Obtain the first certificate. Rejects when that fails (no retry: the caller decides). */
  async start(): Promise<void> {
    if (this.closed) throw new TetherError('CLOSED', 'certificate source is closed');
    if (this.material !== undefined) return;
    await this.renew();
  }

  /** The current key and chain. Throws CERT_NOT_READY before `start()` resolved. */
  current(): CertificateMaterial {
    if (this.material === undefined) throw new TetherError('CERT_NOT_READY', 'no certificate yet (call start())');
    return this.material;
  }

  /** `key` and `cert` for `tls.createSecureContext` / `createServer` / `connect`, plus `ca` if given. */
  secureContextOptions(ca?: string): SecureContextOptions {
    const { keyPem, chainPem } = this.current();
    return ca === undefined ? { key: keyPem, cert: chainPem } : { key: keyPem, cert: chainPem, ca };
  }

  /** When the next renewal is scheduled. */
  get nextRenewalAt(): Date | undefined {
    return this.renewAt;
  }

  /**
   * Call `listener` with every new certificate. If one is already there, the listener gets it
   * asynchronously (next microtask). Returns the unsubscribe function.
   */
  subscribe(listener: CertificateListener): () => void {
    this.listeners.add(listener);
    const existing = this.material;
    if (existing !== undefined) {
      queueMicrotask(() => {
        if (this.listeners.has(listener) && this.material === existing) this.safeCall(listener, existing);
      });
    }
    return () => {
      this.listeners.delete(listener);
    };
  }

  /** Called when issuance fails (the source keeps retrying). */
  onError(listener: CertificateErrorListener): () => void {
    this.errorListeners.add(listener);
    return () => {
      this.errorListeners.delete(listener);
    };
  }

  /** Renew now (e.g. after a CA rotation); resolves with the new material. */
  renewNow(): Promise<CertificateMaterial> {
    return this.renew();
  }

  /** Keep `server`'s secure context on the current certificate. Returns the unsubscribe function. */
  bindServer(server: TlsServer, extra: Omit<SecureContextOptions, 'key' | 'cert'> = {}): () => void {
    return this.subscribe((m) => server.setSecureContext({ ...extra, key: m.keyPem, cert: m.chainPem }));
  }

  /** Stop renewing; listeners are dropped. The key stays only as long as callers hold it. */
  close(): Promise<void> {
    this.closed = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.renewAt = undefined;
    this.listeners.clear();
    this.errorListeners.clear();
    return Promise.resolve();
  }

  private renew(): Promise<CertificateMaterial> {
    if (this.closed) return Promise.reject(new TetherError('CLOSED', 'certificate source is closed'));
    this.inFlight ??= this.obtain().finally(() => {
      this.inFlight = undefined;
    });
    return this.inFlight;
  }

  private async obtain(): Promise<CertificateMaterial> {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    try {
      if (this.keys === undefined || this.options.rotateKey) {
        const pair = await generateKeyPair(this.options.algorithm);
        this.keys = { pair, pem: await exportPrivateKeyPem(pair.privateKey) };
      }
      const keys = this.keys;
      const csrPem = await createCsr(keys.pair, this.options.algorithm, this.options.commonName);
      let issued: { chainPem: string };
      try {
        issued = await this.options.issue(csrPem);
      } catch (reason) {
        throw TetherError.from(reason, 'CERT_ISSUE_FAILED');
      }
      const material = await this.accept(issued.chainPem, keys);
      if (this.closed) return material;
      this.material = material;
      this.backoff.reset();
      this.scheduleAt(material.obtainedAt.getTime() + this.renewalDelay(material));
      this.logger.info({ serialNumber: material.serialNumber, notAfter: material.notAfter.toISOString(), renewAt: this.renewAt?.toISOString() }, 'certificate obtained');
      for (const listener of [...this.listeners]) this.safeCall(listener, material);
      return material;
    } catch (reason) {
      const error = TetherError.from(reason, 'CERT_ISSUE_FAILED');
      if (!this.closed && this.material !== undefined) {
        // Renewal failed: keep serving the current certificate and retry.
        const delay = this.backoff.next();
        this.scheduleAt(Date.now() + delay);
        this.logger.warn({ err: error, retryInMs: delay }, 'certificate renewal failed');
        for (const listener of [...this.errorListeners]) {
          try {
            listener(error);
          } catch (listenerError) {
            this.logger.error({ err: listenerError }, 'certificate error listener threw');
          }
        }
      }
      throw error;
    }
  }

  /** Check that the issued chain is for our key and currently valid. */
  private async accept(chainPem: string, keys: { pair: CryptoKeyPair; pem: string }): Promise<CertificateMaterial> {
    const [leaf] = parseCertificates(chainPem, 'issued chain');
    if (leaf === undefined) throw new TetherError('CERT_MALFORMED', 'the issuer returned no certificate');
    const spki = Buffer.from(await subtle.exportKey('spki', keys.pair.publicKey));
    if (!spki.equals(Buffer.from(leaf.publicKey.rawData))) throw new TetherError('CERT_KEY_MISMATCH', 'the issued certificate is not for our key');
    const now = Date.now();
    if (leaf.notAfter.getTime() <= now) throw new TetherError('CERT_EXPIRED', 'the issuer returned an expired certificate');
    const [spiffeId] = subjectAltNames(leaf).uris;
    const certificatePem = `${leaf.toString('pem')}\n`;
    return {
      keyPem: keys.pem,
      chainPem: joinPem(chainPem),
      certificatePem,
      serialNumber: normalizeSerial(leaf.serialNumber),
      notBefore: leaf.notBefore,
      notAfter: leaf.notAfter,
      obtainedAt: new Date(now),
      ...(spiffeId === undefined ? {} : { spiffeId }),
    };
  }

  private renewalDelay(material: CertificateMaterial): number {
    const remaining = material.notAfter.getTime() - material.obtainedAt.getTime();
    const spread = 1 + this.options.jitter * (this.options.random() * 2 - 1);
    return Math.max(0, Math.round(remaining * this.options.renewFraction * spread));
  }

  /** Renew at `renewAt` (epoch ms). */
  private scheduleAt(renewAt: number): void {
    if (this.closed) return;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.renewAt = new Date(renewAt);
    const delay = Math.max(0, renewAt - Date.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (renewAt - Date.now() > 0) {
        this.scheduleAt(renewAt); // the delay was longer than one timer can wait, or the timer fired early
        return;
      }
      this.renew().catch(() => {
        // reported to error listeners and rescheduled in obtain()
      });
    }, Math.min(delay, MAX_TIMER_MS));
    this.timer.unref();
  }

  private safeCall(listener: CertificateListener, material: CertificateMaterial): void {
    try {
      listener(material);
    } catch (reason) {
      this.logger.error({ err: reason }, 'certificate listener threw');
    }
  }
}
