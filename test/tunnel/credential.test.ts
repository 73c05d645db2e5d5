/**
 * The client's credential stays at the edge (issue 12): the bearer token the gateway verified does
 * not reach the upstream unless the agent's route says `forwardCredential: true`. Over HTTP/1.1
 * (TLS, and a keep-alive connection whose later requests travel bound when the gateway binds) and
 * HTTP/2; this file runs in both binding modes (`TETHER_TEST_BINDING`).
 */
import test from 'ava';
import * as https from 'node:https';
import { failOnLeaks } from '../helpers/leaks.js';
import { closeH2, connectH2, h1Request, h2Request } from '../helpers/tunnel-clients.js';
import { startTunnelEnv, type TunnelEnv } from '../helpers/tunnel-env.js';
import { startHttp1Upstream, type Upstream } from '../helpers/tunnel-upstreams.js';

failOnLeaks(test);

let env: TunnelEnv;
let upstream: Upstream;

test.before(async () => {
  upstream = await startHttp1Upstream((req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ authorization: req.headers.authorization ?? null, subject: req.headers['tether-subject'] ?? null }));
  });
  env = await startTunnelEnv({
    agents: [
      {
        clusterId: 'c1',
        routes: [
          { prefix: '/', upstream: upstream.url },
          { prefix: '/forwarded/', upstream: upstream.url, forwardCredential: true },
        ],
      },
    ],
  });
});

test.after.always(async () => {
  await env?.close();
  await upstream?.close();
});

interface Seen {
  authorization: string | null;
  subject: string | null;
}

const seen = (body: Buffer): Seen => JSON.parse(body.toString()) as Seen;

test('HTTP/1.1: the credential is dropped by default and forwarded where the route asks', async (t) => {
  const token = await env.token(['c1'], 'alice');
  const dropped = seen((await h1Request(env.gateway.address, env.pki.trustBundlePem, { cluster: 'c1', token, path: '/x' })).body);
  t.deepEqual(dropped, { authorization: null, subject: 'alice' });
  const forwarded = seen((await h1Request(env.gateway.address, env.pki.trustBundlePem, { cluster: 'c1', token, path: '/forwarded/x' })).body);
  t.deepEqual(forwarded, { authorization: `Bearer ${token}`, subject: 'alice' });
});

test('HTTP/1.1 keep-alive: no later request on the connection carries the credential either', async (t) => {
  const token = await env.token(['c1'], 'bob');
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
  try {
    const replies = [];
    for (const path of ['/a', '/b', '/c', '/forwarded/d', '/e']) replies.push(seen((await h1Request(env.gateway.address, env.pki.trustBundlePem, { cluster: 'c1', token, path }, agent)).body));
    t.deepEqual(
      replies.map((r) => r.authorization),
      [null, null, null, `Bearer ${token}`, null],
    );
    t.true(replies.every((r) => r.subject === 'bob'));
  } finally {
    agent.destroy();
  }
});

test('HTTP/2: the credential is dropped by default and forwarded where the route asks', async (t) => {
  const token = await env.token(['c1'], 'carol');
  const plain = env.gateway.plainUrl;
  if (plain === null) throw new Error('no plain port');
  const session = await connectH2(plain);
  try {
    t.is(seen((await h2Request(session, { cluster: 'c1', token, path: '/x' })).body).authorization, null);
    t.is(seen((await h2Request(session, { cluster: 'c1', token, path: '/forwarded/x' })).body).authorization, `Bearer ${token}`);
  } finally {
    await closeH2(session);
  }
});
