/**
 * A small OIDC issuer that stands in for a Kubernetes cluster's service-account issuer in
 * `tether dev` and in tests. It serves the discovery document at
 * `/.well-known/openid-configuration` and the key set at `/openid/v1/jwks` (the API server's
 * paths) on 127.0.0.1, and mints tokens shaped like projected service-account tokens
 * (`sub: system:serviceaccount:<ns>:<sa>`, a `kubernetes.io` claim naming the namespace, service
 * account and pod).
 *
 * Key rotation works as a cluster's should: `rotateKey()` starts signing with a new key and keeps
 * publishing the old public keys until `retireOldKeys()`. With `stateDir` the signing keys are kept
 * in `<stateDir>/oidc-issuer-keys.json` (mode 0600) so that tokens survive a `tether dev` restart;
 * this is a development stand-in, and its own signing key on disk is the one private key that is
 * meant to be there.
 */
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createPrivateKey, generateKeyPair, randomUUID } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { SignJWT, calculateJwkThumbprint } from 'jose';
import type { JWK, JWTPayload } from 'jose';
import { z } from 'zod';
import { TetherError, getErrorCode } from '../common/errors.js';
import { once } from '../common/lifecycle.js';
import type { Closable } from '../common/lifecycle.js';
import { parseOptions } from '../common/options.js';

const generateKeyPairAsync = promisify(generateKeyPair);

export type DevIssuerAlgorithm = 'ES256' | 'RS256';

export const DEV_ISSUER_KEYS_FILE = 'oidc-issuer-keys.json';
export const DISCOVERY_PATH = '/.well-known/openid-configuration';
export const JWKS_PATH = '/openid/v1/jwks';

export interface DevOidcIssuerOptions {
  /** Signing algorithm of new keys; default ES256. */
  algorithm?: DevIssuerAlgorithm;
  /**
   * Listen port on 127.0.0.1; default 0: the port saved in `stateDir` by the previous run if it is
   * free (so the issuer URL, and the tokens minted for it, survive a restart), else any free port.
   */
  port?: number;
  /** Folder to persist the signing keys in (created with mode 0700; the file gets 0600). */
  stateDir?: string;
}

export interface MintOptions {
  /** `system:serviceaccount:<ns>:<sa>` (the `kubernetes.io` claim is derived from it) or any subject. */
  subject: string;
  audience: string | string[];
  /** Lifetime; default 3600 (Kubernetes' default for projected tokens). */
  ttlSec?: number;
  /** Pod name for the `kubernetes.io.pod` claim. */
  pod?: string;
  /** Extra or overriding claims; a claim set to `undefined` is removed (e.g. `{ aud: undefined }`). */
  claims?: Record<string, unknown>;
  /** Sign with this published key instead of the current one. */
  kid?: string;
}

interface SigningKey {
  kid: string;
  alg: DevIssuerAlgorithm;
  privateKey: KeyObject;
  publicJwk: JWK;
  createdAt: string;
}

const storedKeysSchema = z.object({
  version: z.literal(1),
  current: z.string(),
  port: z.number().int().min(1).max(65535).optional(),
  keys: z
    .array(z.object({ kid: z.string(), alg: z.enum(['ES256', 'RS256']), createdAt: z.string(), privateKeyPem: z.string() }))
    .min(1),
});

const optionsSchema = z.object({
  algorithm: z.enum(['ES256', 'RS256']).default('ES256'),
  port: z.number().int().min(0).max(65535).default(0),
  stateDir: z.string().min(1).optional(),
});

const SERVICE_ACCOUNT_SUBJECT = /^system:serviceaccount:([^:]+):([^:]+)$/;

async function newSigningKey(alg: DevIssuerAlgorithm): Promise<SigningKey> {
  const { privateKey } =
    alg === 'ES256'
      ? await generateKeyPairAsync('ec', { namedCurve: 'P-256' })
      : await generateKeyPairAsync('rsa', { modulusLength: 2048 });
  return signingKeyFrom(privateKey, alg, new Date().toISOString());
}

async function signingKeyFrom(privateKey: KeyObject, alg: DevIssuerAlgorithm, createdAt: string, kid?: string): Promise<SigningKey> {
  const jwk = privateKey.export({ format: 'jwk' }) as JWK;
  const publicJwk: JWK =
    jwk.kty === 'EC' ? { kty: 'EC', crv: jwk.crv, x: jwk.x, y: jwk.y } : { kty: 'RSA', n: jwk.n, e: jwk.e };
  const keyId = kid ?? (await calculateJwkThumbprint(publicJwk, 'sha256'));
  return { kid: keyId, alg, privateKey, publicJwk: { ...publicJwk, kid: keyId, alg, use: 'sig' }, createdAt };
}

export class DevOidcIssuer implements Closable {
  readonly #options: z.output<typeof optionsSchema>;
  readonly #server: Server;
  #keys: SigningKey[] = [];
  #current: SigningKey | null = null;
  #issuer: string | null = null;
  #started: Promise<string> | null = null;
  readonly #serviceAccountUids = new Map<string, string>();
  /** How many times each document was served (tests use it to see caching and refetches). */
  readonly requests = { discovery: 0, jwks: 0 };

  constructor(options: DevOidcIssuerOptions = {}) {
    this.#options = parseOptions(optionsSchema, options, 'devOidcIssuer');
    this.#server = createServer((request, response) => this.#handle(request, response));
  }

  /** Start listening (loading or creating keys first); resolves with the issuer URL. Idempotent. */
  listen(): Promise<string> {
    this.#started ??= this.#start();
    return this.#started;
  }

  /** The issuer URL, `http://127.0.0.1:<port>`; only after `listen()`. */
  get issuer(): string {
    if (this.#issuer === null) throw new TetherError('DEV_ISSUER_NOT_LISTENING', 'call listen() first');
    return this.#issuer;
  }

  get jwksUri(): string {
    return `${this.issuer}${JWKS_PATH}`;
  }

  /** The kid new tokens are signed with. */
  get currentKid(): string {
    return this.#signingKey().kid;
  }

  /** Every kid currently published in the JWKS, oldest first. */
  get publishedKids(): string[] {
    return this.#keys.map((key) => key.kid);
  }

  /** The published key set, as served. */
  jwks(): { keys: JWK[] } {
    return { keys: this.#keys.map((key) => ({ ...key.publicJwk })) };
  }

  /** Mint a projected-service-account-style token signed by the current (or the named) key. */
  async mint(options: MintOptions): Promise<string> {
    const key = options.kid === undefined ? this.#signingKey() : this.#keys.find((candidate) => candidate.kid === options.kid);
    if (key === undefined) throw new TetherError('DEV_ISSUER_UNKNOWN_KID', `no published key ${JSON.stringify(options.kid)}`);
    const now = Math.floor(Date.now() / 1000);
    const ttl = options.ttlSec ?? 3600;
    const claims: JWTPayload = {
      iss: this.issuer,
      sub: options.subject,
      aud: Array.isArray(options.audience) ? options.audience : [options.audience],
      iat: now,
      nbf: now,
      exp: now + ttl,
      jti: randomUUID(),
    };
    const serviceAccount = SERVICE_ACCOUNT_SUBJECT.exec(options.subject);
    if (serviceAccount) {
      const [, namespace = '', name = ''] = serviceAccount;
      const saKey = `${namespace}/${name}`;
      let uid = this.#serviceAccountUids.get(saKey);
      if (uid === undefined) {
        uid = randomUUID();
        this.#serviceAccountUids.set(saKey, uid);
      }
      claims['kubernetes.io'] = {
        namespace,
        serviceaccount: { name, uid },
        ...(options.pod === undefined ? {} : { pod: { name: options.pod, uid: randomUUID() } }),
      };
    }
    const payload: JWTPayload = { ...claims, ...(options.claims ?? {}) };
    for (const [name, value] of Object.entries(payload)) if (value === undefined) delete payload[name];
    return new SignJWT(payload).setProtectedHeader({ alg: key.alg, kid: key.kid }).sign(key.privateKey);
  }

  /** Start signing with a new key; older public keys stay published until `retireOldKeys()`. Returns the new kid. */
  async rotateKey(): Promise<string> {
    const key = await newSigningKey(this.#options.algorithm);
    this.#keys.push(key);
    this.#current = key;
    await this.#persist();
    return key.kid;
  }

  /** Stop publishing every key but the current one. Returns the retired kids. */
  async retireOldKeys(): Promise<string[]> {
    const current = this.#signingKey();
    const retired = this.#keys.filter((key) => key !== current).map((key) => key.kid);
    this.#keys = [current];
    await this.#persist();
    return retired;
  }

  #draining: Promise<void> | null = null;

  /** Stop accepting, let in-flight requests finish within `graceMs`, then drop every connection. */
  drain(graceMs = 5_000): Promise<void> {
    this.#draining ??= this.#drain(graceMs);
    return this.#draining;
  }

  async #drain(graceMs: number): Promise<void> {
    if (!this.#server.listening) return;
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    this.#server.closeIdleConnections();
    let timer: NodeJS.Timeout | undefined;
    const grace = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, graceMs);
    });
    await Promise.race([closed, grace]);
    clearTimeout(timer);
    this.#server.closeAllConnections();
    await closed;
  }

  readonly close = once(async (): Promise<void> => {
    if (!this.#server.listening) return;
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    this.#server.closeAllConnections();
    await closed;
  });

  #signingKey(): SigningKey {
    if (this.#current === null) throw new TetherError('DEV_ISSUER_NOT_LISTENING', 'call listen() first');
    return this.#current;
  }

  async #start(): Promise<string> {
    const savedPort = await this.#loadOrCreateKeys();
    if (this.#options.port !== 0) {
      await this.#listenOn(this.#options.port);
    } else if (savedPort !== undefined) {
      try {
        await this.#listenOn(savedPort);
      } catch (reason) {
        if (getErrorCode(reason instanceof Error ? reason.cause : reason) !== 'EADDRINUSE') throw reason;
        await this.#listenOn(0); // taken by now: a new issuer URL, so earlier tokens no longer verify
      }
    } else {
      await this.#listenOn(0);
    }
    const { port } = this.#server.address() as AddressInfo;
    this.#issuer = `http://127.0.0.1:${port}`;
    if (port !== savedPort) await this.#persist();
    return this.#issuer;
  }

  #listenOn(port: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const onError = (reason: Error): void => reject(new TetherError('DEV_ISSUER_LISTEN_FAILED', `cannot listen on 127.0.0.1:${port}`, { cause: reason }));
      this.#server.once('error', onError);
      this.#server.listen(port, '127.0.0.1', () => {
        this.#server.off('error', onError);
        resolve();
      });
    });
  }

  /** Load the saved keys (returning the saved port) or make the first key. */
  async #loadOrCreateKeys(): Promise<number | undefined> {
    const { stateDir } = this.#options;
    if (stateDir !== undefined) {
      let text: string | null = null;
      try {
        text = await readFile(join(stateDir, DEV_ISSUER_KEYS_FILE), 'utf8');
      } catch (reason) {
        if (getErrorCode(reason) !== 'ENOENT') throw TetherError.from(reason, 'DEV_ISSUER_STATE_UNREADABLE');
      }
      if (text !== null) {
        const parsed = storedKeysSchema.safeParse(JSON.parse(text));
        if (!parsed.success) throw new TetherError('DEV_ISSUER_STATE_UNREADABLE', `${join(stateDir, DEV_ISSUER_KEYS_FILE)} is not a key file of this issuer`);
        this.#keys = await Promise.all(
          parsed.data.keys.map((stored) => signingKeyFrom(createPrivateKey(stored.privateKeyPem), stored.alg, stored.createdAt, stored.kid)),
        );
        this.#current = this.#keys.find((key) => key.kid === parsed.data.current) ?? this.#keys[this.#keys.length - 1] ?? null;
        return parsed.data.port;
      }
    }
    await this.rotateKey();
    return undefined;
  }

  async #persist(): Promise<void> {
    const { stateDir } = this.#options;
    if (stateDir === undefined || this.#current === null) return;
    await mkdir(stateDir, { recursive: true, mode: 0o700 });
    const address = this.#server.address();
    const stored = {
      version: 1,
      current: this.#current.kid,
      ...(typeof address === 'object' && address !== null ? { port: address.port } : {}),
      keys: this.#keys.map((key) => ({
        kid: key.kid,
        alg: key.alg,
        createdAt: key.createdAt,
        privateKeyPem: key.privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
      })),
    };
    const path = join(stateDir, DEV_ISSUER_KEYS_FILE);
    const temporary = `${path}.${process.pid}.tmp`;
    await writeFile(temporary, `${JSON.stringify(stored, null, 2)}\n`, { mode: 0o600 });
    await rename(temporary, path);
  }

  #handle(request: IncomingMessage, response: ServerResponse): void {
    const path = (request.url ?? '/').split('?')[0];
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      this.#send(response, 405, { error: 'method not allowed' }, { allow: 'GET, HEAD' });
      return;
    }
    if (path === DISCOVERY_PATH) {
      this.requests.discovery += 1;
      this.#send(response, 200, {
        issuer: this.issuer,
        jwks_uri: this.jwksUri,
        response_types_supported: ['id_token'],
        subject_types_supported: ['public'],
        id_token_signing_alg_values_supported: [...new Set(this.#keys.map((key) => key.alg))],
      });
      return;
    }
    if (path === JWKS_PATH) {
      this.requests.jwks += 1;
      this.#send(response, 200, this.jwks(), { 'content-type': 'application/jwk-set+json' });
      return;
    }
    this.#send(response, 404, { error: 'not found' });
  }

  #send(response: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
    const text = JSON.stringify(body);
    response.writeHead(status, {
      'content-type': 'application/json',
      'cache-control': 'max-age=3600, private',
      'content-length': Buffer.byteLength(text),
      ...headers,
    });
    response.end(text);
  }
}
