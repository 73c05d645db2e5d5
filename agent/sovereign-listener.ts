/**
 * The sovereign listener as the agent serves it: the customer operator's `sovereignty.listener`
 * (agent/options.ts) turned into what `AgentXds.setSovereign` publishes (xds/builders.ts
 * `sovereignListener`, its routes, the JWKS cluster, the certificate as an SDS secret). Files
 * (certificate, key, JWKS) are read each time the listener starts, so a renewed certificate is
 * taken at the next switch to sovereign.
 */
import { readFile } from 'node:fs/promises';
import { TetherError, getErrorMessage } from '../common/errors.js';
import type { SovereignListenerConfig } from './options.js';
import type { AgentSovereignOptions } from './router/agent-xds.js';

export const SovereignListenerCode = {
  /** The listener's certificate or key file cannot be read (or holds no PEM). */
  TLS_UNREADABLE: 'SOVEREIGN_TLS_UNREADABLE',
  /** The JWKS file cannot be read or is not a JWKS (`{"keys": [...]}`). */
  JWKS_UNREADABLE: 'SOVEREIGN_JWKS_UNREADABLE',
} as const;

async function readPem(path: string, what: string, marker: RegExp): Promise<string> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (reason) {
    throw new TetherError(SovereignListenerCode.TLS_UNREADABLE, `cannot read the sovereign listener's ${what} ${path}: ${getErrorMessage(reason)}`, { cause: reason });
  }
  if (!marker.test(text)) throw new TetherError(SovereignListenerCode.TLS_UNREADABLE, `the sovereign listener's ${what} ${path} holds no PEM ${what}`);
  return text;
}

async function readJwks(path: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (reason) {
    throw new TetherError(SovereignListenerCode.JWKS_UNREADABLE, `cannot read the JWKS file ${path}: ${getErrorMessage(reason)}`, { cause: reason });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text) as unknown;
  } catch {
    throw new TetherError(SovereignListenerCode.JWKS_UNREADABLE, `the JWKS file ${path} is not JSON`);
  }
  const keys = typeof parsed === 'object' && parsed !== null ? (parsed as Record<string, unknown>).keys : undefined;
  if (!Array.isArray(keys) || keys.length === 0) throw new TetherError(SovereignListenerCode.JWKS_UNREADABLE, `the JWKS file ${path} has no "keys" list`);
  return text;
}

/** What `AgentXds.setSovereign` is given for `config`; reads its files now. */
export async function sovereignOptionsOf(config: SovereignListenerConfig): Promise<AgentSovereignOptions> {
  const [certificateChainPem, privateKeyPem] = await Promise.all([
    readPem(config.tls.certFile, 'certificate', /-----BEGIN CERTIFICATE-----/),
    readPem(config.tls.keyFile, 'private key', /-----BEGIN [A-Z ]*PRIVATE KEY-----/),
  ]);
  const source = config.jwt.jwks;
  const jwks: AgentSovereignOptions['listener']['jwt']['jwks'] =
    'uri' in source
      ? { remote: { uri: source.uri, cluster: `${config.name}-jwks`, ...(source.timeoutMs === undefined ? {} : { timeoutMs: source.timeoutMs }), ...(source.cacheDurationMs === undefined ? {} : { cacheDurationMs: source.cacheDurationMs }) } }
      : { local: 'file' in source ? await readJwks(source.file) : JSON.stringify({ keys: source.keys }) };
  const secretName = `${config.name}-cert`;
  const disallowed = (['v1', 'v2'] as const).filter((v) => !config.proxyProtocol.versions.includes(v)).map((v) => (v === 'v1' ? 'V1' : 'V2') as 'V1' | 'V2');
  return {
    listener: {
      name: config.name,
      address: config.address,
      port: config.port,
      routeConfigName: `${config.name}-routes`,
      tls: { sdsSecretName: secretName },
      minTlsVersion: config.tls.minVersion,
      jwt: {
        provider: config.jwt.provider,
        issuer: config.jwt.issuer,
        audiences: config.jwt.audiences,
        jwks,
        forward: config.jwt.forward,
        claimToHeaders: config.jwt.claimToHeaders,
        requirePrefixes: config.jwt.requirePrefixes,
        ...(config.jwt.clockSkewSeconds === undefined ? {} : { clockSkewSeconds: config.jwt.clockSkewSeconds }),
        ...(config.jwt.cacheSize === undefined ? {} : { cacheSize: config.jwt.cacheSize }),
      },
      rbac: { action: config.rbac.action, policies: config.rbac.policies },
      ...(disallowed.length === 0 ? {} : { disallowProxyVersions: disallowed }),
      ...(config.proxyProtocol.required ? {} : { allowWithoutProxyProtocol: true }),
    },
    ...(config.routes === 'tunnel' ? {} : { routes: config.routes }),
    secret: { name: secretName, certificateChainPem, privateKeyPem },
    ...(config.front === undefined ? {} : { front: config.front }),
  };
}
