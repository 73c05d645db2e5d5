import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { DevOidcIssuer } from '../../certs/dev-oidc-issuer.js';
import { parseControlConfig } from '../../control/config.js';
import { rotateKey } from '../../control/rotate-key.js';
import { ControlServer } from '../../control/server.js';
import { userCaller } from '../../control/service.js';
import { Keyring, newKek, readKeyFile, writeKeyFile } from '../../control/store/keyring.js';
import { SqliteStore } from '../../control/store/sqlite-store.js';
import { failOnLeaks } from '../helpers/leaks.js';

failOnLeaks(test);

const SECRET = 'rotate-secret-9e8d7c6b';

test('rotate-key with a key file: new primary, data keys re-wrapped while the server serves, old KEK retired, everything readable', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tether-control-rotate-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const keyFile = join(dir, 'kek.json');
  await writeKeyFile(keyFile, new Keyring([newKek('k1')]));
  const issuer = new DevOidcIssuer();
  const issuerUrl = await issuer.listen();
  t.teardown(() => issuer.close());
  const config = parseControlConfig(
    { org: 'acme', store: { path: 'control.db', keyFile: 'kek.json' }, grpc: { port: 0 }, http: { port: 0 }, auth: { issuers: [{ issuer: issuerUrl, audience: 'tether' }] }, bootstrapAdmins: ['alice'], scheduler: { enabled: false } },
    dir,
  );
  const server = await ControlServer.start(config);
  t.teardown(() => server.close());
  const alice = userCaller('alice');
  const scope = { org: 'acme', project: 'p', domain: 'd' };
  await server.service.registerCluster(alice, { org: 'acme', id: 'c1', mode: 'tunnel', endpoint: 'e.example', issuer: 'https://i', audience: 'a', allowedSubjects: ['s'] });
  await server.service.registerTask(alice, { ...scope, name: 't', version: 'v1', spec: { command: 'run', args: [], env: { KEY: SECRET }, timeoutSec: 0, maxOutputBytes: 0, description: '' } });
  const before = await server.service.createRun(alice, { ...scope, taskName: 't', taskVersion: 'v1', inputs: { a: 's3://b/k' }, env: { RUN_SECRET: SECRET } });

  const rotated = await rotateKey({ storePath: config.store.path, keyFile, newKeyId: 'k2' });
  t.is(rotated.primary, 'k2');
  t.true(rotated.rewrapped >= 5);
  t.deepEqual(Object.keys(rotated.usage), ['k2']);
  t.deepEqual((await readKeyFile(keyFile)).ids, ['k2', 'k1']);
  t.is((await readKeyFile(keyFile)).primaryId, 'k2');

  // The server keeps serving throughout, picks the key file up, and keeps reading and writing.
  await server.reloadKeys();
  const after = await server.service.createRun(alice, { ...scope, taskName: 't', taskVersion: 'v1', inputs: { a: 's3://b/k2' } });
  t.is((await server.service.getRun(alice, before.id)).spec.env.RUN_SECRET, SECRET);

  const retired = await rotateKey({ storePath: config.store.path, keyFile, rewrapOnly: true, retireOld: true });
  t.deepEqual(retired.retired, ['k1']);
  t.deepEqual((await readKeyFile(keyFile)).ids, ['k2']);
  t.false(readFileSync(keyFile, 'utf8').includes('"k1"'));

  // A process holding only k2 reads everything, old and new.
  const fresh = SqliteStore.open({ path: config.store.path, keyring: await readKeyFile(keyFile) });
  t.teardown(() => fresh.close());
  t.is((await fresh.getRun(before.id))?.spec.env.RUN_SECRET, SECRET);
  t.truthy(await fresh.getRun(after.id));
  t.is((await fresh.getTask(scope, 't', 'v1'))?.spec.env.KEY, SECRET);
  await server.drain(1_000);
});
