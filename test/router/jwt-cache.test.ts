/**
 * The jwt_authn provider's verified-token cache (`jwt_cache_config`): what a hit skips and what it
 * still checks. Unit level, on JwtAuthenticator with a local key set and a movable clock; the
 * end-to-end hit through the sovereign front is in test/sovereign/front.test.ts.
 */
import test from 'ava';
import { createLocalJWKSet, exportJWK, generateKeyPair } from 'jose';
import { JwtAuthenticator } from '../../agent/router/jwt-authn.js';
import type { JwtCacheLookup, JwtProviderConfig } from '../../agent/router/jwt-authn.js';
import { signWith } from '../sovereign/fixtures.js';

const ISSUER = 'https://idp.cache.test';

async function rig(cacheSize: number) {
  const { publicKey, privateKey } = await generateKeyPair('ES256');
  const jwks = createLocalJWKSet({ keys: [{ ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256' }] });
  const provider: JwtProviderConfig = {
    name: 'idp',
    issuer: ISSUER,
    audiences: ['data', 'reports'],
    jwks: { kind: 'local', getKey: jwks },
    forward: false,
    payloadKey: null,
    claimToHeaders: [],
    clockSkewSec: 60,
    cacheSize,
  };
  const lookups: JwtCacheLookup[] = [];
  let now = Date.now();
  const authenticator = new JwtAuthenticator({ onCacheLookup: (result) => lookups.push(result), now: () => now });
  const mint = (aud: string | string[] = 'data', expiresInSec = 300) => signWith(privateKey, 'k1', { sub: 'alice' }, { issuer: ISSUER, audience: aud, expiresInSec });
  return { provider, authenticator, lookups, mint, advance: (ms: number) => (now += ms) };
}

test('a cached token skips the signature check; one changed signature byte is verified and refused', async (t) => {
  const { provider, authenticator, lookups, mint } = await rig(10);
  const token = await mint();
  t.is((await authenticator.verify(provider, token)).payload.sub, 'alice');
  t.is((await authenticator.verify(provider, token)).payload.sub, 'alice');
  t.deepEqual(lookups, ['miss', 'hit']);
  const last = token.at(-2) === 'A' ? 'B' : 'A';
  const tampered = `${token.slice(0, -2)}${last}${token.at(-1) ?? ''}`;
  const error = await t.throwsAsync(authenticator.verify(provider, tampered));
  t.is((error as { code?: string }).code, 'TOKEN_BAD_SIGNATURE');
  t.deepEqual(lookups, ['miss', 'hit', 'miss'], 'a token differing in one byte is not a hit');
  t.is((await authenticator.verify(provider, token)).payload.sub, 'alice', 'the refusal did not evict the good token');
  t.is(lookups.at(-1), 'hit');
});

test('a hit still checks the audiences the requirement asks for', async (t) => {
  const { provider, authenticator, lookups, mint } = await rig(10);
  const token = await mint('data');
  await authenticator.verify(provider, token);
  const error = await t.throwsAsync(authenticator.verify(provider, token, ['reports']));
  t.is((error as { code?: string }).code, 'TOKEN_WRONG_AUDIENCE');
  t.deepEqual(lookups, ['miss', 'hit']);
  t.is((await authenticator.verify(provider, token, ['reports', 'data'])).payload.aud, 'data');
});

test('entries end at the token exp and after 60 s at most; the cache holds jwt_cache_size tokens; no cache without jwt_cache_config', async (t) => {
  const short = await rig(10);
  const soon = await short.mint('data', 30);
  await short.authenticator.verify(short.provider, soon);
  short.advance(31_000);
  await short.authenticator.verify(short.provider, soon);
  t.deepEqual(short.lookups, ['miss', 'miss'], 'past exp (by the cache clock) the token is verified again');

  const long = await rig(10);
  const later = await long.mint('data', 3600);
  await long.authenticator.verify(long.provider, later);
  long.advance(59_000);
  await long.authenticator.verify(long.provider, later);
  long.advance(2_000);
  await long.authenticator.verify(long.provider, later);
  t.deepEqual(long.lookups, ['miss', 'hit', 'miss'], 'at most 60 s');

  const small = await rig(2);
  const tokens = await Promise.all([small.mint(), small.mint('reports'), small.mint(['data', 'reports'])]);
  for (const token of tokens) await small.authenticator.verify(small.provider, token);
  await small.authenticator.verify(small.provider, tokens[2] ?? '');
  await small.authenticator.verify(small.provider, tokens[0] ?? '');
  t.deepEqual(small.lookups, ['miss', 'miss', 'miss', 'hit', 'miss'], 'the least recently used of three was evicted from a cache of two');

  const none = await rig(0);
  const token = await none.mint();
  await none.authenticator.verify(none.provider, token);
  await none.authenticator.verify(none.provider, token);
  t.deepEqual(none.lookups, [], 'no lookups without jwt_cache_config');
});
