/**
 * Per stream × resource type bookkeeping, shared by the SotW and Delta protocols: what the client
 * asked for, what it was sent, what it ACKed and NACKed, and the one response in flight.
 */
import type { EncodedResource } from './snapshot.js';
import type { ResourceType } from './resource-types.js';

/** The one un-ACKed response of a type on a stream (at most one: research/xds.md (f)6). */
export interface Pending {
  nonce: string;
  version: string;
  names: string[];
  /** Resources sent (name → version), for ACK/NACK accounting. */
  versions: Map<string, string>;
  /** When the change it carries happened (`performance.now()`), for the convergence histogram. */
  changeTime: number;
  /** A TTL heartbeat (T1), not a change. */
  heartbeat?: boolean;
}

export interface NackRecord {
  /** Type version of the rejected response. */
  version: string;
  nonce: string;
  /** `error_detail.code` and `.message` as the client sent them (human text, not stable). */
  code: number;
  message: string;
  /** The version the client says it still runs. */
  clientVersion: string;
  at: Date;
  names: string[];
}

/** Delta: a name the client was told does not exist. */
export const ABSENT = '\u0000absent';

const NO_RESOURCES: ReadonlyMap<string, EncodedResource> = new Map();

/**
 * What a SotW client holds, by name. Memory matters here (thousands of streams × thousands of
 * names): the common case "the client holds exactly this snapshot's resources of the type" is a
 * reference to the snapshot's own (immutable) map, shared by every such stream, plus a small
 * private overlay of differences that is folded back in (and re-shared when it matches) as it grows.
 */
export class HeldResources {
  #base: ReadonlyMap<string, EncodedResource> = NO_RESOURCES;
  /** name → resource, or null for "removed from base". */
  readonly #overlay = new Map<string, EncodedResource | null>();
  #size = 0;

  get size(): number {
    return this.#size;
  }

  get(name: string): EncodedResource | undefined {
    const over = this.#overlay.get(name);
    if (over !== undefined) return over ?? undefined;
    return this.#base.get(name);
  }

  /** True when this holds exactly `map` (by identity of the shared map, no overlay). */
  isExactly(map: ReadonlyMap<string, EncodedResource>): boolean {
    return this.#base === map && this.#overlay.size === 0;
  }

  set(name: string, resource: EncodedResource): void {
    if (this.get(name) === undefined) this.#size += 1;
    if (this.#base.get(name) === resource) this.#overlay.delete(name);
    else this.#overlay.set(name, resource);
  }

  delete(name: string): void {
    if (this.get(name) === undefined) return;
    this.#size -= 1;
    if (this.#base.has(name)) this.#overlay.set(name, null);
    else this.#overlay.delete(name);
  }

  /** Hold exactly `map` (shared, never mutated here). */
  replace(map: ReadonlyMap<string, EncodedResource>): void {
    this.#base = map;
    this.#overlay.clear();
    this.#size = map.size;
  }

  *entries(): IterableIterator<[string, EncodedResource]> {
    for (const [name, resource] of this.#base) if (!this.#overlay.has(name)) yield [name, resource];
    for (const [name, resource] of this.#overlay) if (resource !== null) yield [name, resource];
  }

  keys(): string[] {
    return [...this.entries()].map(([name]) => name);
  }

  [Symbol.iterator](): IterableIterator<[string, EncodedResource]> {
    return this.entries();
  }

  /**
   * After a batch of changes: when the overlay has grown, share `map` if this now equals it, else
   * fold the overlay into a private map.
   */
  shareOrCompact(map: ReadonlyMap<string, EncodedResource>): void {
    if (this.#overlay.size < 64 || this.#overlay.size * 2 < this.#base.size) return;
    if (map.size === this.#size) {
      let same = true;
      for (const [name, resource] of map) {
        if (this.get(name) !== resource) {
          same = false;
          break;
        }
      }
      if (same) {
        this.replace(map);
        return;
      }
    }
    this.replace(new Map(this.entries()));
  }
}

/**
 * Delta: name → version the client holds (or ABSENT). Like HeldResources, the common case "holds
 * exactly this snapshot's versions" is the snapshot's own map, shared between streams, plus a
 * private overlay; versions that match no current resource (initial_resource_versions, ABSENT)
 * stay in the overlay.
 */
export class KnownVersions {
  #base: ReadonlyMap<string, EncodedResource> = NO_RESOURCES;
  /** name → version or ABSENT, or null for "removed from base". */
  readonly #overlay = new Map<string, string | null>();

  get(name: string): string | undefined {
    const over = this.#overlay.get(name);
    if (over !== undefined) return over ?? undefined;
    return this.#base.get(name)?.version;
  }

  has(name: string): boolean {
    return this.get(name) !== undefined;
  }

  set(name: string, version: string): void {
    if (this.#base.get(name)?.version === version) this.#overlay.delete(name);
    else this.#overlay.set(name, version);
  }

  delete(name: string): void {
    if (this.#base.has(name)) this.#overlay.set(name, null);
    else this.#overlay.delete(name);
  }

  *entries(): IterableIterator<[string, string]> {
    for (const [name, resource] of this.#base) if (!this.#overlay.has(name)) yield [name, resource.version];
    for (const [name, version] of this.#overlay) if (version !== null) yield [name, version];
  }

  keys(): string[] {
    return [...this.entries()].map(([name]) => name);
  }

  [Symbol.iterator](): IterableIterator<[string, string]> {
    return this.entries();
  }

  /** After a batch of changes: if the overlay has grown and all now equals `map`, share `map`. */
  shareIfEqual(map: ReadonlyMap<string, EncodedResource>): void {
    if (map === this.#base || this.#overlay.size < 64 || this.#overlay.size * 2 < this.#base.size) return;
    let count = 0;
    for (const [name, version] of this.entries()) {
      if (map.get(name)?.version !== version) return;
      count += 1;
    }
    if (count !== map.size) return;
    this.#base = map;
    this.#overlay.clear();
  }
}

const INTERNED = new Map<string, Set<string>>();
const INTERN_MIN = 32;
const INTERN_MAX_ENTRIES = 256;

/**
 * One shared (never mutated) Set per distinct long name list: thousands of clients subscribing to
 * the same thousand names share one Set and its strings.
 */
export function internNames(names: string[]): Set<string> {
  if (names.length < INTERN_MIN) return new Set(names);
  const key = names.join('\u0000');
  const found = INTERNED.get(key);
  if (found) return found;
  if (INTERNED.size >= INTERN_MAX_ENTRIES) INTERNED.clear();
  const set = new Set(names);
  INTERNED.set(key, set);
  return set;
}

export class TypeState {
  /** Subscribed to everything (explicit "*" or legacy empty list, W1). */
  wildcard = false;
  /** The client has sent a non-empty name list for this type on this stream (W1). */
  explicit = false;
  /** Subscribed names. SotW replaces it wholesale (it may be shared, see internNames); Delta owns and mutates its own. */
  names = new Set<string>();
  /** SotW: what the client holds from us, by name. */
  readonly sent = new HeldResources();
  /** Delta: name → version the client holds (or ABSENT when told it does not exist). */
  readonly known = new KnownVersions();
  /** Delta: names to report in removed_resources on the next response (W3). */
  readonly forcedRemovals = new Set<string>();
  /**
   * For names whose latest sent version is not (yet) ACKed: the version the client still runs
   * ('' for none). Everything else the client runs what `sent`/`known` say.
   */
  readonly prevAcked = new Map<string, string>();
  /** Name → the NACK that rejected its latest sent version (cleared by a later ACK). */
  readonly nacked = new Map<string, NackRecord>();
  lastNonce = '';
  pending: Pending | null = null;
  /** A pending response replaced by a newer one before it was ACKed (its ACK is folded into the next). */
  superseded: Pending | null = null;
  /** Earliest change not yet sent (`performance.now()`), or null. */
  changeSince: number | null = null;
  /** A response is owed even if empty (first request; R7: never leave a request unanswered). */
  forceRespond = false;
  /** The client changed its subscription since the last response: answer it, never hold it. */
  asked = false;
  /** At least one response has been sent. */
  responded = false;
  ackedVersion = '';
  lastNack: NackRecord | null = null;
  lastUpdated = new Date();

  constructor(readonly type: ResourceType) {}

  /** Nothing changed since the last evaluation found nothing to send for `cleanVersion`. */
  dirty = true;
  cleanVersion: string | null = null;
  /** The last evaluation kept retired clusters back (make-before-break, O1). */
  heldBack = false;

  /** The version of `name` the client runs (as far as its ACKs tell), '' if none. */
  ackedVersionOf(name: string, protocol: 'sotw' | 'delta'): string {
    const previous = this.prevAcked.get(name);
    if (previous !== undefined) return previous;
    if (protocol === 'sotw') return this.sent.get(name)?.version ?? '';
    const known = this.known.get(name);
    return known === undefined || known === ABSENT ? '' : known;
  }

  interested(name: string): boolean {
    return this.wildcard || this.names.has(name);
  }

  /** A stable string for "did the subscription change". */
  subscriptionKey(): string {
    return `${this.wildcard ? '*' : ''}|${[...this.names].sort().join('\u0000')}`;
  }

  /** Give up waiting for the pending response's ACK; the next response's ACK covers it. */
  supersede(): void {
    if (this.pending !== null) this.superseded = this.pending;
    this.pending = null;
  }

  noteChange(at: number): void {
    if (this.changeSince === null || at < this.changeSince) this.changeSince = at;
  }
}
