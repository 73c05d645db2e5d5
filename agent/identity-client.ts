/**
 * The agent's side of the identity exchange over the control plane's JSON/HTTP API
 * (`IdentityService/ExchangeToken`): workload token + CSR out, workload certificate chain back.
 * The workload token is the credential; no bearer token is sent.
 */
import type { ExchangeRequest } from '../certs/index.js';
import { TetherError, getErrorMessage } from '../common/errors.js';

export const EXCHANGE_PATH = '/tether.control.v1.IdentityService/ExchangeToken';

export interface ExchangedChain {
  chainPem: string;
  trustBundlePem: string;
  spiffeId: string;
}

interface ExchangeResponseJson {
  certificateChainPem?: string;
  trustBundlePem?: string;
  spiffeId?: string;
  code?: string;
  message?: string;
}

/** Returns the `exchange` function `workloadCertificateIssuer()` takes. */
export function controlIdentityExchange(controlUrl: string, timeoutMs = 10_000): (request: ExchangeRequest) => Promise<ExchangedChain> {
  const url = new URL(EXCHANGE_PATH, controlUrl);
  return async (request) => {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    try {
      const response = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ token: request.token, csrPem: request.csrPem, clusterId: request.clusterId, agentId: request.agentId }),
        signal: controller.signal,
      });
      const body = (await response.json()) as ExchangeResponseJson;
      if (!response.ok || body.certificateChainPem === undefined) {
        throw new TetherError(body.code ?? 'EXCHANGE_FAILED', body.message ?? `identity exchange answered ${response.status}`);
      }
      return { chainPem: body.certificateChainPem, trustBundlePem: body.trustBundlePem ?? '', spiffeId: body.spiffeId ?? '' };
    } catch (reason) {
      if (reason instanceof TetherError) throw reason;
      throw new TetherError('EXCHANGE_UNREACHABLE', `identity exchange at ${url.origin}: ${getErrorMessage(reason)}`, { cause: reason });
    } finally {
      clearTimeout(timer);
    }
  };
}
