/** The tunnels page's source: gateway replicas' /metrics read over HTTP, the last hour's request rates. */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import test from 'ava';
import { GatewayMetricsBoard, urlSource } from '../../control/console/gateway-metrics.js';
import { failOnLeaks } from '../helpers/leaks.js';

failOnLeaks(test);

test('a replica is read from its metrics URL; an unreachable one is reported, not thrown; rates come from samples', async (t) => {
  let requests = 100;
  const server = createServer((request, response) => {
    if (request.url !== '/metrics') {
      response.writeHead(404).end();
      return;
    }
    response.writeHead(200, { 'content-type': 'text/plain' });
    response.end(
      [
        `tether_gateway_requests_total{cluster="demo",protocol="http1"} ${requests}`,
        'tether_gateway_tunnel_connections{cluster="demo"} 2',
        'tether_gateway_concurrent_requests{cluster="demo"} 1',
        'tether_gateway_request_errors_total{code="NO_TUNNEL"} 3',
      ].join('\n'),
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const port = (server.address() as AddressInfo).port;

  let now = 1_000_000;
  const board = new GatewayMetricsBoard({ sampleMs: 3_600_000, now: () => now });
  t.teardown(() => board.close());
  t.false(board.configured);
  board.add(urlSource('gw-1', `http://127.0.0.1:${port}/metrics`));
  board.add(urlSource('gw-2', `http://127.0.0.1:${port}/not-metrics`));
  t.true(board.configured);

  const readings = await board.readings();
  const first = readings.find((reading) => reading.name === 'gw-1');
  t.is(first?.error, null);
  t.is(first?.figures?.tunnels, 2);
  t.is(first?.figures?.activeStreams, 1);
  t.is(first?.figures?.requests, 100);
  t.deepEqual(first?.figures?.errorsByCode, [['NO_TUNNEL', 3]]);
  t.is(readings.find((reading) => reading.name === 'gw-2')?.error, 'HTTP 404');

  await board.sampleNow();
  now += 60_000 * 30;
  requests += 3_600;
  await board.sampleNow();
  now += 60_000 * 30;
  requests = 1_800; // the replica restarted: its counter began again
  await board.sampleNow();
  const rates = board.rates().find((series) => series.name === 'gw-1');
  t.deepEqual(
    rates?.points.map((point) => point.perSecond),
    [2, 1],
  );
  t.deepEqual(board.rates().find((series) => series.name === 'gw-2')?.points, []);
});

test('a replica that does not answer in time is reported as such', async (t) => {
  const sockets = new Set<import('node:net').Socket>();
  const server = createServer(() => {
    // never answers
  });
  server.on('connection', (socket) => sockets.add(socket));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  );
  const source = urlSource('slow', `http://127.0.0.1:${(server.address() as AddressInfo).port}/metrics`, 200);
  await t.throwsAsync(source.read(), { message: 'no answer within 200 ms' });
});
