/**
 * The task's process runs in its own process group (`detached: true`, so its pgid is its pid);
 * signals go to the whole group, so children it started are stopped with it. A process that
 * calls setsid() itself leaves the group and is not reached (documented limit).
 */
import { getErrorCode } from '../../common/errors.js';

/** Signal the group; false when it no longer exists. */
export function signalGroup(pid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(-pid, signal);
    return true;
  } catch (reason) {
    if (getErrorCode(reason) === 'ESRCH') return false;
    throw reason;
  }
}
