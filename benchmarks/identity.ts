/**
 * Identity benchmark: workload-token verifications per second (ES256 and RS256 issuers, JWKS
 * discovered once and then cached, as in steady state) and workload certificate issuances per
 * second (`CertificateAuthority.signCsr` for ECDSA P-256 CSRs, including the CSR signature check).
 * Each measurement runs for a bounded time (default 3 s; `--duration=MS`) with a few operations in
 * flight, since WebCrypto work runs off the main thread.
 *
 * Run alone with `node --import ./bin/typescript.js benchmarks/identity.ts`, or through `npm run bench identity`.
 */
import { pathToFileURL } from 'node:url';
import { CertificateAuthority } from '../certs/certificate-authority.js';
import { generateCsr } from '../certs/csr.js';
import { DevOidcIssuer } from '../certs/dev-oidc-issuer.js';
import type { DevIssuerAlgorithm } from '../certs/dev-oidc-issuer.js';
import { createWorkloadTokenVerifier } from '../certs/workload-token.js';

const AUDIENCE = 'tether-control';
const SUBJECT = 'system:serviceaccount:tether:agent';
const IN_FLIGHT = 4;

function durationFrom(args: readonly string[]): number {
  const flag = args.find((arg) => arg.startsWith('--duration='));
  const value = flag === undefined ? NaN : Number(flag.slice('--duration='.length));
  return Number.isFinite(value) && value > 0 ? value : 3_000;
}

/** Run `operation` with `IN_FLIGHT` workers until `durationMs` has passed; operations per second. */
async function measure(durationMs: number, operation: (index: number) => Promise<unknown>): Promise<number> {
  let done = 0;
  const started = performance.now();
  const deadline = started + durationMs;
  const worker = async (): Promise<void> => {
    while (performance.now() < deadline) {
      await operation(done);
      done += 1;
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
  return done / ((performance.now() - started) / 1000);
}

async function tokenVerifications(algorithm: DevIssuerAlgorithm, durationMs: number): Promise<number> {
  const issuer = new DevOidcIssuer({ algorithm });
  try {
    await issuer.listen();
    const verifier = createWorkloadTokenVerifier({ issuer: issuer.issuer, audience: AUDIENCE, allowedSubjects: 'system:serviceaccount:tether:*' });
    const tokens = await Promise.all(Array.from({ length: 32 }, () => issuer.mint({ subject: SUBJECT, audience: AUDIENCE, pod: 'agent-0' })));
    await verifier.verify(tokens[0] ?? ''); // discovery + JWKS, outside the measurement
    const rate = await measure(durationMs, (index) => verifier.verify(tokens[index % tokens.length] ?? ''));
    if (issuer.requests.jwks !== 1) throw new Error(`expected one JWKS fetch, saw ${issuer.requests.jwks}`);
    return rate;
  } finally {
    await issuer.close();
  }
}

async function certificateIssuances(durationMs: number): Promise<number> {
  const ca = await CertificateAuthority.create({ trustDomain: 'bench.tether' });
  const csrs = await Promise.all(Array.from({ length: 32 }, async () => (await generateCsr('ecdsa-p256')).csrPem));
  return measure(durationMs, (index) => ca.signCsr(csrs[index % csrs.length] ?? '', { kind: 'workload', clusterId: 'cluster-a', agentId: `agent-${index}` }));
}

export async function run(args: readonly string[] = []): Promise<Record<string, number>> {
  const durationMs = durationFrom(args);
  const round = (value: number): number => Math.round(value);
  return {
    tokenVerificationsPerSecES256: round(await tokenVerifications('ES256', durationMs)),
    tokenVerificationsPerSecRS256: round(await tokenVerifications('RS256', durationMs)),
    workloadCertificatesPerSecP256: round(await certificateIssuances(durationMs)),
    durationMsEach: durationMs,
    inFlight: IN_FLIGHT,
  };
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const results = await run(process.argv.slice(2));
  process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
}
