import { crc32 } from 'node:zlib';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import type { RandomAccessFile } from './random-access-file.ts';
import type { DeferredRecordChecks } from './types.ts';
import {
  CENTRAL_HEADER_SIZE,
  CENTRAL_SIGNATURE,
  EOCD_SIGNATURE,
  EOCD_SIZE,
  LOCAL_HEADER_SIZE,
  LOCAL_SIGNATURE,
  U16_MAX,
  U32_MAX,
  ZIP64_EOCD_SIGNATURE,
  ZIP64_EOCD_SIZE,
  ZIP64_EXTRA_ID,
  ZIP64_LOCATOR_SIGNATURE,
  ZIP64_LOCATOR_SIZE,
} from './zip-format.ts';

/**
 * The subset of ZIP that torch.save writes: stored (uncompressed) entries, optional ZIP64 records.
 * Written here rather than taken from a zip library because we need positional, lazy access to
 * multi-GB archives with per-record CRC checks, and nothing from the archive may be extracted to disk.
 * Format reference: PKWARE APPNOTE.TXT §4.3 (records) and §4.5.3 (ZIP64 extra field).
 *
 * Every field is bounds-checked against the structure it sits in and every offset against the file:
 * end records inside the file's tail, the central directory before them, each local header and its
 * data before the directory, records never overlapping one another (so the archive's records hold
 * no more bytes than the file does). Any violation is CHECKPOINT_CORRUPT (or UNSUPPORTED_FORMAT for
 * valid zip features torch never writes); nothing else escapes.
 */

export interface ZipEntry {
  readonly name: string;
  readonly size: number;
  readonly crc32: number;
  /** Offset of the entry's local header. */
  readonly headerOffset: number;
  /** Offset of the first data byte (after the local header). */
  readonly dataOffset: number;
}

/**
 * The central directory is read whole, so it is capped: torch writes ~100 bytes per record (one
 * record per storage), so 16 MiB is ~150,000 storages, 100x what a ConvNeXt-large Lightning
 * checkpoint with Adam state holds (~1,100).
 */
export const MAX_CENTRAL_DIRECTORY_BYTES = 16 * 1024 * 1024;
/** A record's CRC is checked in pieces of this size when only part of it is read. */
const CRC_CHUNK = 4 * 1024 * 1024;

const MAX_COMMENT = U16_MAX;
const STORED = 0;
const FLAG_ENCRYPTED = 1;

export const ZIP_MAGIC = [0x50, 0x4b, 0x03, 0x04] as const;

const corrupt = (message: string) => new HeimdallError(ErrorCodes.CHECKPOINT_CORRUPT, message);
const utf8 = new TextDecoder('utf-8', { fatal: true });

export class ZipReader {
  /** Entries whose CRC check was handed over (`deferChecks`), and which of them have been read since. */
  private deferred = new Set<string>();
  private readonly readUnchecked = new Set<string>();
  /** Records whose CRC has been checked (whole-record reads, or streamed once for a ranged read). */
  private readonly verified = new Map<string, Promise<void>>();

  private constructor(
    private readonly file: RandomAccessFile,
    readonly entries: ReadonlyMap<string, ZipEntry>,
  ) {}

  static async open(file: RandomAccessFile): Promise<ZipReader> {
    const { count, directoryOffset, directorySize } = await readEndOfCentralDirectory(file);
    const directory = new Fields(await file.read(directoryOffset, directorySize), 'central directory');
    const central: Array<{ name: string; size: number; crc: number; localOffset: number; method: number }> = [];
    const names = new Set<string>();
    let at = 0;
    for (let i = 0; i < count; i++) {
      const where = `central directory entry ${i}`;
      if (directory.u32(at, where) !== CENTRAL_SIGNATURE) throw corrupt(`${where} is malformed (no signature)`);
      const flags = directory.u16(at + 8, where);
      const method = directory.u16(at + 10, where);
      const crc = directory.u32(at + 16, where);
      let compressedSize = directory.u32(at + 20, where);
      let size = directory.u32(at + 24, where);
      const nameLength = directory.u16(at + 28, where);
      const extraLength = directory.u16(at + 30, where);
      const commentLength = directory.u16(at + 32, where);
      let disk = directory.u16(at + 34, where);
      let localOffset = directory.u32(at + 42, where);
      const nameStart = at + CENTRAL_HEADER_SIZE;
      const extraStart = nameStart + nameLength;
      const next = extraStart + extraLength + commentLength;
      if (next > directory.length) throw corrupt(`${where} is truncated (its name, extra field and comment run past the directory)`);
      const name = decodeName(directory.bytes(nameStart, nameLength), where);
      if (name.length === 0) throw corrupt(`${where} has an empty name`);
      if (names.has(name)) throw corrupt(`archive has two entries named ${name}`);
      names.add(name);
      // ZIP64: fields saturated in the fixed header are given, in this order, in the 0x0001 extra block.
      const zip64 = findExtra(directory, extraStart, extraLength, ZIP64_EXTRA_ID, name);
      if (zip64) {
        const block = new Fields(directory.bytes(zip64.offset, zip64.length), `ZIP64 extra field of ${name}`);
        let z = 0;
        const take = (field: string) => {
          if (z + 8 > block.length) throw corrupt(`ZIP64 extra field of ${name} is too short for its ${field}`);
          const value = block.u64(z, field);
          z += 8;
          return value;
        };
        if (size === U32_MAX) size = take('size');
        if (compressedSize === U32_MAX) compressedSize = take('compressed size');
        if (localOffset === U32_MAX) localOffset = take('local header offset');
        if (disk === U16_MAX) {
          if (z + 4 > block.length) throw corrupt(`ZIP64 extra field of ${name} is too short for its disk number`);
          disk = block.u32(z, 'disk number');
        }
      }
      if (disk !== 0) throw new HeimdallError(ErrorCodes.UNSUPPORTED_FORMAT, `entry ${name} is on disk ${disk}: multi-part archives are not supported`);
      if (flags & FLAG_ENCRYPTED) throw new HeimdallError(ErrorCodes.UNSUPPORTED_FORMAT, `entry ${name} is encrypted`);
      if (method !== STORED || compressedSize !== size) {
        throw new HeimdallError(ErrorCodes.UNSUPPORTED_FORMAT, `entry ${name} is compressed (method ${method}); torch checkpoints store entries uncompressed`);
      }
      central.push({ name, size, crc, localOffset, method });
      at = next;
    }
    if (at !== directory.length) {
      throw corrupt(`central directory holds ${directory.length} bytes but its ${count} entries take ${at}: the end record's count or size is wrong`);
    }

    const entries = new Map<string, ZipEntry>();
    for (const c of central) {
      const dataOffset = await dataOffsetOf(file, c.localOffset, c.name, c.size, directoryOffset);
      entries.set(c.name, { name: c.name, size: c.size, crc32: c.crc, headerOffset: c.localOffset, dataOffset });
    }
    // Records may not share bytes: else a few stored bytes could be claimed by any number of records.
    const ordered = [...entries.values()].sort((a, b) => a.headerOffset - b.headerOffset);
    for (let i = 1; i < ordered.length; i++) {
      const previous = ordered[i - 1]!;
      const entry = ordered[i]!;
      if (entry.headerOffset < previous.dataOffset + previous.size) {
        throw corrupt(`entries ${previous.name} and ${entry.name} overlap in the file (record at ${entry.headerOffset} starts before ${previous.dataOffset + previous.size})`);
      }
    }
    return new ZipReader(file, entries);
  }

  /** The entry's metadata, or CHECKPOINT_CORRUPT naming what is missing. */
  entry(name: string): ZipEntry {
    const entry = this.entries.get(name);
    if (!entry) throw corrupt(`archive has no entry ${name}`);
    return entry;
  }

  /** The whole entry, CRC-checked unless the check was deferred (into `scratch` when it is large enough). */
  async read(name: string, scratch?: Uint8Array): Promise<Uint8Array> {
    const entry = this.entry(name);
    const data = await this.file.read(entry.dataOffset, entry.size, scratch);
    if (this.deferred.has(name)) this.readUnchecked.add(name);
    else {
      // A ranged read's check of this record, done, running or failed, answers for it.
      const check = this.verified.get(name);
      if (check) await check;
      else {
        checkCrc(entry, crc32(data));
        this.verified.set(name, Promise.resolve());
      }
    }
    return data;
  }

  /**
   * `length` bytes of the entry from byte `start` of its data, and no more: a small view of a large
   * storage costs its own bytes. A record's CRC covers the whole record, so unless the check was
   * deferred, the first ranged read of a record streams it once through CRC-32 in bounded chunks
   * (memory: one chunk; time: the record, once) and remembers that it matched.
   */
  async readRange(name: string, start: number, length: number, scratch?: Uint8Array): Promise<Uint8Array> {
    const entry = this.entry(name);
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(length) || start < 0 || length < 0 || start + length > entry.size) {
      throw new HeimdallError(ErrorCodes.TENSOR_OUT_OF_BOUNDS, `bytes ${start}..${start + length} lie outside the ${entry.size}-byte record ${name}`);
    }
    if (start === 0 && length === entry.size) return this.read(name, scratch);
    if (this.deferred.has(name)) this.readUnchecked.add(name);
    else await this.verify(entry);
    return this.file.read(entry.dataOffset + start, length, scratch);
  }

  private verify(entry: ZipEntry): Promise<void> {
    let check = this.verified.get(entry.name);
    if (!check) {
      check = this.streamCrc(entry);
      this.verified.set(entry.name, check);
      // A failed check stays failed: every later read of the record fails the same way.
      check.catch(() => undefined);
    }
    return check;
  }

  private async streamCrc(entry: ZipEntry): Promise<void> {
    // Its own buffer: checks of two records may run at once (the writer reads one tensor ahead).
    const buffer = new Uint8Array(Math.min(CRC_CHUNK, entry.size));
    let crc = 0;
    for (let done = 0; done < entry.size; ) {
      const chunk = await this.file.read(entry.dataOffset + done, Math.min(CRC_CHUNK, entry.size - done), buffer);
      crc = crc32(chunk, crc);
      done += chunk.byteLength;
    }
    checkCrc(entry, crc);
  }

  /**
   * Stops CRC-checking `entries` on read, for a caller that checksums them while streaming the file
   * anyway (a second pass over gigabytes on the reading thread costs more than the read itself);
   * `verify` then fails as `read` would have.
   */
  deferChecks(entries: readonly ZipEntry[]): DeferredRecordChecks {
    this.deferred = new Set(entries.map((e) => e.name));
    return {
      records: entries.map((e) => ({ offset: e.dataOffset, length: e.size })),
      verify: (crc32s) => {
        if (crc32s.length !== entries.length) throw new HeimdallError(ErrorCodes.IO_ERROR, `expected ${entries.length} record checksums, got ${crc32s.length}`);
        const computed = new Map(entries.map((e, i) => [e.name, crc32s[i]!]));
        // In read order, so the error names the record a checked read would have failed on.
        for (const name of this.readUnchecked) checkCrc(this.entries.get(name)!, computed.get(name)!);
      },
    };
  }
}

function checkCrc(entry: ZipEntry, computed: number): void {
  const actual = computed >>> 0;
  if (actual !== entry.crc32) throw corrupt(`CRC mismatch in ${entry.name}: stored ${hex(entry.crc32)}, computed ${hex(actual)}`);
}

async function readEndOfCentralDirectory(file: RandomAccessFile) {
  const tailLength = Math.min(file.size, EOCD_SIZE + MAX_COMMENT + ZIP64_LOCATOR_SIZE);
  const tailStart = file.size - tailLength;
  const tail = new Fields(await file.read(tailStart, tailLength), 'end of archive');
  let eocd = -1;
  for (let i = tailLength - EOCD_SIZE; i >= 0; i--) {
    // The record and its comment must fit in the file (a signature inside a comment does not).
    if (tail.u32(i, 'end record') === EOCD_SIGNATURE && i + EOCD_SIZE + tail.u16(i + 20, 'end record') <= tailLength) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) throw corrupt('no end-of-central-directory record: the archive is truncated or not a zip file');
  const diskNumber = tail.u16(eocd + 4, 'end record');
  const directoryDisk = tail.u16(eocd + 6, 'end record');
  const diskCount = tail.u16(eocd + 8, 'end record');
  let count = tail.u16(eocd + 10, 'end record');
  let directorySize = tail.u32(eocd + 12, 'end record');
  let directoryOffset = tail.u32(eocd + 16, 'end record');
  const saturated = count === U16_MAX || directorySize === U32_MAX || directoryOffset === U32_MAX || diskNumber === U16_MAX;
  /** Where the end records begin: the central directory must end before. */
  let endRecords = tailStart + eocd;
  const locatorAt = eocd - ZIP64_LOCATOR_SIZE;
  if (locatorAt >= 0 && tail.u32(locatorAt, 'ZIP64 locator') === ZIP64_LOCATOR_SIGNATURE) {
    const locatorOffset = tailStart + locatorAt;
    const recordOffset = tail.u64(locatorAt + 8, 'ZIP64 locator');
    if (tail.u32(locatorAt + 4, 'ZIP64 locator') !== 0 || tail.u32(locatorAt + 16, 'ZIP64 locator') > 1) {
      throw new HeimdallError(ErrorCodes.UNSUPPORTED_FORMAT, 'multi-part archives are not supported');
    }
    if (recordOffset + ZIP64_EOCD_SIZE > locatorOffset) {
      throw corrupt(`ZIP64 end record offset ${recordOffset} does not lie before its locator at ${locatorOffset}`);
    }
    const record = new Fields(await file.read(recordOffset, ZIP64_EOCD_SIZE), 'ZIP64 end record');
    if (record.u32(0, 'ZIP64 end record') !== ZIP64_EOCD_SIGNATURE) throw corrupt('ZIP64 end-of-central-directory record is missing');
    if (record.u32(16, 'ZIP64 end record') !== 0 || record.u32(20, 'ZIP64 end record') !== 0) {
      throw new HeimdallError(ErrorCodes.UNSUPPORTED_FORMAT, 'multi-part archives are not supported');
    }
    const entriesOnDisk = record.u64(24, 'ZIP64 end record');
    count = record.u64(32, 'ZIP64 end record');
    if (entriesOnDisk !== count) throw corrupt(`ZIP64 end record counts ${entriesOnDisk} entries on this disk but ${count} in all`);
    directorySize = record.u64(40, 'ZIP64 end record');
    directoryOffset = record.u64(48, 'ZIP64 end record');
    endRecords = recordOffset;
  } else if (saturated) {
    throw corrupt('archive needs ZIP64 records but has none');
  } else {
    if (diskNumber !== 0 || directoryDisk !== 0) throw new HeimdallError(ErrorCodes.UNSUPPORTED_FORMAT, 'multi-part archives are not supported');
    if (diskCount !== count) throw corrupt(`end record counts ${diskCount} entries on this disk but ${count} in all`);
  }
  if (directoryOffset + directorySize > endRecords) {
    throw corrupt(`central directory (${directorySize} bytes at ${directoryOffset}) runs past the end records at ${endRecords} (truncated?)`);
  }
  if (directorySize > MAX_CENTRAL_DIRECTORY_BYTES) {
    throw corrupt(`central directory of ${directorySize} bytes exceeds the ${MAX_CENTRAL_DIRECTORY_BYTES}-byte limit`);
  }
  if (count * CENTRAL_HEADER_SIZE > directorySize) {
    throw corrupt(`end record claims ${count} entries, more than a ${directorySize}-byte central directory can hold`);
  }
  return { count, directoryOffset, directorySize };
}

async function dataOffsetOf(file: RandomAccessFile, localOffset: number, name: string, size: number, directoryOffset: number): Promise<number> {
  const where = `local header of ${name}`;
  if (localOffset + LOCAL_HEADER_SIZE > directoryOffset) throw corrupt(`${where} at ${localOffset} lies outside the archive's data (before ${directoryOffset})`);
  const nameBytes = new TextEncoder().encode(name);
  const headerLength = Math.min(LOCAL_HEADER_SIZE + nameBytes.byteLength, directoryOffset - localOffset);
  const header = new Fields(await file.read(localOffset, headerLength), where);
  if (header.u32(0, where) !== LOCAL_SIGNATURE) throw corrupt(`${where} is missing`);
  if (header.u16(8, where) !== STORED) throw new HeimdallError(ErrorCodes.UNSUPPORTED_FORMAT, `entry ${name} is compressed (local header)`);
  const nameLength = header.u16(26, where);
  const extraLength = header.u16(28, where);
  if (nameLength !== nameBytes.byteLength || !sameBytes(header.bytes(LOCAL_HEADER_SIZE, nameLength), nameBytes)) {
    throw corrupt(`${where} names a different entry than the central directory`);
  }
  const dataOffset = localOffset + LOCAL_HEADER_SIZE + nameLength + extraLength;
  if (dataOffset + size > directoryOffset) throw corrupt(`entry ${name} runs past the end of the archive's data (truncated?)`);
  return dataOffset;
}

/** The extra block `id` in [start, start + length), each block inside the field; at most one of each id. */
function findExtra(data: Fields, start: number, length: number, id: number, name: string) {
  let found: { offset: number; length: number } | undefined;
  const end = start + length;
  // A 1-3 byte tail is padding some writers leave; a block header must fit whole.
  for (let at = start; at + 4 <= end; ) {
    const blockId = data.u16(at, 'extra field');
    const blockLength = data.u16(at + 2, 'extra field');
    if (at + 4 + blockLength > end) throw corrupt(`extra block 0x${blockId.toString(16)} of ${name} (${blockLength} bytes) runs past its ${length}-byte extra field`);
    if (blockId === id) {
      if (found) throw corrupt(`${name} has two ZIP64 extra blocks`);
      found = { offset: at + 4, length: blockLength };
    }
    at += 4 + blockLength;
  }
  return found;
}

function decodeName(bytes: Uint8Array, where: string): string {
  try {
    return utf8.decode(bytes);
  } catch {
    throw corrupt(`${where} has a name that is not valid UTF-8`);
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && a.every((v, i) => v === b[i]);
}

/** Little-endian fields of one structure; a field outside it is CHECKPOINT_CORRUPT, never a RangeError. */
class Fields {
  private readonly view: DataView;
  constructor(
    private readonly data: Uint8Array,
    private readonly what: string,
  ) {
    this.view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  }

  get length(): number {
    return this.data.byteLength;
  }

  private check(at: number, size: number, field: string): void {
    if (!(at >= 0 && at + size <= this.data.byteLength)) throw corrupt(`${this.what}: ${field} at ${at} lies outside its ${this.data.byteLength} bytes (truncated?)`);
  }

  u16(at: number, field: string): number {
    this.check(at, 2, field);
    return this.view.getUint16(at, true);
  }

  u32(at: number, field: string): number {
    this.check(at, 4, field);
    return this.view.getUint32(at, true);
  }

  /** A u64 that must be a safe integer (offsets and sizes: more than 2^53 bytes is no real file). */
  u64(at: number, field: string): number {
    this.check(at, 8, field);
    const value = this.view.getBigUint64(at, true);
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(`${this.what}: ${field} ${value} is beyond any file size`);
    return Number(value);
  }

  bytes(at: number, length: number): Uint8Array {
    this.check(at, length, 'bytes');
    return this.data.subarray(at, at + length);
  }
}

const hex = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;
