import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, open, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { tempDir } from '../../test/support/temp.ts';
import { coldCopy, coldCopyHashed } from './cold-copy.ts';

/** Hooks into the copy's file handles: after each read of `source`, and on `target`'s writes and close. */
const hooks = vi.hoisted(() => ({
  source: undefined as string | undefined,
  afterRead: undefined as ((reads: number) => Promise<void>) | undefined,
  target: undefined as string | undefined,
  writeError: undefined as ((writes: number) => Error | undefined) | undefined,
  closeError: undefined as Error | undefined,
}));
const unhooked = { ...hooks };
vi.mock('node:fs/promises', async (importOriginal) => {
  const actual = await importOriginal<typeof import('node:fs/promises')>();
  const open: typeof actual.open = async (...args) => {
    const handle = await actual.open(...args);
    if (args[0] === hooks.source && hooks.afterRead) {
      const [read, after] = [handle.read.bind(handle) as (...a: unknown[]) => Promise<unknown>, hooks.afterRead];
      let reads = 0;
      Object.assign(handle, { read: async (...a: unknown[]) => { const result = await read(...a); await after(++reads); return result; } });
    }
    if (args[0] === hooks.target) {
      const [write, close, { writeError, closeError }] = [handle.write.bind(handle) as (...a: unknown[]) => Promise<unknown>, handle.close.bind(handle), hooks];
      let writes = 0;
      Object.assign(handle, {
        write: async (...a: unknown[]) => {
          const error = writeError?.(++writes);
          if (error) throw error;
          return write(...a);
        },
        close: async () => {
          await close();
          if (closeError) throw closeError;
        },
      });
    }
    return handle;
  };
  return { ...actual, open };
});

/** Runs `work` with the hooks set, and clears them after. */
async function hooked<T>(set: Partial<typeof hooks>, work: () => Promise<T>): Promise<T> {
  Object.assign(hooks, set);
  try {
    return await work();
  } finally {
    Object.assign(hooks, unhooked);
  }
}

const errno = (code: string) => Object.assign(new Error(code), { code });
const sha256 = (bytes: Uint8Array | string) => createHash('sha256').update(bytes).digest('hex');

let dir: string;
let shm: string;
beforeAll(async () => {
  dir = await tempDir('heimdall-cold-copy-');
  shm = await mkdtemp('/dev/shm/heimdall-cold-copy-');
});
afterAll(() => rm(shm, { recursive: true, force: true }));

describe('coldCopy', () => {
  // Over the size copied past the page cache, not a whole number of blocks or chunks: the last block is padded, then cut.
  const large = randomBytes(64 * 1024 * 1024 + 12_345);

  it('copies a large file byte for byte, past the page cache', async () => {
    await writeFile(join(dir, 'large.bin'), large);
    await coldCopy(join(dir, 'large.bin'), join(dir, 'large.copy'));
    expect((await readFile(join(dir, 'large.copy'))).equals(large)).toBe(true);
  });

  it('copies a small file, and one on a filesystem without O_DIRECT (tmpfs), the plain way', async () => {
    await writeFile(join(dir, 'small.bin'), 'small');
    await coldCopy(join(dir, 'small.bin'), join(dir, 'small.copy'));
    expect(await readFile(join(dir, 'small.copy'), 'utf8')).toBe('small');
    await writeFile(join(shm, 'large.bin'), large);
    await coldCopy(join(shm, 'large.bin'), join(shm, 'large.copy'));
    expect((await readFile(join(shm, 'large.copy'))).equals(large)).toBe(true);
  });

  it('hashes what it copied, on every way it copies (coldCopyHashed)', async () => {
    await writeFile(join(dir, 'hashed.bin'), large);
    expect(await coldCopyHashed(join(dir, 'hashed.bin'), join(dir, 'hashed.copy'))).toBe(sha256(large));
    expect(await coldCopyHashed(join(dir, 'small.bin'), join(dir, 'small.hashed'))).toBe(sha256('small'));
    expect(await coldCopyHashed(join(shm, 'large.bin'), join(shm, 'large.hashed'))).toBe(sha256(large));
  });

  it('hashes the bytes it wrote, not the source as it is after (written to during the copy, behind and ahead of it)', async () => {
    const [path, copy] = [join(dir, 'written-during.bin'), join(dir, 'written-during.copy')];
    await writeFile(path, large);
    const ahead = 40 * 1024 * 1024;
    const digest = await hooked({ source: path, afterRead: async (reads) => {
      if (reads !== 2) return;
      // The first chunk is copied already, the one at 40 MiB not yet.
      const handle = await open(path, 'r+');
      await handle.write('XXXX', 10);
      await handle.write('YYYY', ahead);
      await handle.close();
    } }, () => coldCopyHashed(path, copy));
    const copied = await readFile(copy);
    expect(digest).toBe(sha256(copied));
    expect(digest).not.toBe(sha256(await readFile(path)));
    expect({ behind: copied.subarray(10, 14).equals(large.subarray(10, 14)), ahead: copied.subarray(ahead, ahead + 4).toString() }).toEqual({ behind: true, ahead: 'YYYY' });
  });

  it('refuses a file that shrinks while it is copied (IO_ERROR), and leaves no copy', async () => {
    const path = join(dir, 'shrinking.bin');
    await writeFile(path, large);
    // Cut short once the first chunk is read.
    const copying = hooked({ source: path, afterRead: async (reads) => void (reads === 1 && (await truncate(path, 1000))) }, () => coldCopyHashed(path, join(dir, 'shrinking.copy')));
    await expect(copying).rejects.toMatchObject({ code: 'IO_ERROR', message: expect.stringContaining('shrank from 67121209 to 8388608 bytes') });
    expect(existsSync(join(dir, 'shrinking.copy'))).toBe(false);
  });

  it('fails, and leaves no copy, when closing the copy fails (a write reported late); a failed write stays the error', async () => {
    const [path, copy] = [join(dir, 'late.bin'), join(dir, 'late.copy')];
    await writeFile(path, large);
    await expect(hooked({ target: copy, closeError: errno('EIO') }, () => coldCopyHashed(path, copy))).rejects.toMatchObject({ code: 'EIO' });
    expect(existsSync(copy)).toBe(false);
    await expect(hooked({ target: copy, writeError: (writes) => (writes === 2 ? errno('ENOSPC') : undefined), closeError: errno('EIO') }, () => coldCopyHashed(path, copy))).rejects.toMatchObject({ code: 'ENOSPC' });
    expect(existsSync(copy)).toBe(false);
  });

  it('never replaces a file that is there', async () => {
    await writeFile(join(dir, 'taken'), 'mine');
    await expect(coldCopy(join(dir, 'large.bin'), join(dir, 'taken'))).rejects.toMatchObject({ code: 'EEXIST' });
    await expect(coldCopy(join(dir, 'small.bin'), join(dir, 'taken'))).rejects.toMatchObject({ code: 'EEXIST' });
    expect(await readFile(join(dir, 'taken'), 'utf8')).toBe('mine');
  });

  it('rejects, and leaves no partial copy, when a write fails on the way (here past the file size limit: EFBIG)', async () => {
    await writeFile(join(dir, 'limited.bin'), large);
    // A process of its own under `ulimit -f` (32 MiB): the copy's writes past it fail with EFBIG.
    const script = [
      `const { coldCopy } = await import(${JSON.stringify(join(import.meta.dirname, 'cold-copy.ts'))});`,
      `const { existsSync } = await import('node:fs');`,
      `const target = ${JSON.stringify(join(dir, 'limited.copy'))};`,
      `try { await coldCopy(${JSON.stringify(join(dir, 'limited.bin'))}, target); console.log('copied'); }`,
      `catch (error) { console.log(error.code, existsSync(target) ? 'left behind' : 'none left'); }`,
    ].join('\n');
    const child = spawnSync('bash', ['-c', 'ulimit -f 32768 && exec "$0" "$@"', process.execPath, '--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8' });
    // Exit 0: no unhandled rejection ended it.
    expect({ status: child.status, stdout: child.stdout.trim() }).toEqual({ status: 0, stdout: 'EFBIG none left' });
  });
});
