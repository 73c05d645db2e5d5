/**
 * Clusters: each registered cluster (mode, endpoint, workload identity) and the agents the control
 * plane has seen on its channel (connected or not, last heartbeat, certificates), with revoke and
 * reinstate for admins. Says what the control plane does not know.
 */
import { describeScope } from '../../rbac.js';
import type { AgentView } from '../agent-tracker.js';
import { relative, utc } from '../format.js';
import { html } from '../html.js';
import type { SafeHtml } from '../html.js';
import { actionButton, denied } from '../layout.js';
import type { PageContext, RenderedPage } from '../page-context.js';

const EXPIRY_WARNING_MS = 10 * 60_000;

function certificate(seen: AgentView['channelCertificate'], now: number): SafeHtml {
  if (seen === null) return html`<span class="muted">not seen</span>`;
  const soon = seen.notAfter - now < EXPIRY_WARNING_MS;
  return html`<span class="${soon ? 'warn' : ''}" title="serial ${seen.serial}">expires ${relative(seen.notAfter, now)}</span><br><span class="muted small">${utc(seen.notAfter)}</span>`;
}

function agentState(agent: AgentView, now: number): SafeHtml {
  if (agent.revoked !== null) return html`<span class="state revoked" data-agent-state="revoked">revoked</span><br><span class="muted small">${relative(agent.revoked.at, now)} by ${agent.revoked.by}</span>`;
  if (agent.streams > 0) return html`<span class="state connected" data-agent-state="connected">connected</span><br><span class="muted small">since ${relative(agent.connectedAt, now)}</span>`;
  return html`<span class="state disconnected" data-agent-state="disconnected">disconnected</span><br><span class="muted small">${agent.disconnectedAt === null ? 'no channel stream yet' : relative(agent.disconnectedAt, now)}</span>`;
}

function agentRow(agent: AgentView, now: number, mayRevoke: boolean): SafeHtml {
  const identity = { clusterId: agent.clusterId, agentId: agent.agentId };
  const action = !mayRevoke
    ? ''
    : agent.revoked === null
      ? actionButton({ action: 'revoke-agent', label: 'Revoke', danger: true, body: identity, confirm: `Revoke agent ${agent.agentId} of cluster ${agent.clusterId}? Its channel closes now, it gets no new certificate, and gateways told by this control plane close its tunnels.` })
      : actionButton({ action: 'reinstate-agent', label: 'Reinstate', body: identity, confirm: `Reinstate agent ${agent.agentId} of cluster ${agent.clusterId}? It may connect and get certificates again.` });
  return html`<tr data-agent="${agent.agentId}">
<td><code>${agent.agentId}</code>${agent.version === '' ? '' : html`<br><span class="muted small">version ${agent.version}</span>`}</td>
<td>${agentState(agent, now)}</td>
<td>${agent.lastHeartbeatAt === null ? html`<span class="muted">none yet</span>` : relative(agent.lastHeartbeatAt, now)}<br><span class="muted small">any message ${relative(agent.lastMessageAt, now)}</span></td>
<td>${agent.running === null ? '—' : agent.running} / ${agent.capacity === null ? '—' : agent.capacity === 0 ? 'default' : agent.capacity}</td>
<td>${certificate(agent.channelCertificate, now)}</td>
<td>${certificate(agent.issuedCertificate, now)}</td>
<td class="small">${agent.peer === '' ? '—' : agent.peer}</td>
<td>${action}</td>
</tr>`;
}

export async function clustersPage(context: PageContext): Promise<RenderedPage> {
  const scope = { org: context.org };
  if (!(await context.may('cluster.read', scope))) return { title: 'Clusters', status: 403, live: denied('cluster.read', describeScope(scope)) };
  const clusters = await context.service.store.listClusters(context.org);
  const mayRevoke = await context.may('cluster.register', scope);
  const agents = context.agents?.agents() ?? [];
  const cards = clusters.map((cluster) => {
    const mine = agents.filter((agent) => agent.clusterId === cluster.id);
    const table =
      context.agents === null
        ? html`<p class="muted">This control plane has no agents' channel (config <code>agents</code>), so it knows no agents.</p>`
        : mine.length === 0
          ? html`<p class="muted">No agent has connected to this control plane since it started, and none is revoked.</p>`
          : html`<table class="agents"><thead><tr><th>agent</th><th>channel</th><th>last heartbeat</th><th>running / capacity</th><th>channel certificate</th><th>last issued certificate</th><th>peer</th><th></th></tr></thead>
<tbody>${mine.map((agent) => agentRow(agent, context.now, mayRevoke))}</tbody></table>`;
    return html`<article class="cluster" data-cluster="${cluster.id}">
<h2><code>${cluster.id}</code> <span class="mode mode-${cluster.mode}" data-mode="${cluster.mode}">${cluster.mode}</span></h2>
<dl class="facts">
<dt>endpoint</dt><dd><code>${cluster.endpoint === '' ? '—' : cluster.endpoint}</code></dd>
<dt>workload issuer</dt><dd><code>${cluster.identity.issuer}</code> (audience <code>${cluster.identity.audience}</code>)</dd>
<dt>allowed subjects</dt><dd>${cluster.identity.allowedSubjects.map((subject) => html`<code>${subject}</code> `)}</dd>
<dt>registered</dt><dd>${utc(cluster.createdAt)} (updated ${relative(cluster.updatedAt, context.now)})</dd>
</dl>
${table}
</article>`;
  });
  const unknownClusters = agents.filter((agent) => !clusters.some((cluster) => cluster.id === agent.clusterId));
  const live = html`${clusters.length === 0 ? html`<p class="muted">No cluster is registered in org <code>${context.org}</code>.</p>` : cards}
${unknownClusters.length === 0 ? '' : html`<p class="warn">Agents of unregistered clusters tried to connect: ${unknownClusters.map((agent) => html`<code>${agent.clusterId}/${agent.agentId}</code> `)}</p>`}
<details class="known"><summary>What this page shows, and what the control plane does not know</summary>
<p>Shown: each cluster's registration (mode, endpoint, workload identity) from the store; per agent, what this control-plane process saw on its agents' channel since it started (streams open now, Hello, heartbeats, the channel's client certificate) and the last certificate its identity exchange issued; revocations, which are kept in the audit log.</p>
<p>Not known here: which gateway replicas hold an agent's tunnels (the Tunnels page shows each replica's connections per cluster), the mode the customer approved on the data plane (agents report a disagreement as <code>agent.mode</code> in the audit log), the router's and upstreams' health, and agents connected to another control-plane replica sharing this store.</p>
</details>`;
  return { title: 'Clusters', status: 200, live };
}
