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

export class TypeState {
  /** Subscribed to everything (explicit "*" or legacy empty list, W1). */
  wildcard = false;
  /** The client has sent a non-empty name list for this type on this stream (W1). */
  explicit = false;
  readonly names = new Set<string>();
  /** SotW: what the client holds from us, by name. */
  readonly sent = new Map<string, EncodedResource>();
  /** Delta: name → version the client holds (or ABSENT when told it does not exist). */
  readonly known = new Map<string, string>();
  /** Delta: names to report in removed_resources on the next response (W3). */
  readonly forcedRemovals = new Set<string>();
  /** Name → version the client ACKed. */
  readonly acked = new Map<string, string>();
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
  /** At least one response has been sent. */
  responded = false;
  ackedVersion = '';
  lastNack: NackRecord | null = null;
  lastUpdated = new Date();

  constructor(readonly type: ResourceType) {}

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
