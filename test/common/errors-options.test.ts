import test from 'ava';
import { z } from 'zod';
import { TetherError, getErrorCode, getErrorMessage, isTetherError } from '../../common/errors.js';
import { INVALID_OPTIONS, parseOptions } from '../../common/options.js';

test('TetherError carries a stable code, a prefixed message and its cause', (t) => {
  const cause = new Error('socket hang up');
  const error = new TetherError('TUNNEL_DOWN', 'no live tunnel', { cause, details: { cluster: 'a' } });
  t.is(error.code, 'TUNNEL_DOWN');
  t.is(error.message, '[TUNNEL_DOWN] no live tunnel');
  t.is(error.rawMessage, 'no live tunnel');
  t.is(error.cause, cause);
  t.deepEqual(error.details, { cluster: 'a' });
  t.true(isTetherError(error, 'TUNNEL_DOWN'));
  t.false(isTetherError(error, 'OTHER'));
});

test('TetherError.from passes ours through and wraps anything else', (t) => {
  const ours = new TetherError('X', 'x');
  t.is(TetherError.from(ours), ours);
  const wrapped = TetherError.from('boom', 'UPSTREAM');
  t.is(wrapped.code, 'UPSTREAM');
  t.is(wrapped.rawMessage, 'boom');
  t.is(getErrorMessage({ a: 1 }), '{"a":1}');
  t.is(getErrorCode(Object.assign(new Error('refused'), { code: 'ECONNREFUSED' })), 'ECONNREFUSED');
  t.is(getErrorCode(42), null);
});

test('parseOptions names the exact path of every bad field', (t) => {
  const schema = z.object({
    listen: z.object({ host: z.string(), port: z.number().int().min(0).max(65535) }),
    routes: z.array(z.object({ prefix: z.string().startsWith('/') })),
  });
  const error = t.throws(
    () => parseOptions(schema, { listen: { host: 'localhost', port: 70000 }, routes: [{ prefix: '/' }, { prefix: 'api' }] }, 'gateway'),
    { instanceOf: TetherError },
  );
  t.is(error?.code, INVALID_OPTIONS);
  t.regex(error?.message ?? '', /gateway\.listen\.port: /);
  t.regex(error?.message ?? '', /gateway\.routes\[1\]\.prefix: /);
  t.deepEqual(parseOptions(schema, { listen: { host: 'h', port: 1 }, routes: [] }, 'gateway'), {
    listen: { host: 'h', port: 1 },
    routes: [],
  });
});
