import { ErrorCodes, HeimdallError, type ErrorCode } from '../errors/index.ts';

/** What every checkpoint reader produces: a lazy state dict. Nothing is read until a tensor is asked for. */

export type DType = 'float32' | 'float16' | 'bfloat16' | 'float64' | 'int64' | 'int32' | 'int16' | 'int8' | 'uint8' | 'bool';

export const DTYPE_BYTES: Readonly<Record<DType, number>> = {
  float32: 4,
  float16: 2,
  bfloat16: 2,
  float64: 8,
  int64: 8,
  int32: 4,
  int16: 2,
  int8: 1,
  uint8: 1,
  bool: 1,
};

/** A byte range of the checkpoint file. */
export interface FileRange {
  readonly offset: number;
  readonly length: number;
}

export interface LazyTensor {
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly numel: number;
  /**
   * The values, converted to float32 (f16, bf16 and f64 widen or narrow), row-major and contiguous.
   * `scratch`, when given and large enough, may receive the raw bytes: the result can then alias it,
   * so the caller must be done with the result before reusing the scratch buffer.
   */
  readFloat32(scratch?: Uint8Array): Promise<Float32Array>;
}

export type CheckpointFormat = 'torch-zip' | 'safetensors';

/** Where the model weights sat inside the checkpoint. */
export type CheckpointLayout = 'bare' | 'model_state_dict' | 'lightning' | 'safetensors';

export interface Checkpoint {
  readonly format: CheckpointFormat;
  readonly layout: CheckpointLayout;
  /** Model weights with any wrapper prefix (Lightning's `model.`) removed. */
  readonly tensors: ReadonlyMap<string, LazyTensor>;
  /** Hyper-parameters found beside the weights (`config`, `hyper_parameters`, safetensors metadata). */
  readonly config: Readonly<Record<string, unknown>>;
  /**
   * What the trainer saved beside the weights and the config, as plain data (trainer-state.ts): the
   * top-level scalars (`epoch`, `global_step`, `val_loss`, ...; a one-element tensor as its number)
   * and the `callbacks` and `metrics` dicts. Empty for a bare state dict and for safetensors.
   */
  readonly trainerState: Readonly<Record<string, unknown>>;
  /** Golden parity samples carried by the checkpoint itself (`parity` entry), when present. */
  readonly parity?: ReadonlyMap<string, LazyTensor>;
  /** Non-fatal findings: inert trainer types read as plain data, and the like. */
  readonly warnings: readonly string[];
  /**
   * Hands the CRC-32 checks of the tensors' storage records to a caller that streams the whole file
   * anyway: records read from then on are not checked on read. Absent where the format has no checksums.
   */
  deferRecordChecks?(): DeferredRecordChecks;
  close(): Promise<void>;
}

export interface DeferredRecordChecks {
  /** The records to checksum. */
  readonly records: readonly FileRange[];
  /**
   * Takes the CRC-32 of each of `records` and throws CHECKPOINT_CORRUPT, as a checked read would have,
   * for the first record read since the hand-over whose CRC does not match.
   */
  verify(crc32s: readonly number[]): void;
}

/**
 * What a reader throws: our own errors as they are; an error of the machine (an errno from a system
 * call) as IO_ERROR; anything else raised while decoding the file's content (a RangeError, a failed
 * allocation for a size the file claims) as `content`, a non-retriable code, because retrying the
 * same bytes fails the same way.
 */
export function readerError(error: unknown, content: ErrorCode): HeimdallError {
  if (error instanceof HeimdallError) return error;
  const message = error instanceof Error ? error.message : String(error);
  const system = error !== null && typeof error === 'object' && 'syscall' in error && 'errno' in error;
  return new HeimdallError(system ? ErrorCodes.IO_ERROR : content, system ? message : `malformed content: ${message}`, { cause: error });
}
