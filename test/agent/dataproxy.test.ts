import { request } from 'node:http';
import anyTest from 'ava';
import type { TestFn } from 'ava';
import { failOnLeaks } from '../helpers/leaks.js';
import { apiCall, IDENTITY, md5, pathOf, raw, startFixture } from './dataproxy-fixture.js';
import type { Fixture } from './dataproxy-fixture.js';

const test = anyTest as TestFn<{ fixture: Fixture }>;
failOnLeaks(test);

test.beforeEach(async (t) => {
  t.context.fixture = await startFixture({ maxUploadBytes: 1024 * 1024, clusterId: 'c1' });
});
test.afterEach.always(async (t) => {
  await t.context.fixture.close();
});

const BODY = Buffer.from('hello, data plane\n');

async function uploadLocation(fixture: Fixture, body: Record<string, unknown> = {}): Promise<{ signedUrl: string; nativeUrl: string; headers: Record<string, string>; expiresAt: string }> {
  const res = await apiCall(fixture, 'CreateUploadLocation', { project: 'p1', domain: 'dev', filename: 'greeting.txt', contentMd5: md5(BODY), ...body });
  if (res.status !== 200) throw new Error(`upload location refused: ${res.body}`);
  return res.json as unknown as { signedUrl: string; nativeUrl: string; headers: Record<string, string>; expiresAt: string };
}

async function put(fixture: Fixture, path: string, body: Buffer, headers: Record<string, string | number> = { 'content-md5': md5(body) }): ReturnType<typeof raw> {
  return raw(fixture.blobs.url, 'PUT', path, { 'content-length': body.length, ...headers }, body);
}

test('upload through a signed PUT, then download through a signed GET', async (t) => {
  const { fixture } = t.context;
  const location = await uploadLocation(fixture);
  t.regex(location.nativeUrl, /^tether-blob:\/\/dp1\/uploads\/p1\/dev\/[a-z2-7]{26}\/greeting\.txt$/);
  t.deepEqual(location.headers, { 'content-md5': md5(BODY) });
  t.true(Date.parse(location.expiresAt) - fixture.clock.now <= 3600_000 + 1000);
  const stored = await put(fixture, pathOf(location.signedUrl), BODY, location.headers);
  t.is(stored.status, 201, stored.body);
  const link = await apiCall(fixture, 'CreateDownloadLink', { uri: location.nativeUrl, expiresInSec: 60 });
  t.is(link.status, 200, link.body);
  t.is(link.json.contentLength, BODY.length);
  t.is(link.json.contentMd5, md5(BODY));
  const got = await raw(fixture.blobs.url, 'GET', pathOf(link.json.signedUrl as string));
  t.is(got.status, 200);
  t.is(got.body, BODY.toString());
  t.is(got.headers['content-md5'], md5(BODY));
  const head = await raw(fixture.blobs.url, 'HEAD', pathOf(link.json.signedUrl as string));
  t.is(head.status, 200);
  t.is(head.headers['content-length'], String(BODY.length));
  const metrics = await fixture.registry.metrics();
  t.regex(metrics, /tether_blob_bytes_total\{direction="in"\} 18/);
  t.regex(metrics, /tether_dataproxy_requests_total\{operation="create_download_link",code="OK"\} 1/);
});

test('tampering with path, expiry, method, MD5 or signature is refused, each with its code', async (t) => {
  const { fixture } = t.context;
  const location = await uploadLocation(fixture);
  const url = new URL(location.signedUrl);
  const path = url.pathname;
  const q = url.searchParams;
  const withParam = (name: string, value: string): string => {
    const copy = new URLSearchParams(q);
    copy.set(name, value);
    return `${path}?${copy.toString()}`;
  };
  const otherPath = await put(fixture, `${path.replace('greeting.txt', 'other.txt')}?${q.toString()}`, BODY);
  t.is(otherPath.status, 403);
  t.is(otherPath.json.code, 'DATAPROXY_SIGNATURE_INVALID');
  t.is(otherPath.headers['tether-error'], 'DATAPROXY_SIGNATURE_INVALID');

  const longer = await put(fixture, withParam('x-expires', String(Number(q.get('x-expires')) + 3600)), BODY);
  t.is(longer.json.code, 'DATAPROXY_SIGNATURE_INVALID');
  t.is(longer.status, 403);

  const asGet = await put(fixture, withParam('x-method', 'GET'), BODY);
  t.is(asGet.json.code, 'DATAPROXY_SIGNATURE_INVALID');

  const sig = q.get('x-sig') ?? '';
  // Change the first character (the last one of 43 has two bits that decode to nothing).
  const flipped = `${sig.startsWith('A') ? 'B' : 'A'}${sig.slice(1)}`;
  const badSig = await put(fixture, withParam('x-sig', flipped), BODY);
  t.is(badSig.json.code, 'DATAPROXY_SIGNATURE_INVALID');
  // The same MAC in a non-canonical encoding (spare bits of the last character set) is refused too.
  const last = sig.at(-1) ?? 'A';
  const spare = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  const malleable = `${sig.slice(0, -1)}${spare[spare.indexOf(last) ^ 1]}`;
  const nonCanonical = await put(fixture, withParam('x-sig', malleable), BODY);
  t.is(nonCanonical.json.code, 'DATAPROXY_SIGNATURE_INVALID');
  const shortSig = await put(fixture, withParam('x-sig', 'abc'), BODY);
  t.is(shortSig.json.code, 'DATAPROXY_SIGNATURE_INVALID');
  const noSig = await put(fixture, path, BODY);
  t.is(noSig.json.code, 'DATAPROXY_SIGNATURE_INVALID');

  const otherMd5 = await put(fixture, withParam('x-md5', md5('other')), Buffer.from('other'));
  t.is(otherMd5.json.code, 'DATAPROXY_SIGNATURE_INVALID');

  // A PUT URL used with GET: intact signature, wrong method.
  const wrongMethod = await raw(fixture.blobs.url, 'GET', pathOf(location.signedUrl));
  t.is(wrongMethod.status, 405);
  t.is(wrongMethod.json.code, 'DATAPROXY_METHOD_NOT_ALLOWED');
  const deleted = await raw(fixture.blobs.url, 'DELETE', pathOf(location.signedUrl));
  t.is(deleted.status, 405);

  // Nothing was stored by any of these.
  t.is(await fixture.store.stat(location.nativeUrl.replace('tether-blob://dp1/', '')), null);

  // And a GET URL cannot upload.
  t.is((await put(fixture, pathOf(location.signedUrl), BODY)).status, 201);
  const link = await apiCall(fixture, 'CreateDownloadLink', { uri: location.nativeUrl });
  const upload = await put(fixture, pathOf(link.json.signedUrl as string), BODY);
  t.is(upload.status, 405);
  t.is(upload.json.code, 'DATAPROXY_METHOD_NOT_ALLOWED');
});

test('an expired URL is refused (and a forged expiry is a bad signature)', async (t) => {
  const { fixture } = t.context;
  const location = await uploadLocation(fixture, { expiresInSec: 60 });
  fixture.clock.now += 61_000;
  const expired = await put(fixture, pathOf(location.signedUrl), BODY, location.headers);
  t.is(expired.status, 403);
  t.is(expired.json.code, 'DATAPROXY_URL_EXPIRED');
  fixture.clock.now -= 2_000;
  t.is((await put(fixture, pathOf(location.signedUrl), BODY, location.headers)).status, 201);
  const tooLong = await apiCall(fixture, 'CreateUploadLocation', { project: 'p1', domain: 'dev', contentMd5: md5(BODY), expiresInSec: 3601 });
  t.is(tooLong.status, 400);
  t.is(tooLong.json.code, 'DATAPROXY_INVALID_ARGUMENT');
});

test('MD5: a wrong Content-MD5 header and bytes that do not match are refused', async (t) => {
  const { fixture } = t.context;
  const location = await uploadLocation(fixture);
  const path = pathOf(location.signedUrl);
  const noHeader = await put(fixture, path, BODY, {});
  t.is(noHeader.status, 400);
  t.is(noHeader.json.code, 'DATAPROXY_MD5_MISMATCH');
  const otherBytes = Buffer.from('HELLO, DATA PLANE\n');
  const mismatch = await put(fixture, path, otherBytes, location.headers);
  t.is(mismatch.status, 400);
  t.is(mismatch.json.code, 'DATAPROXY_MD5_MISMATCH');
  t.is(await fixture.store.stat(location.nativeUrl.replace('tether-blob://dp1/', '')), null);
  const badMd5 = await apiCall(fixture, 'CreateUploadLocation', { project: 'p1', domain: 'dev', contentMd5: 'not-an-md5' });
  t.is(badMd5.json.code, 'DATAPROXY_INVALID_ARGUMENT');
});

test('never overwrite: other content is refused with 409, the same content is idempotent', async (t) => {
  const { fixture } = t.context;
  const first = await uploadLocation(fixture, { filenameRoot: 'fixed' });
  t.is((await put(fixture, pathOf(first.signedUrl), BODY, first.headers)).status, 201);
  const again = await uploadLocation(fixture, { filenameRoot: 'fixed' });
  t.is(again.nativeUrl, first.nativeUrl);
  const repeat = await put(fixture, pathOf(again.signedUrl), BODY, again.headers);
  t.is(repeat.status, 200);
  t.is(repeat.json.created, false);
  const other = Buffer.from('different content');
  const refused = await apiCall(fixture, 'CreateUploadLocation', { project: 'p1', domain: 'dev', filenameRoot: 'fixed', filename: 'greeting.txt', contentMd5: md5(other) });
  t.is(refused.status, 409);
  t.is(refused.json.code, 'DATAPROXY_OBJECT_EXISTS');
  const stored = await fixture.store.stat(first.nativeUrl.replace('tether-blob://dp1/', ''));
  t.is(stored?.md5, md5(BODY));
  // A URL issued while the key was free is refused by the blob server once the key is taken.
  const early = await fixture.dataproxy.createUploadLocationForUri({ uri: 'tether-blob://dp1/late/x', contentMd5: md5(other) });
  const winner = await fixture.dataproxy.createUploadLocationForUri({ uri: 'tether-blob://dp1/late/x', contentMd5: md5(BODY) });
  t.is((await put(fixture, pathOf(winner.signedUrl), BODY, winner.headers)).status, 201);
  const late = await put(fixture, pathOf(early.signedUrl), other, early.headers);
  t.is(late.status, 409);
  t.is(late.json.code, 'DATAPROXY_OBJECT_EXISTS');
  t.is((await fixture.store.stat('late/x'))?.md5, md5(BODY));
});

test('two racing uploads of different content to one key: one wins, the other gets 409', async (t) => {
  const { fixture } = t.context;
  const a = Buffer.from('aaaa');
  const b = Buffer.from('bbbb');
  const la = await fixture.dataproxy.createUploadLocationForUri({ uri: 'tether-blob://dp1/race/x', contentMd5: md5(a) });
  const lb = await fixture.dataproxy.createUploadLocationForUri({ uri: 'tether-blob://dp1/race/x', contentMd5: md5(b) });
  const results = await Promise.all([put(fixture, pathOf(la.signedUrl), a, la.headers), put(fixture, pathOf(lb.signedUrl), b, lb.headers)]);
  t.deepEqual(results.map((r) => r.status).sort(), [201, 409]);
});

test('path traversal and malformed keys are refused', async (t) => {
  const { fixture } = t.context;
  for (const path of ['/o/../../etc/passwd', '/o/a/%2e%2e/%2e%2e/etc/passwd', '/o/a%2F..%2F..%2Fetc', '/o/.hidden', '/o/a//b', '/o/', '/o/a/b%00c', '/x/y']) {
    const res = await raw(fixture.blobs.url, 'GET', `${path}?x-method=GET&x-expires=9999999999&x-sig=AAAA`);
    t.is(res.status, 400, path);
    t.is(res.json.code, 'DATAPROXY_BAD_KEY', path);
  }
  for (const uri of ['tether-blob://dp1/../x', 'tether-blob://dp1/a/./b', 'tether-blob://dp1/a\\..\\b']) {
    const res = await apiCall(fixture, 'CreateDownloadLink', { uri });
    t.is(res.json.code, 'DATAPROXY_BAD_KEY', uri);
  }
  const project = await apiCall(fixture, 'CreateUploadLocation', { project: '..', domain: 'dev', contentMd5: md5(BODY) });
  t.is(project.json.code, 'DATAPROXY_BAD_KEY');
  const filename = await apiCall(fixture, 'CreateUploadLocation', { project: 'p', domain: 'dev', filename: '../../x', contentMd5: md5(BODY) });
  t.is(filename.json.code, 'DATAPROXY_BAD_KEY');
  const otherBucket = await apiCall(fixture, 'CreateDownloadLink', { uri: 'tether-blob://elsewhere/a' });
  t.is(otherBucket.json.code, 'DATAPROXY_BAD_URI');
  const s3 = await apiCall(fixture, 'CreateDownloadLink', { uri: 's3://bucket/a' });
  t.is(s3.json.code, 'DATAPROXY_BAD_URI');
});

test('missing object: the download link is refused with 404', async (t) => {
  const res = await apiCall(t.context.fixture, 'CreateDownloadLink', { uri: 'tether-blob://dp1/uploads/none' });
  t.is(res.status, 404);
  t.is(res.json.code, 'DATAPROXY_NOT_FOUND');
});

test('too large: by declared length, by signed length, and by streamed size', async (t) => {
  const { fixture } = t.context;
  const big = Buffer.alloc(1024 * 1024 + 1, 7);
  const byRequest = await apiCall(fixture, 'CreateUploadLocation', { project: 'p', domain: 'd', contentMd5: md5(big), contentLength: big.length });
  t.is(byRequest.status, 413);
  t.is(byRequest.json.code, 'DATAPROXY_TOO_LARGE');
  const location = await fixture.dataproxy.createUploadLocationForUri({ uri: 'tether-blob://dp1/big', contentMd5: md5(big) });
  const declared = await put(fixture, pathOf(location.signedUrl), big, location.headers);
  t.is(declared.status, 413);
  t.is(declared.json.code, 'DATAPROXY_TOO_LARGE');
  // Chunked (no Content-Length): refused once the streamed bytes pass the limit.
  const chunked = await raw(fixture.blobs.url, 'PUT', pathOf(location.signedUrl), { ...location.headers, 'transfer-encoding': 'chunked' }, big);
  t.is(chunked.status, 413);
  t.is(await fixture.store.stat('big'), null);
  const small = Buffer.from('12345');
  const sized = await fixture.dataproxy.createUploadLocationForUri({ uri: 'tether-blob://dp1/sized', contentMd5: md5(small), contentLength: 4 });
  t.is(sized.headers['content-length'], '4');
  const overSigned = await put(fixture, pathOf(sized.signedUrl), small, { 'content-md5': md5(small) });
  t.is(overSigned.json.code, 'DATAPROXY_TOO_LARGE');
});

test('the API trusts only the gateway identity headers and the cluster it serves', async (t) => {
  const { fixture } = t.context;
  const body = { project: 'p', domain: 'd', contentMd5: md5(BODY) };
  const none = await apiCall(fixture, 'CreateUploadLocation', body, {});
  t.is(none.status, 401);
  t.is(none.json.code, 'DATAPROXY_UNAUTHENTICATED');
  const noCluster = await apiCall(fixture, 'CreateUploadLocation', body, { 'tether-subject': 'alice' });
  t.is(noCluster.json.code, 'DATAPROXY_UNAUTHENTICATED');
  const other = await apiCall(fixture, 'CreateUploadLocation', body, { ...IDENTITY, 'tether-cluster': 'c2' });
  t.is(other.status, 403);
  t.is(other.json.code, 'DATAPROXY_WRONG_CLUSTER');
  const notJson = await raw(fixture.api.url, 'POST', '/tether.dataproxy.v1.DataProxyService/CreateUploadLocation', IDENTITY, '{');
  t.is(notJson.json.code, 'DATAPROXY_INVALID_ARGUMENT');
  const missing = await apiCall(fixture, 'CreateUploadLocation', { domain: 'd', contentMd5: md5(BODY) });
  t.is(missing.json.code, 'DATAPROXY_INVALID_ARGUMENT');
  const route = await raw(fixture.api.url, 'POST', '/tether.dataproxy.v1.DataProxyService/Nope', IDENTITY, '{}');
  t.is(route.status, 404);
  t.is(route.json.code, 'DATAPROXY_NO_ROUTE');
});

/** A PUT with `Expect: 100-continue`: the body is sent only if the server says continue. */
function putExpectingContinue(base: string, path: string, headers: Record<string, string | number>, body: Buffer): Promise<{ status: number; code: string | undefined; sentBody: boolean }> {
  const target = new URL(base);
  return new Promise((resolve, reject) => {
    let sentBody = false;
    const req = request({ host: target.hostname, port: target.port, method: 'PUT', path, headers: { ...headers, expect: '100-continue', 'content-length': body.length }, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => {
        const json = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}') as { code?: string };
        resolve({ status: res.statusCode ?? 0, code: json.code, sentBody });
      });
    });
    req.on('continue', () => {
      sentBody = true;
      req.end(body);
    });
    req.on('error', reject);
    req.flushHeaders();
  });
}

test('Expect: 100-continue: refusals come before the body is sent; accepted uploads continue', async (t) => {
  const { fixture } = t.context;
  const location = await uploadLocation(fixture);
  const url = new URL(location.signedUrl);
  url.searchParams.set('x-sig', 'A'.repeat(43));
  const forged = await putExpectingContinue(fixture.blobs.url, url.pathname + url.search, location.headers, BODY);
  t.deepEqual(forged, { status: 403, code: 'DATAPROXY_SIGNATURE_INVALID', sentBody: false });
  const wrongMd5 = await putExpectingContinue(fixture.blobs.url, pathOf(location.signedUrl), { 'content-md5': md5('x') }, BODY);
  t.deepEqual(wrongMd5, { status: 400, code: 'DATAPROXY_MD5_MISMATCH', sentBody: false });
  const ok = await putExpectingContinue(fixture.blobs.url, pathOf(location.signedUrl), location.headers, BODY);
  t.deepEqual(ok, { status: 201, code: undefined, sentBody: true });
});

test('a refusal arrives while the client is still sending a 4 MiB body', async (t) => {
  const { fixture } = t.context;
  const big = Buffer.alloc(4 * 1024 * 1024, 1);
  const location = await fixture.dataproxy.createUploadLocationForUri({ uri: 'tether-blob://dp1/refused', contentMd5: md5('something else') });
  // Declared length within limits, wrong bytes: the MD5 header check refuses before reading.
  const res = await raw(fixture.blobs.url, 'PUT', pathOf(location.signedUrl), { 'content-md5': md5(big), 'content-length': big.length }, big);
  t.is(res.status, 400);
  t.is(res.json.code, 'DATAPROXY_MD5_MISMATCH');
});
