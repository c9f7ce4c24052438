import { readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/support/temp.ts';
import { HeimdallError, isRetriable } from '../errors/index.ts';
import { openCheckpoint } from './index.ts';
import { pyOrderedDict, tensor } from './pickle-writer.ts';
import { RandomAccessFile } from './random-access-file.ts';
import { crc32ZeroExtend, writeSparseZip } from './sparse-checkpoint.test-helper.ts';
import { writeTorchCheckpoint } from './torch-writer.ts';
import { MAX_CENTRAL_DIRECTORY_BYTES, ZipReader } from './zip-reader.ts';
import { CENTRAL_HEADER_SIZE, CENTRAL_SIGNATURE, EOCD_SIZE, ZIP64_LOCATOR_SIZE } from './zip-format.ts';

let dir: string;
/** A small torch checkpoint, plain and with every ZIP64 field. */
let plain: Buffer;
let zip64: Buffer;

const weights = () =>
  pyOrderedDict([
    ['a.weight', tensor('float32', [4, 3], Float32Array.from({ length: 12 }, (_, i) => i / 7))],
    ['a.bias', tensor('float32', [4], new Float32Array([1, 2, 3, 4]))],
    ['b.weight', tensor('float16', [2, 2], new Uint16Array([0x3c00, 0x4000, 0xc000, 0]))],
    ['n', tensor('int64', [], new BigInt64Array([7n]))],
  ]);

beforeAll(async () => {
  dir = await tempDir();
  await writeTorchCheckpoint(join(dir, 'plain.pt'), weights());
  await writeTorchCheckpoint(join(dir, 'zip64.pt'), weights(), { zip: { zip64SizeThreshold: 1, zip64OffsetThreshold: 1, zip64CountThreshold: 1 } });
  plain = await readFile(join(dir, 'plain.pt'));
  zip64 = await readFile(join(dir, 'zip64.pt'));
});

let serial = 0;
/** Opens `bytes` as a checkpoint and reads every tensor; the error, if any. */
async function attempt(bytes: Uint8Array): Promise<unknown> {
  const path = join(dir, `case-${serial++}.pt`);
  await writeFile(path, bytes);
  try {
    const checkpoint = await openCheckpoint(path);
    try {
      for (const t of checkpoint.tensors.values()) await t.readFloat32();
    } finally {
      await checkpoint.close();
    }
    return undefined;
  } catch (error) {
    return error;
  }
}

const expectCorrupt = async (bytes: Uint8Array, message: RegExp) =>
  expect(await attempt(bytes)).toMatchObject({ code: 'CHECKPOINT_CORRUPT', message: expect.stringMatching(message) });

/** Offsets of the end records and of each central header, read from the bytes (no comment, as torch writes). */
function layout(bytes: Buffer) {
  const eocd = bytes.byteLength - EOCD_SIZE;
  const locator = eocd - ZIP64_LOCATOR_SIZE;
  const hasZip64 = bytes.readUInt32LE(locator) === 0x07064b50;
  const zip64End = hasZip64 ? Number(bytes.readBigUInt64LE(locator + 8)) : -1;
  const directoryOffset = hasZip64 ? Number(bytes.readBigUInt64LE(zip64End + 48)) : bytes.readUInt32LE(eocd + 16);
  const central: Array<{ at: number; name: string; extraAt: number; extraLength: number }> = [];
  for (let at = directoryOffset; bytes.readUInt32LE(at) === CENTRAL_SIGNATURE; ) {
    const nameLength = bytes.readUInt16LE(at + 28);
    const extraLength = bytes.readUInt16LE(at + 30);
    const name = bytes.toString('utf8', at + CENTRAL_HEADER_SIZE, at + CENTRAL_HEADER_SIZE + nameLength);
    central.push({ at, name, extraAt: at + CENTRAL_HEADER_SIZE + nameLength, extraLength });
    at += CENTRAL_HEADER_SIZE + nameLength + extraLength + bytes.readUInt16LE(at + 32);
  }
  return { eocd, locator, zip64End, directoryOffset, central };
}

const patched = (bytes: Buffer, patch: (b: Buffer) => void) => {
  const copy = Buffer.from(bytes);
  patch(copy);
  return copy;
};

describe('ZipReader bounds: every field is checked against its structure and the file', () => {
  it('reads both archives (the baseline the damaged copies start from)', async () => {
    expect(await attempt(plain)).toBeUndefined();
    expect(await attempt(zip64)).toBeUndefined();
  });

  it('refuses a ZIP64 extra block longer than its extra field (was a RangeError, retried as IO_ERROR)', async () => {
    const { central } = layout(zip64);
    const first = central[0]!;
    expect(zip64.readUInt16LE(first.extraAt)).toBe(0x0001);
    await expectCorrupt(
      patched(zip64, (b) => b.writeUInt16LE(400, first.extraAt + 2)),
      /extra block 0x1 of .* \(400 bytes\) runs past its \d+-byte extra field/,
    );
  });

  it('refuses a ZIP64 block too short for the fields its header saturates', async () => {
    // A sparse archive whose ZIP64 block carries size, compressed size and offset: claim only 8 bytes of it.
    const path = join(dir, 'z64-short.zip');
    await writeSparseZip(path, [{ name: 'archive/data.pkl', size: 3, chunks: [{ at: 0, bytes: Uint8Array.from([0x80, 2, 0x2e]) }] }], { zip64: true });
    const bytes = await readFile(path);
    const { central } = layout(bytes);
    await expectCorrupt(patched(bytes, (b) => b.writeUInt16LE(8, central[0]!.extraAt + 2)), /too short for its compressed size/);
  });

  it('refuses end records whose offsets point outside the file', async () => {
    const p = layout(plain);
    await expectCorrupt(patched(plain, (b) => b.writeUInt32LE(plain.byteLength + 100, p.eocd + 16)), /central directory .* runs past the end records/);
    const z = layout(zip64);
    await expectCorrupt(patched(zip64, (b) => b.writeBigUInt64LE(1n << 40n, z.locator + 8)), /ZIP64 end record offset \d+ does not lie before its locator/);
    await expectCorrupt(patched(zip64, (b) => b.writeBigUInt64LE((1n << 64n) - 1n, z.locator + 8)), /beyond any file size/);
    await expectCorrupt(patched(zip64, (b) => b.writeBigUInt64LE(1n << 62n, z.zip64End + 48)), /beyond any file size|runs past/);
    await expectCorrupt(patched(zip64, (b) => b.writeBigUInt64LE(BigInt(zip64.byteLength), z.zip64End + 48)), /runs past the end records/);
  });

  it('refuses counts that exceed what the directory can hold, and counts that disagree with its size', async () => {
    const p = layout(plain);
    await expectCorrupt(
      patched(plain, (b) => {
        b.writeUInt16LE(60_000, p.eocd + 8);
        b.writeUInt16LE(60_000, p.eocd + 10);
      }),
      /claims 60000 entries, more than a \d+-byte central directory can hold/,
    );
    const z = layout(zip64);
    await expectCorrupt(
      patched(zip64, (b) => {
        b.writeBigUInt64LE(1n << 50n, z.zip64End + 24);
        b.writeBigUInt64LE(1n << 50n, z.zip64End + 32);
      }),
      /more than a \d+-byte central directory can hold/,
    );
    const count = p.central.length;
    await expectCorrupt(
      patched(plain, (b) => {
        b.writeUInt16LE(count - 1, p.eocd + 8);
        b.writeUInt16LE(count - 1, p.eocd + 10);
      }),
      /the end record's count or size is wrong/,
    );
  });

  it('refuses a central directory over its cap before reading it', async () => {
    // 17 MiB of hole, then an end record claiming it all as the directory.
    const path = join(dir, 'huge-directory.zip');
    const size = MAX_CENTRAL_DIRECTORY_BYTES + (1 << 20);
    const eocd = Buffer.alloc(EOCD_SIZE);
    eocd.writeUInt32LE(0x06054b50, 0);
    eocd.writeUInt16LE(1000, 8);
    eocd.writeUInt16LE(1000, 10);
    eocd.writeUInt32LE(size, 12);
    eocd.writeUInt32LE(0, 16);
    await writeFile(path, Buffer.from([0x50, 0x4b, 0x03, 0x04]));
    await truncate(path, size);
    await writeFile(path, eocd, { flag: 'a' });
    const error = await openCheckpoint(path).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'CHECKPOINT_CORRUPT', message: expect.stringMatching(/exceeds the 16777216-byte limit/) });
  });

  it('refuses names that are not UTF-8, and two entries of one name', async () => {
    const p = layout(plain);
    await expectCorrupt(patched(plain, (b) => (b[p.central[1]!.at + CENTRAL_HEADER_SIZE] = 0xff)), /name that is not valid UTF-8/);
    const path = join(dir, 'twice.zip');
    await writeSparseZip(path, [
      { name: 'archive/data.pkl', size: 3, chunks: [{ at: 0, bytes: Uint8Array.from([0x80, 2, 0x2e]) }] },
      { name: 'archive/data.pkl', size: 3, chunks: [{ at: 0, bytes: Uint8Array.from([0x80, 2, 0x2e]) }] },
    ]);
    await expectCorrupt(await readFile(path), /two entries named archive\/data\.pkl/);
  });

  it('refuses local headers outside the data, naming another entry, or records sharing bytes', async () => {
    const p = layout(plain);
    const second = p.central[1]!;
    await expectCorrupt(patched(plain, (b) => b.writeUInt32LE(p.directoryOffset + 10, second.at + 42)), /local header of .* lies outside the archive's data/);
    await expectCorrupt(patched(plain, (b) => b.writeUInt32LE(b.readUInt32LE(p.central[2]!.at + 42), second.at + 42)), /names a different entry/);
    // data.pkl's record grown over the next record: a few stored bytes claimed twice.
    await expectCorrupt(
      patched(plain, (b) => {
        const size = b.readUInt32LE(p.central[0]!.at + 24) + 200;
        b.writeUInt32LE(size, p.central[0]!.at + 20);
        b.writeUInt32LE(size, p.central[0]!.at + 24);
      }),
      /overlap in the file/,
    );
  });

  it('fails every truncation of the archive with a non-retriable code', async () => {
    const cuts = [...new Set([0, 1, 3, 4, 21, 22, 100, plain.byteLength >> 1, ...Array.from({ length: 400 }, (_, i) => plain.byteLength - 1 - i)])];
    for (const cut of cuts) {
      const error = await attempt(plain.subarray(0, cut));
      expect(error, `cut at ${cut}`).toBeInstanceOf(HeimdallError);
      expect(isRetriable((error as HeimdallError).code), `cut at ${cut}: ${(error as HeimdallError).code}`).toBe(false);
    }
  });

  it('fails random damage to the zip structures with HeimdallErrors of non-retriable codes only', async () => {
    // xorshift32: the same damage on every run.
    let seed = 0x9e3779b9;
    const random = () => {
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      return (seed >>> 0) / 2 ** 32;
    };
    const codes = new Map<string, number>();
    for (const base of [plain, zip64]) {
      const { directoryOffset } = layout(base);
      const file = await RandomAccessFile.open(join(dir, base === plain ? 'plain.pt' : 'zip64.pt'));
      const zip = await ZipReader.open(file);
      await file.close();
      // Structure only (local headers, central directory, end records), not the pickle or the tensor bytes.
      const regions = [...[...zip.entries.values()].map((e) => [e.headerOffset, e.dataOffset] as const), [directoryOffset, base.byteLength] as const];
      for (let n = 0; n < 600; n++) {
        const damaged = Buffer.from(base);
        for (let k = 1 + Math.floor(random() * 3); k > 0; k--) {
          const [start, end] = regions[Math.floor(random() * regions.length)]!;
          const at = start + Math.floor(random() * (end - start));
          damaged[at] = random() < 0.5 ? Math.floor(random() * 256) : damaged[at]! ^ (1 << Math.floor(random() * 8));
        }
        const error = await attempt(damaged);
        if (error === undefined) continue;
        expect(error, String(error)).toBeInstanceOf(HeimdallError);
        const { code } = error as HeimdallError;
        expect(isRetriable(code), `${code}: ${(error as Error).message}`).toBe(false);
        codes.set(code, (codes.get(code) ?? 0) + 1);
      }
    }
    expect(codes.get('CHECKPOINT_CORRUPT')).toBeGreaterThan(100);
  });
});

describe('ranged reads and CRC-32', () => {
  it('extends a CRC-32 over zeros it never sees (what sparse test records rely on)', () => {
    const data = Buffer.from('heimdall');
    for (const zeros of [0, 1, 7, 64, 1000, 65_537]) {
      expect(crc32ZeroExtend(crc32(data), zeros)).toBe(crc32(Buffer.concat([data, Buffer.alloc(zeros)])));
    }
  });

  it('reads part of a record, checking the whole record once, and fails every read of a damaged one', async () => {
    const path = join(dir, 'ranges.zip');
    const values = Buffer.from(Array.from({ length: 10_000 }, (_, i) => i % 251));
    const [entry] = await writeSparseZip(path, [{ name: 'r', size: 9 * 1024 * 1024, chunks: [{ at: 5 * 1024 * 1024, bytes: values }] }]);
    const file = await RandomAccessFile.open(path);
    const zip = await ZipReader.open(file);
    expect(Array.from(await zip.readRange('r', 5 * 1024 * 1024 + 10, 5))).toEqual([10, 11, 12, 13, 14]);
    expect(Array.from(await zip.readRange('r', 5 * 1024 * 1024 + 250, 3))).toEqual([250, 0, 1]);
    await expect(zip.readRange('r', 9 * 1024 * 1024 - 2, 3)).rejects.toMatchObject({ code: 'TENSOR_OUT_OF_BOUNDS' });
    await file.close();

    const bytes = await readFile(path);
    bytes[entry!.dataOffset + 5 * 1024 * 1024 + 9_000]! ^= 1;
    await writeFile(path, bytes);
    const damaged = await RandomAccessFile.open(path);
    const reader = await ZipReader.open(damaged);
    // The range read is intact; the record it lies in is not.
    await expect(reader.readRange('r', 5 * 1024 * 1024, 4)).rejects.toMatchObject({ code: 'CHECKPOINT_CORRUPT', message: expect.stringMatching(/CRC mismatch in r/) });
    await expect(reader.readRange('r', 0, 4)).rejects.toMatchObject({ code: 'CHECKPOINT_CORRUPT' });
    await damaged.close();
  });
});
