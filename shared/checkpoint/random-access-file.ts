import { open, type FileHandle } from 'node:fs/promises';
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

  static async open(path: string): Promise<RandomAccessFile> {
    let handle: FileHandle;
    try {
      handle = await open(path, 'r');
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new HeimdallError(ErrorCodes.CHECKPOINT_NOT_FOUND, `no such file: ${path}`);
      throw new HeimdallError(ErrorCodes.IO_ERROR, `cannot open ${path}: ${(error as Error).message}`, { cause: error });
    }
    const stat = await handle.stat();
    if (!stat.isFile()) {
      await handle.close();
      throw new HeimdallError(ErrorCodes.CHECKPOINT_NOT_FOUND, `not a regular file: ${path}`);
    }
    return new RandomAccessFile(handle, path, stat.size);
  }

  /**
   * Exactly `length` bytes at `offset`, or CHECKPOINT_CORRUPT when the file ends first; into `scratch`
   * when it is large enough (no fresh pages to fault in), else into a fresh (aligned) buffer.
   */
  async read(offset: number, length: number, scratch?: Uint8Array): Promise<Uint8Array> {
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new HeimdallError(
        ErrorCodes.CHECKPOINT_CORRUPT,
        `read of ${length} bytes at ${offset} runs past the end of ${this.size}-byte file (truncated?)`,
      );
    }
    const out = scratch && scratch.byteLength >= length ? scratch.subarray(0, length) : new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.handle.read(out, done, Math.min(length - done, 1 << 30), offset + done);
      if (bytesRead === 0) throw new HeimdallError(ErrorCodes.CHECKPOINT_CORRUPT, `unexpected end of file at ${offset + done}`);
      done += bytesRead;
    }
    return out;
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}
