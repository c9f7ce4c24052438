import { constants as bufferConstants } from 'node:buffer';
import { constants, type Stats } from 'node:fs';
import { open, stat, type FileHandle } from 'node:fs/promises';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';

/**
 * Positional reads from a file that is never loaded whole: checkpoints can be many times the model's
 * size (optimizer state), and we only ever touch the records we need.
 */
export class RandomAccessFile {
  private constructor(
    private readonly handle: FileHandle,
    readonly path: string,
    readonly size: number,
  ) {}

  /**
   * Opens a regular file (a symlink to one is fine). A FIFO, directory, device or socket is refused
   * at once with NOT_A_FILE: checked by `stat` before opening (so opening cannot block) and again by
   * `fstat` on what was opened, with O_NONBLOCK (so a FIFO swapped in between cannot block either).
   */
  static async open(path: string): Promise<RandomAccessFile> {
    const { handle, size } = await openRegularFile(path);
    return new RandomAccessFile(handle, path, size);
  }

  /**
   * Exactly `length` bytes at `offset`, or CHECKPOINT_CORRUPT when the file ends first; into `scratch`
   * when it is large enough (no fresh pages to fault in), else into a fresh (aligned) buffer.
   */
  async read(offset: number, length: number, scratch?: Uint8Array): Promise<Uint8Array> {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new HeimdallError(
        ErrorCodes.CHECKPOINT_CORRUPT,
        `read of ${length} bytes at ${offset} runs past the end of ${this.size}-byte file (truncated?)`,
      );
    }
    let out: Uint8Array;
    if (scratch && scratch.byteLength >= length) out = scratch.subarray(0, length);
    else {
      if (length > bufferConstants.MAX_LENGTH) {
        throw new HeimdallError(ErrorCodes.UNSUPPORTED_FORMAT, `a read of ${length} bytes exceeds the largest buffer this runtime allocates (${bufferConstants.MAX_LENGTH})`);
      }
      out = new Uint8Array(length);
    }
    let done = 0;
    while (done < length) {
      let bytesRead: number;
      try {
        ({ bytesRead } = await this.handle.read(out, done, Math.min(length - done, 1 << 30), offset + done));
      } catch (error) {
        throw new HeimdallError(ErrorCodes.IO_ERROR, `cannot read ${this.path}: ${(error as Error).message}`, { cause: error });
      }
      if (bytesRead === 0) throw new HeimdallError(ErrorCodes.CHECKPOINT_CORRUPT, `unexpected end of file at ${offset + done} (truncated while reading?)`);
      done += bytesRead;
    }
    return out;
  }

  async close(): Promise<void> {
    try {
      await this.handle.close();
    } catch (error) {
      throw new HeimdallError(ErrorCodes.IO_ERROR, `cannot close ${this.path}: ${(error as Error).message}`, { cause: error });
    }
  }
}

/** What a non-regular file is, for the NOT_A_FILE message. */
export function fileKind(stats: Stats): string {
  if (stats.isFile()) return 'a regular file';
  if (stats.isDirectory()) return 'a directory';
  if (stats.isFIFO()) return 'a FIFO';
  if (stats.isCharacterDevice()) return 'a character device';
  if (stats.isBlockDevice()) return 'a block device';
  if (stats.isSocket()) return 'a socket';
  return 'not a regular file';
}

export const notAFile = (path: string, stats: Stats) =>
  new HeimdallError(ErrorCodes.NOT_A_FILE, `${path} is ${fileKind(stats)}, not a regular file: only regular files are read`);

/** Maps an fs error on `path` to our codes: a missing path is CHECKPOINT_NOT_FOUND, the rest is the machine's. */
export function fsError(path: string, error: unknown, doing = 'open'): HeimdallError {
  if (error instanceof HeimdallError) return error;
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'ENOENT' || code === 'ENOTDIR') return new HeimdallError(ErrorCodes.CHECKPOINT_NOT_FOUND, `no such file: ${path}`, { cause: error });
  if (code === 'ELOOP') return new HeimdallError(ErrorCodes.CHECKPOINT_NOT_FOUND, `too many symbolic links: ${path}`, { cause: error });
  // open(2) of a socket; of a FIFO only with O_WRONLY, which we never use.
  if (code === 'ENXIO' || code === 'EISDIR') return new HeimdallError(ErrorCodes.NOT_A_FILE, `${path} is not a regular file (${code})`, { cause: error });
  return new HeimdallError(ErrorCodes.IO_ERROR, `cannot ${doing} ${path}: ${(error as Error).message}`, { cause: error });
}

/** The stats of `path` when it is a regular file (through symlinks); NOT_A_FILE or CHECKPOINT_NOT_FOUND otherwise. */
export async function statRegularFile(path: string, doing = 'stat'): Promise<Stats> {
  let stats: Stats;
  try {
    stats = await stat(path);
  } catch (error) {
    throw fsError(path, error, doing);
  }
  if (!stats.isFile()) throw notAFile(path, stats);
  return stats;
}

/** Opens `path` for reading when it is a regular file, without ever blocking on a FIFO or device (see RandomAccessFile.open). */
export async function openRegularFile(path: string): Promise<{ handle: FileHandle; size: number }> {
  await statRegularFile(path);
  let handle: FileHandle;
  try {
    handle = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (error) {
    throw fsError(path, error);
  }
  try {
    const after = await handle.stat();
    if (!after.isFile()) throw notAFile(path, after);
    return { handle, size: after.size };
  } catch (error) {
    await handle.close().catch(() => undefined);
    throw fsError(path, error, 'stat');
  }
}
