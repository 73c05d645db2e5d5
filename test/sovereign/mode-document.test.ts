/**
 * The customer-signed mode document: what verifies, and the code of each refusal. Real keys and
 * real signatures (jose), Ed25519 and P-256.
 */
import test from 'ava';
import { CompactSign } from 'jose';
import { Agent } from '../../agent/index.js';
import { MODE_DOCUMENT_TYPE, ModeErrorCode, importCustomerPrivateKey, importCustomerPublicKey, verifyModeDocument } from '../../agent/mode-document.js';
import { isTetherError } from '../../common/errors.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { createCustomer, forged } from './mode-fixtures.js';

failOnLeaks(test);

const code = async (promise: Promise<unknown>): Promise<string> => {
  try {
    await promise;
    return 'ACCEPTED';
  } catch (reason) {
    return isTetherError(reason) ? reason.code : `not a TetherError: ${String(reason)}`;
  }
};

for (const algorithm of ['ed25519', 'p-256'] as const) {
  test(`a document signed with the customer's ${algorithm} key verifies; its fields come back`, async (t) => {
    const customer = createCustomer(algorithm);
    const key = importCustomerPublicKey(customer.publicPem);
    const document = await verifyModeDocument(await customer.sign({ mode: 'sovereign', seq: 7 }), key, 'c1');
    t.like(document, { v: 1, cluster: 'c1', mode: 'sovereign', seq: 7, alg: algorithm === 'p-256' ? 'ES256' : 'EdDSA' });
    t.regex(document.digest, /^[0-9a-f]{64}$/);
    // The public key as a JWK verifies the same document.
    const jwk = customer.publicKey.export({ format: 'jwk' }) as Record<string, unknown>;
    t.is((await verifyModeDocument(await customer.sign({ mode: 'tunnel', seq: 8 }), importCustomerPublicKey(jwk), 'c1')).mode, 'tunnel');
  });
}

test('each forgery is refused with its own code', async (t) => {
  const customer = createCustomer();
  const key = importCustomerPublicKey(customer.publicPem);
  const fields = { mode: 'tunnel' as const, seq: 2 };
  const verify = (text: string): Promise<string> => code(verifyModeDocument(text, key, 'c1'));

  t.is(await verify(forged.bareJson(fields)), ModeErrorCode.UNSIGNED);
  t.is(await verify(forged.algNone(fields)), ModeErrorCode.UNSIGNED);
  const valid = await customer.sign(fields);
  t.is(await verify(`${valid.slice(0, valid.lastIndexOf('.'))}.`), ModeErrorCode.UNSIGNED, 'signature part removed');

  t.is(await verify(await forged.otherKey(fields)), ModeErrorCode.BAD_SIGNATURE);
  t.is(await verify(await forged.hmacWithPublicKey(fields, customer)), ModeErrorCode.BAD_SIGNATURE);
  t.is(await verify(await forged.swappedPayload(fields, customer)), ModeErrorCode.BAD_SIGNATURE);
  // ES256 claimed over an Ed25519 key: not an algorithm that key signs with.
  const [, body, signature] = valid.split('.');
  t.is(await verify(`${Buffer.from(JSON.stringify({ alg: 'ES256', typ: MODE_DOCUMENT_TYPE })).toString('base64url')}.${body}.${signature}`), ModeErrorCode.BAD_SIGNATURE);

  t.is(await verify(await customer.sign({ ...fields, cluster: 'c2' })), ModeErrorCode.WRONG_CLUSTER);

  t.is(await verify(''), ModeErrorCode.MALFORMED);
  t.is(await verify('not a jws'), ModeErrorCode.MALFORMED);
  t.is(await verify('a.b.c.d'), ModeErrorCode.MALFORMED);
  t.is(await verify('x'.repeat(20_000)), ModeErrorCode.MALFORMED);
  const sign = (payload: unknown, typ: string | null = MODE_DOCUMENT_TYPE): Promise<string> =>
    new CompactSign(new TextEncoder().encode(JSON.stringify(payload))).setProtectedHeader({ alg: 'EdDSA', ...(typ === null ? {} : { typ }) }).sign(customer.privateKey);
  const good = { v: 1, cluster: 'c1', mode: 'tunnel', seq: 3, iat: 1 };
  t.is(await verify(await sign(good)), 'ACCEPTED');
  // Signed by the customer's key, but not as a mode document (another token from the same key).
  t.is(await verify(await sign(good, 'JWT')), ModeErrorCode.MALFORMED);
  t.is(await verify(await sign(good, null)), ModeErrorCode.MALFORMED);
  t.is(await verify(await sign({ ...good, mode: 'open' })), ModeErrorCode.MALFORMED);
  t.is(await verify(await sign({ ...good, seq: 0 })), ModeErrorCode.MALFORMED);
  t.is(await verify(await sign({ ...good, seq: 1.5 })), ModeErrorCode.MALFORMED);
  t.is(await verify(await sign({ ...good, v: 2 })), ModeErrorCode.MALFORMED);
  t.is(await verify(await sign({ ...good, extra: true })), ModeErrorCode.MALFORMED);
  t.is(await verify(await sign('sovereign')), ModeErrorCode.MALFORMED);
});

test('the agent pins only a public Ed25519 or P-256 key, refused at construction otherwise', async (t) => {
  const customer = createCustomer();
  const privatePem = customer.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const keyCode = (run: () => unknown): string => {
    try {
      run();
      return 'ACCEPTED';
    } catch (reason) {
      return isTetherError(reason) ? reason.code : String(reason);
    }
  };
  t.is(keyCode(() => importCustomerPublicKey(privatePem)), ModeErrorCode.KEY_INVALID);
  t.is(keyCode(() => importCustomerPublicKey(customer.privateKey.export({ format: 'jwk' }) as Record<string, unknown>)), ModeErrorCode.KEY_INVALID);
  t.is(keyCode(() => importCustomerPublicKey('-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n')), ModeErrorCode.KEY_INVALID);
  const { generateKeyPairSync } = await import('node:crypto');
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({ type: 'spki', format: 'pem' }).toString();
  t.is(keyCode(() => importCustomerPublicKey(rsa)), ModeErrorCode.KEY_INVALID);
  const p384 = generateKeyPairSync('ec', { namedCurve: 'secp384r1' }).publicKey.export({ type: 'spki', format: 'pem' }).toString();
  t.is(keyCode(() => importCustomerPublicKey(p384)), ModeErrorCode.KEY_INVALID);
  t.is(keyCode(() => importCustomerPrivateKey(customer.publicPem)), ModeErrorCode.KEY_INVALID);

  const tls = { key: 'k', cert: 'c', ca: 'a' };
  const agentCode = (sovereignty: Record<string, unknown>): string =>
    keyCode(() => new Agent({ gateways: ['127.0.0.1:1'], tls, sovereignty: sovereignty as { clusterId: string; modeFile: string } }));
  t.is(agentCode({ clusterId: 'c1', modeFile: '/nonexistent/mode.jws', customerKey: privatePem }), ModeErrorCode.KEY_INVALID);
  t.is(agentCode({ clusterId: 'c1', modeFile: '/nonexistent/mode.jws' }), 'INVALID_OPTIONS');
  t.is(agentCode({ clusterId: 'c1', modeFile: '/nonexistent/mode.jws', customerKey: customer.publicPem, customerKeyFile: '/k.pem' }), 'INVALID_OPTIONS');
  t.is(agentCode({ clusterId: 'c1', modeFile: '/nonexistent/mode.jws', customerKey: customer.publicPem }), 'ACCEPTED');
});
