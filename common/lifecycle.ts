/**
 * The two shutdown verbs every server in tether has. `drain()` is graceful: stop taking new work,
 * finish what is in flight within `graceMs`, then release everything. `close()` is forceful:
 * release everything now. Both are idempotent; a second call returns the first call's promise.
 */
export interface Closable {
  drain(graceMs?: number): Promise<void>;
  close(): Promise<void>;
}

/** Run `fn` once; later calls get the same promise. */
export function once<T>(fn: () => Promise<T>): () => Promise<T> {
  let promise: Promise<T> | null = null;
  return () => {
    promise ??= fn();
    return promise;
  };
}
