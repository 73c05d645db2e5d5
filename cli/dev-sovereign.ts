/**
 * `tether dev --sovereign`: the customer's side of sovereign mode, made up on one machine. Under
 * `<stateDir>/sovereign/`:
 *
 * - the customer's mode key (Ed25519; `customer.key` 0600 and `customer.pub.pem`, kept across
 *   runs) and a mode document signed with it saying `sovereign` (`mode.jws`, seq = now in ms);
 * - the customer's identity provider, as a static JWKS file (`idp-jwks.json`, a fresh ES256 key
 *   each run) and tokens it minted: `reader-token` (role reader: admitted) and `no-role-token`
 *   (no role: 403), valid 12 h;
 * - the listener's certificate from the dev CA (`listener.crt`, `listener.key`);
 * - with HAProxy installed, its configuration (`haproxy/haproxy.cfg`): TCP, TLS passed through to
 *   the agent's sovereign listener with `send-proxy-v2`.
 *
 * The agent itself serves the sovereign listener (agent/options.ts `sovereignty.listener`).
 */
import { generateKeyPairSync, createPrivateKey, createPublicKey } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { SignJWT, exportJWK, generateKeyPair } from 'jose';
import { signModeDocument } from '../agent/mode-document.js';
import type { AgentConfigInput } from '../agent/options.js';
import type { CertificateAuthority } from '../certs/index.js';
import { getErrorCode } from '../common/errors.js';
import { formatHostPort } from '../common/listen.js';
import { HAPROXY_PACKAGE, freePort, startHaproxy } from './haproxy.js';
import type { Haproxy } from './haproxy.js';

/** The customer IdP's issuer and the audience its tokens carry for the sovereign listener. */
export const DEV_SOVEREIGN_ISSUER = 'https://idp.customer.dev';
export const DEV_SOVEREIGN_AUDIENCE = 'tether-sovereign';
/** The role the listener's RBAC admits. */
export const DEV_SOVEREIGN_ROLE = 'reader';

export interface DevSovereignFiles {
  dir: string;
  customerKeyFile: string;
  customerPublicKeyFile: string;
  modeFile: string;
  seq: number;
  jwksFile: string;
  certFile: string;
  keyFile: string;
  readerTokenFile: string;
  noRoleTokenFile: string;
}

async function writeAtomically(path: string, data: string, mode: number): Promise<void> {
  const temporary = `${path}.${process.pid}.tmp`;
  await writeFile(temporary, data, { mode });
  await rename(temporary, path);
}

/** The customer's mode key pair: kept from an earlier run, or made now. */
async function customerKey(dir: string): Promise<{ privatePem: string; keyFile: string; publicFile: string }> {
  const keyFile = join(dir, 'customer.key');
  const publicFile = join(dir, 'customer.pub.pem');
  let privatePem: string;
  try {
    privatePem = await readFile(keyFile, 'utf8');
  } catch (reason) {
    if (getErrorCode(reason) !== 'ENOENT') throw reason;
    privatePem = generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    await writeAtomically(keyFile, privatePem, 0o600);
  }
  await writeAtomically(publicFile, createPublicKey(createPrivateKey(privatePem)).export({ type: 'spki', format: 'pem' }).toString(), 0o644);
  return { privatePem, keyFile, publicFile };
}

/** Make (or refresh) the customer's material for cluster `clusterId` with its listener reachable as `host`. */
export async function prepareDevSovereign(stateDir: string, clusterId: string, ca: CertificateAuthority, host: string): Promise<DevSovereignFiles> {
  const dir = join(stateDir, 'sovereign');
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const key = await customerKey(dir);
  const seq = Date.now();
  const modeFile = join(dir, 'mode.jws');
  await writeAtomically(modeFile, `${await signModeDocument({ cluster: clusterId, mode: 'sovereign', seq, iat: Math.floor(seq / 1000) }, createPrivateKey(key.privatePem))}\n`, 0o644);

  const idp = await generateKeyPair('ES256');
  const jwksFile = join(dir, 'idp-jwks.json');
  await writeAtomically(jwksFile, `${JSON.stringify({ keys: [{ ...(await exportJWK(idp.publicKey)), kid: 'customer-dev', alg: 'ES256', use: 'sig' }] }, null, 2)}\n`, 0o644);
  const mint = (roles: string[]): Promise<string> =>
    new SignJWT({ roles })
      .setProtectedHeader({ alg: 'ES256', kid: 'customer-dev', typ: 'JWT' })
      .setIssuer(DEV_SOVEREIGN_ISSUER)
      .setAudience(DEV_SOVEREIGN_AUDIENCE)
      .setSubject('customer-user')
      .setIssuedAt()
      .setExpirationTime('12h')
      .sign(idp.privateKey);
  const readerTokenFile = join(dir, 'reader-token');
  const noRoleTokenFile = join(dir, 'no-role-token');
  await writeAtomically(readerTokenFile, `${await mint([DEV_SOVEREIGN_ROLE])}\n`, 0o600);
  await writeAtomically(noRoleTokenFile, `${await mint([])}\n`, 0o600);

  const ipAddresses = ['127.0.0.1', ...(isIP(host) !== 0 && host !== '127.0.0.1' ? [host] : [])];
  const certificate = await ca.issueServer({ dnsNames: ['localhost'], ipAddresses });
  const certFile = join(dir, 'listener.crt');
  const keyFile = join(dir, 'listener.key');
  await writeAtomically(certFile, certificate.chainPem, 0o644);
  await writeAtomically(keyFile, certificate.privateKeyPem ?? '', 0o600);
  return { dir, customerKeyFile: key.keyFile, customerPublicKeyFile: key.publicFile, modeFile, seq, jwksFile, certFile, keyFile, readerTokenFile, noRoleTokenFile };
}

/** The agent's `sovereignty` option: the pinned key, the mode file, and the listener on `host:port`. */
export function devSovereignty(files: DevSovereignFiles, clusterId: string, host: string, port: number): NonNullable<AgentConfigInput['sovereignty']> {
  const listener = {
    address: host,
    port,
    tls: { certFile: files.certFile, keyFile: files.keyFile },
    jwt: { issuer: DEV_SOVEREIGN_ISSUER, audiences: [DEV_SOVEREIGN_AUDIENCE], jwks: { file: files.jwksFile }, claimToHeaders: [{ claim: 'sub', header: 'x-customer-subject' }] },
    rbac: { policies: { readers: { principals: [{ claim: 'roles', includes: DEV_SOVEREIGN_ROLE }] } } },
  };
  return { clusterId, customerKeyFile: files.customerPublicKeyFile, modeFile: files.modeFile, pollMs: 2_000, drainGraceMs: 5_000, listener };
}

export interface DevLoadBalancer {
  /** Where clients connect: HAProxy's frontend. */
  host: string;
  port: number;
  haproxy: Haproxy;
}

/** Why there is no HAProxy in front, and how to get one. */
export const HAPROXY_MISSING = `haproxy is not installed (Debian package "${HAPROXY_PACKAGE}": apt-get install ${HAPROXY_PACKAGE})`;

/** HAProxy (`binary`) in front of the listener at `routerHost:routerPort`, on `host:port` (port 0: a free one). */
export async function startDevLoadBalancer(binary: string, dir: string, host: string, port: number, routerHost: string, routerPort: number): Promise<DevLoadBalancer> {
  const directory = join(dir, 'haproxy');
  await mkdir(directory, { recursive: true, mode: 0o700 });
  const frontPort = port === 0 ? await freePort(host) : port;
  const haproxy = await startHaproxy(
    binary,
    directory,
    `
# The customer's load balancer: TLS passes through to the agent's sovereign listener, which gets
# the client's address in a PROXY protocol v2 header.
frontend sovereign
  bind ${formatHostPort(host, frontPort)}
  default_backend sovereign_listener
backend sovereign_listener
  server router ${formatHostPort(routerHost, routerPort)} send-proxy-v2
`,
  );
  return { host, port: frontPort, haproxy };
}
