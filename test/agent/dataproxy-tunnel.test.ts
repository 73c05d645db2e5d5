/**
 * The dataproxy API behind the real tunnel: the client reaches it through the gateway, which
 * verifies the token and injects the identity headers the API trusts (a client-sent one is
 * stripped); the bytes then go straight to the blob server with the signed URLs (channel 7).
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import test from 'ava';
import { API_PREFIX, startEmbeddedDataproxy } from '../../agent/dataproxy/index.js';
import type { DataAccessRequest, EmbeddedDataproxy } from '../../agent/dataproxy/index.js';
import { uploadStream } from '../../agent/dataproxy/index.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { h1Request } from '../helpers/tunnel-clients.js';
import { startTunnelEnv } from '../helpers/tunnel-env.js';
import type { TunnelEnv } from '../helpers/tunnel-env.js';
import { md5, pathOf, raw } from './dataproxy-fixture.js';

failOnLeaks(test);

let env: TunnelEnv;
let embedded: EmbeddedDataproxy;
let dir: string;
const asked: DataAccessRequest[] = [];

test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tether-dp-tunnel-'));
  embedded = await startEmbeddedDataproxy({
    root: join(dir, 'blobs'),
    bucket: 'c1-data',
    signingKeys: [randomBytes(32)],
    clusterId: 'c1',
    authorize: (request) => {
      asked.push(request);
      return true;
    },
  });
  env = await startTunnelEnv({ clusters: ['c1', 'c2'], agents: [{ clusterId: 'c1', routes: [{ prefix: API_PREFIX, upstream: embedded.api.url }] }] });
});

test.after.always(async () => {
  await env?.close();
  await embedded?.close();
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
});

async function call(method: string, body: unknown, token: string | undefined, headers: Record<string, string> = {}): Promise<{ status: number; json: Record<string, unknown> }> {
  const reply = await h1Request(env.gateway.address, env.pki.trustBundlePem, {
    cluster: 'c1',
    ...(token === undefined ? {} : { token }),
    method: 'POST',
    path: `${API_PREFIX}${method}`,
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(reply.body.toString('utf8')) as Record<string, unknown>;
  } catch {
    // not JSON (a gateway refusal)
  }
  return { status: reply.status, json };
}

test.serial('through the tunnel: identity from the gateway (a forged header is stripped), bytes direct to the blob server', async (t) => {
  const token = await env.token(['c1'], 'alice');
  const payload = Buffer.from('bytes that never cross the tunnel');
  const location = await call('CreateUploadLocation', { project: 'p', domain: 'dev', filename: 'in.txt', contentMd5: md5(payload) }, token, { 'tether-subject': 'mallory' });
  t.is(location.status, 200, JSON.stringify(location.json));
  t.is(asked.at(-1)?.subject, 'alice');
  t.is(asked.at(-1)?.cluster, 'c1');
  t.is(asked.at(-1)?.operation, 'data.write');
  const put = await uploadStream(location.json.signedUrl as string, { ...(location.json.headers as Record<string, string>), 'content-length': payload.length }, Readable.from([payload]));
  t.is(put.status, 201, put.body);
  const link = await call('CreateDownloadLink', { uri: location.json.nativeUrl }, token);
  t.is(link.status, 200, JSON.stringify(link.json));
  t.is(asked.at(-1)?.operation, 'data.read');
  const got = await raw(embedded.blobs.url, 'GET', pathOf(link.json.signedUrl as string));
  t.is(got.body, payload.toString());
});

test.serial('without a token, or with a token for another cluster, the gateway refuses before the dataproxy', async (t) => {
  const before = asked.length;
  const body = { project: 'p', domain: 'dev', contentMd5: md5('x') };
  const anonymous = await call('CreateUploadLocation', body, undefined);
  t.is(anonymous.status, 401);
  const other = await call('CreateUploadLocation', body, await env.token(['c2'], 'bob'));
  t.is(other.status, 403);
  t.is(asked.length, before);
  // Straight to the API (not through the gateway) there is no identity: refused.
  const direct = await raw(embedded.api.url, 'POST', `${API_PREFIX}CreateUploadLocation`, { 'content-type': 'application/json' }, JSON.stringify(body));
  t.is(direct.status, 401);
  t.is(direct.json.code, 'DATAPROXY_UNAUTHENTICATED');
});
