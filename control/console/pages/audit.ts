/** Audit log: the newest records first, filtered by principal and operation (admins: `audit.read`). */
import { describeScope } from '../../rbac.js';
import { utc } from '../format.js';
import { html, query } from '../html.js';
import type { SafeHtml } from '../html.js';
import { denied } from '../layout.js';
import type { PageContext, RenderedPage } from '../page-context.js';

const PAGE_SIZE = 100;

function filtersForm(principal: string, operation: string): SafeHtml {
  return html`<form method="get" action="/console/audit" class="filters" id="audit-filters">
<label>principal <input name="principal" value="${principal}" size="24" placeholder="user:alice"></label>
<label>operation <input name="operation" value="${operation}" size="16" placeholder="run.abort"></label>
<button type="submit">Filter</button> <a href="/console/audit">clear</a>
</form>`;
}

export async function auditPage(context: PageContext): Promise<RenderedPage> {
  const principal = (context.url.searchParams.get('principal') ?? '').trim();
  const operation = (context.url.searchParams.get('operation') ?? '').trim();
  const controls = filtersForm(principal, operation);
  const scope = { org: context.org };
  if (!(await context.may('audit.read', scope))) return { title: 'Audit log', status: 403, controls, live: denied('audit.read', describeScope(scope)) };
  const after = context.url.searchParams.get('after') ?? '';
  const page = await context.service.store.listAudit(
    { ...(principal === '' ? {} : { principal }), ...(operation === '' ? {} : { operation }) },
    PAGE_SIZE,
    after,
  );
  const rows = page.items.map(
    (record) => html`<tr data-seq="${record.seq}" class="${record.result === 'OK' ? '' : 'refused'}">
<td>${record.seq}</td><td>${utc(record.at)}</td><td class="principal">${record.principal}</td><td><code>${record.operation}</code></td><td class="resource">${record.resource}</td><td class="result"><code>${record.result}</code></td>
</tr>`,
  );
  const next = page.nextPageToken === '' ? '' : html`<p><a href="/console/audit${query({ principal, operation, after: page.nextPageToken })}">Older records →</a></p>`;
  const live = html`${rows.length === 0 ? html`<p class="muted">No record matches.</p>` : html`<table class="audit"><thead><tr><th>#</th><th>at</th><th>principal</th><th>operation</th><th>resource</th><th>result</th></tr></thead><tbody>${rows}</tbody></table>`}
${next}
<p class="muted small">Every API call is recorded here (who, what, which resource, result), and the console's logins, logouts and actions. The console's page views are authorised against the same RBAC graph but not recorded one by one (they refresh every few seconds).</p>`;
  return { title: 'Audit log', status: 200, controls, live };
}
