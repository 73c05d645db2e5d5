/**
 * Invariant I2, metadata only: the control plane accepts references, never payloads. Every string
 * has a cap, lists and maps have a cap on entries, inputs and outputs must be URIs of an allowed
 * scheme. Refusals: METADATA_PAYLOAD_REFUSED (an inline value where a URI belongs, or a `data:`
 * URI), METADATA_URI_SCHEME (a URI of another scheme), METADATA_FIELD_TOO_LARGE (over a cap),
 * CONTROL_INVALID_ARGUMENT (a malformed name).
 */
import { TetherError } from '../common/errors.js';
import { ControlErrorCode } from './errors.js';

export const LIMITS = {
  /** Names: ids, projects, domains, task names and versions, env keys. */
  name: 128,
  /** Short free text: descriptions, commands, endpoints. */
  text: 1024,
  /** One argument or environment value. */
  value: 4096,
  /** Event messages and error messages. */
  message: 8192,
  uri: 2048,
  listEntries: 128,
  mapEntries: 128,
  /** The whole request body the API accepts. */
  requestBytes: 256 * 1024,
} as const;

/** Schemes accepted for inputs and outputs; `file` only when the control plane runs in dev mode. */
export const URI_SCHEMES = ['s3', 'gs', 'abfs', 'abfss', 'tether-blob'] as const;

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const SCHEME = /^([A-Za-z][A-Za-z0-9+.-]*):/;

function tooLarge(field: string, what: string): TetherError {
  return new TetherError(ControlErrorCode.METADATA_FIELD_TOO_LARGE, `${field} ${what}`, { details: { field } });
}

export function checkText(field: string, value: string, max: number = LIMITS.text): string {
  const bytes = Buffer.byteLength(value);
  if (bytes > max) throw tooLarge(field, `is ${bytes} bytes; the limit is ${max}`);
  return value;
}

export function checkName(field: string, value: string, options: { optional?: boolean } = {}): string {
  if (value === '' && options.optional === true) return value;
  checkText(field, value, LIMITS.name);
  if (!NAME.test(value)) {
    throw new TetherError(ControlErrorCode.INVALID_ARGUMENT, `${field} ${JSON.stringify(value)} must start with a letter or digit and use only letters, digits, ".", "_", "-"`, {
      details: { field },
    });
  }
  return value;
}

export function checkList(field: string, values: readonly string[], max: number = LIMITS.value): string[] {
  if (values.length > LIMITS.listEntries) throw tooLarge(field, `has ${values.length} entries; the limit is ${LIMITS.listEntries}`);
  return values.map((value, index) => checkText(`${field}[${index}]`, value, max));
}

export function checkMap(field: string, map: Readonly<Record<string, string>>, max: number = LIMITS.value): Record<string, string> {
  const entries = Object.entries(map);
  if (entries.length > LIMITS.mapEntries) throw tooLarge(field, `has ${entries.length} entries; the limit is ${LIMITS.mapEntries}`);
  const out: Record<string, string> = {};
  for (const [key, value] of entries) {
    checkText(`${field} key`, key, LIMITS.name);
    out[key] = checkText(`${field}.${key}`, value, max);
  }
  return out;
}

export interface UriPolicy {
  /** Accept `file://` (dev mode only). */
  allowFile: boolean;
}

/** A data reference: a URI of an allowed scheme, never the data itself. */
export function checkUri(field: string, value: string, policy: UriPolicy): string {
  const scheme = SCHEME.exec(value)?.[1]?.toLowerCase();
  if (scheme === undefined || scheme === 'data' || /\s/.test(value)) {
    throw new TetherError(
      ControlErrorCode.METADATA_PAYLOAD_REFUSED,
      `${field} must be a URI that references the data (s3://, gs://, abfs://, tether-blob://); the control plane does not accept inline payloads`,
      { details: { field } },
    );
  }
  // A payload dressed as a URI is still too large to be a reference.
  if (Buffer.byteLength(value) > LIMITS.uri) throw tooLarge(field, `is ${Buffer.byteLength(value)} bytes; a URI may have at most ${LIMITS.uri}`);
  const allowed = (URI_SCHEMES as readonly string[]).includes(scheme) || (scheme === 'file' && policy.allowFile);
  if (!allowed) {
    throw new TetherError(ControlErrorCode.METADATA_URI_SCHEME, `${field}: scheme "${scheme}" is not allowed (allowed: ${[...URI_SCHEMES, ...(policy.allowFile ? ['file'] : [])].join(', ')})`, {
      details: { field, scheme },
    });
  }
  let parsed: URL;
  try {
    parsed = new URL(value);
  } catch {
    throw new TetherError(ControlErrorCode.INVALID_ARGUMENT, `${field} is not a valid URI`, { details: { field } });
  }
  if (scheme !== 'file' && parsed.host === '') throw new TetherError(ControlErrorCode.INVALID_ARGUMENT, `${field} names no bucket or host`, { details: { field } });
  return value;
}

export function checkUriMap(field: string, map: Readonly<Record<string, string>>, policy: UriPolicy): Record<string, string> {
  const entries = Object.entries(map);
  if (entries.length > LIMITS.mapEntries) throw tooLarge(field, `has ${entries.length} entries; the limit is ${LIMITS.mapEntries}`);
  const out: Record<string, string> = {};
  for (const [key, value] of entries) out[checkName(`${field} key`, key)] = checkUri(`${field}.${key}`, value, policy);
  return out;
}
