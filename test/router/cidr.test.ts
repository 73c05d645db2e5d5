/** agent/router/cidr.ts against Node's own BlockList as the oracle, on seeded random ranges and addresses. */
import { BlockList } from 'node:net';
import test from 'ava';
import { cidrMatcher, ipBytes } from '../../agent/router/cidr.js';

function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1_664_525) + 1_013_904_223) >>> 0;
    return state;
  };
}

function v4(next: () => number): string {
  const n = next();
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

function v6(next: () => number, like?: string): string {
  const words = like === undefined ? Array.from({ length: 8 }, () => next() & 0xffff) : (ipBytes(like) ?? new Uint8Array(16)).reduce<number[]>((out, byte, k) => (k % 2 === 0 ? [...out, byte << 8] : [...out.slice(0, -1), (out.at(-1) ?? 0) | byte]), []);
  // Keep a random number of leading words of `like`, randomize the rest; sometimes zero a run to exercise `::`.
  const keep = next() % 9;
  for (let k = keep; k < 8; k++) words[k] = next() % 3 === 0 ? 0 : next() & 0xffff;
  const text = words.map((w) => w.toString(16)).join(':');
  return next() % 2 === 0 ? text.replace(/(^|:)0(:0)+(:|$)/, '::') : text;
}

test('matches what BlockList says, IPv4 and IPv6, for 20,000 seeded cases', (t) => {
  const next = random(0x7e7e);
  let checked = 0;
  for (let k = 0; k < 10_000; k++) {
    const prefix = v4(next);
    const bits = next() % 33;
    const near = next() % 2 === 0 ? prefix.split('.').slice(0, 2).join('.') + `.${next() & 255}.${next() & 255}` : v4(next);
    const list = new BlockList();
    list.addSubnet(prefix, bits, 'ipv4');
    t.is(cidrMatcher(prefix, bits)?.(near), list.check(near, 'ipv4'), `${near} in ${prefix}/${bits}`);
    const prefix6 = v6(next);
    const bits6 = next() % 129;
    const near6 = v6(next, prefix6);
    const list6 = new BlockList();
    list6.addSubnet(prefix6, bits6, 'ipv6');
    t.is(cidrMatcher(prefix6, bits6)?.(near6), list6.check(near6, 'ipv6'), `${near6} in ${prefix6}/${bits6}`);
    checked += 2;
  }
  t.is(checked, 20_000);
});

test('refuses what is not an address literal, and never matches across families', (t) => {
  for (const bad of ['', '1.2.3', '1.2.3.4.5', '256.1.1.1', 'fe80::1%eth0', '1::2::3', 'localhost', '01.2.3.4x']) t.is(ipBytes(bad), null, bad);
  t.is(cidrMatcher('10.0.0.0', 33), null);
  t.is(cidrMatcher('::', 129), null);
  t.false(cidrMatcher('0.0.0.0', 0)?.('::1') ?? true);
  t.false(cidrMatcher('::', 0)?.('127.0.0.1') ?? true);
  t.true(cidrMatcher('::ffff:0:0', 96)?.('::ffff:10.1.2.3') ?? false, 'an IPv4-mapped literal is an IPv6 address here');
});
