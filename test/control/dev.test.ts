import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { DevOidcIssuer } from '../../certs/dev-oidc-issuer.js';
import { DEV_CONTROL_AUDIENCE, DEV_CONTROL_KEK_FILE, startDevControl } from '../../control/dev.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { createTestPki } from '../helpers/pki.js';

failOnLeaks(test);

test('startDevControl: state in one folder (KEK file 0600), the dev user is Admin, data survives a restart', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tether-control-dev-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const issuer = new DevOidcIssuer();
  const issuerUrl = await issuer.listen();
  t.teardown(() => issuer.close());
  const { ca } = await createTestPki();
  const call = async (port: number, path: string, body: unknown): Promise<Record<string, unknown>> => {
    const token = await issuer.mint({ subject: 'dev', audience: DEV_CONTROL_AUDIENCE });
    const response = await fetch(`http://127.0.0.1:${port}${path}`, { method: 'POST', headers: { authorization: `Bearer ${token}` }, body: JSON.stringify(body) });
    return (await response.json()) as Record<string, unknown>;
  };
  let server = await startDevControl({ stateDir: dir, issuerUrl, ca });
  t.is(statSync(join(dir, DEV_CONTROL_KEK_FILE)).mode & 0o777, 0o600);
  t.true(server.agentPort > 0);
  t.like(await call(server.httpPort, '/tether.control.v1.AccessService/WhoAmI', { scope: { org: 'dev' } }), { subject: 'dev', roles: ['Admin'] });
  t.like(await call(server.httpPort, '/tether.control.v1.TaskService/RegisterTask', { scope: { org: 'dev', project: 'demo', domain: 'development' }, name: 't', version: 'v1', spec: { command: 'cat', env: { K: 'v' } } }), { created: true });
  await server.drain(1_000);
  server = await startDevControl({ stateDir: dir, issuerUrl, ca });
  t.like(await call(server.httpPort, '/tether.control.v1.TaskService/GetTask', { scope: { org: 'dev', project: 'demo', domain: 'development' }, name: 't', version: 'v1' }), { task: { spec: { command: 'cat', env: { K: 'v' } } } });
  await server.drain(1_000);
});
