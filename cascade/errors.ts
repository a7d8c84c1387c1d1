/**
 * One registry of error codes for the whole project (the fastify `lib/errors.js` pattern).
 *
 * A {@link CascadeError} is a *user* error: bad input, a missing file, a broken dataset. The CLI
 * prints its one-line message and exits non-zero without a stack trace. Anything else that
 * escapes is a bug and is printed with its stack.
 */

/** Stable error codes. Never renumber or reuse a code: users grep logs for them. */
export const ErrorCodes = {
  /** A path that must exist does not. */
  DATA_ERR_NOT_FOUND: 'DATA_ERR_NOT_FOUND',
  /** A dataset file is malformed: wrong magic, truncated, inconsistent counts. */
  DATA_ERR_FORMAT: 'DATA_ERR_FORMAT',
  /** An ImageFolder dataset has no classes or an empty class folder. */
  DATA_ERR_EMPTY: 'DATA_ERR_EMPTY',
  /** An image file could not be decoded. */
  DATA_ERR_DECODE: 'DATA_ERR_DECODE',
  /** Command-line arguments are invalid. */
  CLI_ERR_ARGS: 'CLI_ERR_ARGS',
  /** A model card, registry or model file is missing or invalid. */
  MODEL_ERR_INVALID: 'MODEL_ERR_INVALID',
  /** An ONNX graph uses an operator or form the pipeline does not support. */
  MODEL_ERR_UNSUPPORTED: 'MODEL_ERR_UNSUPPORTED',
  /** A training checkpoint is missing, corrupt or belongs to another run configuration. */
  TRAIN_ERR_CHECKPOINT: 'TRAIN_ERR_CHECKPOINT',
  /** Training was interrupted by the user (a checkpoint was saved). */
  TRAIN_ERR_INTERRUPTED: 'TRAIN_ERR_INTERRUPTED',
  /** A dataset does not fit a model: image size, channels or classes differ from its card. */
  DATA_ERR_MISMATCH: 'DATA_ERR_MISMATCH',
  /** A policy config or policy file is invalid (every schema violation is listed). */
  POLICY_ERR_CONFIG: 'POLICY_ERR_CONFIG',
  /** A model card cannot drive the policy engine (wrong tier, no reliability table). */
  POLICY_ERR_CARD: 'POLICY_ERR_CARD',
  /** A network trace file is missing, empty or not in the format its loader expects. */
  TRACE_ERR_FORMAT: 'TRACE_ERR_FORMAT',
  /** OTA metadata is signed by too few trusted keys (bad signature, unknown key, threshold not met). */
  OTA_ERR_SIGNATURE_INVALID: 'OTA_ERR_SIGNATURE_INVALID',
  /** OTA metadata or a model release is older than one already trusted (rollback attack). */
  OTA_ERR_ROLLBACK: 'OTA_ERR_ROLLBACK',
  /** OTA metadata has expired (freeze attack, or a repository nobody re-signed in time). */
  OTA_ERR_EXPIRED: 'OTA_ERR_EXPIRED',
  /** OTA metadata files disagree: versions, lengths or hashes do not match (mix-and-match). */
  OTA_ERR_MISMATCH: 'OTA_ERR_MISMATCH',
  /** Downloaded bytes exceed the length their signed metadata allows (endless-data attack). */
  OTA_ERR_TOO_LARGE: 'OTA_ERR_TOO_LARGE',
  /** A downloaded target's length or sha256 differs from its signed metadata (tampered bytes). */
  OTA_ERR_TARGET_HASH: 'OTA_ERR_TARGET_HASH',
  /** OTA metadata is malformed: not JSON, missing fields, wrong types. */
  OTA_ERR_METADATA_INVALID: 'OTA_ERR_METADATA_INVALID',
  /** A model target does not fit this device: hardware class, tier or card disagree with the manifest. */
  OTA_ERR_HARDWARE_MISMATCH: 'OTA_ERR_HARDWARE_MISMATCH',
  /** The OTA repository could not be reached or answered with an HTTP error. */
  OTA_ERR_DOWNLOAD: 'OTA_ERR_DOWNLOAD',
  /** A signing key file is missing, unreadable, readable by others, or of the wrong kind. */
  OTA_ERR_KEY: 'OTA_ERR_KEY',
  /** The OTA repository workspace is inconsistent or not ready to publish (e.g. unsigned roles). */
  OTA_ERR_REPO: 'OTA_ERR_REPO',
  /** A newly installed model failed its health check and was rolled back. */
  OTA_ERR_HEALTH_CHECK: 'OTA_ERR_HEALTH_CHECK',
  /** The model store on the device is damaged or an install step failed. */
  OTA_ERR_INSTALL: 'OTA_ERR_INSTALL',
  /** A native addon is not built or does not load (the message lists each candidate and the fix). */
  NATIVE_ERR_UNAVAILABLE: 'NATIVE_ERR_UNAVAILABLE',
  /** A native call got bad arguments (set on the TypeError/RangeError the addon throws). */
  NATIVE_ERR_INVALID_ARG: 'NATIVE_ERR_INVALID_ARG',
  /** TensorRT could not parse the ONNX model or build an engine from it. */
  NATIVE_ERR_TRT_BUILD: 'NATIVE_ERR_TRT_BUILD',
  /** A TensorRT engine failed at run time (CUDA error, enqueue failure, engine disposed). */
  NATIVE_ERR_TRT_RUNTIME: 'NATIVE_ERR_TRT_RUNTIME',
  /** No inference engine could be started (every backend's failure is listed). */
  ENGINE_ERR_UNAVAILABLE: 'ENGINE_ERR_UNAVAILABLE',
  /** A service config (file, environment or flags) is invalid; every violation is listed. */
  CFG_ERR_INVALID: 'CFG_ERR_INVALID',
  /** A gateway request is malformed (HTTP 400): bad tensor shape, datatype, or body. */
  GW_ERR_BAD_REQUEST: 'GW_ERR_BAD_REQUEST',
  /** A request names a model this service does not serve (HTTP 404). */
  GW_ERR_MODEL_NOT_FOUND: 'GW_ERR_MODEL_NOT_FOUND',
  /** Admission control refused a request: the queue's expected wait exceeds its budget (HTTP 429). */
  GW_ERR_OVERLOADED: 'GW_ERR_OVERLOADED',
  /** A request's latency budget ran out before it was served (HTTP 504). */
  GW_ERR_EXPIRED: 'GW_ERR_EXPIRED',
  /** The service is shutting down or not ready (HTTP 503). */
  GW_ERR_UNAVAILABLE: 'GW_ERR_UNAVAILABLE',
  /** The cloud teacher failed, timed out or answered with an error. */
  CLOUD_ERR_UPSTREAM: 'CLOUD_ERR_UPSTREAM',
  /** A cloud request has no or a wrong bearer token (HTTP 401). */
  CLOUD_ERR_UNAUTHORIZED: 'CLOUD_ERR_UNAUTHORIZED',
  /** A camera source failed: ffmpeg missing or exiting with an error, an unreadable image folder. */
  DEV_ERR_SOURCE: 'DEV_ERR_SOURCE',
  /** `cascade demo` could not start or run one of its processes (the message names it). */
  DEMO_ERR_PROCESS: 'DEMO_ERR_PROCESS',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

/** Base class of every user-facing error. `message` is one line that names the thing and the fault. */
export class CascadeError extends Error {
  readonly code: ErrorCode;
  /** HTTP status where the error reaches a client over HTTP. */
  readonly statusCode: number | undefined;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; statusCode?: number }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'CascadeError';
    this.code = code;
    this.statusCode = options?.statusCode;
  }
}

/** True for errors that are the user's to fix (printed as one line, no stack). */
export function isUserError(err: unknown): err is CascadeError {
  return err instanceof CascadeError;
}

/**
 * Describes a value for an argument error, sharp-style: "expected X, received Y".
 * @example invalidArgument('--epochs', 'a positive integer', 'abc')
 */
export function invalidArgument(name: string, expected: string, received: unknown): CascadeError {
  const shown = typeof received === 'string' ? JSON.stringify(received) : String(received);
  return new CascadeError(ErrorCodes.CLI_ERR_ARGS, `${name}: expected ${expected}, received ${shown}`);
}
