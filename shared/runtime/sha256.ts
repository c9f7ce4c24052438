import { statRegularFile } from '../checkpoint/random-access-file.ts';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import { startWorker } from './worker.ts';

export interface ByteRange {
  readonly offset: number;
  readonly length: number;
}

export interface ScanRequest {
  readonly path: string;
  /** Ranges to CRC-32 on the way. */
  readonly crc32Ranges: readonly ByteRange[];
  /** false: the file's digest is known already; only the ranges are read (default true: the whole file, hashed). */
  readonly sha256?: boolean;
}

export interface FileScan {
  /** Absent when not asked for. */
  readonly sha256?: string;
  /** One per `crc32Ranges`. */
  readonly crc32s: readonly number[];
}

type ScanMessage =
  | { kind: 'progress'; done: number }
  | ({ kind: 'done' } & FileScan)
  | { kind: 'error'; message: string; code?: string };

/** The sha256 of a file, computed in a worker thread so that it runs beside the caller's own work. */
export async function sha256File(path: string, onProgress?: (doneBytes: number, totalBytes: number) => void): Promise<string> {
  return (await scanFile({ path, crc32Ranges: [] }, onProgress)).sha256!;
}

/**
 * The sha256 of a file and, on the way, the CRC-32 of ranges of it, in a worker thread: a reader that
 * needs both makes one pass over the file, beside its own work. Without the sha256, only the ranges
 * are read; progress then counts their bytes.
 */
export async function scanFile(request: ScanRequest, onProgress?: (doneBytes: number, totalBytes: number) => void): Promise<FileScan> {
  const { path } = request;
  // Only regular files: a FIFO or device would block the worker forever (the worker checks again
  // on what it opened, with O_NONBLOCK, so nothing swapped in between can block it either).
  const { size } = await statRegularFile(path, 'hash');
  const total = request.sha256 === false ? request.crc32Ranges.reduce((sum, range) => sum + range.length, 0) : size;
  const worker = startWorker(new URL('./sha256-worker.ts', import.meta.url), request, { commonJs: true });
  try {
    return await new Promise<FileScan>((resolve, reject) => {
      worker.on('message', (message: ScanMessage) => {
        if (message.kind === 'progress') onProgress?.(message.done, total);
        else if (message.kind === 'done') resolve({ ...(message.sha256 ? { sha256: message.sha256 } : {}), crc32s: message.crc32s });
        else if (message.code === ErrorCodes.NOT_A_FILE) reject(new HeimdallError(ErrorCodes.NOT_A_FILE, message.message));
        else reject(new HeimdallError(ErrorCodes.IO_ERROR, `cannot hash ${path}: ${message.message}`));
      });
      worker.on('error', (error) => reject(new HeimdallError(ErrorCodes.IO_ERROR, `cannot hash ${path}: ${error.message}`, { cause: error })));
    });
  } finally {
    await worker.terminate();
  }
}
