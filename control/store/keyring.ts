/**
 * Key-encryption keys (KEKs). A keyring holds several 256-bit KEKs by id; one is primary and wraps
 * new data keys, all of them unwrap. Ids are public names, never reused; a data key records the id
 * of the KEK that wraps it, so unwrapping tries exactly one key.
 *
 * Sources:
 * - `TETHER_CONTROL_KEK`: `base64` (id derived from the key) or `id:base64,id:base64` (first is primary);
 * - a key file (JSON, mode 0600): `{ "primary": "k2", "keys": [{ "id": "k1", "key": "<base64>" }, …] }`.
 */
import { createHash, randomBytes } from 'node:crypto';
import { chmod, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { z } from 'zod';
import { TetherError } from '../../common/errors.js';
import { ControlErrorCode } from '../errors.js';

export const KEK_ENV = 'TETHER_CONTROL_KEK';
const KEY_ID = /^[A-Za-z0-9._-]{1,64}$/;

export interface Kek {
  id: string;
  key: Buffer;
}

export class Keyring {
  readonly #keys = new Map<string, Buffer>();
  #primary: string;

  constructor(keys: Kek[], primary?: string) {
    if (keys.length === 0) throw new TetherError(ControlErrorCode.STORE_KEK_MISSING, 'keyring has no keys');
    for (const { id, key } of keys) {
      if (!KEY_ID.test(id)) throw new TetherError(ControlErrorCode.STORE_KEK_INVALID, `key id ${JSON.stringify(id)} must match ${KEY_ID}`);
      if (key.length !== 32) throw new TetherError(ControlErrorCode.STORE_KEK_INVALID, `key ${id} is ${key.length} bytes, need 32`);
      if (this.#keys.has(id)) throw new TetherError(ControlErrorCode.STORE_KEK_INVALID, `duplicate key id ${id}`);
      this.#keys.set(id, key);
    }
    this.#primary = primary ?? keys[0]!.id;
    if (!this.#keys.has(this.#primary)) throw new TetherError(ControlErrorCode.STORE_KEK_INVALID, `primary key ${this.#primary} is not in the keyring`);
  }

  get primaryId(): string {
    return this.#primary;
  }

  get ids(): string[] {
    return [...this.#keys.keys()];
  }

  primary(): Kek {
    return { id: this.#primary, key: this.#keys.get(this.#primary)! };
  }

  get(id: string): Buffer | undefined {
    return this.#keys.get(id);
  }

  /** Replace the keys with another ring's (a reloaded key file); ids may only be added or retired. */
  replaceWith(other: Keyring): void {
    this.#keys.clear();
    for (const id of other.ids) this.#keys.set(id, other.get(id)!);
    this.#primary = other.primaryId;
  }
}

/** The id derived from a bare key: a short hash, so the same key always gets the same public name. */
export function derivedKeyId(key: Buffer): string {
  return `kek-${createHash('sha256').update('tether-kek-id\0').update(key).digest('hex').slice(0, 12)}`;
}

function decodeKey(text: string, where: string): Buffer {
  const key = Buffer.from(text.trim(), 'base64');
  if (key.length !== 32 || key.toString('base64').replace(/=+$/, '') !== text.trim().replace(/=+$/, '')) {
    throw new TetherError(ControlErrorCode.STORE_KEK_INVALID, `${where}: need base64 of exactly 32 bytes`);
  }
  return key;
}

/** Parse a `TETHER_CONTROL_KEK` value. */
export function keyringFromEnvValue(value: string): Keyring {
  const parts = value.split(',').map((part) => part.trim()).filter((part) => part !== '');
  if (parts.length === 0) throw new TetherError(ControlErrorCode.STORE_KEK_MISSING, `${KEK_ENV} is empty`);
  const keys = parts.map((part, index) => {
    const colon = part.indexOf(':');
    if (colon < 0) {
      const key = decodeKey(part, `${KEK_ENV}[${index}]`);
      return { id: derivedKeyId(key), key };
    }
    return { id: part.slice(0, colon), key: decodeKey(part.slice(colon + 1), `${KEK_ENV}[${index}]`) };
  });
  return new Keyring(keys);
}

const keyFileSchema = z.object({
  primary: z.string(),
  keys: z.array(z.object({ id: z.string(), key: z.string() })).min(1),
});

export async function readKeyFile(path: string): Promise<Keyring> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (reason) {
    throw new TetherError(ControlErrorCode.STORE_KEK_MISSING, `cannot read key file ${path}`, { cause: reason });
  }
  const mode = (await stat(path)).mode & 0o077;
  if (mode !== 0) throw new TetherError(ControlErrorCode.STORE_KEK_INVALID, `key file ${path} is readable by group or others (chmod 600)`);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (reason) {
    throw new TetherError(ControlErrorCode.STORE_KEK_INVALID, `key file ${path} is not JSON`, { cause: reason });
  }
  const parsed = keyFileSchema.safeParse(json);
  if (!parsed.success) throw new TetherError(ControlErrorCode.STORE_KEK_INVALID, `key file ${path}: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  return new Keyring(
    parsed.data.keys.map(({ id, key }) => ({ id, key: decodeKey(key, `${path} key ${id}`) })),
    parsed.data.primary,
  );
}

/** Write a keyring as a key file (0600, atomically through a temporary file). */
export async function writeKeyFile(path: string, ring: Keyring): Promise<void> {
  const body = { primary: ring.primaryId, keys: ring.ids.map((id) => ({ id, key: ring.get(id)!.toString('base64') })) };
  const temporary = `${path}.${process.pid}.tmp`;
  await writeFile(temporary, `${JSON.stringify(body, null, 2)}\n`, { mode: 0o600 });
  await chmod(temporary, 0o600);
  await rename(temporary, path);
}

export function newKek(id?: string): Kek {
  const key = randomBytes(32);
  return { id: id ?? derivedKeyId(key), key };
}

export interface KeyringSource {
  /** A key file path; re-read when a data key names a KEK the ring does not hold yet. */
  keyFile?: string;
  /** Environment to read `TETHER_CONTROL_KEK` from; default process.env. */
  env?: NodeJS.ProcessEnv;
}

/** Load the keyring: the key file when given, else `TETHER_CONTROL_KEK`. */
export async function loadKeyring(source: KeyringSource): Promise<Keyring> {
  if (source.keyFile !== undefined) return readKeyFile(source.keyFile);
  const value = (source.env ?? process.env)[KEK_ENV];
  if (value === undefined || value.trim() === '') {
    throw new TetherError(ControlErrorCode.STORE_KEK_MISSING, `no key-encryption key: set ${KEK_ENV} (base64 of 32 bytes) or a key file`);
  }
  return keyringFromEnvValue(value);
}
