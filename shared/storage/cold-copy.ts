import { createHash, type Hash } from 'node:crypto';
import { constants } from 'node:fs';
import { copyFile, open, rm, type FileHandle } from 'node:fs/promises';
import { alignedBuffer } from '../checkpoint/weight-buffers.ts';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import { sha256File } from '../runtime/sha256.ts';

/** Below this a copy through the page cache costs nothing worth avoiding. */
const COLD_COPY_MIN_BYTES = 64 * 1024 * 1024;
const CHUNK = 8 * 1024 * 1024;
/** O_DIRECT wants offsets and lengths in whole logical blocks; 4 KiB covers every disk in use. */
const BLOCK = 4096;

/**
 * Copies `source` to the new file `target` (which must not exist) as the embedded store keeps an
 * object: a copy-on-write clone where the filesystem has them (instant, no extra space); else, for
 * a large file, written past the page cache (O_DIRECT); else a plain copy.
 *
 * Why past the page cache: a stored checkpoint is cold data, most of it optimizer state that nothing
 * reads again (the export reads only the weight records), and every page a buffered copy dirties is
 * memory the kernel must find first. On the 2-core VM this project is measured on, memory not touched
 * for a few seconds is handed back to the host (virtio-balloon free page reporting), and taking it
 * again costs about 2.5 s per GB: `cp` of the 2.36 GB large checkpoint took 5.7-6.8 s there, the
 * same copy with O_DIRECT 1.0-1.1 s (2026-12-02).
 */
export async function coldCopy(source: string, target: string): Promise<void> {
  await copyInto(source, target);
}

/**
 * coldCopy, and the sha256 of the copy: of the bytes written to `target`, not of another read of
 * `source`, which someone may be writing meanwhile (through a shared mapping, a write to a page
 * already dirty moves neither its mtime nor its ctime). The O_DIRECT copy hashes each chunk as it
 * writes it (one read of the source); a clone or kernel copy is hashed afterwards, from the target,
 * which only its caller can write.
 */
export async function coldCopyHashed(source: string, target: string): Promise<string> {
  const hash = createHash('sha256');
  return (await copyInto(source, target, hash)) ? hash.digest('hex') : sha256File(target);
}

/** true where `hash` saw every byte copied (the O_DIRECT copy); false where the copy was cloned or made by the kernel. */
async function copyInto(source: string, target: string, hash?: Hash): Promise<boolean> {
  try {
    await copyFile(source, target, constants.COPYFILE_EXCL | constants.COPYFILE_FICLONE_FORCE);
    return false;
  } catch {
    // No clones here (ext4, tmpfs): copy the bytes.
  }
  if (await directCopy(source, target, hash)) return true;
  await copyFile(source, target, constants.COPYFILE_EXCL);
  return false;
}

/**
 * The O_DIRECT copy, each chunk given to `hash` as it is written; false (and no target left) where
 * the file is small or the filesystem refuses O_DIRECT (tmpfs).
 */
async function directCopy(source: string, target: string, hash?: Hash): Promise<boolean> {
  const input = await open(source, 'r');
  let output: FileHandle | undefined;
  let writing: Promise<unknown> = Promise.resolve();
  let failed = false;
  try {
    const { size } = await input.stat();
    if (size < COLD_COPY_MIN_BYTES) return false;
    output = await open(target, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_DIRECT).catch(refused);
    if (!output) {
      // Some filesystems create the file before they refuse O_DIRECT (tmpfs before Linux 6.6): with
      // O_EXCL, a file there now is that one, and the plain copy must find the name free.
      await rm(target, { force: true });
      return false;
    }
    // Two page-aligned buffers, reused: the next chunk is read while this one is written.
    const buffers = [alignedBuffer(CHUNK), alignedBuffer(CHUNK)];
    for (let position = 0, turn = 0; position < size; turn++) {
      const buffer = buffers[turn % 2]!;
      const { bytesRead } = await input.read(buffer, 0, Math.min(CHUNK, size - position), position);
      if (bytesRead === 0) throw new HeimdallError(ErrorCodes.IO_ERROR, `${source} shrank from ${size} to ${position} bytes while it was copied`);
      await writing;
      // The last block is written whole (zero-padded), then the file cut back to the source's size.
      const length = Math.ceil(bytesRead / BLOCK) * BLOCK;
      buffer.fill(0, bytesRead, length);
      writing = writeAll(output, buffer.subarray(0, length), position);
      // Awaited once the next chunk is read: a write that fails meanwhile (ENOSPC, EFBIG) must not
      // be an unhandled rejection, which ends the process and leaves the partial copy.
      writing.catch(() => undefined);
      // While the write runs on libuv's pool: the chunk's bytes, not its padding.
      hash?.update(buffer.subarray(0, bytesRead));
      position += bytesRead;
    }
    await writing;
    await output.truncate(size);
    return true;
  } catch (error) {
    failed = true;
    // No write still going to the file that is removed.
    await writing.catch(() => undefined);
    if (output) await rm(target, { force: true });
    // A write refused for its alignment: copied the plain way instead.
    refused(error as NodeJS.ErrnoException);
    return false;
  } finally {
    // A read-only handle: its close has nothing to lose. The copy's may (a write reported late, NFS):
    // then no copy is left, and, unless the copy had failed already (whose error says why), it fails.
    await input.close().catch(() => undefined);
    await output?.close().catch(async (error: unknown) => {
      await rm(target, { force: true });
      if (!failed) throw error;
    });
  }
}

async function writeAll(handle: FileHandle, bytes: Uint8Array, position: number): Promise<void> {
  for (let done = 0; done < bytes.byteLength; ) {
    const { bytesWritten } = await handle.write(bytes, done, bytes.byteLength - done, position + done);
    done += bytesWritten;
  }
}

/** EINVAL: this filesystem does not do O_DIRECT (or not with these alignments); anything else is a real failure. */
function refused(error: NodeJS.ErrnoException): undefined {
  if (error.code === 'EINVAL') return undefined;
  throw error;
}
