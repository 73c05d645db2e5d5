/** The console's escaping template and its Prometheus text reader, without a browser. */
import test from 'ava';
import { consolePath, escapeHtml, html, query, raw } from '../../control/console/html.js';
import { figuresOf } from '../../control/console/gateway-metrics.js';
import { parsePrometheusText, sumOf } from '../../control/console/prometheus-text.js';

test('html escapes every interpolated value, in text and in attributes, and passes nested html through', (t) => {
  const hostile = `<img src=x onerror="alert(1)">'&`;
  const inner = html`<b>${hostile}</b>`;
  const out = html`<p title="${hostile}">${hostile}${inner}${[hostile, 1, null, undefined, false]}</p>`.toString();
  t.false(out.includes('<img'));
  t.is(out, `<p title="&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&#39;&amp;">&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&#39;&amp;<b>&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&#39;&amp;</b>&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&#39;&amp;1</p>`);
  t.is(escapeHtml(`"'<>&`), '&quot;&#39;&lt;&gt;&amp;');
  t.is(html`${raw('<br>')}`.toString(), '<br>');
});

test('console paths and queries are percent-encoded', (t) => {
  t.is(consolePath('runs', '<x>/"y"?'), '/console/runs/%3Cx%3E%2F%22y%22%3F');
  t.is(query({ a: 'x y', b: '', c: undefined, d: '<&>' }), '?a=x+y&d=%3C%26%3E');
  t.is(query({}), '');
});

test('the Prometheus reader keeps samples with escaped labels and skips what does not parse', (t) => {
  const text = [
    '# HELP tether_gateway_requests_total x',
    '# TYPE tether_gateway_requests_total counter',
    'tether_gateway_requests_total{cluster="demo",protocol="http1"} 12',
    'tether_gateway_requests_total{cluster="a\\"b\\\\c\\nd",protocol="http2"} 3 1700000000000',
    'tether_gateway_tunnel_connections{cluster="demo"} 2',
    'tether_gateway_tunnel_connections{cluster="other"} 1',
    'tether_gateway_concurrent_requests{cluster="demo"} 4',
    'tether_gateway_bytes_total{direction="to_agent"} 1024',
    'tether_gateway_bytes_total{direction="to_client"} 2048',
    'tether_gateway_request_errors_total{code="NO_TUNNEL"} 5',
    'tether_gateway_request_errors_total{code="FORBIDDEN"} 7',
    'tether_gateway_tunnel_handshakes_total{result="ok",reason=""} 9',
    'tether_gateway_tunnel_handshakes_total{result="refused",reason="CERT_REVOKED"} 2',
    'tether_gateway_bound_connections{cluster="demo"} +Inf',
    'broken{cluster="x} 1',
    'also broken',
    'nan_metric NaN',
  ].join('\n');
  const parsed = parsePrometheusText(text);
  t.is(parsed.skipped, 2);
  t.deepEqual(parsed.samples[1]?.labels, { cluster: 'a"b\\c\nd', protocol: 'http2' });
  t.is(sumOf(parsed.samples, 'tether_gateway_requests_total'), 15);
  const figures = figuresOf(parsed.samples);
  t.is(figures.tunnels, 3);
  t.deepEqual(figures.tunnelsByCluster, [['demo', 2], ['other', 1]]);
  t.is(figures.activeStreams, 4);
  t.is(figures.bytesToAgent, 1024);
  t.is(figures.bytesToClient, 2048);
  t.is(figures.errors, 12);
  t.deepEqual(figures.errorsByCode, [['FORBIDDEN', 7], ['NO_TUNNEL', 5]]);
  t.is(figures.handshakesRefused, 2);
  t.is(figures.boundConnections, Number.POSITIVE_INFINITY);
});
