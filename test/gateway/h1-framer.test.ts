/**
 * The binding's HTTP/1.1 framer and strict head parser, without sockets: every split of a message
 * stream into chunks must give the same heads, bytes and message ends; ambiguous framing is
 * refused with BAD_REQUEST.
 */
import test from 'ava';
import { H1Framer, type HeadDecision } from '../../gateway/binding/h1-framer.js';
import { isHeadError, parseRequestHead, parseResponseHead, responseFraming, type HeadError } from '../../gateway/binding/h1-head.js';

interface Run {
  heads: string[];
  forwarded: Buffer;
  body: number;
  ends: number;
  error: HeadError | null;
}

function frameRequests(chunks: Buffer[]): Run {
  const run: Run = { heads: [], forwarded: Buffer.alloc(0), body: 0, ends: 0, error: null };
  const framer = new H1Framer(
    {
      onHead: (buffer, start, end): HeadDecision => {
        const head = parseRequestHead(buffer, start, end);
        if (isHeadError(head)) throw new Error(head.message);
        run.heads.push(`${head.method} ${head.target}`);
        return { bytes: null, framing: head.framing };
      },
      forward: (bytes, body) => {
        run.forwarded = Buffer.concat([run.forwarded, bytes]);
        if (body) run.body += bytes.length;
      },
      onMessageEnd: () => {
        run.ends++;
      },
      onError: (error) => {
        run.error = error;
      },
    },
    8192,
  );
  for (const chunk of chunks) framer.push(chunk);
  return run;
}

function splits(bytes: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < bytes.length; i += size) out.push(bytes.subarray(i, i + size));
  return out;
}

const STREAM = Buffer.from(
  [
    'POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello',
    'POST /b HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: yes\r\n\r\n',
    'GET /c HTTP/1.1\r\nhost: x\r\n\r\n',
  ].join(''),
  'latin1',
);

for (const size of [1, 2, 3, 7, 16, 64, STREAM.length]) {
  test(`a pipelined stream split every ${size} bytes frames the same`, (t) => {
    const run = frameRequests(splits(STREAM, size));
    t.is(run.error, null);
    t.deepEqual(run.heads, ['POST /a', 'POST /b', 'GET /c']);
    t.is(run.ends, 3);
    t.true(run.forwarded.equals(STREAM), 'every byte is passed on once, in order');
    t.is(run.body, 5 + 5 + 26, 'body bytes exclude heads, chunk lines and trailers');
  });
}

test('a large chunked body in odd-sized pieces', (t) => {
  const parts: string[] = ['PUT /big HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n'];
  let total = 0;
  for (let i = 1; i < 200; i++) {
    parts.push(`${i.toString(16)}\r\n${'z'.repeat(i)}\r\n`);
    total += i;
  }
  parts.push('0\r\n\r\n');
  const bytes = Buffer.from(parts.join(''), 'latin1');
  for (const size of [1, 5, 1000, 65536]) {
    const run = frameRequests(splits(bytes, size));
    t.is(run.error, null);
    t.is(run.ends, 1);
    t.is(run.body, total);
  }
});

const refused: Array<[string, string]> = [
  ['content-length and transfer-encoding', 'POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n'],
  ['two content-lengths', 'POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\n'],
  ['transfer-encoding chunked, identity', 'POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked , identity\r\n\r\n'],
  ['transfer-encoding xchunked', 'POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: xchunked\r\n\r\n'],
  ['obs-fold', 'GET / HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n  folded\r\n\r\n'],
  ['bare LF', 'GET / HTTP/1.1\nhost: x\r\n\r\n'],
  ['space before the colon', 'GET / HTTP/1.1\r\nhost : x\r\n\r\n'],
  ['NUL in a value', 'GET / HTTP/1.1\r\nhost: x\r\nx-a: a\u0000b\r\n\r\n'],
  ['two spaces in the request line', 'GET  / HTTP/1.1\r\nhost: x\r\n\r\n'],
  ['a signed content-length', 'POST / HTTP/1.1\r\nhost: x\r\ncontent-length: +3\r\n\r\n'],
];

for (const [name, text] of refused) {
  test(`refused: ${name}`, (t) => {
    const bytes = Buffer.from(text, 'latin1');
    const end = bytes.indexOf('\r\n\r\n') + 4;
    const head = parseRequestHead(bytes, 0, end);
    t.true(isHeadError(head), JSON.stringify(head));
    if (isHeadError(head)) t.is(head.code, 'BAD_REQUEST');
  });
}

test('refused in the body: an oversized chunk size and a chunk line with a bare LF', (t) => {
  for (const body of ['ffffffffffffffffff\r\n', '5;a\nb\r\nhello\r\n0\r\n\r\n', '5\r\nhelloXX']) {
    const run = frameRequests([Buffer.from(`POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n${body}`, 'latin1')]);
    t.is(run.error?.code, 'BAD_REQUEST', body);
    t.is(run.ends, 0);
  }
});

test('a head over the limit is HEADERS_TOO_LARGE, complete or not', (t) => {
  const run = frameRequests([Buffer.from(`GET / HTTP/1.1\r\nx-big: ${'a'.repeat(9000)}`, 'latin1')]);
  t.is(run.error?.code, 'HEADERS_TOO_LARGE');
});

test('response framing: HEAD, 204, 304 and 1xx have no body; no length means until close', (t) => {
  const parse = (text: string): ReturnType<typeof parseResponseHead> => parseResponseHead(Buffer.from(text, 'latin1'), 0, Buffer.byteLength(text));
  const ok = parse('HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n');
  if (isHeadError(ok)) return t.fail(ok.message);
  t.deepEqual(responseFraming(ok, 'GET'), { kind: 'length', length: 10 });
  t.deepEqual(responseFraming(ok, 'HEAD'), { kind: 'none' });
  const open = parse('HTTP/1.1 200 OK\r\nx: y\r\n\r\n');
  if (isHeadError(open)) return t.fail(open.message);
  t.deepEqual(responseFraming(open, 'GET'), { kind: 'close' });
  const none = parse('HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n');
  if (isHeadError(none)) return t.fail(none.message);
  t.deepEqual(responseFraming(none, 'GET'), { kind: 'none' });
  const closing = parse('HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\ncontent-length: 0\r\n\r\n');
  if (isHeadError(closing)) return t.fail(closing.message);
  t.true(closing.close);
});
