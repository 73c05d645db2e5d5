/**
 * `npm run fuzz`: the fuzz campaign (test/fuzz/campaign.ts) for longer than CI runs it.
 *
 *   FUZZ_SECONDS   wall time in all (default 300), split between the binding modes and targets
 *   FUZZ_SEED      campaign seed, a 32-bit integer (default: a random one, printed)
 *   FUZZ_TARGETS   comma-separated: h1, h2, agent, gateway (default all)
 *   FUZZ_BINDING   connection, request or both (default both, one after the other)
 *   FUZZ_LANES     cases run side by side for h1 and h2 (default 4)
 *   FUZZ_CASE      replay: one case index, or a range `a-b`, of the first target in FUZZ_TARGETS
 *                  (with the same FUZZ_SEED and FUZZ_BINDING), then one health check
 *
 * Every failure is printed with the command that replays it. Exit status 1 when any case failed.
 */
import { randomInt } from 'node:crypto';
import { TARGETS, runCampaign, type CampaignReport, type TargetName } from './campaign.js';

function fail(message: string): never {
  process.stderr.write(`fuzz: ${message}\n`);
  process.exit(2);
}

function integer(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) fail(`${name}=${raw}: expected a non-negative integer`);
  return value;
}

const seconds = integer('FUZZ_SECONDS', 300);
const seed = integer('FUZZ_SEED', randomInt(0, 2 ** 32 - 1)) >>> 0;
const lanes = integer('FUZZ_LANES', 4);
const targets = (process.env.FUZZ_TARGETS ?? TARGETS.join(','))
  .split(',')
  .map((t) => t.trim())
  .filter((t) => t !== '');
for (const target of targets) if (!(TARGETS as readonly string[]).includes(target)) fail(`unknown target ${target} (targets: ${TARGETS.join(', ')})`);
const bindingSetting = process.env.FUZZ_BINDING ?? 'both';
if (!['connection', 'request', 'both'].includes(bindingSetting)) fail(`FUZZ_BINDING=${bindingSetting}: expected connection, request or both`);
const bindings = (bindingSetting === 'both' ? ['connection', 'request'] : [bindingSetting]) as Array<'connection' | 'request'>;

let only: number[] | undefined;
const replay = process.env.FUZZ_CASE;
if (replay !== undefined && replay !== '') {
  const match = /^(\d+)(?:-(\d+))?$/.exec(replay);
  if (match === null) fail(`FUZZ_CASE=${replay}: expected an index or a range a-b`);
  const from = Number(match[1]);
  const to = match[2] === undefined ? from : Number(match[2]);
  if (to < from) fail(`FUZZ_CASE=${replay}: empty range`);
  only = Array.from({ length: to - from + 1 }, (_, i) => from + i);
  if (process.env.FUZZ_SEED === undefined) fail('FUZZ_CASE needs the FUZZ_SEED of the campaign that failed');
}

const log = (line: string): void => {
  process.stdout.write(`${line}\n`);
};

log(`fuzz: seed ${seed}, ${only === undefined ? `${seconds} s` : `cases ${replay ?? ''}`}, targets ${targets.join(', ')}, binding ${bindings.join(' then ')}, ${lanes} lanes`);
const reports: CampaignReport[] = [];
for (const binding of bindings) {
  log(`-- binding ${binding}`);
  const report = await runCampaign({
    seed,
    seconds: seconds / bindings.length,
    targets: (only === undefined ? targets : targets.slice(0, 1)) as TargetName[],
    lanes,
    binding,
    log,
    ...(only === undefined ? {} : { only }),
  });
  reports.push(report);
  log(`-- binding ${binding}: ${report.cases} cases, ${report.batches} batches, ${report.failures.length} failure(s)`);
  const codes = Object.entries(report.metricErrors)
    .sort((a, b) => b[1] - a[1])
    .map(([code, n]) => `${code} ${n}`)
    .join(', ');
  log(`   tether_gateway_request_errors_total grew by: ${codes === '' ? 'nothing' : codes}`);
}

const failures = reports.flatMap((report) => report.failures.map((failure) => ({ ...failure, binding: report.binding })));
if (failures.length === 0) {
  log(`fuzz: no failures (seed ${seed})`);
  process.exit(0);
}
log(`fuzz: ${failures.length} failure(s) (seed ${seed}):`);
for (const failure of failures) {
  log(`  [${failure.binding}] ${failure.target === 'health' ? 'health check' : `${failure.target} case ${failure.index}`}: ${failure.message}`);
  // A health check's failure replays the batch before it; a case's, that case.
  const replayTarget = failure.after?.target ?? failure.target;
  const cases = failure.after === undefined ? String(failure.index) : `${failure.index}-${failure.after.last}`;
  log(`    replay: FUZZ_SEED=${seed} FUZZ_BINDING=${failure.binding} FUZZ_TARGETS=${replayTarget} FUZZ_CASE=${cases} npm run fuzz`);
}
process.exit(1);
