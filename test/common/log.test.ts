import test from 'ava';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { isTracerEnabled, parseTraceSpec, setTraceSpec, trace } from '../../common/log.js';

test.serial('tracers are off by default and follow TETHER_TRACE syntax', (t) => {
  setTraceSpec('');
  t.false(isTracerEnabled('tunnel'));
  setTraceSpec('tunnel,xds');
  t.true(isTracerEnabled('tunnel'));
  t.true(isTracerEnabled('xds'));
  t.false(isTracerEnabled('keepalive'));
  setTraceSpec('all,-keepalive');
  t.true(isTracerEnabled('anything'));
  t.false(isTracerEnabled('keepalive'));
  t.deepEqual([...parseTraceSpec(' a , -b ,,').enabled], ['a']);
  setTraceSpec('');
});

test.serial('an enabled tracer writes a structured line naming the tracer; a disabled one writes nothing', (t) => {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(chunk.toString());
      done();
    },
  });
  const logger = pino({ level: 'info' }, sink);
  setTraceSpec('tunnel');
  trace(logger, 'tunnel', 'stream opened', { streamId: 3 });
  trace(logger, 'xds', 'not shown');
  setTraceSpec('');
  t.is(lines.length, 1);
  const record = JSON.parse(lines[0] ?? '{}') as { tracer: string; streamId: number; msg: string };
  t.is(record.tracer, 'tunnel');
  t.is(record.streamId, 3);
  t.is(record.msg, 'stream opened');
});
