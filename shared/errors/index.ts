/**
 * Errors as typed values with stable codes (the nats.js way): every failure a user can meet carries
 * one of these codes, in CLI messages, in `heimdall.pipeline.failed` events and in logs alike.
 */
export const ErrorCodes = {
  /** The checkpoint path or object does not exist. */
  CHECKPOINT_NOT_FOUND: 'CHECKPOINT_NOT_FOUND',
  /** Truncated archive, bad zip structure or CRC mismatch. */
  CHECKPOINT_CORRUPT: 'CHECKPOINT_CORRUPT',
  /** Not a torch zip checkpoint nor safetensors (e.g. a legacy pre-zip torch file). */
  UNSUPPORTED_FORMAT: 'UNSUPPORTED_FORMAT',
  /** The pickle names a global from a dangerous module or uses a forbidden opcode. */
  UNSAFE_PICKLE: 'UNSAFE_PICKLE',
  /** The pickle exceeds a size cap (memo, stack, nesting, string) or is malformed. */
  PICKLE_INVALID: 'PICKLE_INVALID',
  /**
   * A tensor's size, offset or strides reach outside its storage, a size overflows, or a model's
   * weights are not backed by as many stored bytes (stride-0 or overlapping weights).
   */
  TENSOR_OUT_OF_BOUNDS: 'TENSOR_OUT_OF_BOUNDS',
  /** Malformed safetensors: header too large, bad JSON, overlapping offsets, trailing bytes. */
  SAFETENSORS_INVALID: 'SAFETENSORS_INVALID',
  /** No state dict found, a non-tensor where a weight belongs, or required weights missing. */
  INVALID_STATE_DICT: 'INVALID_STATE_DICT',
  /** A value the checkpoint's config gives (uncertainty range, ...) is of the wrong type or out of range. */
  INVALID_CONFIG: 'INVALID_CONFIG',
  /** The weights do not describe a LocalizationNet (ConvNeXt backbone + two heads). */
  UNSUPPORTED_ARCHITECTURE: 'UNSUPPORTED_ARCHITECTURE',
  /** An event that does not match its CloudEvents envelope or data schema. */
  INVALID_EVENT: 'INVALID_EVENT',
  /** An event whose data is not JSON (`data_base64`, another datacontenttype or event format): HTTP 415. */
  UNSUPPORTED_MEDIA_TYPE: 'UNSUPPORTED_MEDIA_TYPE',
  /** The exported model fails validation (structure, I/O contract, non-finite or out-of-range outputs). */
  INVALID_MODEL: 'INVALID_MODEL',
  /** ONNX outputs differ from the reference beyond the tolerance. */
  PARITY_EXCEEDED: 'PARITY_EXCEEDED',
  /** Parity cannot be checked: an uploaded ONNX model without golden samples beside it. */
  PARITY_UNAVAILABLE: 'PARITY_UNAVAILABLE',
  /** The benchmark could not run (session creation, allocation). */
  BENCHMARK_FAILED: 'BENCHMARK_FAILED',
  /** The model registry refused or failed an operation. */
  REGISTRY_ERROR: 'REGISTRY_ERROR',
  /** The model registry rejected our credentials or denied the operation (HTTP 401/403, PERMISSION_DENIED). */
  REGISTRY_AUTH: 'REGISTRY_AUTH',
  /** The model registry refused a request as invalid (INVALID_PARAMETER_VALUE, an unexpected missing or existing resource). */
  REGISTRY_REJECTED: 'REGISTRY_REJECTED',
  /** An object or bucket is missing in the object store. */
  OBJECT_NOT_FOUND: 'OBJECT_NOT_FOUND',
  /**
   * The object store rejected our credentials (InvalidAccessKeyId, SignatureDoesNotMatch, an expired
   * token), or answered a bare 403 that does not say whether the key or its permissions are at fault.
   */
  STORAGE_AUTH: 'STORAGE_AUTH',
  /**
   * The object store took our credentials and denied them the operation (AccessDenied): a bucket or
   * IAM policy forbids it, e.g. one that requires server-side encryption (S3_SSE). Not retriable,
   * like STORAGE_AUTH: the policy or the configuration has to change first.
   */
  STORAGE_FORBIDDEN: 'STORAGE_FORBIDDEN',
  /** The object store refused a request for a reason other than credentials or a missing object. */
  STORAGE_REJECTED: 'STORAGE_REJECTED',
  /** JetStream gave up on a message after MaxDeliver deliveries (the worker crashed or timed out each time). */
  DELIVERY_EXHAUSTED: 'DELIVERY_EXHAUSTED',
  /** A path that must be a regular file is a FIFO, a directory, a device or a socket. */
  NOT_A_FILE: 'NOT_A_FILE',
  /** The run was stopped (SIGTERM, SIGINT) before it finished; nothing it wrote is left behind. */
  ABORTED: 'ABORTED',
  /** Wrong command-line usage or configuration. */
  USAGE: 'USAGE',
  /** An I/O failure outside the checkpoint's content (disk full, permission denied). */
  IO_ERROR: 'IO_ERROR',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

export class HeimdallError extends Error {
  override readonly name = 'HeimdallError';
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  /** One line, code first: what the CLI prints and what events carry. */
  toLine(): string {
    return `${this.code}: ${this.message}`;
  }
}

/** Failures that may succeed when tried again (infrastructure), as opposed to bad input that never will. */
const RETRIABLE: ReadonlySet<ErrorCode> = new Set<ErrorCode>([ErrorCodes.IO_ERROR, ErrorCodes.BENCHMARK_FAILED, ErrorCodes.REGISTRY_ERROR, ErrorCodes.ABORTED]);

export function isRetriable(code: ErrorCode): boolean {
  return RETRIABLE.has(code);
}

/** Any thrown value as a HeimdallError: ours pass through, anything else keeps its message under `fallback`. */
export function asHeimdallError(error: unknown, fallback: ErrorCode = ErrorCodes.IO_ERROR): HeimdallError {
  if (error instanceof HeimdallError) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new HeimdallError(fallback, message, { cause: error });
}
