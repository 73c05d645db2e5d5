/** What a page is rendered with: the caller, the service (read-only), and the console's sources. */
import type { Operation, ResourceScope } from '../rbac.js';
import type { Caller, ControlService } from '../service.js';
import type { AgentTracker } from './agent-tracker.js';
import type { GatewayMetricsBoard } from './gateway-metrics.js';
import type { SafeHtml } from './html.js';

export interface PageContext {
  service: ControlService;
  /** The org this control plane serves (ControlConfig.org). */
  org: string;
  caller: Caller;
  now: number;
  url: URL;
  agents: AgentTracker | null;
  gateways: GatewayMetricsBoard;
  /** The RBAC graph's answer for the caller (not audited: reads only; actions are audited by the service). */
  may(operation: Operation, scope: ResourceScope): Promise<boolean>;
}

export interface RenderedPage {
  title: string;
  /** 200, or 403 when the caller may not read it, 404 for an unknown record. */
  status: number;
  controls?: SafeHtml;
  live: SafeHtml;
}
