/**
 * The part of better-sqlite3 the store uses, typed here (the package ships no types and we add no
 * @types dependency). Loaded through createRequire because it is a CommonJS native addon.
 */
import { createRequire } from 'node:module';

export type SqlValue = string | number | bigint | Buffer | null;
export type Row = Record<string, SqlValue>;

export interface RunResult {
  changes: number;
  lastInsertRowid: number | bigint;
}

export interface Statement {
  run(...params: unknown[]): RunResult;
  get(...params: unknown[]): Row | undefined;
  all(...params: unknown[]): Row[];
}

export interface Database {
  prepare(sql: string): Statement;
  exec(sql: string): Database;
  pragma(source: string, options?: { simple?: boolean }): unknown;
  transaction<A extends unknown[], R>(fn: (...args: A) => R): ((...args: A) => R) & { immediate: (...args: A) => R };
  close(): Database;
  readonly open: boolean;
  readonly inTransaction: boolean;
  readonly name: string;
}

type DatabaseConstructor = new (path: string, options?: { timeout?: number; readonly?: boolean }) => Database;

const require = createRequire(import.meta.url);
const DatabaseClass = require('better-sqlite3') as DatabaseConstructor;

export interface OpenOptions {
  /** How long a writer waits for another process's lock; default 5 s. */
  busyTimeoutMs?: number;
}

/** Open (creating) a database file in WAL mode with foreign keys on. `:memory:` works for tests. */
export function openDatabase(path: string, options: OpenOptions = {}): Database {
  const db = new DatabaseClass(path, { timeout: options.busyTimeoutMs ?? 5_000 });
  if (path !== ':memory:') db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('foreign_keys = ON');
  // Freed pages are zeroed, so deleted or rewritten ciphertext and old data keys do not linger.
  db.pragma('secure_delete = ON');
  return db;
}
