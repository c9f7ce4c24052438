import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, constants, openSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { crc32 } from 'node:zlib';
import { beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/support/temp.ts';
import { scanFile, sha256File } from './sha256.ts';

let path: string;
let bytes: Buffer;
beforeAll(async () => {
  // Past the worker's 4 MiB chunk, so ranges straddle chunk boundaries.
  bytes = randomBytes(9 * 1024 * 1024 + 123);
  path = join(await tempDir(), 'file.bin');
  await writeFile(path, bytes);
});

describe('scanFile', () => {
  it('gives the sha256 of the file and the CRC-32 of each range, in one pass', async () => {
    const ranges = [
      { offset: 0, length: 10 },
      { offset: 4 * 1024 * 1024 - 7, length: 5 * 1024 * 1024 },
      { offset: 100, length: 0 },
      { offset: bytes.byteLength - 1000, length: 1000 },
    ];
    const progress: number[] = [];
    const scan = await scanFile({ path, crc32Ranges: ranges }, (done, total) => {
      expect(total).toBe(bytes.byteLength);
      progress.push(done);
    });
    expect(scan.sha256).toBe(createHash('sha256').update(bytes).digest('hex'));
    expect(scan.crc32s).toEqual(ranges.map((r) => crc32(bytes.subarray(r.offset, r.offset + r.length))));
    expect(progress.at(-1)).toBe(bytes.byteLength);
    expect(await sha256File(path)).toBe(scan.sha256);
  });

  it('reads only the ranges, for their CRC-32, when the digest is not asked for', async () => {
    const ranges = [
      { offset: 4 * 1024 * 1024 - 7, length: 5 * 1024 * 1024 },
      { offset: 10, length: 20 },
    ];
    const progress: [number, number][] = [];
    const scan = await scanFile({ path, crc32Ranges: ranges, sha256: false }, (done, total) => progress.push([done, total]));
    expect(scan).toEqual({ crc32s: ranges.map((r) => crc32(bytes.subarray(r.offset, r.offset + r.length))) });
    expect(progress.at(-1)).toEqual([5 * 1024 * 1024 + 20, 5 * 1024 * 1024 + 20]);
  });

  it('rejects a missing file', async () => {
    await expect(scanFile({ path: `${path}.missing`, crc32Ranges: [] })).rejects.toMatchObject({ code: 'CHECKPOINT_NOT_FOUND' });
  });

  it('refuses a FIFO at once with NOT_A_FILE instead of waiting for a writer forever', async () => {
    const fifo = join(dirname(path), 'fifo');
    execFileSync('mkfifo', [fifo]);
    let timer: NodeJS.Timeout | undefined;
    const hung = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error('scanFile is still waiting on the FIFO')), 2000)));
    try {
      await expect(Promise.race([sha256File(fifo), hung])).rejects.toMatchObject({ code: 'NOT_A_FILE', message: expect.stringContaining('is a FIFO') });
      await expect(Promise.race([sha256File('/dev/zero'), hung])).rejects.toMatchObject({ code: 'NOT_A_FILE' });
    } finally {
      clearTimeout(timer);
      // A reader a regression left blocked in open() is released by a writer end.
      try {
        closeSync(openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK));
      } catch {
        // ENXIO: nobody is waiting.
      }
    }
  });
});
