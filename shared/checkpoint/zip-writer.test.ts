import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { crc32 } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ZipWriter } from './zip-writer.ts';

const run = promisify(execFile);
const PYTHON = process.env.HEIMDALL_TEST_PYTHON ?? 'python3';

/** Python's zipfile: CRC-checks every entry and lists (name, size, header offset, CRC). */
async function pythonZipInfo(path: string): Promise<Array<[string, number, number, number]>> {
  const code = [
    'import json, sys, zipfile',
    'with zipfile.ZipFile(sys.argv[1]) as z:',
    '    bad = z.testzip()',
    '    assert bad is None, "bad CRC in " + str(bad)',
    '    print(json.dumps([[i.filename, i.file_size, i.header_offset, i.CRC] for i in z.infolist()]))',
  ].join('\n');
  const { stdout } = await run(PYTHON, ['-c', code, path], { maxBuffer: 16 << 20 });
  return JSON.parse(stdout) as Array<[string, number, number, number]>;
}

// ---- A small ZIP reader written from APPNOTE.TXT, independent of the writer and of zip-reader.ts ----

interface Extra {
  id: number;
  data: Buffer;
}
interface ParsedEntry {
  name: string;
  crc: number;
  size: number;
  headerOffset: number;
  dataOffset: number;
  flags: number;
  localExtras: Extra[];
  centralExtras: Extra[];
  localSizeFields: [number, number];
  localCrc: number;
}
interface ParsedZip {
  entries: ParsedEntry[];
  zip64End: boolean;
  eocd: { count: number; directorySize: number; directoryOffset: number };
}

function parseExtras(buf: Buffer): Extra[] {
  const out: Extra[] = [];
  let at = 0;
  while (at < buf.length) {
    expect(at + 4).toBeLessThanOrEqual(buf.length);
    const id = buf.readUInt16LE(at);
    const len = buf.readUInt16LE(at + 2);
    expect(at + 4 + len).toBeLessThanOrEqual(buf.length);
    out.push({ id, data: buf.subarray(at + 4, at + 4 + len) });
    at += 4 + len;
  }
  return out;
}

function parseZip(file: Buffer): ParsedZip {
  let eocdAt = -1;
  for (let i = file.length - 22; i >= Math.max(0, file.length - 22 - 0xffff); i--) {
    if (file.readUInt32LE(i) === 0x06054b50) {
      eocdAt = i;
      break;
    }
  }
  expect(eocdAt).toBeGreaterThanOrEqual(0);
  expect(eocdAt + 22 + file.readUInt16LE(eocdAt + 20)).toBe(file.length);
  const eocd = {
    count: file.readUInt16LE(eocdAt + 10),
    directorySize: file.readUInt32LE(eocdAt + 12),
    directoryOffset: file.readUInt32LE(eocdAt + 16),
  };
  let count = eocd.count;
  let directorySize = eocd.directorySize;
  let directoryOffset = eocd.directoryOffset;
  const zip64End = eocdAt >= 20 && file.readUInt32LE(eocdAt - 20) === 0x07064b50;
  if (zip64End) {
    const locator = eocdAt - 20;
    expect(file.readUInt32LE(locator + 4)).toBe(0);
    expect(file.readUInt32LE(locator + 16)).toBe(1);
    const recordAt = Number(file.readBigUInt64LE(locator + 8));
    expect(file.readUInt32LE(recordAt)).toBe(0x06064b50);
    expect(Number(file.readBigUInt64LE(recordAt + 4))).toBe(44); // size of the remaining record
    expect(recordAt + 56).toBe(locator);
    count = Number(file.readBigUInt64LE(recordAt + 32));
    expect(Number(file.readBigUInt64LE(recordAt + 24))).toBe(count);
    directorySize = Number(file.readBigUInt64LE(recordAt + 40));
    directoryOffset = Number(file.readBigUInt64LE(recordAt + 48));
    expect(directoryOffset + directorySize).toBe(recordAt);
  } else {
    expect(directoryOffset + directorySize).toBe(eocdAt);
  }
  const entries: ParsedEntry[] = [];
  let at = directoryOffset;
  for (let i = 0; i < count; i++) {
    expect(file.readUInt32LE(at)).toBe(0x02014b50);
    const flags = file.readUInt16LE(at + 8);
    expect(file.readUInt16LE(at + 10)).toBe(0); // stored
    const crc = file.readUInt32LE(at + 16);
    let compressed = file.readUInt32LE(at + 20);
    let size = file.readUInt32LE(at + 24);
    const nameLength = file.readUInt16LE(at + 28);
    const extraLength = file.readUInt16LE(at + 30);
    const commentLength = file.readUInt16LE(at + 32);
    let headerOffset = file.readUInt32LE(at + 42);
    const name = file.subarray(at + 46, at + 46 + nameLength).toString('utf8');
    const centralExtras = parseExtras(file.subarray(at + 46 + nameLength, at + 46 + nameLength + extraLength));
    const z64 = centralExtras.find((e) => e.id === 0x0001);
    if (z64) {
      let z = 0;
      const next = () => {
        const v = Number(z64.data.readBigUInt64LE(z));
        z += 8;
        return v;
      };
      if (size === 0xffffffff) size = next();
      if (compressed === 0xffffffff) compressed = next();
      if (headerOffset === 0xffffffff) headerOffset = next();
      expect(z).toBe(z64.data.length); // no stray fields
    }
    expect(compressed).toBe(size);
    // Local header.
    expect(file.readUInt32LE(headerOffset)).toBe(0x04034b50);
    const localNameLength = file.readUInt16LE(headerOffset + 26);
    const localExtraLength = file.readUInt16LE(headerOffset + 28);
    expect(file.subarray(headerOffset + 30, headerOffset + 30 + localNameLength).toString('utf8')).toBe(name);
    const localExtras = parseExtras(
      file.subarray(headerOffset + 30 + localNameLength, headerOffset + 30 + localNameLength + localExtraLength),
    );
    entries.push({
      name,
      crc,
      size,
      headerOffset,
      dataOffset: headerOffset + 30 + localNameLength + localExtraLength,
      flags,
      localExtras,
      centralExtras,
      localSizeFields: [file.readUInt32LE(headerOffset + 18), file.readUInt32LE(headerOffset + 22)],
      localCrc: file.readUInt32LE(headerOffset + 14),
    });
    at += 46 + nameLength + extraLength + commentLength;
  }
  expect(at).toBe(directoryOffset + directorySize);
  return { entries, zip64End, eocd };
}

function pattern(size: number, seed: number): Buffer {
  const out = Buffer.alloc(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'zip-writer-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('ZipWriter', () => {
  it('writes stored entries with 64-byte aligned data, FB padding and correct CRCs', async () => {
    const path = join(dir, 'plain.zip');
    const contents: Array<[string, Buffer]> = [
      ['archive/data.pkl', pattern(1000, 1)],
      ['archive/empty', Buffer.alloc(0)],
      ['archive/one', pattern(1, 2)],
      ['archive/data/0', pattern(63, 3)],
      ['archive/data/1', pattern(64, 4)],
      ['archive/data/12', pattern(4099, 5)],
      ['archive/ünïcødé/名前', pattern(77, 6)],
    ];
    const writer = await ZipWriter.create(path);
    for (const [name, data] of contents) {
      // Mix the two input forms: one buffer, and the same bytes in uneven chunks.
      const info = name.endsWith('12')
        ? await writer.addEntry(name, [data.subarray(0, 5), data.subarray(5, 4000), data.subarray(4000)])
        : await writer.addEntry(name, data);
      expect(info.dataOffset % 64).toBe(0);
      expect(info.crc32).toBe(crc32(data) >>> 0);
    }
    const total = await writer.finish();
    expect((await stat(path)).size).toBe(total);

    const file = await readFile(path);
    const zip = parseZip(file);
    expect(zip.zip64End).toBe(false);
    expect(zip.eocd.count).toBe(contents.length);
    expect(zip.entries.map((e) => e.name)).toEqual(contents.map(([name]) => name));
    zip.entries.forEach((entry, i) => {
      const data = contents[i]![1];
      expect(entry.size).toBe(data.length);
      expect(entry.dataOffset % 64).toBe(0);
      expect(file.subarray(entry.dataOffset, entry.dataOffset + entry.size).equals(data)).toBe(true);
      expect(entry.crc).toBe(crc32(data) >>> 0);
      expect(entry.localCrc).toBe(entry.crc);
      expect(entry.localSizeFields).toEqual([data.length, data.length]);
      // Exactly one extra field in the local header: torch's 'FB' padding, filled with 'Z'.
      expect(entry.localExtras.map((e) => e.id)).toEqual([0x4246]);
      expect([...entry.localExtras[0]!.data].every((b) => b === 0x5a)).toBe(true);
      expect(entry.localExtras[0]!.data.length).toBeLessThan(64);
      expect(entry.centralExtras).toEqual([]);
      // Non-ASCII names carry the UTF-8 flag (bit 11).
      expect(entry.flags).toBe(/^[\x20-\x7e]*$/.test(entry.name) ? 0 : 0x800);
    });

    const python = await pythonZipInfo(path);
    expect(python).toEqual(zip.entries.map((e) => [e.name, e.size, e.headerOffset, e.crc]));
  });

  it('uses ZIP64 extra fields and end records exactly where values reach the thresholds', async () => {
    const path = join(dir, 'zip64.zip');
    // Thresholds lowered so that a few hundred bytes exercise every ZIP64 path that a > 4 GiB
    // archive takes: big sizes (local + central extra), big offsets (central extra), many entries.
    const writer = await ZipWriter.create(path, { zip64SizeThreshold: 200, zip64OffsetThreshold: 200, zip64CountThreshold: 3 });
    const contents: Array<[string, Buffer]> = [
      ['a/small', pattern(10, 7)], // offset 0, small: no ZIP64
      ['a/big', pattern(300, 8)], // size >= 200: ZIP64 sizes, offset still small
      ['a/late', pattern(20, 9)], // offset >= 200: ZIP64 offset only
      ['a/late-big', pattern(250, 10)], // both
    ];
    for (const [name, data] of contents) await writer.addEntry(name, data);
    await writer.finish();

    const file = await readFile(path);
    const zip = parseZip(file);
    expect(zip.zip64End).toBe(true);
    // The 32-bit end record is saturated where the values do not fit.
    expect(zip.eocd.count).toBe(0xffff);
    expect(zip.entries.map((e) => e.name)).toEqual(contents.map(([n]) => n));
    const z64 = (extras: Extra[]) => extras.find((e) => e.id === 1)?.data.length ?? 0;
    const [small, big, late, lateBig] = zip.entries as [ParsedEntry, ParsedEntry, ParsedEntry, ParsedEntry];
    expect([z64(small.centralExtras), z64(small.localExtras)]).toEqual([0, 0]);
    expect([z64(big.centralExtras), z64(big.localExtras)]).toEqual([16, 16]);
    expect(big.localSizeFields).toEqual([0xffffffff, 0xffffffff]);
    expect([z64(late.centralExtras), z64(late.localExtras)]).toEqual([8, 0]);
    expect(late.localSizeFields).toEqual([20, 20]);
    expect([z64(lateBig.centralExtras), z64(lateBig.localExtras)]).toEqual([24, 16]);
    // The local ZIP64 block comes before the padding, and the data is still aligned.
    expect(big.localExtras.map((e) => e.id)).toEqual([0x0001, 0x4246]);
    expect(big.localExtras[0]!.data.readBigUInt64LE(0)).toBe(300n);
    expect(big.localExtras[0]!.data.readBigUInt64LE(8)).toBe(300n);
    zip.entries.forEach((entry, i) => {
      const data = contents[i]![1];
      expect(entry.dataOffset % 64).toBe(0);
      expect(entry.size).toBe(data.length);
      expect(file.subarray(entry.dataOffset, entry.dataOffset + entry.size).equals(data)).toBe(true);
    });

    expect(await pythonZipInfo(path)).toEqual(zip.entries.map((e) => [e.name, e.size, e.headerOffset, e.crc]));
  });

  it('streams an entry from a chunk source read twice, and refuses a source that changes', async () => {
    const path = join(dir, 'stream.zip');
    const data = pattern(100_000, 11);
    const writer = await ZipWriter.create(path);
    let passes = 0;
    const info = await writer.addStreamingEntry('s/streamed', async function* () {
      passes++;
      for (let at = 0; at < data.length; at += 7_000) yield data.subarray(at, at + 7_000);
    });
    expect(passes).toBe(2);
    expect(info).toMatchObject({ size: data.length, crc32: crc32(data) >>> 0 });
    let calls = 0;
    await expect(
      writer.addStreamingEntry('s/unstable', function* () {
        calls++;
        yield Buffer.from(calls === 1 ? 'first pass' : 'second!!!!');
      }),
    ).rejects.toThrow(/differs/);
    await writer.abort();
    // The good entry's bytes made it to the file where the writer said.
    const file = await readFile(path);
    expect(file.subarray(info.dataOffset, info.dataOffset + info.size).equals(data)).toBe(true);
  });

  it('refuses duplicate names, concurrent adds and use after finish', async () => {
    const writer = await ZipWriter.create(join(dir, 'misuse.zip'));
    await writer.addEntry('x/a', Buffer.from('a'));
    await expect(writer.addEntry('x/a', Buffer.from('b'))).rejects.toThrow(/twice/);
    const first = writer.addEntry('x/b', pattern(1 << 20, 12));
    await expect(writer.addEntry('x/c', Buffer.from('c'))).rejects.toThrow(/busy/);
    await first;
    await writer.finish();
    await expect(writer.addEntry('x/d', Buffer.from('d'))).rejects.toThrow(/finished/);
  });

  it('alignment 1 writes no padding field', async () => {
    const path = join(dir, 'unaligned.zip');
    const writer = await ZipWriter.create(path, { alignment: 1 });
    await writer.addEntry('u/a', Buffer.from('hello'));
    await writer.finish();
    const zip = parseZip(await readFile(path));
    expect(zip.entries[0]!.localExtras).toEqual([]);
    expect(zip.entries[0]!.dataOffset).toBe(30 + 3);
  });
});
