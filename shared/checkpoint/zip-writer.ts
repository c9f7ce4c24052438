import { open, type FileHandle } from 'node:fs/promises';
import { crc32 } from 'node:zlib';
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
 * A streaming writer of uncompressed ("stored") ZIP archives, laid out the way PyTorch's
 * PyTorchStreamWriter (caffe2/serialize/inline_container.cc, on miniz) lays out `torch.save` files:
 *
 * - every entry's data starts on a 64-byte boundary; the gap is filled by an extra field with id
 *   'FB' (0x4246) in the local header, its payload 'Z' bytes (torch adds it to every entry, even
 *   when no padding is needed);
 * - sizes and CRC-32 are known before the local header is written (so no data descriptor: torch's
 *   own writer uses descriptors, its reader accepts both);
 * - ZIP64 (APPNOTE §4.5.3 extra field 0x0001, §4.3.14/§4.3.15 end records) is used exactly where a
 *   value does not fit: sizes or offsets >= 0xFFFFFFFF, more than 0xFFFE entries, and only then.
 *
 * Entries are written one after the other straight to the file; only the central directory (a few
 * dozen bytes per entry) is kept in memory until `finish()`.
 */

export interface ZipWriterOptions {
  /** Data alignment in bytes (torch: 64). 1 turns padding off (no 'FB' extra field is written then). */
  readonly alignment?: number;
  /**
   * Entry sizes (and the central directory's) at or above this go through ZIP64 fields. The format
   * needs 0xFFFFFFFF (the default); lower it only to exercise the ZIP64 path on small archives.
   */
  readonly zip64SizeThreshold?: number;
  /**
   * Offsets (of local headers and of the central directory) at or above this go through ZIP64
   * fields. Default 0xFFFFFFFF; lower it only in tests. Note: torch 1.13's miniz rejects an archive
   * whose saturated offset (0xFFFFFFFF) plus the entry's size lies past the end of the file, which
   * only a lowered offset threshold can produce.
   */
  readonly zip64OffsetThreshold?: number;
  /** Entry counts at or above this need the ZIP64 end records. Default 0xFFFF; lower it only in tests. */
  readonly zip64CountThreshold?: number;
}

export interface ZipEntryInfo {
  readonly name: string;
  /** Offset of the entry's local header. */
  readonly headerOffset: number;
  /** Offset of the first data byte (a multiple of `alignment`). */
  readonly dataOffset: number;
  readonly size: number;
  /** CRC-32 of the data, unsigned. */
  readonly crc32: number;
}

/** Chunks of one entry; for `addStreamingEntry` the function is called twice and must yield the same bytes. */
export type ChunkSource = () => Iterable<Uint8Array> | AsyncIterable<Uint8Array>;

const PADDING_EXTRA_ID = 0x4246; // "FB" little-endian, as torch writes it
/** 1980-01-01 00:00:00, the earliest DOS date: fixed so archives are byte-for-byte reproducible. */
const DOS_TIME = 0;
const DOS_DATE = (0 << 9) | (1 << 5) | 1;
const VERSION_DEFAULT = 20; // 2.0: stored entries
const VERSION_ZIP64 = 45; // 4.5: ZIP64
const FLAG_UTF8 = 1 << 11;
/** Bigger writes are split; keeps each fs write well under any platform's per-call limit. */
const MAX_WRITE = 1 << 30;

interface CentralRecord extends ZipEntryInfo {
  readonly nameBytes: Buffer;
  readonly flags: number;
}

export class ZipWriter {
  private offset = 0;
  private readonly records: CentralRecord[] = [];
  private readonly names = new Set<string>();
  private finished = false;
  private busy = false;
  private readonly alignment: number;
  private readonly sizeThreshold: number;
  private readonly offsetThreshold: number;
  private readonly countThreshold: number;

  constructor(
    private readonly handle: FileHandle,
    options: ZipWriterOptions = {},
    /** Close the handle in `finish()`/`abort()` (true for `ZipWriter.create`). */
    private readonly ownsHandle = false,
  ) {
    this.alignment = options.alignment ?? 64;
    this.sizeThreshold = options.zip64SizeThreshold ?? U32_MAX;
    this.offsetThreshold = options.zip64OffsetThreshold ?? U32_MAX;
    this.countThreshold = options.zip64CountThreshold ?? U16_MAX;
    if (!Number.isInteger(this.alignment) || this.alignment < 1 || this.alignment > 0x8000) {
      throw new RangeError(`alignment must be an integer in 1..32768, got ${this.alignment}`);
    }
    for (const [name, value] of [['zip64SizeThreshold', this.sizeThreshold], ['zip64OffsetThreshold', this.offsetThreshold]] as const) {
      if (!(value > 0 && value <= U32_MAX)) throw new RangeError(`${name} must be in 1..0xFFFFFFFF`);
    }
    if (!(this.countThreshold > 0 && this.countThreshold <= U16_MAX)) throw new RangeError(`zip64CountThreshold must be in 1..0xFFFF`);
  }

  /** Creates (or truncates) `path` and writes the archive into it from offset 0. */
  static async create(path: string, options: ZipWriterOptions = {}): Promise<ZipWriter> {
    const handle = await open(path, 'w');
    return new ZipWriter(handle, options, true);
  }

  /** Bytes written so far. */
  get position(): number {
    return this.offset;
  }

  get entries(): readonly ZipEntryInfo[] {
    return this.records;
  }

  /**
   * One entry from bytes already in memory (one buffer or several chunks). The header and data go
   * to the file in one positional writev, issued before this method first yields: a caller may
   * prepare its next entry while this one is being written, awaiting it before the next add.
   */
  async addEntry(name: string, data: Uint8Array | readonly Uint8Array[]): Promise<ZipEntryInfo> {
    const chunks = data instanceof Uint8Array ? [data] : [...data];
    let crc = 0;
    let size = 0;
    for (const chunk of chunks) {
      crc = crc32(chunk, crc);
      size += chunk.byteLength;
    }
    const { header, record } = this.prepareEntry(name, size, crc >>> 0);
    this.busy = true;
    try {
      await this.writeParts([header, ...chunks]);
    } finally {
      this.busy = false;
    }
    return this.commit(record);
  }

  /**
   * One entry whose bytes are produced in chunks and never held whole: `source` is run once to
   * measure size and CRC-32 (the local header needs them), then again to write the data. A second
   * pass that differs from the first is detected and fails the write.
   */
  async addStreamingEntry(name: string, source: ChunkSource): Promise<ZipEntryInfo> {
    this.assertIdle();
    this.busy = true;
    try {
      let crc = 0;
      let size = 0;
      for await (const chunk of source()) {
        crc = crc32(chunk, crc);
        size += chunk.byteLength;
      }
      crc >>>= 0;
      const { header, record } = this.prepareEntry(name, size, crc, true);
      await this.writeParts([header]);
      let written = 0;
      let check = 0;
      for await (const chunk of source()) {
        written += chunk.byteLength;
        if (written > size) break;
        check = crc32(chunk, check);
        await this.writeParts([chunk]);
      }
      if (written !== size || check >>> 0 !== crc) {
        throw new Error(`zip entry ${name}: the second pass over the data differs from the first (size ${size} -> ${written})`);
      }
      return this.commit(record);
    } finally {
      this.busy = false;
    }
  }

  /** Writes the central directory and end records; returns the archive's size in bytes. */
  async finish(): Promise<number> {
    this.assertIdle();
    this.finished = true;
    try {
      const directoryOffset = this.offset;
      const parts: Buffer[] = [];
      for (const record of this.records) parts.push(this.centralHeader(record));
      const directory = Buffer.concat(parts);
      await this.writeParts([directory]);
      const directorySize = directory.byteLength;
      const count = this.records.length;
      const needsZip64 =
        count >= this.countThreshold || directorySize >= this.sizeThreshold || directoryOffset >= this.offsetThreshold;
      const tail: Buffer[] = [];
      if (needsZip64) {
        const zip64EndOffset = this.offset;
        const record = Buffer.alloc(ZIP64_EOCD_SIZE);
        record.writeUInt32LE(ZIP64_EOCD_SIGNATURE, 0);
        record.writeBigUInt64LE(BigInt(ZIP64_EOCD_SIZE - 12), 4); // size of the rest of the record
        record.writeUInt16LE(VERSION_ZIP64, 12); // version made by
        record.writeUInt16LE(VERSION_ZIP64, 14); // version needed
        record.writeUInt32LE(0, 16); // this disk
        record.writeUInt32LE(0, 20); // disk with the central directory
        record.writeBigUInt64LE(BigInt(count), 24); // entries on this disk
        record.writeBigUInt64LE(BigInt(count), 32); // entries in total
        record.writeBigUInt64LE(BigInt(directorySize), 40);
        record.writeBigUInt64LE(BigInt(directoryOffset), 48);
        const locator = Buffer.alloc(ZIP64_LOCATOR_SIZE);
        locator.writeUInt32LE(ZIP64_LOCATOR_SIGNATURE, 0);
        locator.writeUInt32LE(0, 4); // disk with the ZIP64 end record
        locator.writeBigUInt64LE(BigInt(zip64EndOffset), 8);
        locator.writeUInt32LE(1, 16); // total disks
        tail.push(record, locator);
      }
      const end = Buffer.alloc(EOCD_SIZE);
      end.writeUInt32LE(EOCD_SIGNATURE, 0);
      end.writeUInt16LE(0, 4); // this disk
      end.writeUInt16LE(0, 6); // disk with the central directory
      end.writeUInt16LE(count >= this.countThreshold ? U16_MAX : count, 8);
      end.writeUInt16LE(count >= this.countThreshold ? U16_MAX : count, 10);
      end.writeUInt32LE(directorySize >= this.sizeThreshold ? U32_MAX : directorySize, 12);
      end.writeUInt32LE(directoryOffset >= this.offsetThreshold ? U32_MAX : directoryOffset, 16);
      end.writeUInt16LE(0, 20); // comment length
      tail.push(end);
      await this.writeParts([Buffer.concat(tail)]);
      if (this.ownsHandle) await this.handle.close();
      return this.offset;
    } catch (error) {
      if (this.ownsHandle) await this.handle.close().catch(() => undefined);
      throw error;
    }
  }

  /** Stops without writing the central directory (the file is left incomplete); closes an owned handle. */
  async abort(): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    if (this.ownsHandle) await this.handle.close();
  }

  /** The local header for an entry starting at the current position (nothing is written yet). */
  private prepareEntry(name: string, size: number, crc: number, busyOk = false): { header: Buffer; record: CentralRecord } {
    if (!busyOk) this.assertIdle();
    if (this.names.has(name)) throw new Error(`zip entry ${name} written twice`);
    const nameBytes = Buffer.from(name, 'utf8');
    if (nameBytes.byteLength === 0 || nameBytes.byteLength > U16_MAX) throw new RangeError(`zip entry name length ${nameBytes.byteLength} out of range`);
    const headerOffset = this.offset;
    const zip64Size = size >= this.sizeThreshold;
    // The local header's ZIP64 block carries both sizes, and only them (APPNOTE §4.5.3).
    const zip64ExtraLength = zip64Size ? 4 + 16 : 0;
    const paddingExtra = this.alignment > 1;
    const unpadded = headerOffset + LOCAL_HEADER_SIZE + nameBytes.byteLength + zip64ExtraLength + (paddingExtra ? 4 : 0);
    const padding = paddingExtra ? (this.alignment - (unpadded % this.alignment)) % this.alignment : 0;
    const extraLength = zip64ExtraLength + (paddingExtra ? 4 + padding : 0);
    const dataOffset = unpadded + padding;
    if (!Number.isSafeInteger(dataOffset + size)) throw new RangeError('archive exceeds 2^53 bytes');
    const flags = /^[\x20-\x7e]*$/.test(name) ? 0 : FLAG_UTF8;

    const header = Buffer.alloc(LOCAL_HEADER_SIZE + nameBytes.byteLength + extraLength);
    header.writeUInt32LE(LOCAL_SIGNATURE, 0);
    header.writeUInt16LE(zip64Size ? VERSION_ZIP64 : VERSION_DEFAULT, 4);
    header.writeUInt16LE(flags, 6);
    header.writeUInt16LE(0, 8); // method: stored
    header.writeUInt16LE(DOS_TIME, 10);
    header.writeUInt16LE(DOS_DATE, 12);
    header.writeUInt32LE(crc, 14);
    header.writeUInt32LE(zip64Size ? U32_MAX : size, 18); // compressed size
    header.writeUInt32LE(zip64Size ? U32_MAX : size, 22); // uncompressed size
    header.writeUInt16LE(nameBytes.byteLength, 26);
    header.writeUInt16LE(extraLength, 28);
    nameBytes.copy(header, LOCAL_HEADER_SIZE);
    let at = LOCAL_HEADER_SIZE + nameBytes.byteLength;
    if (zip64Size) {
      header.writeUInt16LE(ZIP64_EXTRA_ID, at);
      header.writeUInt16LE(16, at + 2);
      header.writeBigUInt64LE(BigInt(size), at + 4); // uncompressed
      header.writeBigUInt64LE(BigInt(size), at + 12); // compressed
      at += 20;
    }
    if (paddingExtra) {
      header.writeUInt16LE(PADDING_EXTRA_ID, at);
      header.writeUInt16LE(padding, at + 2);
      header.fill(0x5a /* 'Z' */, at + 4, at + 4 + padding);
    }
    return { header, record: { name, headerOffset, dataOffset, size, crc32: crc, nameBytes, flags } };
  }

  private commit(record: CentralRecord): ZipEntryInfo {
    if (this.offset !== record.dataOffset + record.size) throw new Error(`zip entry ${record.name}: wrote to ${this.offset}, expected ${record.dataOffset + record.size}`);
    this.records.push(record);
    this.names.add(record.name);
    const { name, headerOffset, dataOffset, size, crc32: crc } = record;
    return { name, headerOffset, dataOffset, size, crc32: crc };
  }

  private centralHeader(record: CentralRecord): Buffer {
    const bigSize = record.size >= this.sizeThreshold;
    const bigOffset = record.headerOffset >= this.offsetThreshold;
    const zip64Fields = (bigSize ? 2 : 0) + (bigOffset ? 1 : 0);
    const extraLength = zip64Fields > 0 ? 4 + 8 * zip64Fields : 0;
    const version = zip64Fields > 0 ? VERSION_ZIP64 : VERSION_DEFAULT;
    const out = Buffer.alloc(CENTRAL_HEADER_SIZE + record.nameBytes.byteLength + extraLength);
    out.writeUInt32LE(CENTRAL_SIGNATURE, 0);
    out.writeUInt16LE(version, 4); // version made by (host 0: MS-DOS, as miniz)
    out.writeUInt16LE(version, 6); // version needed
    out.writeUInt16LE(record.flags, 8);
    out.writeUInt16LE(0, 10); // stored
    out.writeUInt16LE(DOS_TIME, 12);
    out.writeUInt16LE(DOS_DATE, 14);
    out.writeUInt32LE(record.crc32, 16);
    out.writeUInt32LE(bigSize ? U32_MAX : record.size, 20);
    out.writeUInt32LE(bigSize ? U32_MAX : record.size, 24);
    out.writeUInt16LE(record.nameBytes.byteLength, 28);
    out.writeUInt16LE(extraLength, 30);
    out.writeUInt16LE(0, 32); // comment length
    out.writeUInt16LE(0, 34); // disk number start
    out.writeUInt16LE(0, 36); // internal attributes
    out.writeUInt32LE(0, 38); // external attributes
    out.writeUInt32LE(bigOffset ? U32_MAX : record.headerOffset, 42);
    record.nameBytes.copy(out, CENTRAL_HEADER_SIZE);
    if (zip64Fields > 0) {
      let at = CENTRAL_HEADER_SIZE + record.nameBytes.byteLength;
      out.writeUInt16LE(ZIP64_EXTRA_ID, at);
      out.writeUInt16LE(8 * zip64Fields, at + 2);
      at += 4;
      // Order fixed by APPNOTE: uncompressed size, compressed size, local header offset.
      if (bigSize) {
        out.writeBigUInt64LE(BigInt(record.size), at);
        out.writeBigUInt64LE(BigInt(record.size), at + 8);
        at += 16;
      }
      if (bigOffset) out.writeBigUInt64LE(BigInt(record.headerOffset), at);
    }
    return out;
  }

  /** Writes the parts in order at the current position; one writev when they fit one call. */
  private async writeParts(parts: readonly Uint8Array[]): Promise<void> {
    let total = 0;
    for (const part of parts) total += part.byteLength;
    let skip = 0;
    if (parts.length > 1 && total <= MAX_WRITE) {
      const { bytesWritten } = await this.handle.writev(parts as Uint8Array[], this.offset);
      this.offset += bytesWritten;
      if (bytesWritten === total) return;
      skip = bytesWritten; // a short write: finish part by part
    }
    for (const part of parts) {
      if (skip >= part.byteLength) {
        skip -= part.byteLength;
        continue;
      }
      await this.write(skip > 0 ? part.subarray(skip) : part);
      skip = 0;
    }
  }

  private async write(data: Uint8Array): Promise<void> {
    let done = 0;
    while (done < data.byteLength) {
      const length = Math.min(data.byteLength - done, MAX_WRITE);
      const { bytesWritten } = await this.handle.write(data, done, length, this.offset);
      if (bytesWritten <= 0) throw new Error('zip write made no progress');
      done += bytesWritten;
      this.offset += bytesWritten;
    }
  }

  private assertIdle(): void {
    this.assertOpen();
    if (this.busy) throw new Error('zip writer is busy: await the previous entry before adding the next');
  }

  private assertOpen(): void {
    if (this.finished) throw new Error('zip archive already finished');
  }
}
