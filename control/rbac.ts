/**
 * The RBAC graph: users, groups (membership edges user → group), the built-in roles and role
 * bindings on a scope. Pure; the store persists the entries (sealed) and the service caches a
 * graph per store revision. The gateway's authorizer asks the same graph with `data.read` /
 * `data.write` on a cluster's project scope.
 *
 * Scopes and inheritance: a binding's scope is `{org}`, `{org, project}`, `{org, domain}` or
 * `{org, project, domain}`; it applies to a resource when every field the binding names equals
 * the resource's. So an org binding covers every project and domain, a project binding covers
 * all of the project's domains, a domain binding (e.g. `production`) covers that domain in every
 * project, and a project+domain binding covers exactly that pair. Org-level resources (clusters,
 * the RBAC graph, the audit log) are reached only by org bindings.
 *
 * Roles (cumulative): Viewer reads; Contributor also registers tasks, creates and aborts runs,
 * manages schedules and writes data; Admin may do everything, including clusters, RBAC, audit and
 * reporting phase events on a cluster's behalf. Gateway stands apart: it may only follow the
 * org's cluster list and modes (`cluster.watch`, the gateway replicas' watch stream).
 */

export const OPERATIONS = [
  'task.read',
  'task.register',
  'run.read',
  'run.create',
  'run.abort',
  'run.report',
  'schedule.read',
  'schedule.write',
  'cluster.read',
  'cluster.select',
  'cluster.register',
  'cluster.delete',
  'cluster.watch',
  'rbac.read',
  'rbac.write',
  'audit.read',
  'data.read',
  'data.write',
] as const;

export type Operation = (typeof OPERATIONS)[number];

export const ROLES = ['Viewer', 'Contributor', 'Admin', 'Gateway'] as const;
export type Role = (typeof ROLES)[number];

const VIEWER: readonly Operation[] = ['task.read', 'run.read', 'schedule.read', 'cluster.read', 'cluster.select', 'data.read'];
const CONTRIBUTOR: readonly Operation[] = [...VIEWER, 'task.register', 'run.create', 'run.abort', 'schedule.write', 'data.write'];

export const ROLE_OPERATIONS: Readonly<Record<Role, ReadonlySet<Operation>>> = {
  Viewer: new Set(VIEWER),
  Contributor: new Set(CONTRIBUTOR),
  Admin: new Set(OPERATIONS),
  Gateway: new Set<Operation>(['cluster.watch']),
};

export function isRole(value: string): value is Role {
  return (ROLES as readonly string[]).includes(value);
}

export function isOperation(value: string): value is Operation {
  return (OPERATIONS as readonly string[]).includes(value);
}

export interface ResourceScope {
  org: string;
  project?: string;
  domain?: string;
}

export interface Binding {
  id: string;
  /** `user:<subject>` or `group:<name>`. */
  principal: string;
  role: Role;
  scope: ResourceScope;
}

export interface Membership {
  id: string;
  group: string;
  user: string;
}

export interface Principal {
  /** The token's subject (or an internal name such as `system:scheduler`). */
  subject: string;
  /** Groups the token asserts, added to the graph's memberships. */
  groups: readonly string[];
}

export interface Decision {
  allowed: boolean;
  /** The roles that apply to the principal on this resource. */
  roles: Role[];
}

function covers(binding: ResourceScope, resource: ResourceScope): boolean {
  if (binding.org !== resource.org) return false;
  if (binding.project !== undefined && binding.project !== resource.project) return false;
  if (binding.domain !== undefined && binding.domain !== resource.domain) return false;
  return true;
}

export function describeScope(scope: ResourceScope): string {
  return [`org/${scope.org}`, scope.project === undefined ? '' : `project/${scope.project}`, scope.domain === undefined ? '' : `domain/${scope.domain}`]
    .filter((part) => part !== '')
    .join('/');
}

export class RbacGraph {
  readonly bindings: readonly Binding[];
  readonly #groupsOf = new Map<string, Set<string>>();

  constructor(bindings: readonly Binding[], memberships: readonly Membership[]) {
    this.bindings = bindings;
    for (const { user, group } of memberships) {
      let groups = this.#groupsOf.get(user);
      if (groups === undefined) this.#groupsOf.set(user, (groups = new Set()));
      groups.add(group);
    }
  }

  /** `user:<subject>` and `group:<g>` for every group the principal is in (graph or token). */
  principalNames(principal: Principal): Set<string> {
    const names = new Set([`user:${principal.subject}`]);
    for (const group of principal.groups) names.add(`group:${group}`);
    for (const group of this.#groupsOf.get(principal.subject) ?? []) names.add(`group:${group}`);
    return names;
  }

  rolesOn(principal: Principal, resource: ResourceScope): Role[] {
    const names = this.principalNames(principal);
    const roles = new Set<Role>();
    for (const binding of this.bindings) if (names.has(binding.principal) && covers(binding.scope, resource)) roles.add(binding.role);
    return ROLES.filter((role) => roles.has(role));
  }

  authorize(principal: Principal, operation: Operation, resource: ResourceScope): Decision {
    const roles = this.rolesOn(principal, resource);
    return { allowed: roles.some((role) => ROLE_OPERATIONS[role].has(operation)), roles };
  }
}
