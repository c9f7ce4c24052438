import { execFileSync } from 'node:child_process';
import { closeSync, constants, openSync } from 'node:fs';
import { mkdir, symlink } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/support/temp.ts';
import { SMALL_SPEC } from '../../test/support/small-model.ts';
import { exportCheckpoint } from '../models/localization-net/export.ts';
import { writeSampleCheckpoint } from '../models/localization-net/sample-weights.ts';
import { scanFile, sha256File } from '../runtime/sha256.ts';
import { openCheckpoint } from './index.ts';

let dir: string;
let fifo: string;
let socket: string;
let server: Server;
let checkpoint: string;

beforeAll(async () => {
  dir = await tempDir();
  fifo = join(dir, 'checkpoint.pt');
  execFileSync('mkfifo', [fifo]);
  await mkdir(join(dir, 'folder.pt'));
  socket = join(dir, 'socket.pt');
  server = createServer();
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  checkpoint = join(dir, 'small.pth');
  await writeSampleCheckpoint(checkpoint, { variant: 'custom', spec: SMALL_SPEC, seed: 2, layout: 'bare' });
});

afterAll(async () => {
  // Should a regression leave a reader blocked in open() on the FIFO, a writer end releases it.
  try {
    closeSync(openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK));
  } catch {
    // No reader waiting: ENXIO, as it should be.
  }
  await new Promise((resolve) => server.close(resolve));
});

/** `work` settled within `ms` (a reader blocked on a FIFO never settles). */
async function within<T>(ms: number, work: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`still running after ${ms} ms`)), ms)));
  try {
    return await Promise.race([work, hung]);
  } finally {
    clearTimeout(timer);
  }
}

const specials = () => [
  ['a FIFO', fifo],
  ['a directory', join(dir, 'folder.pt')],
  ['a socket', socket],
  ['a character device', '/dev/zero'],
  ['a character device', '/dev/null'],
] as const;

describe('only regular files are read', () => {
  it('refuses a FIFO, a directory, a socket and devices at once with NOT_A_FILE (openCheckpoint)', async () => {
    for (const [kind, path] of specials()) {
      await expect(within(2000, openCheckpoint(path)), path).rejects.toMatchObject({ code: 'NOT_A_FILE', message: expect.stringContaining(`is ${kind}`) });
    }
  });

  it('refuses them in export, which hashes the checkpoint too, without hanging', async () => {
    for (const [, path] of specials()) {
      await expect(within(2000, exportCheckpoint(path, join(dir, 'out.onnx'))), path).rejects.toMatchObject({ code: 'NOT_A_FILE' });
    }
  });

  it('refuses them in sha256File and scanFile (the hashing worker never opens them)', async () => {
    for (const [, path] of specials()) {
      await expect(within(2000, sha256File(path)), path).rejects.toMatchObject({ code: 'NOT_A_FILE' });
      await expect(within(2000, scanFile({ path, crc32Ranges: [{ offset: 0, length: 10 }] })), path).rejects.toMatchObject({ code: 'NOT_A_FILE' });
    }
  });

  it('follows a symlink to a regular file, and refuses one to a FIFO', async () => {
    const link = join(dir, 'link.pth');
    await symlink(checkpoint, link);
    const opened = await openCheckpoint(link);
    expect(opened.tensors.size).toBeGreaterThan(0);
    await opened.close();
    expect(await sha256File(link)).toBe(await sha256File(checkpoint));
    const toFifo = join(dir, 'fifo-link.pt');
    await symlink(fifo, toFifo);
    await expect(within(2000, openCheckpoint(toFifo))).rejects.toMatchObject({ code: 'NOT_A_FILE', message: expect.stringContaining('is a FIFO') });
  });

  it('reports a missing file as CHECKPOINT_NOT_FOUND, also through a dangling symlink', async () => {
    await expect(openCheckpoint(join(dir, 'nope.pt'))).rejects.toMatchObject({ code: 'CHECKPOINT_NOT_FOUND' });
    const dangling = join(dir, 'dangling.pt');
    await symlink(join(dir, 'gone.pt'), dangling);
    await expect(openCheckpoint(dangling)).rejects.toMatchObject({ code: 'CHECKPOINT_NOT_FOUND' });
    await expect(sha256File(dangling)).rejects.toMatchObject({ code: 'CHECKPOINT_NOT_FOUND' });
  });
});
