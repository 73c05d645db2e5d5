/**
 * The bound HTTP/2 connection's HPACK: the decoder's rule checks, and the encoder toward the
 * upstream checked by a decoder nobody here wrote (nghttp2, in a Node HTTP/2 server reading raw
 * frames we write), including eviction and a table size limit the upstream lowers.
 */
import test from 'ava';
import { once } from 'node:events';
import * as http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import * as net from 'node:net';
import { PREFACE, frame, FrameType, headerFrames } from '../../gateway/binding/h2-frames.js';
import { HeaderBlockDecoder, HeaderBlockEncoder, HpackError, encodeLiteral, type HeaderField } from '../../gateway/binding/hpack-block.js';
import { failOnLeaks } from '../helpers/leaks.js';

failOnLeaks(test);

const request = (i: number, extra: HeaderField[] = []): HeaderField[] => [
  { name: ':method', value: i % 2 === 0 ? 'GET' : 'POST' },
  { name: ':scheme', value: 'http' },
  { name: ':authority', value: 'c1.tether.localhost' },
  { name: ':path', value: `/items/${i % 3}` },
  { name: 'authorization', value: 'Bearer secret' },
  { name: 'tether-subject', value: 'alice' },
  { name: 'tether-identity', value: 'x'.repeat(200) },
  { name: 'tether-request-id', value: `id-${i}` },
  { name: '__proto__', value: 'constructor' },
  ...extra,
];

test('blocks from the encoder decode to the fields given, through eviction; repeated fields become indexes; the credential is never indexed', (t) => {
  const encoder = new HeaderBlockEncoder();
  const decoder = new HeaderBlockDecoder(4_096, 1 << 20);
  const sizes: number[] = [];
  for (let i = 0; i < 200; i++) {
    // Fields that change make the table evict.
    const fields = request(i, i % 5 === 0 ? [{ name: `x-varying-${i}`, value: 'v'.repeat(300) }] : []);
    const block = encoder.encode(fields);
    sizes.push(block.length);
    t.deepEqual(decoder.decode(block), fields);
    t.true(block.includes(Buffer.from('Bearer secret')), 'the credential is sent as a literal every time, never from the table');
  }
  t.true((sizes[4] as number) < (sizes[0] as number) / 3, `a repeated request is mostly indexes (${sizes[0]} then ${sizes[4]} bytes)`);
  // The credential goes as a never-indexed literal every time.
  const block = encoder.encode([{ name: 'authorization', value: 'Bearer secret' }]);
  t.is((block[0] as number) & 0xf0, 0x10);
});

test('the decoder refuses a table size update over its limit, one after a field, and a list over its limit', (t) => {
  const decoder = new HeaderBlockDecoder(4_096, 200);
  t.throws(() => decoder.decode(Buffer.from([0x3f, 0xe2, 0x1f])), { instanceOf: HpackError }, 'update to 4,096 + 1');
  t.throws(() => decoder.decode(Buffer.from([0x82, 0x20])), { instanceOf: HpackError, message: /after a header field/ });
  t.throws(() => decoder.decode(encodeLiteral([{ name: 'x', value: 'y'.repeat(300) }])), { instanceOf: HpackError, message: /over the limit/ });
  t.throws(() => decoder.decode(Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0x7f])), { instanceOf: HpackError }, 'an index past the tables');
  t.deepEqual(decoder.decode(Buffer.from([0x20, 0x82])), [{ name: ':method', value: 'GET' }], 'an update to 0 at the start is fine');
});

test("nghttp2 (a Node HTTP/2 server) reads the encoder's blocks, and the size update after its SETTINGS lower the table", async (t) => {
  const server = http2.createServer({ settings: { headerTableSize: 100 } });
  const seen: http2.IncomingHttpHeaders[] = [];
  let allSeen: () => void = () => undefined;
  const five = new Promise<void>((resolve) => {
    allSeen = resolve;
  });
  server.on('stream', (stream, headers) => {
    seen.push(headers);
    stream.respond({ ':status': 204 }, { endStream: true });
    if (seen.length === 5) allSeen();
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const socket = net.connect((server.address() as AddressInfo).port, '127.0.0.1');
  await once(socket, 'connect');
  try {
    const encoder = new HeaderBlockEncoder();
    const write = (id: number): void => {
      socket.write(Buffer.concat(headerFrames(id, encoder.encode(request(id)), true, 16_384)));
    };
    socket.write(Buffer.concat([PREFACE, frame(FrameType.SETTINGS, 0, 0)]));
    write(1);
    write(3);
    // The server's SETTINGS (header table 100) reach the encoder, as the gateway passes them on.
    let received = Buffer.alloc(0);
    await new Promise<void>((resolve) => {
      const onData = (chunk: Buffer): void => {
        received = Buffer.concat([received, chunk]);
        if (received.length >= 9 && received[3] === FrameType.SETTINGS) {
          socket.off('data', onData);
          resolve();
        }
      };
      socket.on('data', onData);
    });
    socket.resume();
    encoder.setLimit(100);
    socket.write(frame(FrameType.SETTINGS, 0x1, 0));
    for (const id of [5, 7, 9]) write(id);
    await five;
    for (const [i, headers] of seen.entries()) {
      const id = 2 * i + 1;
      t.is(headers[':path'], `/items/${id % 3}`);
      t.is(headers['tether-request-id'], `id-${id}`);
      t.is(headers.authorization, 'Bearer secret');
      t.is(headers['tether-identity'], 'x'.repeat(200));
    }
  } finally {
    socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});
