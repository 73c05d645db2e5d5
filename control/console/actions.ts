/**
 * The console's actions, each a POST of a small JSON body to `/console/actions/<name>` (the
 * caller's session and CSRF token are checked before any of these runs). Aborting a run and
 * pausing or resuming a schedule go through the ControlService methods the API uses, which
 * authorise (run.abort, schedule.write) and audit. Revoking and reinstating an agent have no
 * service method: they are authorised here as `cluster.register` on the org (Admin) and audited
 * through `service.audit` as `agent.revoke` / `agent.reinstate`, refusals included.
 */
import { isTetherError, TetherError } from '../../common/errors.js';
import { ControlErrorCode } from '../errors.js';
import { describeScope } from '../rbac.js';
import type { AgentIdentity, Caller, ControlService } from '../service.js';
import { agentResource, REINSTATE_OPERATION, REVOKE_OPERATION } from './agent-tracker.js';
import type { AgentTracker } from './agent-tracker.js';
import { ConsoleErrorCode } from './errors.js';

export interface ActionContext {
  service: ControlService;
  org: string;
  caller: Caller;
  agents: AgentTracker | null;
}

export type ActionResult = Record<string, string | boolean | number>;

function badRequest(message: string): TetherError {
  return new TetherError(ConsoleErrorCode.BAD_REQUEST, message);
}

function stringField(body: Record<string, unknown>, name: string, optional = false): string {
  const value = body[name];
  if (value === undefined && optional) return '';
  if (typeof value !== 'string' || (value === '' && !optional)) throw badRequest(`"${name}" must be a non-empty string`);
  if (value.length > 1024) throw badRequest(`"${name}" is longer than 1024 characters`);
  return value;
}

function agentOf(body: Record<string, unknown>): AgentIdentity {
  return { clusterId: stringField(body, 'clusterId'), agentId: stringField(body, 'agentId') };
}

/** Authorise (cluster.register on the org), apply, audit whatever the outcome. */
async function agentAction(context: ActionContext, operation: string, agent: AgentIdentity, apply: (tracker: AgentTracker) => void): Promise<ActionResult> {
  const scope = { org: context.org };
  let result = 'OK';
  try {
    if (!(await context.service.authorize(context.caller, 'cluster.register', scope))) {
      throw new TetherError(ControlErrorCode.PERMISSION_DENIED, `${context.caller.name} may not cluster.register on ${describeScope(scope)}`, {
        details: { operation: 'cluster.register', resource: describeScope(scope) },
      });
    }
    const tracker = context.agents;
    if (tracker === null) throw new TetherError(ConsoleErrorCode.AGENT_UNKNOWN, "this control plane has no agents' channel");
    const cluster = await context.service.store.getCluster(agent.clusterId);
    if (cluster === undefined || cluster.org !== context.org) throw new TetherError(ControlErrorCode.NOT_FOUND, `cluster ${agent.clusterId} not found`);
    if (!tracker.knows(agent)) throw new TetherError(ConsoleErrorCode.AGENT_UNKNOWN, `agent ${agent.agentId} of cluster ${agent.clusterId} has not been seen by this control plane`);
    apply(tracker);
    return { ok: true, clusterId: agent.clusterId, agentId: agent.agentId };
  } catch (reason) {
    result = isTetherError(reason) ? reason.code : 'INTERNAL';
    throw reason;
  } finally {
    await context.service.audit({ principal: context.caller.name, operation, resource: agentResource(context.org, agent), result });
  }
}

export const ACTIONS: Readonly<Record<string, (context: ActionContext, body: Record<string, unknown>) => Promise<ActionResult>>> = {
  'abort-run': async (context, body) => {
    const runId = stringField(body, 'runId');
    const reason = stringField(body, 'reason', true);
    const run = await context.service.abortRun(context.caller, runId, reason === '' ? `aborted from the console by ${context.caller.name}` : reason);
    return { ok: true, runId: run.id, phase: run.phase };
  },
  'set-schedule-active': async (context, body) => {
    const id = stringField(body, 'id');
    if (typeof body.active !== 'boolean') throw badRequest('"active" must be true or false');
    const schedule = await context.service.setScheduleActive(context.caller, id, body.active);
    return { ok: true, id: schedule.id, active: schedule.active };
  },
  'revoke-agent': async (context, body) => {
    const agent = agentOf(body);
    return agentAction(context, REVOKE_OPERATION, agent, (tracker) => tracker.revoke(agent, context.caller.name));
  },
  'reinstate-agent': async (context, body) => {
    const agent = agentOf(body);
    return agentAction(context, REINSTATE_OPERATION, agent, (tracker) => tracker.reinstate(agent));
  },
};
