/**
 * The control plane as `tether dev` embeds it: state in one folder (store and a generated KEK
 * file, 0600), the dev OIDC issuer for user tokens, the dev CA for the identity exchange and the
 * agents' channel, `file://` URIs allowed, ports chosen by the caller (0 = any).
 */
import { randomBytes } from 'node:crypto';
import { mkdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { CertificateAuthority } from '../certs/certificate-authority.js';
import type { Logger } from '../common/log.js';
import { parseControlConfig } from './config.js';
import { ControlServer } from './server.js';
import { Keyring, writeKeyFile } from './store/keyring.js';

export const DEV_CONTROL_AUDIENCE = 'tether-control';
export const DEV_CONTROL_KEK_FILE = 'control-kek.json';

export interface DevControlOptions {
  stateDir: string;
  /** The dev OIDC issuer URL (user tokens for the API have audience `audience`). */
  issuerUrl: string;
  audience?: string;
  ca: CertificateAuthority;
  org?: string;
  /** Subjects made org Admin; default `dev`. */
  admins?: string[];
  grpcPort?: number;
  /** The JSON/HTTP API's address; default 127.0.0.1:0. */
  httpHost?: string;
  httpPort?: number;
  agentPort?: number;
  logger?: Logger;
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

export async function startDevControl(options: DevControlOptions): Promise<ControlServer> {
  await mkdir(options.stateDir, { recursive: true, mode: 0o700 });
  const keyFile = join(options.stateDir, DEV_CONTROL_KEK_FILE);
  if (!(await exists(keyFile))) await writeKeyFile(keyFile, new Keyring([{ id: `dev-${randomBytes(4).toString('hex')}`, key: randomBytes(32) }]));
  const config = parseControlConfig({
    org: options.org ?? 'dev',
    store: { path: join(options.stateDir, 'control.db'), keyFile },
    grpc: { port: options.grpcPort ?? 0 },
    http: { host: options.httpHost ?? '127.0.0.1', port: options.httpPort ?? 0 },
    auth: { issuers: [{ issuer: options.issuerUrl, audience: options.audience ?? DEV_CONTROL_AUDIENCE }] },
    bootstrapAdmins: options.admins ?? ['dev'],
    allowFileUris: true,
    agents: { port: options.agentPort ?? 0 },
  });
  return ControlServer.start(config, { ca: options.ca, logger: options.logger });
}
