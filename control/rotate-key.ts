/**
 * `tether control rotate-key`: make a new KEK primary and re-wrap every data key under it, in
 * small transactions, while control planes keep serving from the same store.
 *
 * With a key file: a new KEK is generated (or `newKeyId` names it), written to the key file as
 * primary next to the old ones, then the data keys are re-wrapped. Running servers re-read the
 * key file (every `store.keyReloadMs`), so any data key they create afterwards is wrapped by the
 * new KEK. `retireOld` sweeps again and removes from the key file every old KEK that no data key
 * uses any more; one still in use is kept and reported (STORE_KEK_IN_USE when asked to retire).
 *
 * With TETHER_CONTROL_KEK: the operator lists the new key first (`new:<b64>,old:<b64>`); this
 * re-wraps to that primary and reports which KEKs are still used, so the old one can be dropped
 * from the variable once it shows zero.
 */
import { TetherError } from '../common/errors.js';
import { ControlErrorCode } from './errors.js';
import { Keyring, loadKeyring, newKek, readKeyFile, writeKeyFile } from './store/keyring.js';
import { SqliteStore } from './store/sqlite-store.js';

export interface RotateKeyOptions {
  storePath: string;
  keyFile?: string;
  env?: NodeJS.ProcessEnv;
  /** Id of the new KEK (key-file mode); default derived from the key. */
  newKeyId?: string;
  /** Only re-wrap to the current primary; do not generate a new KEK. */
  rewrapOnly?: boolean;
  /** Remove unused old KEKs from the key file afterwards. */
  retireOld?: boolean;
  batchSize?: number;
}

export interface RotateKeyResult {
  primary: string;
  rewrapped: number;
  /** Data keys per KEK id after the sweep. */
  usage: Record<string, number>;
  retired: string[];
}

export async function rotateKey(options: RotateKeyOptions): Promise<RotateKeyResult> {
  let ring: Keyring;
  if (options.keyFile !== undefined && options.rewrapOnly !== true) {
    const current = await readKeyFile(options.keyFile);
    const kek = newKek(options.newKeyId);
    if (current.get(kek.id) !== undefined) throw new TetherError(ControlErrorCode.STORE_KEK_INVALID, `key id ${kek.id} is already in the key file; ids are never reused`);
    ring = new Keyring([kek, ...current.ids.map((id) => ({ id, key: current.get(id)! }))], kek.id);
    await writeKeyFile(options.keyFile, ring);
  } else {
    ring = await loadKeyring({ keyFile: options.keyFile, env: options.env });
  }
  const store = SqliteStore.open({ path: options.storePath, keyring: ring, prepareKeys: false });
  try {
    let rewrapped = await store.rewrapAll(options.batchSize);
    const retired: string[] = [];
    if (options.retireOld === true) {
      if (options.keyFile === undefined) throw new TetherError(ControlErrorCode.STORE_KEK_INVALID, 'retiring keys needs a key file; with TETHER_CONTROL_KEK, drop the old key from the variable');
      // A second sweep picks up data keys a server made under the old KEK before it reloaded.
      rewrapped += await store.rewrapAll(options.batchSize);
      const usage = store.envelope.kekUsage();
      const latest = await readKeyFile(options.keyFile);
      const keep = latest.ids.filter((id) => id === latest.primaryId || (usage[id] ?? 0) > 0);
      const inUse = latest.ids.filter((id) => id !== latest.primaryId && (usage[id] ?? 0) > 0);
      if (inUse.length > 0) {
        throw new TetherError(ControlErrorCode.STORE_KEK_IN_USE, `KEK ${inUse.join(', ')} still wraps data keys (${inUse.map((id) => usage[id]).join(', ')}); run rotate-key --rewrap-only --retire-old again`, {
          details: { usage },
        });
      }
      retired.push(...latest.ids.filter((id) => !keep.includes(id)));
      await writeKeyFile(options.keyFile, new Keyring(keep.map((id) => ({ id, key: latest.get(id)! })), latest.primaryId));
    }
    return { primary: ring.primaryId, rewrapped, usage: store.envelope.kekUsage(), retired };
  } finally {
    await store.close();
  }
}
