/**
 * One call through the API, whatever the transport: authenticate the bearer token, run the
 * handler (which authorises and audits), count the outcome. An unauthenticated call is audited
 * here, since no handler runs for it.
 */
import { Counter } from 'prom-client';
import type { Registry } from 'prom-client';
import { TetherError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import type { ApiMethod } from './api-handlers.js';
import { isClientError } from './api-status.js';
import type { Authenticator } from './auth.js';
import { ControlErrorCode } from './errors.js';
import type { Caller, ControlService } from './service.js';

const ANONYMOUS: Caller = { subject: 'anonymous', groups: [], name: 'anonymous' };

export interface DispatchContext {
  service: ControlService;
  authenticator: Authenticator;
  logger: Logger;
  metrics: Registry;
}

export type Dispatch = (method: ApiMethod, request: unknown, authorization: string | undefined) => Promise<unknown>;

export function createDispatch(context: DispatchContext): Dispatch {
  const requests = new Counter({
    name: 'tether_control_requests_total',
    help: 'Control-plane API calls by method and result code (OK or the error code).',
    labelNames: ['method', 'code'],
    registers: [context.metrics],
  });
  return async (method, request, authorization) => {
    let caller: Caller = ANONYMOUS;
    try {
      if (!method.public) caller = await context.authenticator.authenticate(authorization);
    } catch (reason) {
      const error = TetherError.from(reason, ControlErrorCode.UNAUTHENTICATED);
      requests.inc({ method: method.name, code: error.code });
      await context.service.auditRefusal('anonymous', method.name, error.code).catch(() => {});
      throw error;
    }
    try {
      const response = await method.handle(request, caller);
      requests.inc({ method: method.name, code: 'OK' });
      return response;
    } catch (reason) {
      const error = TetherError.from(reason);
      requests.inc({ method: method.name, code: error.code });
      if (!isClientError(error.code)) context.logger.error({ err: reason, method: method.name }, 'control API call failed');
      throw error;
    }
  };
}

/** What the caller is told: the message for known codes, a generic text otherwise. */
export function publicMessage(error: TetherError): string {
  return isClientError(error.code) ? error.rawMessage : 'internal error';
}
