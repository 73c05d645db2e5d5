/**
 * Stable error codes of the control plane. Every refusal it makes on purpose is a `TetherError`
 * with one of these codes; the API maps each to a gRPC status and an HTTP status (api-status.ts).
 */
export const ControlErrorCode = {
  /** A request field is missing, malformed or out of range. */
  INVALID_ARGUMENT: 'CONTROL_INVALID_ARGUMENT',
  /** The addressed record does not exist. */
  NOT_FOUND: 'CONTROL_NOT_FOUND',
  /** A record with this identity already exists with other content (runs, clusters, schedules). */
  ALREADY_EXISTS: 'CONTROL_ALREADY_EXISTS',
  /** No bearer token, or the token failed verification against every configured issuer. */
  UNAUTHENTICATED: 'CONTROL_UNAUTHENTICATED',
  /** The principal's roles do not grant the operation on the resource. */
  PERMISSION_DENIED: 'CONTROL_PERMISSION_DENIED',

  /** A task version is immutable: a different body was registered under an existing version. */
  TASK_VERSION_CONFLICT: 'TASK_VERSION_CONFLICT',

  /** An input/output is not a URI (inline literal, data: URI, bytes): the control plane stores references only (I2). */
  METADATA_PAYLOAD_REFUSED: 'METADATA_PAYLOAD_REFUSED',
  /** A string, list, map or message is larger than its cap (I2). */
  METADATA_FIELD_TOO_LARGE: 'METADATA_FIELD_TOO_LARGE',
  /** A URI's scheme is not on the allowed list (s3, gs, abfs, abfss, tether-blob, file in dev). */
  METADATA_URI_SCHEME: 'METADATA_URI_SCHEME',

  /** The event's phase is earlier than the run's current phase. */
  PHASE_BACKWARDS: 'PHASE_BACKWARDS',
  /** The run is in a terminal phase; no other phase can follow. */
  PHASE_TERMINAL: 'PHASE_TERMINAL',
  /** The event comes from another cluster than the one the run is assigned to. */
  PHASE_WRONG_CLUSTER: 'PHASE_WRONG_CLUSTER',
  /** The event names no known phase (or UNDEFINED). */
  PHASE_INVALID: 'PHASE_INVALID',

  /** A stored ciphertext failed authentication: tampered, moved to another row, or a wrong key. */
  STORE_DECRYPT_FAILED: 'STORE_DECRYPT_FAILED',
  /** A ciphertext or data key names a key-encryption key that is not in the keyring. */
  STORE_KEK_UNKNOWN: 'STORE_KEK_UNKNOWN',
  /** No key-encryption key is configured (key file or TETHER_CONTROL_KEK). */
  STORE_KEK_MISSING: 'STORE_KEK_MISSING',
  /** A key file or TETHER_CONTROL_KEK value is malformed (not base64 of 32 bytes, bad JSON, duplicate id). */
  STORE_KEK_INVALID: 'STORE_KEK_INVALID',
  /** A KEK cannot be removed: data keys are still wrapped with it. */
  STORE_KEK_IN_USE: 'STORE_KEK_IN_USE',
  /** The database schema is newer than this binary knows. */
  STORE_SCHEMA_TOO_NEW: 'STORE_SCHEMA_TOO_NEW',

  /** A schedule's cron expression or rate does not parse. */
  SCHEDULE_INVALID: 'SCHEDULE_INVALID',
  /** No cluster was named and none could be chosen; or the named cluster is not registered. */
  CLUSTER_UNKNOWN: 'CLUSTER_UNKNOWN',
  /** A cluster cannot be deleted while a run of it is not finished or an active schedule targets it. */
  CLUSTER_IN_USE: 'CLUSTER_IN_USE',
  /** This control plane has no CA configured, so it does not exchange workload tokens. */
  IDENTITY_EXCHANGE_DISABLED: 'IDENTITY_EXCHANGE_DISABLED',
  /** The request body is larger than the API accepts. */
  REQUEST_TOO_LARGE: 'CONTROL_REQUEST_TOO_LARGE',
  /** The control plane is shutting down: a stream (a gateway's watch) ends; reconnect to another replica or later. */
  UNAVAILABLE: 'CONTROL_UNAVAILABLE',
} as const;

export type ControlErrorCodeValue = (typeof ControlErrorCode)[keyof typeof ControlErrorCode];
