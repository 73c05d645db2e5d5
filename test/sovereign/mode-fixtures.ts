/**
 * Helpers for the mode-switch tests: a customer key pair that signs real mode documents (jose,
 * Ed25519 or P-256), the forgeries the agent must refuse, atomic writes of the mode file, and
 * waiting for an event with a bounded deadline (whose timer is always released).
 */
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import type { EventEmitter } from 'node:events';
import { rename, writeFile } from 'node:fs/promises';
import { CompactSign } from 'jose';
import { MODE_DOCUMENT_TYPE, signModeDocument, type ClusterMode } from '../../agent/mode-document.js';

export interface ModeFields {
  cluster?: string;
  mode: ClusterMode;
  seq: number;
}

export interface Customer {
  /** SPKI PEM: what the agent pins. */
  publicPem: string;
  publicKey: KeyObject;
  privateKey: KeyObject;
  /** A valid document for `cluster` (default c1). */
  sign(fields: ModeFields): Promise<string>;
}

export function createCustomer(algorithm: 'ed25519' | 'p-256' = 'ed25519'): Customer {
  const pair = algorithm === 'p-256' ? generateKeyPairSync('ec', { namedCurve: 'prime256v1' }) : generateKeyPairSync('ed25519');
  return {
    publicPem: pair.publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    publicKey: pair.publicKey,
    privateKey: pair.privateKey,
    sign: (fields) => signModeDocument({ cluster: fields.cluster ?? 'c1', mode: fields.mode, seq: fields.seq, iat: Math.floor(Date.now() / 1000) }, pair.privateKey),
  };
}

function payload(fields: ModeFields): Uint8Array {
  return new TextEncoder().encode(JSON.stringify({ v: 1, cluster: fields.cluster ?? 'c1', mode: fields.mode, seq: fields.seq, iat: Math.floor(Date.now() / 1000) }));
}

const b64 = (value: unknown): string => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');

/** The forgeries an attacker without the customer's private key can make. */
export const forged = {
  /** The document as bare JSON: nobody signed it. */
  bareJson: (fields: ModeFields): string => `${JSON.stringify({ v: 1, cluster: fields.cluster ?? 'c1', mode: fields.mode, seq: fields.seq, iat: Math.floor(Date.now() / 1000) })}\n`,
  /** A JWS with `alg: none` and no signature. */
  algNone: (fields: ModeFields): string => `${b64({ alg: 'none', typ: MODE_DOCUMENT_TYPE })}.${Buffer.from(payload(fields)).toString('base64url')}.`,
  /** Signed correctly, by a key that is not the customer's. */
  otherKey: (fields: ModeFields): Promise<string> => createCustomer().sign(fields),
  /** HS256 with the customer's public key as the HMAC secret (the classic algorithm confusion). */
  hmacWithPublicKey: (fields: ModeFields, customer: Customer): Promise<string> =>
    new CompactSign(payload(fields)).setProtectedHeader({ alg: 'HS256', typ: MODE_DOCUMENT_TYPE }).sign(new TextEncoder().encode(customer.publicPem)),
  /** A valid signature over a different payload, with the payload swapped for ours. */
  swappedPayload: async (fields: ModeFields, customer: Customer): Promise<string> => {
    const [header, , signature] = (await customer.sign({ ...fields, mode: fields.mode === 'tunnel' ? 'sovereign' : 'tunnel' })).split('.');
    return `${header}.${Buffer.from(payload(fields)).toString('base64url')}.${signature}`;
  },
};

/** Replace `path` with `text` atomically (write + rename), as an operator (and the CLI) should. */
export async function writeModeFile(path: string, text: string): Promise<void> {
  const temporary = `${path}.tmp`;
  await writeFile(temporary, text);
  await rename(temporary, path);
}

/**
 * The next `event` from `emitter` whose arguments satisfy `match`, or a rejection after
 * `timeoutMs`. Create the promise before causing the event.
 */
export function nextEvent<T extends unknown[]>(emitter: EventEmitter, event: string, match: (...args: T) => boolean = () => true, timeoutMs = 10_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const listener = (...args: unknown[]): void => {
      if (!match(...(args as T))) return;
      done();
      resolve(args as T);
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`no ${event} event within ${timeoutMs} ms`));
    }, timeoutMs);
    function done(): void {
      clearTimeout(timer);
      emitter.off(event, listener);
    }
    emitter.on(event, listener);
  });
}

/** Wait until `condition()` holds, re-checking whenever `subscribe`'s callback fires; bounded. */
export function whenTrue(subscribe: (wake: () => void) => () => void, condition: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  if (condition()) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      unsubscribe();
      reject(new Error(`${what}: not within ${timeoutMs} ms`));
    }, timeoutMs);
    const unsubscribe = subscribe(() => {
      if (!condition()) return;
      clearTimeout(timer);
      unsubscribe();
      resolve();
    });
  });
}
