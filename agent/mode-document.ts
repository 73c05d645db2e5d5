/**
 * The customer-signed mode document (DESIGN.md I6, §7): which mode a cluster's data plane is in,
 * approved by a key only the customer holds. It is a compact JWS whose payload is
 *
 *   { "v": 1, "cluster": "<cluster id>", "mode": "tunnel" | "sovereign", "seq": <n>, "iat": <seconds> }
 *
 * with the protected header `{ "alg": "EdDSA" | "Ed25519" | "ES256", "typ": "tether-mode+jws" }`.
 * `seq` only ever grows (the agent refuses a document whose `seq` is not above the one in force:
 * the replay guard); `iat` says when it was signed. The agent pins the customer's public key in
 * its local options; the control plane never sees the key or the document.
 *
 * This module signs (the customer's side, `tether sovereignty sign`) and verifies (the agent, and
 * `tether sovereignty verify`). Every refusal is a `TetherError` with its own code.
 */
import { createHash, createPrivateKey, createPublicKey, type JsonWebKeyInput, type KeyObject } from 'node:crypto';
import { CompactSign, calculateJwkThumbprint, compactVerify, errors as joseErrors, exportJWK } from 'jose';
import { z } from 'zod';
import { TetherError, getErrorMessage } from '../common/errors.js';

export type ClusterMode = 'tunnel' | 'sovereign';
export const CLUSTER_MODES: readonly ClusterMode[] = ['tunnel', 'sovereign'];

/** The JWS `typ` of a mode document: a token the customer key signed for anything else is not one. */
export const MODE_DOCUMENT_TYPE = 'tether-mode+jws';
/** Larger files are refused unread (a mode document is a few hundred bytes). */
export const MAX_MODE_DOCUMENT_BYTES = 16 * 1024;

export const ModeErrorCode = {
  /** No signature: a bare JSON document, `alg: none`, or an empty signature part. */
  UNSIGNED: 'MODE_UNSIGNED',
  /** Signed, but not by the pinned customer key (or with an algorithm that key does not use). */
  BAD_SIGNATURE: 'MODE_BAD_SIGNATURE',
  /** Validly signed for another cluster. */
  WRONG_CLUSTER: 'MODE_WRONG_CLUSTER',
  /** Validly signed, but its `seq` is not above the document in force (an older document again). */
  REPLAYED: 'MODE_REPLAYED',
  /** Not a compact JWS, wrong `typ`, or a payload that is not a mode document. */
  MALFORMED: 'MODE_MALFORMED',
  /** The mode file cannot be read (missing, unreadable, too large). */
  FILE_UNREADABLE: 'MODE_FILE_UNREADABLE',
  /** The configured customer key is not an Ed25519 or P-256 public key (or is a private key). */
  KEY_INVALID: 'MODE_KEY_INVALID',
  /** The agent's replay-guard state file exists but cannot be read or parsed. */
  STATE_UNREADABLE: 'MODE_STATE_UNREADABLE',
} as const;

export interface ModeDocument {
  v: 1;
  cluster: string;
  mode: ClusterMode;
  /** Strictly increasing per cluster: the replay guard. */
  seq: number;
  /** Signing time, seconds since the epoch. */
  iat: number;
}

/** A verified document, with what it was verified from. */
export interface VerifiedModeDocument extends ModeDocument {
  /** The JWS `alg` it was signed with. */
  alg: string;
  /** SHA-256 (hex) of the compact JWS text: tells a re-read of the same document from another one with the same `seq`. */
  digest: string;
}

const payloadSchema = z
  .object({
    v: z.literal(1),
    cluster: z.string().min(1).max(253),
    mode: z.enum(['tunnel', 'sovereign']),
    seq: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
    iat: z.number().int().nonnegative(),
  })
  .strict();

/** The public key the agent pins: an SPKI PEM or a public JWK (Ed25519 `OKP` or P-256 `EC`). */
export type CustomerKeyInput = string | Record<string, unknown>;

function keyInvalid(message: string, cause?: unknown): TetherError {
  return new TetherError(ModeErrorCode.KEY_INVALID, message, cause === undefined ? undefined : { cause });
}

/** The algorithms a key may sign mode documents with. */
export function algorithmsFor(key: KeyObject): string[] {
  if (key.asymmetricKeyType === 'ed25519') return ['EdDSA', 'Ed25519'];
  if (key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1') return ['ES256'];
  throw keyInvalid(`customer keys are Ed25519 or P-256 (ES256); this one is ${key.asymmetricKeyType ?? 'unknown'}${key.asymmetricKeyDetails?.namedCurve === undefined ? '' : ` ${key.asymmetricKeyDetails.namedCurve}`}`);
}

/**
 * Import the customer's public key. A private key is refused: the data plane holds only the
 * public half, and a private key in the agent's configuration would let whoever reads it approve
 * switches.
 */
export function importCustomerPublicKey(input: CustomerKeyInput): KeyObject {
  let key: KeyObject;
  try {
    if (typeof input === 'string') {
      if (/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(input)) throw keyInvalid('the customer key must be the public key (SPKI PEM), not a private key');
      key = createPublicKey(input);
    } else {
      if ('d' in input) throw keyInvalid('the customer key must be a public JWK (it has a private "d" member)');
      key = createPublicKey({ key: input, format: 'jwk' } as JsonWebKeyInput);
    }
  } catch (reason) {
    if (reason instanceof TetherError) throw reason;
    throw keyInvalid(`cannot read the customer public key: ${getErrorMessage(reason)}`, reason);
  }
  algorithmsFor(key);
  return key;
}

/** Import the customer's private key (PKCS#8 PEM or private JWK) for signing. */
export function importCustomerPrivateKey(input: CustomerKeyInput): KeyObject {
  let key: KeyObject;
  try {
    key = typeof input === 'string' ? createPrivateKey(input) : createPrivateKey({ key: input, format: 'jwk' } as JsonWebKeyInput);
  } catch (reason) {
    throw keyInvalid(`cannot read the customer private key: ${getErrorMessage(reason)}`, reason);
  }
  algorithmsFor(key);
  return key;
}

/** The RFC 7638 thumbprint of a key's public half: what an operator compares to identify the pinned key. */
export async function keyThumbprint(key: KeyObject): Promise<string> {
  const publicKey = key.type === 'private' ? createPublicKey(key) : key;
  return calculateJwkThumbprint(await exportJWK(publicKey), 'sha256');
}

/** Sign a mode document with the customer's private key (EdDSA for Ed25519, ES256 for P-256). */
export async function signModeDocument(document: Omit<ModeDocument, 'v'>, privateKey: KeyObject): Promise<string> {
  const payload = payloadSchema.safeParse({ v: 1, ...document });
  if (!payload.success) throw new TetherError(ModeErrorCode.MALFORMED, `not a mode document: ${payload.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  const alg = algorithmsFor(privateKey)[0] as string;
  return new CompactSign(new TextEncoder().encode(JSON.stringify(payload.data))).setProtectedHeader({ alg, typ: MODE_DOCUMENT_TYPE }).sign(privateKey);
}

function decodeJson(part: string): unknown {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8')) as unknown;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Verify a mode document against the pinned customer key and the agent's cluster. Refusals:
 * `MODE_UNSIGNED`, `MODE_BAD_SIGNATURE`, `MODE_MALFORMED`, `MODE_WRONG_CLUSTER` (the replay
 * guard is the holder's: it knows the document in force).
 */
export async function verifyModeDocument(text: string, key: KeyObject, expectedCluster?: string): Promise<VerifiedModeDocument> {
  if (Buffer.byteLength(text) > MAX_MODE_DOCUMENT_BYTES) throw new TetherError(ModeErrorCode.MALFORMED, `a mode document is at most ${MAX_MODE_DOCUMENT_BYTES} bytes`);
  const jws = text.trim();
  if (jws === '') throw new TetherError(ModeErrorCode.MALFORMED, 'the mode document is empty');
  if (jws.startsWith('{')) {
    // A plain JSON mode document: whoever wrote it, nobody signed it.
    throw new TetherError(ModeErrorCode.UNSIGNED, 'the mode document is bare JSON, not a JWS signed by the customer key');
  }
  const parts = jws.split('.');
  if (parts.length !== 3 || !parts.every((part) => /^[A-Za-z0-9_-]*$/.test(part))) throw new TetherError(ModeErrorCode.MALFORMED, 'the mode document is not a compact JWS (three base64url parts)');
  let header: unknown;
  try {
    header = decodeJson(parts[0] as string);
  } catch {
    throw new TetherError(ModeErrorCode.MALFORMED, 'the JWS protected header is not JSON');
  }
  if (!isRecord(header) || typeof header.alg !== 'string') throw new TetherError(ModeErrorCode.MALFORMED, 'the JWS protected header names no alg');
  if (header.alg.toLowerCase() === 'none' || parts[2] === '') throw new TetherError(ModeErrorCode.UNSIGNED, `the mode document carries no signature (alg ${header.alg})`);
  const algorithms = algorithmsFor(key);
  if (!algorithms.includes(header.alg)) throw new TetherError(ModeErrorCode.BAD_SIGNATURE, `alg ${header.alg} is not what the customer key signs with (${algorithms.join(', ')})`);
  let payloadBytes: Uint8Array;
  try {
    ({ payload: payloadBytes } = await compactVerify(jws, key, { algorithms }));
  } catch (reason) {
    if (reason instanceof joseErrors.JWSSignatureVerificationFailed) throw new TetherError(ModeErrorCode.BAD_SIGNATURE, 'the signature does not verify with the customer key');
    throw new TetherError(ModeErrorCode.MALFORMED, `not a valid JWS: ${getErrorMessage(reason)}`, { cause: reason });
  }
  // Checked only once the signature holds: an unsigned header's claims mean nothing.
  if (header.typ !== MODE_DOCUMENT_TYPE) throw new TetherError(ModeErrorCode.MALFORMED, `the JWS typ is ${JSON.stringify(header.typ ?? null)}, not ${MODE_DOCUMENT_TYPE}`);
  let payload: unknown;
  try {
    payload = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(payloadBytes)) as unknown;
  } catch {
    throw new TetherError(ModeErrorCode.MALFORMED, 'the JWS payload is not JSON');
  }
  const parsed = payloadSchema.safeParse(payload);
  if (!parsed.success) throw new TetherError(ModeErrorCode.MALFORMED, `not a mode document: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`);
  const document = parsed.data;
  if (expectedCluster !== undefined && document.cluster !== expectedCluster) {
    throw new TetherError(ModeErrorCode.WRONG_CLUSTER, `the mode document is for cluster ${document.cluster}, this agent serves ${expectedCluster}`);
  }
  return { ...document, alg: header.alg, digest: createHash('sha256').update(jws).digest('hex') };
}
