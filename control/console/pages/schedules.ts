/** Schedules: every schedule of the org, its timing, last and next fire, with pause and resume for those who may write it. */
import { describeScope } from '../../rbac.js';
import { nextFireTime } from '../../schedules.js';
import type { ScheduleRecord } from '../../store/repository.js';
import { duration, relative, utc } from '../format.js';
import { html, query } from '../html.js';
import type { SafeHtml } from '../html.js';
import { actionButton, denied } from '../layout.js';
import type { PageContext, RenderedPage } from '../page-context.js';

function next(schedule: ScheduleRecord, now: number): string {
  if (!schedule.active) return '—';
  try {
    return utc(nextFireTime(schedule, Math.max(now, schedule.lastFire ?? schedule.startAt)));
  } catch {
    return 'cannot compute';
  }
}

function toggle(schedule: ScheduleRecord): SafeHtml {
  return schedule.active
    ? actionButton({ action: 'set-schedule-active', label: 'Pause', body: { id: schedule.id, active: false }, confirm: `Pause schedule ${schedule.id}? It launches no run until resumed.` })
    : actionButton({ action: 'set-schedule-active', label: 'Resume', body: { id: schedule.id, active: true }, confirm: `Resume schedule ${schedule.id}? Fires missed while paused are caught up.` });
}

export async function schedulesPage(context: PageContext): Promise<RenderedPage> {
  const scope = { org: context.org };
  if (!(await context.may('schedule.read', scope))) return { title: 'Schedules', status: 403, live: denied('schedule.read', describeScope(scope)) };
  const schedules = await context.service.store.listSchedules({ org: context.org });
  const rows = await Promise.all(
    schedules.map(async (schedule) => {
      const mayWrite = await context.may('schedule.write', schedule);
      return html`<tr data-schedule="${schedule.id}">
<td><code>${schedule.id}</code></td>
<td><code>${schedule.taskName}</code> <span class="muted">${schedule.taskVersion}</span><br><span class="small">${schedule.project}/${schedule.domain}</span></td>
<td><code>${schedule.clusterId}</code></td>
<td>${schedule.kind === 'cron' ? html`cron <code>${schedule.cron ?? ''}</code>` : html`every ${duration(schedule.rateMs ?? 0)}`}</td>
<td><span class="state ${schedule.active ? 'connected' : 'paused'}" data-active="${schedule.active ? 'active' : 'paused'}">${schedule.active ? 'active' : 'paused'}</span></td>
<td>${schedule.lastFire === null ? html`<span class="muted">never</span>` : html`${relative(schedule.lastFire, context.now)}<br><span class="muted small">${utc(schedule.lastFire)}</span>`}</td>
<td>${next(schedule, context.now)}</td>
<td><a href="/console/runs${query({ schedule: schedule.id })}">runs</a></td>
<td class="small">${schedule.createdBy}</td>
<td>${mayWrite ? toggle(schedule) : ''}</td>
</tr>`;
    }),
  );
  const live =
    rows.length === 0
      ? html`<p class="muted">No schedule in org <code>${context.org}</code>.</p>`
      : html`<table class="schedules"><thead><tr><th>schedule</th><th>task</th><th>cluster</th><th>timing</th><th>state</th><th>last fire</th><th>next fire</th><th></th><th>created by</th><th></th></tr></thead><tbody>${rows}</tbody></table>`;
  return { title: 'Schedules', status: 200, live };
}
