/**
 * How the control plane's error codes travel: a gRPC status plus the code in the `tether-code`
 * trailer, or an HTTP status plus `{ code, message }` in the JSON body.
 */
import { status } from '@grpc/grpc-js';
import { ControlErrorCode } from './errors.js';

const C = ControlErrorCode;

const TABLE: Record<string, [grpc: status, http: number]> = {
  [C.INVALID_ARGUMENT]: [status.INVALID_ARGUMENT, 400],
  [C.NOT_FOUND]: [status.NOT_FOUND, 404],
  [C.ALREADY_EXISTS]: [status.ALREADY_EXISTS, 409],
  [C.UNAUTHENTICATED]: [status.UNAUTHENTICATED, 401],
  [C.PERMISSION_DENIED]: [status.PERMISSION_DENIED, 403],
  [C.TASK_VERSION_CONFLICT]: [status.ALREADY_EXISTS, 409],
  [C.METADATA_PAYLOAD_REFUSED]: [status.INVALID_ARGUMENT, 422],
  [C.METADATA_FIELD_TOO_LARGE]: [status.INVALID_ARGUMENT, 413],
  [C.METADATA_URI_SCHEME]: [status.INVALID_ARGUMENT, 422],
  [C.PHASE_BACKWARDS]: [status.FAILED_PRECONDITION, 409],
  [C.PHASE_TERMINAL]: [status.FAILED_PRECONDITION, 409],
  [C.PHASE_WRONG_CLUSTER]: [status.FAILED_PRECONDITION, 409],
  [C.PHASE_INVALID]: [status.INVALID_ARGUMENT, 400],
  [C.SCHEDULE_INVALID]: [status.INVALID_ARGUMENT, 400],
  [C.CLUSTER_UNKNOWN]: [status.FAILED_PRECONDITION, 409],
  [C.CLUSTER_IN_USE]: [status.FAILED_PRECONDITION, 409],
  [C.REQUEST_TOO_LARGE]: [status.RESOURCE_EXHAUSTED, 413],
  [C.UNAVAILABLE]: [status.UNAVAILABLE, 503],
  INVALID_OPTIONS: [status.INVALID_ARGUMENT, 400],
};

Object.assign(TABLE, {
  [C.IDENTITY_EXCHANGE_DISABLED]: [status.UNIMPLEMENTED, 501],
  EXCHANGE_BAD_REQUEST: [status.INVALID_ARGUMENT, 400],
  EXCHANGE_BAD_AGENT_ID: [status.INVALID_ARGUMENT, 400],
  EXCHANGE_UNKNOWN_CLUSTER: [status.NOT_FOUND, 404],
});

/** Families by prefix: the token verifier's refusals, the CSR checks. */
const PREFIXES: Array<[string, [status, number]]> = [
  ['TOKEN_', [status.UNAUTHENTICATED, 401]],
  ['CSR_', [status.INVALID_ARGUMENT, 400]],
];

function entryFor(code: string): [status, number] | undefined {
  return TABLE[code] ?? PREFIXES.find(([prefix]) => code.startsWith(prefix))?.[1];
}

export function grpcStatusFor(code: string): status {
  return entryFor(code)?.[0] ?? status.INTERNAL;
}

export function httpStatusFor(code: string): number {
  return entryFor(code)?.[1] ?? 500;
}

/** Errors whose message may be shown to the caller; anything else is answered "internal error". */
export function isClientError(code: string): boolean {
  return entryFor(code) !== undefined;
}
