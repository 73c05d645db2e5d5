import test from 'ava';
import { ClientAuthenticator } from '../../gateway/client-auth.js';
import { VerifiedTokenCache } from '../../common/verified-token-cache.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { plainH1Request } from '../helpers/tunnel-clients.js';
import { AUDIENCE, ISSUER, createTokenIssuer, startTunnelEnv } from '../helpers/tunnel-env.js';
import { startHttp1Upstream } from '../helpers/tunnel-upstreams.js';

failOnLeaks(test);

/** A clock the test moves by hand. */
function clock(start = 1_000_000): { now: () => number; advance(ms: number): void } {
  let t = start;
  return { now: () => t, advance: (ms) => void (t += ms) };
}

/** The same token with one byte of its signature changed (still valid base64url). */
function forge(token: string): string {
  const [header, payload, signature = ''] = token.split('.');
  const i = Math.floor(signature.length / 2);
  const swapped = signature[i] === 'A' ? 'B' : 'A';
  return `${header}.${payload}.${signature.slice(0, i)}${swapped}${signature.slice(i + 1)}`;
}

test('an entry lives until exp or maxAgeMs, whichever comes first', (t) => {
  const c = clock();
  const cache = new VerifiedTokenCache<string>({ maxEntries: 10, maxAgeMs: 60_000, maxTokenBytes: 4096, now: c.now });
  const shortKey = cache.keyOf('short-lived');
  const longKey = cache.keyOf('long-lived');
  cache.set(shortKey, 'a', (c.now() + 5_000) / 1000);
  cache.set(longKey, 'b', (c.now() + 3_600_000) / 1000);
  t.is(cache.get(shortKey), 'a');
  c.advance(5_000);
  t.is(cache.get(shortKey), undefined, 'gone at exp');
  t.is(cache.get(longKey), 'b');
  c.advance(55_000);
  t.is(cache.get(longKey), undefined, 'gone at maxAgeMs although exp is later');
  cache.set(cache.keyOf('expired'), 'c', (c.now() - 1) / 1000);
  t.is(cache.size, 0, 'an already expired token is not stored');
});

test('bounded: least recently used evicted first; long tokens and maxEntries 0 are not cached', (t) => {
  const c = clock();
  const cache = new VerifiedTokenCache<number>({ maxEntries: 2, maxAgeMs: 60_000, maxTokenBytes: 16, now: c.now });
  const exp = (c.now() + 60_000) / 1000;
  const [k1, k2, k3] = ['t1', 't2', 't3'].map((token) => cache.keyOf(token));
  cache.set(k1 ?? null, 1, exp);
  cache.set(k2 ?? null, 2, exp);
  t.is(cache.get(k1 ?? null), 1, 'touch t1: t2 is now the oldest');
  cache.set(k3 ?? null, 3, exp);
  t.is(cache.size, 2);
  t.is(cache.get(k2 ?? null), undefined, 't2 evicted');
  t.is(cache.get(k1 ?? null), 1);
  t.is(cache.get(k3 ?? null), 3);
  t.is(cache.keyOf('x'.repeat(17)), null, 'longer than maxTokenBytes');
  const off = new VerifiedTokenCache<number>({ maxEntries: 0, maxAgeMs: 60_000, maxTokenBytes: 4096 });
  t.is(off.keyOf('t1'), null);
});

test('the authenticator verifies a token once; a token differing in one signature byte is verified and refused', async (t) => {
  const issuer = await createTokenIssuer();
  const auth = new ClientAuthenticator({ mode: 'jwt', issuers: [{ issuer: ISSUER, audiences: [AUDIENCE], jwks: issuer.jwks, algorithms: ['ES256'], clockToleranceSec: 30 }], clustersClaim: 'clusters', tokenCache: { maxEntries: 100, maxAgeMs: 60_000, maxTokenBytes: 4096 } });
  const token = await issuer.sign({ clusters: ['c1'], sub: 'alice' });
  const first = await auth.authenticate(`Bearer ${token}`);
  const second = await auth.authenticate(`Bearer ${token}`);
  t.is(second, first, 'the second answer is the cached identity');
  t.deepEqual({ hits: auth.cache.hits, misses: auth.cache.misses }, { hits: 1, misses: 1 });
  t.true(Object.isFrozen(first) && Object.isFrozen(first.claims), 'a shared identity cannot be changed by one request');
  const error = await t.throwsAsync(auth.authenticate(`Bearer ${forge(token)}`));
  t.is((error as { code?: string }).code, 'UNAUTHENTICATED');
  t.is(auth.cache.misses, 2, 'the forged token was looked up, missed and verified');
  // With the cache off, every request is verified.
  const uncached = new ClientAuthenticator({ mode: 'jwt', issuers: [{ issuer: ISSUER, audiences: [AUDIENCE], jwks: issuer.jwks, algorithms: ['ES256'], clockToleranceSec: 30 }], clustersClaim: 'clusters', tokenCache: { maxEntries: 0, maxAgeMs: 60_000, maxTokenBytes: 4096 } });
  const a = await uncached.authenticate(`Bearer ${token}`);
  const b = await uncached.authenticate(`Bearer ${token}`);
  t.not(a, b);
  t.is(uncached.cache.hits, 0);
});

test('through a gateway: repeated requests hit the cache (metric), a forged token still gets 401', async (t) => {
  const upstream = await startHttp1Upstream((req, res) => {
    req.resume();
    res.end('ok');
  });
  const env = await startTunnelEnv({ clusters: ['c1'], agents: [{ clusterId: 'c1', routes: [{ prefix: '/', upstream: upstream.url }] }] });
  try {
    const base = env.gateway.plainUrl ?? '';
    const token = await env.token(['c1']);
    for (let i = 0; i < 5; i++) t.is((await plainH1Request(base, { cluster: 'c1', token })).status, 200);
    const forged = await plainH1Request(base, { cluster: 'c1', token: forge(token) });
    t.is(forged.status, 401);
    t.is(forged.headers['tether-error'], 'UNAUTHENTICATED');
    const metrics = await env.gateway.metrics.registry.getSingleMetricAsString('tether_gateway_token_cache_lookups_total');
    t.regex(metrics, /result="hit"[^\n]* 4$/m);
    t.regex(metrics, /result="miss"[^\n]* 2$/m);
  } finally {
    await env.close();
    await upstream.close();
  }
});
