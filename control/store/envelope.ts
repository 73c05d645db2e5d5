/**
 * Envelope encryption of store fields (research/architecture.md §7). A field is sealed with
 * AES-256-GCM under a random data key (DEK); each DEK is stored in `data_keys` wrapped by a
 * key-encryption key (KEK) from the keyring. Every process makes its own DEK per table when it
 * opens the store and replaces it after `maxUsesPerKey` seals, so random 96-bit nonces stay far
 * below the 2^32-per-key bound.
 *
 * Sealed layout: `0x01 ‖ dekId (u32 BE) ‖ nonce (12) ‖ ciphertext ‖ tag (16)`. The associated
 * data is the field's identity, `tether/v1 ‖ table ‖ primary key ‖ column`, so a ciphertext copied
 * to another row or column fails authentication (STORE_DECRYPT_FAILED). A DEK's own wrapping binds
 * its id and scope the same way.
 *
 * Rotating the KEK re-wraps DEKs (32 bytes each, in small transactions); data is not re-encrypted.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { TetherError } from '../../common/errors.js';
import { ControlErrorCode } from '../errors.js';
import type { Keyring } from './keyring.js';
import type { Database, Statement } from './sqlite.js';

const FORMAT = 0x01;
const NONCE = 12;
const TAG = 16;
const HEADER = 1 + 4 + NONCE;
export const DEFAULT_MAX_USES_PER_KEY = 1 << 24;

function gcmSeal(key: Buffer, plaintext: Buffer, aad: Buffer): Buffer {
  const nonce = randomBytes(NONCE);
  const cipher = createCipheriv('aes-256-gcm', key, nonce, { authTagLength: TAG });
  cipher.setAAD(aad);
  const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return Buffer.concat([nonce, body, cipher.getAuthTag()]);
}

function gcmOpen(key: Buffer, sealed: Buffer, aad: Buffer): Buffer | null {
  if (sealed.length < NONCE + TAG) return null;
  const decipher = createDecipheriv('aes-256-gcm', key, sealed.subarray(0, NONCE), { authTagLength: TAG });
  decipher.setAAD(aad);
  decipher.setAuthTag(sealed.subarray(sealed.length - TAG));
  try {
    return Buffer.concat([decipher.update(sealed.subarray(NONCE, sealed.length - TAG)), decipher.final()]);
  } catch {
    return null;
  }
}

function dekAad(id: number, scope: string): Buffer {
  return Buffer.from(`tether/dek/v1\0${id}\0${scope}`);
}

/** The associated data of a sealed field. */
export function fieldAad(table: string, primaryKey: string, column: string): Buffer {
  return Buffer.from(`tether/v1\0${table}\0${primaryKey}\0${column}`);
}

interface ActiveKey {
  id: number;
  key: Buffer;
  uses: number;
}

export interface EnvelopeOptions {
  maxUsesPerKey?: number;
}

export class Envelope {
  readonly #db: Database;
  readonly #keyring: Keyring;
  readonly #maxUses: number;
  readonly #active = new Map<string, ActiveKey>();
  readonly #cache = new Map<number, Buffer>();
  readonly #selectKey: Statement;
  readonly #insertKey: Statement;
  readonly #updateWrap: Statement;

  constructor(db: Database, keyring: Keyring, options: EnvelopeOptions = {}) {
    this.#db = db;
    this.#keyring = keyring;
    this.#maxUses = options.maxUsesPerKey ?? DEFAULT_MAX_USES_PER_KEY;
    this.#selectKey = db.prepare('SELECT scope, kek_id, wrapped FROM data_keys WHERE id = ?');
    this.#insertKey = db.prepare('INSERT INTO data_keys (scope, kek_id, wrapped, created_at) VALUES (?, ?, ?, ?)');
    this.#updateWrap = db.prepare('UPDATE data_keys SET kek_id = ?, wrapped = ? WHERE id = ? AND kek_id = ?');
  }

  get keyring(): Keyring {
    return this.#keyring;
  }

  /**
   * Make sure every scope has an active data key with uses left. Call outside write transactions
   * (a key created inside a transaction that rolls back would be lost).
   */
  prepare(scopes: readonly string[]): void {
    for (const scope of scopes) {
      const active = this.#active.get(scope);
      if (active !== undefined && active.uses < this.#maxUses) continue;
      this.#active.set(scope, this.#createKey(scope));
    }
  }

  #createKey(scope: string): ActiveKey {
    const key = randomBytes(32);
    const kek = this.#keyring.primary();
    const create = this.#db.transaction(() => {
      const id = Number(this.#insertKey.run(scope, kek.id, Buffer.alloc(0), Date.now()).lastInsertRowid);
      this.#updateWrap.run(kek.id, gcmSeal(kek.key, key, dekAad(id, scope)), id, kek.id);
      return id;
    });
    const id = create();
    this.#cache.set(id, key);
    return { id, key, uses: 0 };
  }

  /** True when some scope's key is used up and `prepare` should run before the next write. */
  get needsPrepare(): boolean {
    for (const active of this.#active.values()) if (active.uses >= this.#maxUses) return true;
    return false;
  }

  seal(scope: string, aad: Buffer, plaintext: Buffer): Buffer {
    const active = this.#active.get(scope);
    if (active === undefined) throw new TetherError('INTERNAL', `no data key prepared for ${scope}`);
    active.uses += 1;
    const header = Buffer.allocUnsafe(5);
    header[0] = FORMAT;
    header.writeUInt32BE(active.id, 1);
    return Buffer.concat([header, gcmSeal(active.key, plaintext, aad)]);
  }

  open(aad: Buffer, sealed: Buffer): Buffer {
    if (sealed.length < HEADER + TAG || sealed[0] !== FORMAT) {
      throw new TetherError(ControlErrorCode.STORE_DECRYPT_FAILED, 'stored value is not a sealed field');
    }
    const key = this.#dataKey(sealed.readUInt32BE(1));
    const plain = gcmOpen(key, sealed.subarray(5), aad);
    if (plain === null) {
      throw new TetherError(ControlErrorCode.STORE_DECRYPT_FAILED, 'stored value failed authentication (tampered, moved to another record, or wrong key)');
    }
    return plain;
  }

  /** Unwrap (and cache) a data key synchronously; a missing KEK raises STORE_KEK_UNKNOWN. */
  #dataKey(id: number): Buffer {
    const cached = this.#cache.get(id);
    if (cached !== undefined) return cached;
    const row = this.#selectKey.get(id);
    if (row === undefined) throw new TetherError(ControlErrorCode.STORE_DECRYPT_FAILED, `data key ${id} does not exist`);
    const kekId = String(row.kek_id);
    const kek = this.#keyring.get(kekId);
    if (kek === undefined) throw new TetherError(ControlErrorCode.STORE_KEK_UNKNOWN, `data key ${id} is wrapped by KEK ${kekId}, which is not in the keyring`, { details: { kekId } });
    const key = gcmOpen(kek, row.wrapped as Buffer, dekAad(id, String(row.scope)));
    if (key === null) throw new TetherError(ControlErrorCode.STORE_DECRYPT_FAILED, `data key ${id} failed to unwrap with KEK ${kekId}`);
    this.#cache.set(id, key);
    return key;
  }

  /** Data keys per KEK id. */
  kekUsage(): Record<string, number> {
    const usage: Record<string, number> = {};
    for (const row of this.#db.prepare('SELECT kek_id, COUNT(*) AS n FROM data_keys GROUP BY kek_id').all()) {
      usage[String(row.kek_id)] = Number(row.n);
    }
    return usage;
  }

  /**
   * Re-wrap up to `batchSize` data keys that are not under the primary KEK, in one transaction.
   * Returns how many were re-wrapped (0 when done).
   */
  rewrapBatch(batchSize = 256): number {
    const kek = this.#keyring.primary();
    const rows = this.#db.prepare('SELECT id, scope, kek_id, wrapped FROM data_keys WHERE kek_id <> ? ORDER BY id LIMIT ?');
    const batch = this.#db.transaction(() => {
      let done = 0;
      for (const row of rows.all(kek.id, batchSize)) {
        const id = Number(row.id);
        const scope = String(row.scope);
        const oldId = String(row.kek_id);
        const oldKek = this.#keyring.get(oldId);
        if (oldKek === undefined) throw new TetherError(ControlErrorCode.STORE_KEK_UNKNOWN, `data key ${id} is wrapped by KEK ${oldId}, which is not in the keyring`, { details: { kekId: oldId } });
        const key = gcmOpen(oldKek, row.wrapped as Buffer, dekAad(id, scope));
        if (key === null) throw new TetherError(ControlErrorCode.STORE_DECRYPT_FAILED, `data key ${id} failed to unwrap with KEK ${oldId}`);
        done += this.#updateWrap.run(kek.id, gcmSeal(kek.key, key, dekAad(id, scope)), id, oldId).changes;
      }
      return done;
    });
    return batch.immediate();
  }
}
