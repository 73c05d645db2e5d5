/**
 * The fuzz campaign's CI slice (test/fuzz/campaign.ts; the long run is `npm run fuzz`): a fixed
 * seed and a small time box against a real gateway, agents and an upstream. With connection
 * binding (the default) all four targets run, 4 s each: the HTTP/1.1 front door (plain and TLS),
 * the HTTP/2 front door, the tunnel from a fake agent's side and from a fake gateway's side. Per
 * request (`TETHER_TEST_BINDING=request`, `npm test` runs both) the targets whose path depends on
 * the binding mode run, 5 s each: HTTP/1.1 and the fake agent (a client request through it).
 *
 * A failure names its case: `FUZZ_SEED=<seed> FUZZ_BINDING=<mode> FUZZ_TARGETS=<target>
 * FUZZ_CASE=<index> npm run fuzz` replays it.
 */
import test from 'ava';
import { runCampaign, TARGETS, type TargetName } from '../fuzz/campaign.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { TEST_BINDING } from '../helpers/tunnel-env.js';

failOnLeaks(test);

const CI_SEED = 0x7e7e_2012;
const TARGETS_BY_MODE: Record<'connection' | 'request', readonly TargetName[]> = {
  connection: TARGETS,
  request: ['h1', 'agent'],
};
const SECONDS_BY_MODE = { connection: 16, request: 10 };

test(`fuzz campaign, CI slice: seed ${CI_SEED}, ${SECONDS_BY_MODE[TEST_BINDING]} s, binding ${TEST_BINDING}`, async (t) => {
  const targets = TARGETS_BY_MODE[TEST_BINDING];
  const report = await runCampaign({ seed: CI_SEED, seconds: SECONDS_BY_MODE[TEST_BINDING], targets, binding: TEST_BINDING, log: (line) => t.log(line) });
  t.log(`${report.cases} cases in ${report.batches} batches; tether_gateway_request_errors_total grew by ${JSON.stringify(report.metricErrors)}`);
  const failures = report.failures.map((f) => {
    const target = f.after?.target ?? f.target;
    const cases = f.after === undefined ? String(f.index) : `${f.index}-${f.after.last}`;
    return `${f.message} (replay: FUZZ_SEED=${CI_SEED} FUZZ_BINDING=${TEST_BINDING} FUZZ_TARGETS=${target} FUZZ_CASE=${cases} npm run fuzz)`;
  });
  t.deepEqual(failures, []);
  for (const target of targets) t.true((report.targets[target]?.cases ?? 0) > 0, `${target}: no case ran`);
});
