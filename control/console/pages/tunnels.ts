/**
 * Tunnels: per gateway replica, what its metrics say (tunnel connections per cluster, streams
 * carrying requests now, bound connections, bytes, requests, errors by code, refused agent
 * handshakes) and requests per second over the last hour.
 */
import { describeScope } from '../../rbac.js';
import { rateChart } from '../charts.js';
import { bytes, count, relative } from '../format.js';
import type { ReplicaReading } from '../gateway-metrics.js';
import { html } from '../html.js';
import type { SafeHtml } from '../html.js';
import { denied } from '../layout.js';
import type { PageContext, RenderedPage } from '../page-context.js';

function replicaRow(reading: ReplicaReading, now: number): SafeHtml {
  const figures = reading.figures;
  if (figures === null) {
    return html`<tr data-replica="${reading.name}"><td><code>${reading.name}</code><br><span class="muted small">${reading.origin}</span></td>
<td colspan="7" class="error">not readable: ${reading.error ?? 'unknown error'} (${relative(reading.readAt, now)})</td></tr>`;
  }
  const perCluster = figures.tunnelsByCluster.length === 0 ? html`<span class="muted">none</span>` : figures.tunnelsByCluster.map(([cluster, n]) => html`<code>${cluster}</code>: ${count(n)}<br>`);
  const errors = figures.errorsByCode.slice(0, 4).map(([code, n]) => html`<br><span class="small"><code>${code}</code> ${count(n)}</span>`);
  return html`<tr data-replica="${reading.name}">
<td><code>${reading.name}</code><br><span class="muted small">${reading.origin} · read ${relative(reading.readAt, now)}</span></td>
<td data-figure="tunnels">${count(figures.tunnels)}<br><span class="small">${perCluster}</span></td>
<td data-figure="active-streams">${count(figures.activeStreams)}</td>
<td data-figure="bound">${count(figures.boundConnections)}</td>
<td data-figure="bytes">↑ ${bytes(figures.bytesToAgent)}<br>↓ ${bytes(figures.bytesToClient)}</td>
<td data-figure="requests">${count(figures.requests)}</td>
<td data-figure="errors">${count(figures.errors)}${errors}</td>
<td data-figure="handshakes-refused">${count(figures.handshakesRefused)}</td>
</tr>`;
}

export async function tunnelsPage(context: PageContext): Promise<RenderedPage> {
  const scope = { org: context.org };
  if (!(await context.may('cluster.read', scope))) return { title: 'Tunnels', status: 403, live: denied('cluster.read', describeScope(scope)) };
  if (!context.gateways.configured) {
    return {
      title: 'Tunnels',
      status: 200,
      live: html`<p class="not-configured" data-gateways="not-configured">Gateway metrics: <strong>not configured</strong>. The control plane has no channel to the gateways; list each replica's metrics URL under <code>console.gateways</code> in its config (<code>- { name: gw-1, metricsUrl: "http://10.0.0.5:9090/metrics" }</code>). <code>tether dev</code> connects its in-process gateway by itself.</p>`,
    };
  }
  const readings = await context.gateways.readings();
  const live = html`<table class="replicas"><thead><tr><th>replica</th><th>tunnel connections</th><th>active streams</th><th>bound connections</th><th>body bytes (to agent / to client)</th><th>requests</th><th>errors</th><th>refused agent handshakes</th></tr></thead>
<tbody>${readings.map((reading) => replicaRow(reading, context.now))}</tbody></table>
<h2>Requests per second, last hour</h2>
${rateChart(context.gateways.rates(), context.now)}
<ul class="legend">${context.gateways.rates().map((series, index) => html`<li><span class="swatch series-${index % 6}"></span>${series.name} (${series.points.length} points)</li>`)}</ul>
<p class="muted small">From each replica's <code>/metrics</code>: <code>tether_gateway_tunnel_connections</code>, <code>tether_gateway_concurrent_requests</code>, <code>tether_gateway_bound_connections</code>, <code>tether_gateway_bytes_total</code>, <code>tether_gateway_requests_total</code>, <code>tether_gateway_request_errors_total</code>, <code>tether_gateway_tunnel_handshakes_total</code>. Totals count from the replica's start; the chart is sampled by this control plane since it started.</p>`;
  return { title: 'Tunnels', status: 200, live };
}
