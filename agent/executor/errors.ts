/**
 * Stable codes the executor reports in a run's error (`RunError.code`). Messages are short
 * (capped, default 512 bytes) and never contain task data: no stdout/stderr, no input bytes.
 */
export const ExecutorErrorCode = {
  /** The run id cannot name a work folder (letters, digits, ".", "_", "-"; ≤ 128). */
  BAD_RUN: 'EXECUTOR_BAD_RUN',
  /** The run's work folder could not be prepared. */
  WORKDIR_FAILED: 'EXECUTOR_WORKDIR_FAILED',
  /** An input could not be fetched (no link, refused, or transfer failed); the message names the input and the code. */
  INPUT_FAILED: 'EXECUTOR_INPUT_FAILED',
  /** The command could not be started (not found, not executable). */
  SPAWN_FAILED: 'EXECUTOR_SPAWN_FAILED',
  /** The process exited with a non-zero code. */
  EXIT_CODE: 'EXECUTOR_EXIT_CODE',
  /** The process was killed by a signal the executor did not send. */
  KILLED: 'EXECUTOR_KILLED',
  /** The run exceeded its wall-time limit; its process group was terminated. */
  TIMEOUT: 'EXECUTOR_TIMEOUT',
  /** The run was aborted (by the control plane or the agent shutting down). */
  ABORTED: 'EXECUTOR_ABORTED',
  /** stdout+stderr exceeded the run's output limit (policy `fail`); the process group was terminated. */
  OUTPUT_LIMIT: 'EXECUTOR_OUTPUT_LIMIT',
  /** The outputs folder holds something that cannot be an output (symlink, device, bad name, too many). */
  OUTPUT_INVALID: 'EXECUTOR_OUTPUT_INVALID',
  /** An output could not be uploaded (no upload location, refused, or transfer failed). */
  OUTPUT_FAILED: 'EXECUTOR_OUTPUT_FAILED',
} as const;

export type ExecutorErrorCode = (typeof ExecutorErrorCode)[keyof typeof ExecutorErrorCode];

/** Cap a message at `maxBytes` UTF-8 bytes (cut on a character boundary, marked with "…"). */
export function capMessage(message: string, maxBytes: number): string {
  if (Buffer.byteLength(message) <= maxBytes) return message;
  let out = '';
  let bytes = 0;
  for (const char of message) {
    const size = Buffer.byteLength(char);
    if (bytes + size > maxBytes - 3) break;
    out += char;
    bytes += size;
  }
  return `${out}…`;
}
