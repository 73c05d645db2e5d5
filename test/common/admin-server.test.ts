import test from 'ava';
import { Counter } from 'prom-client';
import { AdminServer } from '../../common/admin-server.js';
import { createRegistry } from '../../common/metrics.js';
import { failOnLeaks } from '../helpers/leaks.js';

failOnLeaks(test);

test('serves /metrics from its own registry, /healthz, and /readyz with details', async (t) => {
  const registry = createRegistry({ defaultLabels: { component: 'test' } });
  const counter = new Counter({ name: 'tether_test_things_total', help: 'things', registers: [registry] });
  counter.inc(3);
  let ready = false;
  const admin = new AdminServer({ registry, readiness: () => ({ ready, details: { tunnels: ready ? 1 : 0 } }) });
  await admin.listen();
  t.teardown(() => admin.close());

  const metrics = await fetch(`${admin.url}/metrics`);
  t.is(metrics.status, 200);
  t.regex(await metrics.text(), /tether_test_things_total\{component="test"\} 3/);
  t.is((await fetch(`${admin.url}/healthz`)).status, 200);

  const notReady = await fetch(`${admin.url}/readyz`);
  t.is(notReady.status, 503);
  t.deepEqual(await notReady.json(), { ready: false, tunnels: 0 });
  ready = true;
  const nowReady = await fetch(`${admin.url}/readyz`);
  t.is(nowReady.status, 200);
  t.deepEqual(await nowReady.json(), { ready: true, tunnels: 1 });
  t.is((await fetch(`${admin.url}/nope`)).status, 404);
  t.is((await fetch(`${admin.url}/metrics`, { method: 'POST' })).status, 405);
});

test('two instances keep separate registries (no global default)', async (t) => {
  const a = createRegistry();
  const b = createRegistry();
  new Counter({ name: 'tether_dup_total', help: 'x', registers: [a] }).inc();
  t.notThrows(() => new Counter({ name: 'tether_dup_total', help: 'x', registers: [b] }));
  t.regex(await a.metrics(), /tether_dup_total 1/);
  t.regex(await b.metrics(), /tether_dup_total 0/);
});

test('close() is idempotent and releases the port', async (t) => {
  const admin = new AdminServer({ registry: createRegistry() });
  await admin.listen();
  const url = admin.url;
  await Promise.all([admin.close(), admin.close()]);
  await t.throwsAsync(fetch(`${url}/healthz`));
});
