/**
 * The agent's side of a projected service-account token: the kubelet rewrites the file before the
 * token expires (at 80 % of its lifetime), so the file is read again on every use, never cached.
 */
import { readFile } from 'node:fs/promises';
import { TetherError, getErrorCode } from '../common/errors.js';

/** Kubernetes' default mount path of the pod's own service-account token. */
export const DEFAULT_SERVICE_ACCOUNT_TOKEN_PATH = '/var/run/secrets/kubernetes.io/serviceaccount/token';

/** Read a token file now; throws `WORKLOAD_TOKEN_FILE_UNREADABLE` or `WORKLOAD_TOKEN_FILE_EMPTY`. */
export async function readTokenFile(path: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (reason) {
    throw new TetherError('WORKLOAD_TOKEN_FILE_UNREADABLE', `cannot read the workload token ${path} (${getErrorCode(reason) ?? 'error'})`, { cause: reason });
  }
  const token = text.trim();
  if (token === '') throw new TetherError('WORKLOAD_TOKEN_FILE_EMPTY', `the workload token file ${path} is empty`);
  return token;
}

/** A token source that re-reads `path` on every call. */
export function tokenFileSource(path: string): () => Promise<string> {
  return () => readTokenFile(path);
}
