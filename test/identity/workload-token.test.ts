/**
 * Workload-token verification against a real OIDC issuer on 127.0.0.1 (the dev issuer): one test
 * per refusal, acceptance across a key rotation, and the issuer's request counters to show that
 * discovery and the JWKS are cached and that unknown-kid refetches are rate-limited.
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { createServer } from 'node:http';
import { SignJWT, exportJWK, generateKeyPair } from 'jose';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEV_ISSUER_KEYS_FILE, DevOidcIssuer } from '../../certs/dev-oidc-issuer.js';
import { createWorkloadTokenVerifier } from '../../certs/workload-token.js';
import type { WorkloadTokenVerifierOptions } from '../../certs/workload-token.js';
import { failOnLeaks } from '../helpers/leaks.js';
import {
  AUDIENCE,
  SUBJECT,
  honestClaims,
  hmacToken,
  nowSec,
  refusalCode,
  startIssuer,
  strangerToken,
  unsignedToken,
} from './token-fixtures.js';

failOnLeaks(test);

function verifierFor(issuer: DevOidcIssuer, options: Partial<WorkloadTokenVerifierOptions> = {}) {
  return createWorkloadTokenVerifier({
    issuer: issuer.issuer,
    audience: AUDIENCE,
    allowedSubjects: 'system:serviceaccount:tether:*',
    ...options,
  });
}

test('accepts an honest token and caches discovery and the JWKS', async (t) => {
  const issuer = await startIssuer(t);
  const verifier = verifierFor(issuer);
  const token = await issuer.mint({ subject: SUBJECT, audience: AUDIENCE, pod: 'agent-0' });
  const verified = await verifier.verify(token);
  t.is(verified.issuer, issuer.issuer);
  t.is(verified.subject, SUBJECT);
  t.is(verified.audience, AUDIENCE);
  t.true(verified.expiresAt.getTime() > Date.now());
  t.like(verified.claims['kubernetes.io'], { namespace: 'tether', serviceaccount: { name: 'agent' }, pod: { name: 'agent-0' } });
  t.deepEqual(issuer.requests, { discovery: 1, jwks: 1 });
  for (let i = 0; i < 5; i += 1) await verifier.verify(await issuer.mint({ subject: SUBJECT, audience: AUDIENCE }));
  t.deepEqual(issuer.requests, { discovery: 1, jwks: 1 }, 'later verifications use the cached documents');
});

test('refuses alg none and HS256 before fetching any key', async (t) => {
  const issuer = await startIssuer(t);
  const verifier = verifierFor(issuer);
  t.is(await refusalCode(t, verifier.verify(unsignedToken(honestClaims(issuer.issuer)))), 'TOKEN_ALG_NOT_ALLOWED');
  t.is(await refusalCode(t, verifier.verify(await hmacToken(honestClaims(issuer.issuer), issuer.currentKid))), 'TOKEN_ALG_NOT_ALLOWED');
  const es384 = createWorkloadTokenVerifier({ issuer: issuer.issuer, audience: AUDIENCE, allowedSubjects: SUBJECT, algorithms: ['ES384'] });
  t.is(await refusalCode(t, es384.verify(await issuer.mint({ subject: SUBJECT, audience: AUDIENCE }))), 'TOKEN_ALG_NOT_ALLOWED');
  t.deepEqual(issuer.requests, { discovery: 0, jwks: 0 });
});

test('refuses to be configured with none, HMAC, a large leeway, or a plain-http remote issuer', (t) => {
  const base = { issuer: 'https://issuer.example', audience: AUDIENCE, allowedSubjects: SUBJECT };
  for (const bad of [
    { ...base, algorithms: ['none'] },
    { ...base, algorithms: ['RS256', 'HS256'] },
    { ...base, algorithms: ['hs512'] },
    { ...base, algorithms: [] },
    { ...base, clockToleranceSec: 61 },
    { ...base, issuer: 'http://issuer.example' },
    { ...base, allowedSubjects: [] },
    { ...base, audience: '' },
  ]) {
    const error = t.throws(() => createWorkloadTokenVerifier(bad));
    t.is((error as { code?: string } | undefined)?.code, 'INVALID_OPTIONS', JSON.stringify(bad));
  }
  t.notThrows(() => createWorkloadTokenVerifier({ ...base, issuer: 'http://127.0.0.1:1', algorithms: ['ES256', 'PS256', 'EdDSA'] }));
});

test('refuses a wrong or missing iss without fetching keys', async (t) => {
  const issuer = await startIssuer(t);
  const other = await startIssuer(t);
  const verifier = verifierFor(issuer);
  t.is(await refusalCode(t, verifier.verify(await other.mint({ subject: SUBJECT, audience: AUDIENCE }))), 'TOKEN_WRONG_ISSUER');
  t.is(await refusalCode(t, verifier.verify(await issuer.mint({ subject: SUBJECT, audience: AUDIENCE, claims: { iss: `${issuer.issuer}/` } }))), 'TOKEN_WRONG_ISSUER');
  t.is(await refusalCode(t, verifier.verify(await issuer.mint({ subject: SUBJECT, audience: AUDIENCE, claims: { iss: undefined } }))), 'TOKEN_WRONG_ISSUER');
  t.deepEqual(issuer.requests, { discovery: 0, jwks: 0 });
});

test('refuses a missing or wrong aud', async (t) => {
  const issuer = await startIssuer(t);
  const verifier = verifierFor(issuer);
  t.is(await refusalCode(t, verifier.verify(await issuer.mint({ subject: SUBJECT, audience: AUDIENCE, claims: { aud: undefined } }))), 'TOKEN_WRONG_AUDIENCE');
  t.is(await refusalCode(t, verifier.verify(await issuer.mint({ subject: SUBJECT, audience: 'sts.amazonaws.com' }))), 'TOKEN_WRONG_AUDIENCE');
  t.is(await refusalCode(t, verifier.verify(await issuer.mint({ subject: SUBJECT, audience: [] }))), 'TOKEN_WRONG_AUDIENCE');
  // One matching value among several is enough (but single-audience tokens are preferable).
  t.is((await verifier.verify(await issuer.mint({ subject: SUBJECT, audience: ['other', AUDIENCE] }))).audience, AUDIENCE);
});

test('refuses an expired token or one without exp, with a small leeway', async (t) => {
  const issuer = await startIssuer(t);
  const verifier = verifierFor(issuer, { clockToleranceSec: 30 });
  const now = nowSec();
  const expired = await issuer.mint({ subject: SUBJECT, audience: AUDIENCE, claims: { iat: now - 3600, nbf: now - 3600, exp: now - 60 } });
  t.is(await refusalCode(t, verifier.verify(expired)), 'TOKEN_EXPIRED');
  t.is(await refusalCode(t, verifier.verify(await issuer.mint({ subject: SUBJECT, audience: AUDIENCE, claims: { exp: undefined } }))), 'TOKEN_EXPIRED');
  const justExpired = await issuer.mint({ subject: SUBJECT, audience: AUDIENCE, claims: { iat: now - 600, nbf: now - 600, exp: now - 10 } });
  t.is((await verifier.verify(justExpired)).subject, SUBJECT, 'within the 30 s leeway');
  t.is(await refusalCode(t, verifier.verify(await issuer.mint({ subject: SUBJECT, audience: AUDIENCE, claims: { exp: 'tomorrow' } }))), 'TOKEN_MALFORMED');
});

test('refuses nbf or iat in the future, and a token older than maxTokenAgeSec', async (t) => {
  const issuer = await startIssuer(t);
  const verifier = verifierFor(issuer);
  const now = nowSec();
  t.is(await refusalCode(t, verifier.verify(await issuer.mint({ subject: SUBJECT, audience: AUDIENCE, claims: { nbf: now + 300 } }))), 'TOKEN_NOT_YET_VALID');
  t.is(await refusalCode(t, verifier.verify(await issuer.mint({ subject: SUBJECT, audience: AUDIENCE, claims: { iat: now + 300 } }))), 'TOKEN_IAT_IN_FUTURE');
  const aged = createWorkloadTokenVerifier({ issuer: issuer.issuer, audience: AUDIENCE, allowedSubjects: SUBJECT, maxTokenAgeSec: 600 });
  const old = await issuer.mint({ subject: SUBJECT, audience: AUDIENCE, ttlSec: 86_400, claims: { iat: now - 3600, nbf: now - 3600 } });
  t.is(await refusalCode(t, aged.verify(old)), 'TOKEN_TOO_OLD');
  t.is(await refusalCode(t, aged.verify(await issuer.mint({ subject: SUBJECT, audience: AUDIENCE, claims: { iat: undefined } }))), 'TOKEN_TOO_OLD');
  t.is((await verifier.verify(old)).subject, SUBJECT, 'without maxTokenAgeSec an old but unexpired token passes');
});

test('refuses a forged signature and malformed tokens', async (t) => {
  const issuer = await startIssuer(t);
  const verifier = verifierFor(issuer);
  const token = await issuer.mint({ subject: SUBJECT, audience: AUDIENCE });
  const [header, , signature] = token.split('.');
  const forgedClaims = Buffer.from(JSON.stringify(honestClaims(issuer.issuer, { sub: 'system:serviceaccount:tether:admin' }))).toString('base64url');
  t.is(await refusalCode(t, verifier.verify(`${header}.${forgedClaims}.${signature}`)), 'TOKEN_BAD_SIGNATURE');
  for (const bad of ['', 'abc', 'a.b', 'a.b.c.d', `${header}.!!!.${signature}`, `${header}.${Buffer.from('[1]').toString('base64url')}.${signature}`]) {
    t.is(await refusalCode(t, verifier.verify(bad)), 'TOKEN_MALFORMED', JSON.stringify(bad));
  }
});

test('refuses a subject outside the allow-list', async (t) => {
  const issuer = await startIssuer(t);
  const verifier = verifierFor(issuer);
  for (const subject of ['system:serviceaccount:other:agent', 'system:serviceaccount:tether-evil:agent', 'system:serviceaccount:tether:a:b', 'tether']) {
    t.is(await refusalCode(t, verifier.verify(await issuer.mint({ subject, audience: AUDIENCE }))), 'TOKEN_SUBJECT_NOT_ALLOWED', subject);
  }
  t.is(await refusalCode(t, verifier.verify(await issuer.mint({ subject: SUBJECT, audience: AUDIENCE, claims: { sub: undefined } }))), 'TOKEN_SUBJECT_NOT_ALLOWED');
  const listed = verifierFor(issuer, { allowedSubjects: ['system:serviceaccount:a:b', /system:serviceaccount:ns-\d+:agent/] });
  t.is((await listed.verify(await issuer.mint({ subject: 'system:serviceaccount:ns-12:agent', audience: AUDIENCE }))).subject, 'system:serviceaccount:ns-12:agent');
  t.is((await listed.verify(await issuer.mint({ subject: 'system:serviceaccount:a:b', audience: AUDIENCE }))).subject, 'system:serviceaccount:a:b');
  t.is(await refusalCode(t, listed.verify(await issuer.mint({ subject: 'system:serviceaccount:ns-12:agent-x', audience: AUDIENCE }))), 'TOKEN_SUBJECT_NOT_ALLOWED', 'RegExps are anchored');
});

test('refuses an unknown kid after one refetch of the JWKS', async (t) => {
  const issuer = await startIssuer(t);
  const verifier = verifierFor(issuer, { jwksCooldownMs: 0 });
  await verifier.verify(await issuer.mint({ subject: SUBJECT, audience: AUDIENCE }));
  t.deepEqual(issuer.requests, { discovery: 1, jwks: 1 });
  t.is(await refusalCode(t, verifier.verify(await strangerToken(honestClaims(issuer.issuer)))), 'TOKEN_UNKNOWN_KID');
  t.deepEqual(issuer.requests, { discovery: 1, jwks: 2 }, 'the unknown kid caused exactly one refetch');
  t.is(await refusalCode(t, verifier.verify(await strangerToken(honestClaims(issuer.issuer), issuer.currentKid))), 'TOKEN_BAD_SIGNATURE', 'a known kid with the wrong key');
});

test('accepts tokens across an issuer key rotation (refetch on the new kid, old key until retired)', async (t) => {
  const issuer = await startIssuer(t);
  const verifier = verifierFor(issuer, { jwksCooldownMs: 0 });
  const oldKid = issuer.currentKid;
  const oldToken = await issuer.mint({ subject: SUBJECT, audience: AUDIENCE });
  await verifier.verify(oldToken);
  t.deepEqual(issuer.requests, { discovery: 1, jwks: 1 });

  const newKid = await issuer.rotateKey();
  t.not(newKid, oldKid);
  t.deepEqual(issuer.publishedKids, [oldKid, newKid]);
  const newToken = await issuer.mint({ subject: SUBJECT, audience: AUDIENCE });
  t.is((await verifier.verify(newToken)).subject, SUBJECT);
  t.deepEqual(issuer.requests, { discovery: 1, jwks: 2 }, 'the new kid was fetched once');
  await verifier.verify(newToken);
  await verifier.verify(oldToken);
  t.deepEqual(issuer.requests, { discovery: 1, jwks: 2 }, 'both keys now come from the cache');

  // Signing with the old key still works while it is published.
  t.is((await verifier.verify(await issuer.mint({ subject: SUBJECT, audience: AUDIENCE, kid: oldKid }))).subject, SUBJECT);

  t.deepEqual(await issuer.retireOldKeys(), [oldKid]);
  const fresh = verifierFor(issuer);
  t.is((await fresh.verify(newToken)).subject, SUBJECT);
  t.is(await refusalCode(t, fresh.verify(oldToken)), 'TOKEN_UNKNOWN_KID', 'a retired key no longer verifies');
});

test('refetches for an unknown kid at most once per cooldown', async (t) => {
  const issuer = await startIssuer(t);
  const slow = verifierFor(issuer, { jwksCooldownMs: 60_000 });
  await slow.verify(await issuer.mint({ subject: SUBJECT, audience: AUDIENCE }));
  await issuer.rotateKey();
  const newToken = await issuer.mint({ subject: SUBJECT, audience: AUDIENCE });
  for (let i = 0; i < 5; i += 1) t.is(await refusalCode(t, slow.verify(newToken)), 'TOKEN_UNKNOWN_KID');
  t.is(issuer.requests.jwks, 1, 'no refetch inside the cooldown');

  // With a short cooldown the same token is accepted once it has passed, after exactly one refetch.
  // (There is no event for "cooldown over", so this polls with a bounded deadline.)
  const quick = verifierFor(issuer, { jwksCooldownMs: 400 });
  await issuer.retireOldKeys();
  await quick.verify(newToken);
  const before = issuer.requests.jwks;
  const kid = await issuer.rotateKey();
  const rotated = await issuer.mint({ subject: SUBJECT, audience: AUDIENCE, kid });
  let attempts = 0;
  const deadline = Date.now() + 10_000;
  for (;;) {
    attempts += 1;
    try {
      await quick.verify(rotated);
      break;
    } catch (error) {
      t.is((error as { code?: string }).code, 'TOKEN_UNKNOWN_KID');
      if (Date.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  }
  t.is(issuer.requests.jwks - before, 1, `one refetch over ${attempts} attempts`);
  t.log(`accepted after ${attempts} attempts; JWKS fetched once`);
});

test('reports an unreachable issuer, and does not retry discovery inside the cooldown', async (t) => {
  const issuer = new DevOidcIssuer();
  await issuer.listen();
  const token = await issuer.mint({ subject: SUBJECT, audience: AUDIENCE });
  const verifier = verifierFor(issuer);
  await issuer.close();
  t.is(await refusalCode(t, verifier.verify(token)), 'TOKEN_ISSUER_UNREACHABLE');
  const second = await t.throwsAsync(verifier.verify(token));
  t.regex(second?.message ?? '', /not retried/);
});

test('a static JWKS replaces discovery', async (t) => {
  const issuer = await startIssuer(t, { algorithm: 'RS256' });
  const verifier = verifierFor(issuer, { jwks: issuer.jwks() });
  const verified = await verifier.verify(await issuer.mint({ subject: SUBJECT, audience: AUDIENCE }));
  t.is(verified.subject, SUBJECT);
  t.deepEqual(issuer.requests, { discovery: 0, jwks: 0 });
  t.is(await refusalCode(t, verifier.verify(await strangerToken(honestClaims(issuer.issuer)))), 'TOKEN_UNKNOWN_KID');
});

test('RS256 issuer tokens verify through discovery', async (t) => {
  const issuer = await startIssuer(t, { algorithm: 'RS256' });
  const verified = await verifierFor(issuer).verify(await issuer.mint({ subject: SUBJECT, audience: AUDIENCE }));
  t.is(verified.subject, SUBJECT);
  t.is(verified.claims.iss, issuer.issuer);
});

test('the dev issuer keeps its keys in stateDir (mode 0600) across restarts', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'tether-issuer-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const first = await startIssuer(t, { stateDir: dir });
  const kid = first.currentKid;
  const token = await first.mint({ subject: SUBJECT, audience: AUDIENCE });
  await first.close();
  t.is((await stat(join(dir, DEV_ISSUER_KEYS_FILE))).mode & 0o777, 0o600);

  const second = await startIssuer(t, { stateDir: dir });
  t.is(second.issuer, first.issuer, 'the saved port is reused, so the issuer URL is the same');
  t.is(second.currentKid, kid);
  t.is((await verifierFor(second).verify(token)).subject, SUBJECT);
  await second.rotateKey();
  t.is((await stat(join(dir, DEV_ISSUER_KEYS_FILE))).mode & 0o777, 0o600);

  // While the saved port is taken, a restart still comes up, on another port.
  const third = await startIssuer(t, { stateDir: dir });
  t.not(third.issuer, second.issuer);
  t.is(third.currentKid, second.currentKid);
});

test('concurrent first verifications share one discovery and one JWKS fetch; an expired cache is refetched', async (t) => {
  const issuer = await startIssuer(t);
  const verifier = verifierFor(issuer);
  const tokens = await Promise.all(Array.from({ length: 10 }, () => issuer.mint({ subject: SUBJECT, audience: AUDIENCE })));
  const results = await Promise.all(tokens.map((token) => verifier.verify(token)));
  t.is(results.length, 10);
  t.deepEqual(issuer.requests, { discovery: 1, jwks: 1 });

  const uncached = verifierFor(issuer, { jwksCacheMaxAgeMs: 0 });
  await uncached.verify(tokens[0] ?? '');
  await uncached.verify(tokens[1] ?? '');
  t.deepEqual(issuer.requests, { discovery: 2, jwks: 3 }, 'with a zero cache age every verification refetches the JWKS (discovery stays cached)');
});

/** An issuer that misbehaves in one chosen way; its tokens are signed with a key we hold. */
async function misbehavingIssuer(t: ExecutionContext, behaviour: 'good' | 'wrong-issuer' | 'redirect' | 'remote-http' | 'not-a-jwks' | 'huge' | 'status-500') {
  const { privateKey, publicKey } = await generateKeyPair('ES256');
  const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
  let base = '';
  const server = createServer((request, response) => {
    const send = (status: number, body: unknown, headers: Record<string, string> = {}) => {
      response.writeHead(status, { 'content-type': 'application/json', ...headers });
      response.end(typeof body === 'string' ? body : JSON.stringify(body));
    };
    if (request.url === '/.well-known/openid-configuration') {
      const jwksUri = behaviour === 'remote-http' ? 'http://keys.example.com/jwks' : `${base}/jwks`;
      send(200, { issuer: behaviour === 'wrong-issuer' ? 'https://someone.else' : base, jwks_uri: jwksUri });
    } else if (request.url === '/jwks') {
      if (behaviour === 'redirect') send(302, '', { location: `${base}/real-jwks` });
      else if (behaviour === 'not-a-jwks') send(200, { keys: 'nope' });
      else if (behaviour === 'huge') send(200, { keys: [jwk], padding: 'x'.repeat(300 * 1024) });
      else if (behaviour === 'status-500') send(500, { error: 'down' });
      else send(200, { keys: [jwk] });
    } else if (request.url === '/real-jwks') {
      send(200, { keys: [jwk] });
    } else {
      send(404, {});
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  }));
  const address = server.address();
  base = `http://127.0.0.1:${typeof address === 'object' && address !== null ? address.port : 0}`;
  const token = await new SignJWT(honestClaims(base)).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).sign(privateKey);
  return { base, token };
}

for (const behaviour of ['wrong-issuer', 'redirect', 'remote-http', 'not-a-jwks', 'huge', 'status-500'] as const) {
  test(`refuses keys from an issuer that misbehaves: ${behaviour}`, async (t) => {
    const { base, token } = await misbehavingIssuer(t, behaviour);
    const verifier = createWorkloadTokenVerifier({ issuer: base, audience: AUDIENCE, allowedSubjects: SUBJECT });
    const error = await t.throwsAsync(verifier.verify(token));
    t.is((error as { code?: string } | undefined)?.code, 'TOKEN_ISSUER_UNREACHABLE', error?.message);
    t.log(error?.message);
  });
}

test('control: the same harness, behaving, serves keys that verify its token', async (t) => {
  const { base, token } = await misbehavingIssuer(t, 'good');
  const verifier = createWorkloadTokenVerifier({ issuer: base, audience: AUDIENCE, allowedSubjects: SUBJECT });
  t.is((await verifier.verify(token)).issuer, base);
});
