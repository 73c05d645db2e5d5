/**
 * Loading `tether gateway` / `tether agent` YAML config files: TLS material may be given inline
 * (`key`, `cert`, `ca`) or as files (`keyFile`, `certFile`, `caFile`, relative to the config file).
 */
import { dirname, resolve } from 'node:path';
import { parse } from 'yaml';
import { TetherError, getErrorMessage } from '../../common/errors.js';
import { readText } from '../read-text.js';

export interface PemTriple {
  key: string;
  cert: string;
  ca: string;
}

/** Parse the YAML file; returns its object and the resolved TLS PEMs (removing `tls` from it). */
export async function loadConfig(path: string): Promise<{ config: Record<string, unknown>; tls: PemTriple }> {
  const text = await readText(path, 'config file');
  let parsed: unknown;
  try {
    parsed = parse(text);
  } catch (reason) {
    throw new TetherError('INVALID_OPTIONS', `${path}: not valid YAML: ${getErrorMessage(reason)}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new TetherError('INVALID_OPTIONS', `${path}: expected a mapping`);
  const { tls, ...config } = parsed as Record<string, unknown>;
  if (typeof tls !== 'object' || tls === null) throw new TetherError('INVALID_OPTIONS', `${path}: tls: required (key/cert/ca or keyFile/certFile/caFile)`);
  const base = dirname(resolve(path));
  const material = tls as Record<string, unknown>;
  const pick = async (name: 'key' | 'cert' | 'ca'): Promise<string> => {
    const inline = material[name];
    if (typeof inline === 'string') return inline;
    const file = material[`${name}File`];
    if (typeof file === 'string') return readText(resolve(base, file), `tls.${name}File`);
    throw new TetherError('INVALID_OPTIONS', `${path}: tls.${name} or tls.${name}File is required`);
  };
  return { config, tls: { key: await pick('key'), cert: await pick('cert'), ca: await pick('ca') } };
}
