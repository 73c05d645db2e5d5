/**
 * A gateway, agents and a token issuer wired together with the real test PKI, on port 0.
 * `env.close()` releases everything.
 */
import { SignJWT, exportJWK, generateKeyPair, type JWK } from 'jose';
import { Agent, type AgentOptions } from '../../agent/index.js';
import { silentLogger } from '../../common/log.js';
import { Gateway, type GatewayOptions } from '../../gateway/index.js';
import { createTestPki, type TestPki, type TlsMaterial } from './pki.js';

export const ISSUER = 'https://issuer.tether.test';
export const AUDIENCE = 'tether-gateway';

export interface TokenIssuer {
  jwks: { keys: JWK[] };
  sign(claims: { sub?: string; clusters?: string[]; expiresIn?: string; issuer?: string; audience?: string }): Promise<string>;
}

export async function createTokenIssuer(): Promise<TokenIssuer> {
  const { publicKey, privateKey } = await generateKeyPair('ES256');
  const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
  return {
    jwks: { keys: [jwk] },
    sign: (claims) =>
      new SignJWT({ clusters: claims.clusters ?? [] })
        .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
        .setIssuer(claims.issuer ?? ISSUER)
        .setAudience(claims.audience ?? AUDIENCE)
        .setSubject(claims.sub ?? 'alice')
        .setIssuedAt()
        .setExpirationTime(claims.expiresIn ?? '5m')
        .sign(privateKey),
  };
}

export interface TunnelEnv {
  pki: TestPki;
  issuer: TokenIssuer;
  gatewayTls: TlsMaterial;
  gateways: Gateway[];
  gateway: Gateway;
  agents: Agent[];
  /** Start one more agent (not waited for). */
  startAgent(options: Partial<AgentOptions> & { clusterId?: string; agentId?: string; cert?: { key: string; cert: string } }): Promise<Agent>;
  startGateway(options?: Partial<GatewayOptions>): Promise<Gateway>;
  token(clusters: string[], sub?: string): Promise<string>;
  close(): Promise<void>;
}

export interface TunnelEnvOptions {
  clusters?: string[];
  gateway?: Partial<GatewayOptions>;
  /** Agents to start and wait for (each `connectionsPerGateway` live connections). */
  agents?: Array<Partial<AgentOptions> & { clusterId?: string; agentId?: string }>;
}

/**
 * The gateway's binding mode for this test run: `TETHER_TEST_BINDING=request|connection` (default
 * `connection`). `npm test` runs the tunnel suites once per mode.
 */
export const TEST_BINDING: 'connection' | 'request' = process.env.TETHER_TEST_BINDING === 'request' ? 'request' : 'connection';

export async function startTunnelEnv(options: TunnelEnvOptions = {}): Promise<TunnelEnv> {
  const pki = await createTestPki();
  const issuer = await createTokenIssuer();
  const gatewayTls = await pki.gatewayCert();
  const gateways: Gateway[] = [];
  const agents: Agent[] = [];
  const clusters = options.clusters ?? ['c1', 'c2'];

  const startGateway = async (extra: Partial<GatewayOptions> = {}): Promise<Gateway> => {
    const gateway = new Gateway({
      tls: { key: gatewayTls.key, cert: gatewayTls.cert, ca: pki.trustBundlePem },
      trustDomain: pki.trustDomain,
      clusters,
      baseDomain: 'tether.localhost',
      plainListen: { host: '127.0.0.1', port: 0 },
      auth: { mode: 'jwt', issuers: [{ issuer: ISSUER, audiences: [AUDIENCE], jwks: issuer.jwks }] },
      logger: silentLogger(),
      pingIntervalMs: 1000,
      pingTimeoutMs: 2000,
      binding: TEST_BINDING,
      ...options.gateway,
      ...extra,
    });
    await gateway.start();
    gateways.push(gateway);
    return gateway;
  };

  const startAgent = async (extra: Partial<AgentOptions> & { clusterId?: string; agentId?: string; cert?: { key: string; cert: string } }): Promise<Agent> => {
    const { clusterId = 'c1', agentId = 'a1', cert, ...rest } = extra;
    const material = cert ?? (await pki.agentCert({ clusterId, agentId }));
    const agent = new Agent({
      gateways: gateways.map((g) => g.agentAddress),
      serverName: 'localhost',
      tls: { key: material.key, cert: material.cert, ca: pki.trustBundlePem },
      logger: silentLogger(),
      pingIntervalMs: 1000,
      pingTimeoutMs: 2000,
      backoff: { initialDelayMs: 50, maxDelayMs: 1000 },
      ...rest,
    });
    await agent.start();
    agents.push(agent);
    return agent;
  };

  await startGateway();
  for (const a of options.agents ?? []) {
    const agent = await startAgent(a);
    await agent.waitForConnections(agent.config.connectionsPerGateway * gateways.length);
  }

  return {
    pki,
    issuer,
    gatewayTls,
    gateways,
    get gateway() {
      return gateways[0] as Gateway;
    },
    agents,
    startAgent,
    startGateway,
    token: (list, sub) => issuer.sign({ clusters: list, ...(sub === undefined ? {} : { sub }) }),
    close: async () => {
      await Promise.all(agents.map((a) => a.close()));
      await Promise.all(gateways.map((g) => g.close()));
    },
  };
}
