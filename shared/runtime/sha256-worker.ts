// Loaded as CommonJS (see startWorker): no top-level await, no import.meta.
// Streams a file once in a worker thread: its sha256 and, on the way, the CRC-32 of some ranges (see
// sha256.ts), or only those ranges when its digest is known; a second core takes the work off the exporter.
import { createHash } from 'node:crypto';
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { crc32 } from 'node:zlib';
import { alignedBuffer } from '../checkpoint/weight-buffers.ts';
import type { ByteRange, ScanRequest } from './sha256.ts';

const CHUNK = 4 * 1024 * 1024;

const { path, crc32Ranges, sha256 = true } = workerData as ScanRequest;
const hash = sha256 ? createHash('sha256') : undefined;
const crc32s = crc32Ranges.map(() => 0);
// One buffer, reused (no fresh pages to fault in for every chunk) and page-aligned (fast reads).
const buffer = alignedBuffer(CHUNK);
try {
  // O_NONBLOCK: opening a FIFO (swapped in after the caller's stat) returns at once instead of
  // waiting for a writer; fstat then refuses it. No effect on reads of a regular file.
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const stats = fstatSync(fd);
    if (!stats.isFile()) throw Object.assign(new Error(`${path} is not a regular file: only regular files are read`), { notAFile: true });
    if (hash) {
      for (let position = 0; ; ) {
        const length = readSync(fd, buffer, 0, CHUNK, position);
        if (length === 0) break;
        const chunk = buffer.subarray(0, length);
        hash.update(chunk);
        crc32Ranges.forEach((range, i) => {
          const part = overlap(chunk, position, range);
          if (part) crc32s[i] = crc32(part, crc32s[i]);
        });
        position += length;
        parentPort!.postMessage({ kind: 'progress', done: position });
      }
    } else {
      let done = 0;
      crc32Ranges.forEach((range, i) => {
        for (let offset = 0; offset < range.length; ) {
          const length = readSync(fd, buffer, 0, Math.min(CHUNK, range.length - offset), range.offset + offset);
          // Past the end of the file: the CRC of what is there, which the caller finds wrong.
          if (length === 0) break;
          crc32s[i] = crc32(buffer.subarray(0, length), crc32s[i]);
          offset += length;
          done += length;
          parentPort!.postMessage({ kind: 'progress', done });
        }
      });
    }
  } finally {
    closeSync(fd);
  }
  parentPort!.postMessage({ kind: 'done', ...(hash ? { sha256: hash.digest('hex') } : {}), crc32s });
} catch (error) {
  const notAFile = (error as { notAFile?: boolean }).notAFile === true;
  parentPort!.postMessage({ kind: 'error', message: (error as Error).message, ...(notAFile ? { code: 'NOT_A_FILE' } : {}) });
}

/** The part of `range` inside `chunk` (which starts at file offset `position`), if any. */
function overlap(chunk: Uint8Array, position: number, range: ByteRange): Uint8Array | undefined {
  const start = Math.max(range.offset, position);
  const end = Math.min(range.offset + range.length, position + chunk.byteLength);
  return start < end ? chunk.subarray(start - position, end - position) : undefined;
}
