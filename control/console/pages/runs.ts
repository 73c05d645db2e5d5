/**
 * Runs: the list with filters (project, domain, phase, cluster, task, schedule), a chart of the
 * last hour's runs by phase, and one run's page: its spec's input URIs, output URIs, error and
 * phase history. URIs are shown as text; the data they name is never fetched by the control plane.
 */
import { isTerminal, parsePhaseName, Phase, phaseName } from '../../phases.js';
import { describeScope } from '../../rbac.js';
import type { ResourceScope } from '../../rbac.js';
import type { RunFilter, RunRecord } from '../../store/repository.js';
import { CHART_PHASES, phaseChart } from '../charts.js';
import type { PhaseBucket } from '../charts.js';
import { relative, utc } from '../format.js';
import { HOUR_MS } from '../gateway-metrics.js';
import { consolePath, html, query } from '../html.js';
import type { SafeHtml } from '../html.js';
import { actionButton, denied, phaseBadge } from '../layout.js';
import type { PageContext, RenderedPage } from '../page-context.js';

const PAGE_SIZE = 50;
const CHART_SCAN = 500;
const SLOT_MS = 5 * 60_000;
const FILTERS = ['project', 'domain', 'phase', 'cluster', 'task', 'schedule'] as const;

function abortButton(run: RunRecord): SafeHtml {
  return actionButton({
    action: 'abort-run',
    label: 'Abort',
    danger: true,
    body: { runId: run.id },
    confirm: `Abort run ${run.id} (${run.taskName} ${run.taskVersion})? It is ${phaseName(run.phase)}; a leased run is stopped by its agent.`,
  });
}

function uriList(entries: Record<string, string>): SafeHtml {
  const pairs = Object.entries(entries);
  if (pairs.length === 0) return html`<span class="muted">none</span>`;
  return html`<dl class="uris">${pairs.map(([name, uri]) => html`<dt><code>${name}</code></dt><dd><code class="uri">${uri}</code></dd>`)}</dl>`;
}

function filtersForm(values: Readonly<Record<string, string>>): SafeHtml {
  const phases = ['', ...CHART_PHASES];
  return html`<form method="get" action="/console/runs" class="filters" id="run-filters">
<label>project <input name="project" value="${values.project ?? ''}" size="10"></label>
<label>domain <input name="domain" value="${values.domain ?? ''}" size="10"></label>
<label>phase <select name="phase">${phases.map((phase) => html`<option value="${phase}"${values.phase === phase ? html` selected` : ''}>${phase === '' ? 'any' : phase}</option>`)}</select></label>
<label>cluster <input name="cluster" value="${values.cluster ?? ''}" size="10"></label>
<label>task <input name="task" value="${values.task ?? ''}" size="10"></label>
<label>schedule <input name="schedule" value="${values.schedule ?? ''}" size="10"></label>
<button type="submit">Filter</button> <a href="/console/runs">clear</a>
</form>`;
}

function buckets(runs: readonly RunRecord[], now: number): PhaseBucket[] {
  const start = now - HOUR_MS;
  const slots: Array<{ at: number; counts: Map<string, number> }> = [];
  for (let at = start; at < now; at += SLOT_MS) slots.push({ at, counts: new Map() });
  for (const run of runs) {
    if (run.createdAt < start || run.createdAt > now) continue;
    const slot = slots[Math.min(slots.length - 1, Math.floor((run.createdAt - start) / SLOT_MS))];
    const name = phaseName(run.phase);
    slot?.counts.set(name, (slot.counts.get(name) ?? 0) + 1);
  }
  return slots;
}

export async function runsPage(context: PageContext): Promise<RenderedPage> {
  const values: Record<string, string> = {};
  for (const name of FILTERS) values[name] = (context.url.searchParams.get(name) ?? '').trim();
  const scope: ResourceScope = { org: context.org };
  if (values.project !== '') scope.project = values.project;
  if (values.domain !== '') scope.domain = values.domain;
  const controls = filtersForm(values);
  if (!(await context.may('run.read', scope))) return { title: 'Runs', status: 403, controls, live: denied('run.read', describeScope(scope)) };
  const phase = values.phase === '' ? undefined : parsePhaseName(values.phase ?? '');
  const filter: RunFilter = {
    org: context.org,
    ...(scope.project === undefined ? {} : { project: scope.project }),
    ...(scope.domain === undefined ? {} : { domain: scope.domain }),
    ...(values.cluster === '' ? {} : { clusterId: values.cluster }),
    ...(values.task === '' ? {} : { taskName: values.task }),
    ...(values.schedule === '' ? {} : { scheduleId: values.schedule }),
  };
  const after = context.url.searchParams.get('after') ?? '';
  const page = await context.service.store.listRuns(phase === undefined ? filter : { ...filter, phase }, PAGE_SIZE, after);
  // The chart counts the latest CHART_SCAN runs of the filter (any phase); the page's own rows when they are all of them.
  const complete = after === '' && phase === undefined && page.nextPageToken === '';
  const lastHour = complete ? page.items : (await context.service.store.listRuns(filter, CHART_SCAN, '')).items;
  const rows = await Promise.all(
    page.items.map(async (run) => {
      const mayAbort = !isTerminal(run.phase) && (await context.may('run.abort', run));
      return html`<tr data-run-id="${run.id}">
<td><a href="${consolePath('runs', run.id)}"><code>${run.id}</code></a></td>
<td><code>${run.taskName}</code> <span class="muted">${run.taskVersion}</span></td>
<td>${run.project}/${run.domain}</td>
<td><code>${run.clusterId}</code></td>
<td>${phaseBadge(phaseName(run.phase))}</td>
<td title="${utc(run.createdAt)}">${relative(run.createdAt, context.now)}</td>
<td title="${utc(run.updatedAt)}">${relative(run.updatedAt, context.now)}</td>
<td class="small">${run.createdBy}</td>
<td>${mayAbort ? abortButton(run) : ''}</td>
</tr>`;
    }),
  );
  const next = page.nextPageToken === '' ? '' : html`<p><a href="/console/runs${query({ ...values, after: page.nextPageToken })}">Older runs →</a></p>`;
  const live = html`<h2>Runs created in the last hour, by phase now</h2>
<p class="muted small">Counted from the latest ${CHART_SCAN} runs that match the filters other than phase.</p>
${phaseChart(buckets(lastHour, context.now))}
<ul class="legend">${CHART_PHASES.map((name) => html`<li><span class="swatch phase-${name}"></span>${name}</li>`)}</ul>
${rows.length === 0 ? html`<p class="muted" id="no-runs">No run matches.</p>` : html`<table class="runs"><thead><tr><th>run</th><th>task</th><th>project/domain</th><th>cluster</th><th>phase</th><th>created</th><th>updated</th><th>by</th><th></th></tr></thead><tbody>${rows}</tbody></table>`}
${next}`;
  return { title: 'Runs', status: 200, controls, live };
}

export async function runPage(context: PageContext, runId: string): Promise<RenderedPage> {
  const title = `Run ${runId}`;
  const run = await context.service.store.getRun(runId);
  if (run === undefined) return { title, status: 404, live: html`<p class="error">No run <code>${runId}</code>.</p>` };
  if (!(await context.may('run.read', run))) return { title, status: 403, live: denied('run.read', describeScope(run)) };
  const events = await context.service.store.listEvents(run.id);
  const mayAbort = !isTerminal(run.phase) && (await context.may('run.abort', run));
  const error = run.result.error;
  const live = html`<div class="run" data-run-id="${run.id}">
<p>${phaseBadge(phaseName(run.phase))} ${mayAbort ? abortButton(run) : ''}</p>
<dl class="facts">
<dt>task</dt><dd><code>${run.taskName}</code> version <code>${run.taskVersion}</code></dd>
<dt>scope</dt><dd>${describeScope(run)}</dd>
<dt>cluster</dt><dd><code>${run.clusterId}</code></dd>
<dt>created</dt><dd>${utc(run.createdAt)} by ${run.createdBy}</dd>
<dt>started</dt><dd>${utc(run.startedAt)}</dd>
<dt>ended</dt><dd>${utc(run.endedAt)}</dd>
${run.scheduleId === null ? '' : html`<dt>schedule</dt><dd><code>${run.scheduleId}</code> fire ${utc(run.fireTime)}</dd>`}
${Object.keys(run.spec.labels).length === 0 ? '' : html`<dt>labels</dt><dd>${Object.entries(run.spec.labels).map(([key, value]) => html`<code>${key}=${value}</code> `)}</dd>`}
${error === null ? '' : html`<dt>error</dt><dd class="error"><code>${error.code}</code> (${error.kind}) ${error.message}</dd>`}
</dl>
<h2>Inputs</h2>
${uriList(run.spec.inputs)}
<h2>Outputs</h2>
${uriList(run.result.outputs)}
${run.spec.outputPrefix === '' ? '' : html`<p class="small">output prefix <code>${run.spec.outputPrefix}</code></p>`}
<p class="muted small">URIs only: the bytes stay in the data plane's object store and are fetched with a signed URL from its dataproxy (<code>tether data download URI</code>), never through the control plane.</p>
<h2>Phase history</h2>
<table class="events"><thead><tr><th>#</th><th>phase</th><th>occurred</th><th>recorded</th><th>from</th><th>message</th><th>error</th></tr></thead>
<tbody>${events.map(
    (event) => html`<tr data-seq="${event.seq}"><td>${event.seq}</td><td>${phaseBadge(phaseName(event.phase))}</td><td>${utc(event.occurredAt)}</td><td>${utc(event.recordedAt)}</td><td><code>${event.clusterId === '' ? 'control plane' : event.clusterId}</code></td><td>${event.message}</td><td>${event.error === null ? '' : html`<code>${event.error.code}</code> ${event.error.message}`}</td></tr>`,
  )}</tbody></table>
${events.length === 0 ? html`<p class="muted">No phase event yet (the run is ${phaseName(Phase.QUEUED)} until an agent leases it).</p>` : ''}
</div>`;
  return { title, status: 200, live };
}
