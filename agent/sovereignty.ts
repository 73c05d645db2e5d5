/**
 * The agent's local mode (DESIGN.md I6): the customer-signed mode document in a file the
 * customer's operator controls, verified against the customer's public key pinned in the agent's
 * own options. The control plane can neither change the key nor write the file; whatever it says
 * in `Welcome.mode` is answered, not obeyed (`answerClaim`).
 *
 * The file is read at start, on every change fs.watch reports for its folder, and every `pollMs`
 * (fs.watch misses changes on some filesystems; the poll bounds how late a switch is seen). Only
 * a document that verifies, names this cluster and carries a higher `seq` than the one in force
 * is taken; anything else is refused with its code, logged, counted, and the mode in force stays.
 * With no valid document at all the mode is `sovereign`: failing safe keeps the vendor out until
 * the customer has signed a `tunnel` document (a deleted or corrupted file can never open a
 * tunnel). With `stateFile` the highest accepted `seq` survives restarts, so an older document
 * put back while the agent was down is refused too.
 */
import { watch, type FSWatcher } from 'node:fs';
import { open, readFile, rename, writeFile } from 'node:fs/promises';
import type { KeyObject } from 'node:crypto';
import { basename, dirname } from 'node:path';
import { TetherError, getErrorCode, getErrorMessage } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { MAX_MODE_DOCUMENT_BYTES, ModeErrorCode, verifyModeDocument, type ClusterMode, type VerifiedModeDocument } from './mode-document.js';

/** The mode with no valid document (sovereignty configured): the vendor stays out. */
export const FAIL_SAFE_MODE: ClusterMode = 'sovereign';

/** What the agent answers when the control plane claims a mode the customer has not approved. */
export const ModeClaimCode = {
  /** The control plane claims `tunnel`; the customer's document says sovereign. */
  CLUSTER_SOVEREIGN: 'CLUSTER_SOVEREIGN',
  /** The control plane claims `sovereign`; the customer's document (or the agent's configuration) says tunnel. */
  MODE_NOT_APPROVED: 'MODE_NOT_APPROVED',
} as const;

export interface ModeChange {
  mode: ClusterMode;
  previous: ClusterMode;
  /** The accepted document's sequence (0: none). */
  seq: number;
}

export interface ModeRefusal {
  code: string;
  message: string;
}

/** The agent's answer to a mode the control plane claims. */
export type ModeClaimVerdict =
  | { agreed: true; local: ClusterMode }
  | { agreed: false; local: ClusterMode; claimed: ClusterMode; code: string; seq: number; message: string };

/** Who answers the control plane's mode claims (the tunnel side: `Agent`). */
export interface ModeAuthority {
  answerControlPlaneMode(claimed: ClusterMode): ModeClaimVerdict;
}

export interface LocalModeOptions {
  clusterId: string;
  key: KeyObject;
  modeFile: string;
  stateFile?: string;
  pollMs: number;
  logger: Logger;
  /** A document was refused (each distinct file content once). */
  onRefused(refusal: ModeRefusal): void;
  /** A new document is in force (its mode may equal the previous one). */
  onAccepted(document: VerifiedModeDocument, previous: ClusterMode): void;
}

interface Floor {
  seq: number;
  digest: string;
}

/** Marks "the file was missing or unreadable last time" so that a missing file is reported once. */
const UNREADABLE = Symbol('unreadable');

export class LocalMode {
  readonly #options: LocalModeOptions;
  #document: VerifiedModeDocument | null = null;
  /** From the state file: the document in force before a restart. */
  #persisted: Floor | null = null;
  /** The last file content looked at (accepted or refused): the same bytes are not judged twice. */
  #lastSeen: string | typeof UNREADABLE | null = null;
  #watcher: FSWatcher | null = null;
  #poll: NodeJS.Timeout | null = null;
  #running: Promise<void> | null = null;
  #again = false;
  #closed = false;

  constructor(options: LocalModeOptions) {
    this.#options = options;
  }

  get mode(): ClusterMode {
    return this.#document?.mode ?? FAIL_SAFE_MODE;
  }

  get document(): VerifiedModeDocument | null {
    return this.#document;
  }

  /** Read the state file and the mode file, then follow the mode file. */
  async start(): Promise<void> {
    if (this.#options.stateFile !== undefined) this.#persisted = await readState(this.#options.stateFile, this.#options.clusterId);
    await this.reload();
    if (this.#closed) return;
    const { modeFile, pollMs, logger } = this.#options;
    const name = basename(modeFile);
    try {
      // The folder, not the file: an operator's atomic replace (write + rename) swaps the inode.
      this.#watcher = watch(dirname(modeFile), { persistent: false }, (_event, changed) => {
        if (changed === null || changed.toString() === name) void this.reload();
      });
      this.#watcher.on('error', (reason: unknown) => {
        logger.warn({ err: reason, modeFile }, 'watching the mode file failed; polling only');
        this.#stopWatching();
      });
    } catch (reason) {
      logger.warn({ err: reason, modeFile }, 'cannot watch the mode file; polling only');
    }
    this.#poll = setInterval(() => void this.reload(), pollMs);
    this.#poll.unref();
  }

  /**
   * Read the mode file now and act on it. Resolves once the read (and any change it made) is done;
   * concurrent calls share one read, and a call during a read reads once more after it.
   */
  reload(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    if (this.#running !== null) {
      this.#again = true;
      return this.#running;
    }
    const run = (async () => {
      do {
        this.#again = false;
        await this.#readOnce();
      } while (this.#again && !this.#closed);
    })().finally(() => {
      this.#running = null;
    });
    this.#running = run;
    return run;
  }

  async #readOnce(): Promise<void> {
    const { modeFile, key, clusterId, logger } = this.#options;
    let text: string;
    try {
      text = await readBounded(modeFile);
    } catch (reason) {
      if (this.#lastSeen === UNREADABLE) return;
      this.#lastSeen = UNREADABLE;
      const error = reason instanceof TetherError ? reason : new TetherError(ModeErrorCode.FILE_UNREADABLE, `cannot read the mode file ${modeFile}: ${getErrorMessage(reason)}`, { cause: reason });
      this.#refuse(error);
      return;
    }
    if (this.#closed || text === this.#lastSeen) return;
    this.#lastSeen = text;
    let document: VerifiedModeDocument;
    try {
      document = await verifyModeDocument(text, key, clusterId);
    } catch (reason) {
      this.#refuse(TetherError.from(reason, ModeErrorCode.MALFORMED));
      return;
    }
    if (this.#closed) return;
    const floor: Floor | null = this.#document ?? this.#persisted;
    if (floor !== null && document.seq <= floor.seq) {
      if (document.seq === floor.seq && document.digest === floor.digest) {
        // The document in force (or, after a restart, the one in force before it).
        if (this.#document === null) this.#accept(document);
        return;
      }
      this.#refuse(new TetherError(ModeErrorCode.REPLAYED, `the mode document has seq ${document.seq}; the one in force has seq ${floor.seq} (a newer document must have a higher seq)`));
      return;
    }
    if (this.#options.stateFile !== undefined) {
      try {
        await writeState(this.#options.stateFile, clusterId, document);
      } catch (reason) {
        // Without its high-water mark a restart could accept an older document: refuse for now.
        logger.error({ err: reason, stateFile: this.#options.stateFile }, 'cannot record the mode document in the state file; not applying it');
        this.#lastSeen = null;
        this.#refuse(new TetherError(ModeErrorCode.STATE_UNREADABLE, `cannot write the state file ${this.#options.stateFile}: ${getErrorMessage(reason)}`, { cause: reason }));
        return;
      }
    }
    if (this.#closed) return;
    this.#accept(document);
  }

  #accept(document: VerifiedModeDocument): void {
    const previous = this.mode;
    this.#document = document;
    this.#persisted = null;
    this.#options.onAccepted(document, previous);
  }

  #refuse(error: TetherError): void {
    this.#options.logger.warn({ code: error.code, modeFile: this.#options.modeFile, mode: this.mode, seq: this.#document?.seq ?? 0 }, `mode document refused; the mode in force stays: ${error.rawMessage}`);
    this.#options.onRefused({ code: error.code, message: error.rawMessage });
  }

  #stopWatching(): void {
    this.#watcher?.close();
    this.#watcher = null;
  }

  /** Stop following the file; resolves once a read in progress is over. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#stopWatching();
    if (this.#poll !== null) clearInterval(this.#poll);
    this.#poll = null;
    await this.#running;
  }
}

/** The file's text, refusing files above the document size limit without reading them whole. */
async function readBounded(path: string): Promise<string> {
  const handle = await open(path, 'r');
  try {
    const buffer = Buffer.alloc(MAX_MODE_DOCUMENT_BYTES + 1);
    let length = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buffer, length, buffer.length - length, null);
      if (bytesRead === 0) break;
      length += bytesRead;
      if (length > MAX_MODE_DOCUMENT_BYTES) throw new TetherError(ModeErrorCode.FILE_UNREADABLE, `the mode file ${path} is larger than ${MAX_MODE_DOCUMENT_BYTES} bytes`);
    }
    return buffer.subarray(0, length).toString('utf8');
  } finally {
    await handle.close();
  }
}

async function readState(path: string, clusterId: string): Promise<Floor | null> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (reason) {
    if (getErrorCode(reason) === 'ENOENT') return null; // first start
    throw new TetherError(ModeErrorCode.STATE_UNREADABLE, `cannot read the mode state file ${path}: ${getErrorMessage(reason)}`, { cause: reason });
  }
  let state: unknown;
  try {
    state = JSON.parse(text) as unknown;
  } catch {
    throw new TetherError(ModeErrorCode.STATE_UNREADABLE, `the mode state file ${path} is not JSON`);
  }
  if (typeof state !== 'object' || state === null) throw new TetherError(ModeErrorCode.STATE_UNREADABLE, `the mode state file ${path} is not a JSON object`);
  const { cluster, seq, digest } = state as Record<string, unknown>;
  if (cluster !== clusterId || typeof seq !== 'number' || !Number.isSafeInteger(seq) || typeof digest !== 'string') {
    throw new TetherError(ModeErrorCode.STATE_UNREADABLE, `the mode state file ${path} is not this cluster's (${clusterId}) state`);
  }
  return { seq, digest };
}

async function writeState(path: string, clusterId: string, document: VerifiedModeDocument): Promise<void> {
  const temporary = `${path}.${process.pid}.tmp`;
  const state = { v: 1, cluster: clusterId, seq: document.seq, digest: document.digest, mode: document.mode, iat: document.iat, acceptedAt: new Date().toISOString() };
  await writeFile(temporary, `${JSON.stringify(state)}\n`, { mode: 0o600 });
  await rename(temporary, path);
}
