import test from 'ava';
import { isTetherError } from '../../common/errors.js';
import { decideEvent, isTerminal, Phase, phaseName } from '../../control/phases.js';
import type { Phase as PhaseValue } from '../../control/phases.js';

const P = Phase;
const ALL: PhaseValue[] = [P.QUEUED, P.INITIALIZING, P.RUNNING, P.ABORTING, P.SUCCEEDED, P.FAILED, P.ABORTED, P.TIMED_OUT];
const TERMINALS: PhaseValue[] = [P.SUCCEEDED, P.FAILED, P.ABORTED, P.TIMED_OUT];

/** Expected outcome of every (current, event) pair from the assigned cluster. */
function expected(from: PhaseValue, to: PhaseValue): string {
  if (from === to) return 'duplicate';
  if (TERMINALS.includes(from)) return 'PHASE_TERMINAL';
  const rank = (phase: PhaseValue): number => (TERMINALS.includes(phase) ? P.SUCCEEDED : phase);
  return rank(to) < rank(from) ? 'PHASE_BACKWARDS' : 'apply';
}

function outcome(from: PhaseValue, to: number, producer: string | null = 'c1'): string {
  try {
    return decideEvent({ phase: from, clusterId: 'c1' }, { phase: to, producerCluster: producer }).kind;
  } catch (reason) {
    return isTetherError(reason) ? reason.code : 'THREW';
  }
}

// The explicit table: the cases the rules exist for, written out rather than derived.
const TABLE: Array<[PhaseValue, number, string]> = [
  [P.QUEUED, P.INITIALIZING, 'apply'],
  [P.QUEUED, P.RUNNING, 'apply'],
  [P.QUEUED, P.SUCCEEDED, 'apply'],
  [P.QUEUED, P.ABORTED, 'apply'],
  [P.RUNNING, P.SUCCEEDED, 'apply'],
  [P.RUNNING, P.FAILED, 'apply'],
  [P.RUNNING, P.TIMED_OUT, 'apply'],
  [P.RUNNING, P.ABORTING, 'apply'],
  [P.ABORTING, P.ABORTED, 'apply'],
  [P.ABORTING, P.SUCCEEDED, 'apply'],
  [P.RUNNING, P.RUNNING, 'duplicate'],
  [P.SUCCEEDED, P.SUCCEEDED, 'duplicate'],
  [P.RUNNING, P.QUEUED, 'PHASE_BACKWARDS'],
  [P.INITIALIZING, P.QUEUED, 'PHASE_BACKWARDS'],
  [P.ABORTING, P.RUNNING, 'PHASE_BACKWARDS'],
  [P.SUCCEEDED, P.FAILED, 'PHASE_TERMINAL'],
  [P.FAILED, P.RUNNING, 'PHASE_TERMINAL'],
  [P.ABORTED, P.QUEUED, 'PHASE_TERMINAL'],
  [P.TIMED_OUT, P.SUCCEEDED, 'PHASE_TERMINAL'],
  [P.RUNNING, P.UNDEFINED, 'PHASE_INVALID'],
  [P.RUNNING, 42, 'PHASE_INVALID'],
  [P.RUNNING, 2.5, 'PHASE_INVALID'],
];

for (const [from, to, want] of TABLE) {
  test(`${phaseName(from)} + ${phaseName(to)} → ${want}`, (t) => {
    t.is(outcome(from, to), want);
  });
}

test('every pair of phases follows the documented rules', (t) => {
  for (const from of ALL) for (const to of ALL) t.is(outcome(from, to), expected(from, to), `${phaseName(from)} → ${phaseName(to)}`);
});

test('an event from another cluster is refused before any other rule, even a duplicate or after terminal', (t) => {
  for (const from of ALL) for (const to of ALL) t.is(outcome(from, to, 'c2'), 'PHASE_WRONG_CLUSTER', `${phaseName(from)} → ${phaseName(to)}`);
});

test('the control plane itself (no producer cluster) passes the cluster check', (t) => {
  t.is(outcome(P.RUNNING, P.ABORTING, null), 'apply');
  t.is(outcome(P.SUCCEEDED, P.ABORTED, null), 'PHASE_TERMINAL');
});

test('terminal set', (t) => {
  t.deepEqual(ALL.filter(isTerminal), TERMINALS);
});
