/**
 * Run phases and the rules for accepting phase events, after Flyte (research/architecture.md §3).
 * Pure: no store, no clock. The store applies `decideEvent` inside the transaction that reads the
 * run, so the check and the write are one step.
 *
 * Phases (ordinal = rank; an event may move a run forward, skipping phases, never back):
 *   UNDEFINED(0)    never stored on a run; an event naming it is PHASE_INVALID
 *   QUEUED(1)       created, waiting for its cluster's agent to lease it
 *   INITIALIZING(2) leased; the agent is fetching inputs and preparing the process (Flyte's
 *                   INITIALIZING and WAITING_FOR_RESOURCES together)
 *   RUNNING(3)
 *   ABORTING(4)     abort requested while leased; only a terminal phase may follow
 *   SUCCEEDED(5) FAILED(6) ABORTED(7) TIMED_OUT(8)   terminal, final
 *
 * Rules, checked in this order:
 *   1. unknown or UNDEFINED phase                    → PHASE_INVALID
 *   2. producer cluster ≠ the run's assigned cluster → PHASE_WRONG_CLUSTER (the control plane's
 *      own events, producer `null`, skip this check)
 *   3. same phase as the run's current phase         → duplicate: accepted, nothing written
 *   4. current phase terminal                        → PHASE_TERMINAL
 *   5. event rank below current rank                 → PHASE_BACKWARDS (covers RUNNING→QUEUED and
 *      ABORTING→RUNNING; terminal phases share the top rank so SUCCEEDED→FAILED is rule 4)
 *   6. otherwise                                     → apply
 */
import { TetherError } from '../common/errors.js';
import { ControlErrorCode } from './errors.js';

export const Phase = {
  UNDEFINED: 0,
  QUEUED: 1,
  INITIALIZING: 2,
  RUNNING: 3,
  ABORTING: 4,
  SUCCEEDED: 5,
  FAILED: 6,
  ABORTED: 7,
  TIMED_OUT: 8,
} as const;

export type Phase = (typeof Phase)[keyof typeof Phase];

export const PHASE_NAMES: Readonly<Record<Phase, string>> = {
  0: 'UNDEFINED',
  1: 'QUEUED',
  2: 'INITIALIZING',
  3: 'RUNNING',
  4: 'ABORTING',
  5: 'SUCCEEDED',
  6: 'FAILED',
  7: 'ABORTED',
  8: 'TIMED_OUT',
};

/** The phases no other phase can follow (store queries use the list, `isTerminal` the set). */
export const TERMINAL_PHASES: readonly Phase[] = [Phase.SUCCEEDED, Phase.FAILED, Phase.ABORTED, Phase.TIMED_OUT];
const TERMINAL = new Set<number>(TERMINAL_PHASES);

export function isPhase(value: number): value is Phase {
  return Number.isInteger(value) && value >= Phase.UNDEFINED && value <= Phase.TIMED_OUT;
}

export function isTerminal(phase: number): boolean {
  return TERMINAL.has(phase);
}

export function phaseName(phase: number): string {
  return isPhase(phase) ? PHASE_NAMES[phase] : `PHASE_${phase}`;
}

export function parsePhaseName(name: string): Phase | undefined {
  const upper = name.toUpperCase().replace(/^PHASE_/, '');
  for (const [value, text] of Object.entries(PHASE_NAMES)) if (text === upper) return Number(value) as Phase;
  return undefined;
}

function rank(phase: Phase): number {
  return isTerminal(phase) ? Phase.SUCCEEDED : phase;
}

export interface RunPhaseState {
  phase: Phase;
  clusterId: string;
}

export interface PhaseEventInput {
  phase: number;
  /** The producing cluster; `null` for the control plane itself (abort, schedule). */
  producerCluster: string | null;
}

export type PhaseDecision = { kind: 'apply'; from: Phase; to: Phase } | { kind: 'duplicate'; phase: Phase };

/** Decide one event against a run's current state; refusals throw their TetherError. */
export function decideEvent(current: RunPhaseState, event: PhaseEventInput): PhaseDecision {
  const to = event.phase;
  if (!isPhase(to) || to === Phase.UNDEFINED) {
    throw new TetherError(ControlErrorCode.PHASE_INVALID, `phase ${to} is not a run phase`, { details: { phase: to } });
  }
  if (event.producerCluster !== null && event.producerCluster !== current.clusterId) {
    throw new TetherError(
      ControlErrorCode.PHASE_WRONG_CLUSTER,
      `event from cluster ${JSON.stringify(event.producerCluster)}, but the run is assigned to ${JSON.stringify(current.clusterId)}`,
      { details: { cluster: current.clusterId } },
    );
  }
  if (to === current.phase) return { kind: 'duplicate', phase: to };
  if (isTerminal(current.phase)) {
    throw new TetherError(ControlErrorCode.PHASE_TERMINAL, `run is ${phaseName(current.phase)}; ${phaseName(to)} cannot follow a terminal phase`, {
      details: { currentPhase: phaseName(current.phase) },
    });
  }
  if (rank(to) < rank(current.phase)) {
    throw new TetherError(ControlErrorCode.PHASE_BACKWARDS, `run is ${phaseName(current.phase)}; ${phaseName(to)} would go backwards`, {
      details: { currentPhase: phaseName(current.phase) },
    });
  }
  return { kind: 'apply', from: current.phase, to };
}
