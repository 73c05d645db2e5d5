import test from 'ava';
import { OPERATIONS, RbacGraph, ROLES } from '../../control/rbac.js';
import type { Operation, Role } from '../../control/rbac.js';

/** The matrix, written out: which role may do which operation. */
const MATRIX: Record<Operation, Record<Role, boolean>> = {
  'task.read': { Viewer: true, Contributor: true, Admin: true, Gateway: false },
  'task.register': { Viewer: false, Contributor: true, Admin: true, Gateway: false },
  'run.read': { Viewer: true, Contributor: true, Admin: true, Gateway: false },
  'run.create': { Viewer: false, Contributor: true, Admin: true, Gateway: false },
  'run.abort': { Viewer: false, Contributor: true, Admin: true, Gateway: false },
  'run.report': { Viewer: false, Contributor: false, Admin: true, Gateway: false },
  'schedule.read': { Viewer: true, Contributor: true, Admin: true, Gateway: false },
  'schedule.write': { Viewer: false, Contributor: true, Admin: true, Gateway: false },
  'cluster.read': { Viewer: true, Contributor: true, Admin: true, Gateway: false },
  'cluster.select': { Viewer: true, Contributor: true, Admin: true, Gateway: false },
  'cluster.register': { Viewer: false, Contributor: false, Admin: true, Gateway: false },
  'cluster.delete': { Viewer: false, Contributor: false, Admin: true, Gateway: false },
  'cluster.watch': { Viewer: false, Contributor: false, Admin: true, Gateway: true },
  'rbac.read': { Viewer: false, Contributor: false, Admin: true, Gateway: false },
  'rbac.write': { Viewer: false, Contributor: false, Admin: true, Gateway: false },
  'audit.read': { Viewer: false, Contributor: false, Admin: true, Gateway: false },
  'data.read': { Viewer: true, Contributor: true, Admin: true, Gateway: false },
  'data.write': { Viewer: false, Contributor: true, Admin: true, Gateway: false },
};

const RESOURCE = { org: 'acme', project: 'p1', domain: 'dev' };

test('the matrix lists every operation', (t) => {
  t.deepEqual(Object.keys(MATRIX).sort(), [...OPERATIONS].sort());
});

for (const role of ROLES) {
  for (const operation of OPERATIONS) {
    const want = MATRIX[operation][role];
    test(`${role} ${want ? 'may' : 'may not'} ${operation}`, (t) => {
      const graph = new RbacGraph([{ id: 'b', principal: 'user:u', role, scope: { org: 'acme' } }], []);
      t.is(graph.authorize({ subject: 'u', groups: [] }, operation, RESOURCE).allowed, want);
      // Nobody else gets it through this binding.
      t.false(graph.authorize({ subject: 'someone-else', groups: [] }, operation, RESOURCE).allowed);
    });
  }
}

test('scope inheritance: org covers all; project covers its domains; domain covers that domain in every project; project+domain is exact', (t) => {
  const graph = new RbacGraph(
    [
      { id: '1', principal: 'user:org-admin', role: 'Admin', scope: { org: 'acme' } },
      { id: '2', principal: 'user:proj', role: 'Contributor', scope: { org: 'acme', project: 'p1' } },
      { id: '3', principal: 'user:dom', role: 'Contributor', scope: { org: 'acme', domain: 'prod' } },
      { id: '4', principal: 'user:pair', role: 'Contributor', scope: { org: 'acme', project: 'p1', domain: 'prod' } },
    ],
    [],
  );
  const may = (subject: string, resource: { org: string; project?: string; domain?: string }, operation: Operation = 'run.create'): boolean =>
    graph.authorize({ subject, groups: [] }, operation, resource).allowed;
  t.true(may('org-admin', { org: 'acme', project: 'p9', domain: 'x' }));
  t.false(may('org-admin', { org: 'other', project: 'p1', domain: 'dev' }));
  t.true(may('proj', { org: 'acme', project: 'p1', domain: 'dev' }));
  t.true(may('proj', { org: 'acme', project: 'p1', domain: 'prod' }));
  t.false(may('proj', { org: 'acme', project: 'p2', domain: 'dev' }));
  t.true(may('dom', { org: 'acme', project: 'p1', domain: 'prod' }));
  t.true(may('dom', { org: 'acme', project: 'p2', domain: 'prod' }));
  t.false(may('dom', { org: 'acme', project: 'p1', domain: 'dev' }));
  t.true(may('pair', { org: 'acme', project: 'p1', domain: 'prod' }));
  t.false(may('pair', { org: 'acme', project: 'p1', domain: 'dev' }));
  t.false(may('pair', { org: 'acme', project: 'p2', domain: 'prod' }));
  // Org-level resources: only org bindings reach them.
  t.true(may('org-admin', { org: 'acme' }, 'cluster.register'));
  t.false(may('proj', { org: 'acme' }, 'cluster.read'));
});

test('groups: graph memberships and token-asserted groups both count', (t) => {
  const graph = new RbacGraph(
    [{ id: '1', principal: 'group:ml', role: 'Contributor', scope: { org: 'acme', project: 'p1' } }],
    [{ id: 'm1', group: 'ml', user: 'bob' }],
  );
  t.true(graph.authorize({ subject: 'bob', groups: [] }, 'run.create', RESOURCE).allowed);
  t.true(graph.authorize({ subject: 'carol', groups: ['ml'] }, 'run.create', RESOURCE).allowed);
  t.false(graph.authorize({ subject: 'dave', groups: ['other'] }, 'run.read', RESOURCE).allowed);
  t.deepEqual(graph.authorize({ subject: 'bob', groups: [] }, 'run.read', RESOURCE).roles, ['Contributor']);
});
