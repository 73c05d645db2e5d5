import { randomBytes } from 'node:crypto';
import { chmod, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { createDataproxyHandler, Dataproxy, downloadToFile, FsBlobStore, loadSigningKeys, OwnedHttpServer, signQuery, startEmbeddedDataproxy, uploadStream, verifyQuery } from '../../agent/dataproxy/index.js';
import { createRegistry } from '../../common/metrics.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { createTestPki } from '../helpers/pki.js';
import { IDENTITY, md5, pathOf, raw } from './dataproxy-fixture.js';
import { Readable } from 'node:stream';

failOnLeaks(test);

test('signing keys: created 0600 on first use, stable after, refused when exposed or short', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'tether-keys-'));
  try {
    const file = join(dir, 'dataproxy.keys');
    await t.throwsAsync(loadSigningKeys(file), { message: /DATAPROXY_KEY_FILE/ });
    const [first] = await loadSigningKeys(file, { create: true });
    t.is(first?.length, 32);
    t.is((await stat(file)).mode & 0o777, 0o600);
    t.deepEqual(await loadSigningKeys(file), [first]);
    await chmod(file, 0o644);
    await t.throwsAsync(loadSigningKeys(file), { message: /readable by group or others/ });
    await writeFile(file, `${randomBytes(16).toString('base64')}\n`, { mode: 0o600 });
    await chmod(file, 0o600);
    await t.throwsAsync(loadSigningKeys(file), { message: /at least 32 bytes/ });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('key rotation: a URL signed with the previous key verifies while that key is still in the keyring', (t) => {
  const oldKey = randomBytes(32);
  const newKey = randomBytes(32);
  const query = signQuery(oldKey, { method: 'GET', bucket: 'b', key: 'k', expires: 2_000_000_000 });
  t.notThrows(() => verifyQuery([newKey, oldKey], 'b', 'k', query, 'GET', Date.now()));
  t.throws(() => verifyQuery([newKey], 'b', 'k', query, 'GET', Date.now()), { message: /DATAPROXY_SIGNATURE_INVALID/ });
  t.throws(() => verifyQuery([oldKey], 'other-bucket', 'k', query, 'GET', Date.now()), { message: /DATAPROXY_SIGNATURE_INVALID/ });
});

test('embedded: API, blob server and store in one call; a link to an object deleted since gets 404', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'tether-embedded-'));
  const registry = createRegistry();
  const embedded = await startEmbeddedDataproxy({ root: join(dir, 'blobs'), bucket: 'dev', signingKeys: [randomBytes(32)], clusterId: 'c1', registry });
  try {
    const body = 'embedded bytes';
    const request = JSON.stringify({ project: 'p', domain: 'd', filename: 'x.txt', contentMd5: md5(body) });
    const location = await raw(embedded.api.url, 'POST', '/tether.dataproxy.v1.DataProxyService/CreateUploadLocation', { ...IDENTITY, 'content-length': Buffer.byteLength(request) }, request);
    t.is(location.status, 200, location.body);
    const put = await uploadStream(location.json.signedUrl as string, { ...(location.json.headers as Record<string, string>), 'content-length': body.length }, Readable.from([Buffer.from(body)]));
    t.is(put.status, 201, put.body);
    const uri = location.json.nativeUrl as string;
    t.true(uri.startsWith('tether-blob://dev/uploads/p/d/'));
    const link = await embedded.dataproxy.createDownloadLink({ uri });
    t.is((await raw(embedded.blobs.url, 'GET', pathOf(link.signedUrl))).body, body);
    await rm(join(embedded.store.root, 'objects', ...uri.replace('tether-blob://dev/', '').split('/')));
    const gone = await raw(embedded.blobs.url, 'GET', pathOf(link.signedUrl));
    t.is(gone.status, 404);
    t.is(gone.json.code, 'DATAPROXY_NOT_FOUND');
    t.true(embedded.store instanceof FsBlobStore);
    t.regex(await registry.metrics(), /tether_blob_requests_total\{method="GET",code="DATAPROXY_NOT_FOUND"\} 1/);
  } finally {
    await embedded.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('the authorize hook decides per subject and operation after the gateway', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'tether-authz-'));
  const store = new FsBlobStore(dir);
  await store.init();
  const asked: string[] = [];
  const dataproxy = new Dataproxy({ store, bucket: 'b', publicUrl: 'http://127.0.0.1:1', signingKeys: [randomBytes(32)] });
  const server = new OwnedHttpServer(
    createDataproxyHandler(dataproxy, {
      authorize: (request) => {
        asked.push(`${request.subject} ${request.operation} ${request.project ?? request.uri ?? ''}`);
        return request.subject === 'alice@example.com';
      },
    }),
  );
  await server.listen();
  try {
    const body = JSON.stringify({ project: 'p', domain: 'd', contentMd5: md5('x') });
    const allowed = await raw(server.url, 'POST', '/tether.dataproxy.v1.DataProxyService/CreateUploadLocation', { ...IDENTITY, 'content-length': body.length }, body);
    t.is(allowed.status, 200, allowed.body);
    const denied = await raw(server.url, 'POST', '/tether.dataproxy.v1.DataProxyService/CreateUploadLocation', { ...IDENTITY, 'tether-subject': 'mallory', 'content-length': body.length }, body);
    t.is(denied.status, 403);
    t.is(denied.json.code, 'DATAPROXY_PERMISSION_DENIED');
    t.deepEqual(asked, ['alice@example.com data.write p', 'mallory data.write p']);
  } finally {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('the blob server over TLS: transfers with the right roots succeed, an untrusting client is refused', async (t) => {
  const pki = await createTestPki();
  const tls = await pki.gatewayCert();
  const dir = await mkdtemp(join(tmpdir(), 'tether-blob-tls-'));
  const embedded = await startEmbeddedDataproxy({ root: join(dir, 'blobs'), signingKeys: [randomBytes(32)], blobTls: { key: tls.key, cert: tls.cert } });
  try {
    t.true(embedded.blobs.url.startsWith('https://127.0.0.1:'));
    const body = Buffer.from('over tls');
    const location = await embedded.dataproxy.createUploadLocationForUri({ uri: 'tether-blob://local/tls/x', contentMd5: md5(body) });
    t.true(location.signedUrl.startsWith('https://'));
    await t.throwsAsync(uploadStream(location.signedUrl, { ...location.headers, 'content-length': body.length }, Readable.from([body])), { message: /certificate/ });
    const put = await uploadStream(location.signedUrl, { ...location.headers, 'content-length': body.length }, Readable.from([body]), { ca: pki.trustBundlePem });
    t.is(put.status, 201, put.body);
    const link = await embedded.dataproxy.createDownloadLink({ uri: location.nativeUrl });
    const target = join(dir, 'x');
    t.deepEqual(await downloadToFile(link.signedUrl, target, { ca: pki.trustBundlePem }), { size: body.length, md5: md5(body) });
  } finally {
    await embedded.close();
    await rm(dir, { recursive: true, force: true });
  }
});
