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
 */

export interface ZipEntry {
  readonly name: string;
  readonly size: number;
  readonly crc32: number;
  /** Offset of the first data byte (after the local header). */
  readonly dataOffset: number;
}

const MAX_COMMENT = U16_MAX;
const STORED = 0;

export const ZIP_MAGIC = [0x50, 0x4b, 0x03, 0x04] as const;

const corrupt = (message: string) => new HeimdallError(ErrorCodes.CHECKPOINT_CORRUPT, message);

export class ZipReader {
  /** Entries whose CRC check was handed over (`deferChecks`), and which of them have been read since. */
  private deferred = new Set<string>();
  private readonly readUnchecked = new Set<string>();

  private constructor(
    private readonly file: RandomAccessFile,
    readonly entries: ReadonlyMap<string, ZipEntry>,
  ) {}

  static async open(file: RandomAccessFile): Promise<ZipReader> {
    const { count, directoryOffset, directorySize } = await readEndOfCentralDirectory(file);
    if (directoryOffset + directorySize > file.size) throw corrupt('central directory runs past the end of the file (truncated?)');
    const directory = view(await file.read(directoryOffset, directorySize));
    const entries = new Map<string, ZipEntry>();
    let at = 0;
    for (let i = 0; i < count; i++) {
      if (at + CENTRAL_HEADER_SIZE > directory.byteLength || directory.getUint32(at, true) !== CENTRAL_SIGNATURE) {
        throw corrupt(`central directory entry ${i} is malformed`);
      }
      const method = directory.getUint16(at + 10, true);
      const crc = directory.getUint32(at + 16, true);
      let compressedSize = directory.getUint32(at + 20, true);
      let size = directory.getUint32(at + 24, true);
      const nameLength = directory.getUint16(at + 28, true);
      const extraLength = directory.getUint16(at + 30, true);
      const commentLength = directory.getUint16(at + 32, true);
      let localOffset = directory.getUint32(at + 42, true);
      const nameStart = at + CENTRAL_HEADER_SIZE;
      if (nameStart + nameLength + extraLength > directory.byteLength) throw corrupt(`central directory entry ${i} is truncated`);
      const name = new TextDecoder().decode(new Uint8Array(directory.buffer, directory.byteOffset + nameStart, nameLength));
      // ZIP64: fields saturated at 0xFFFFFFFF are given, in this order, in the 0x0001 extra block.
      const zip64 = findExtra(directory, nameStart + nameLength, extraLength, ZIP64_EXTRA_ID);
      if (zip64) {
        let z = zip64.offset;
        const take = () => {
          if (z + 8 > zip64.offset + zip64.length) throw corrupt(`ZIP64 extra field of ${name} is too short`);
          const value = Number(directory.getBigUint64(z, true));
          z += 8;
          return value;
        };
        if (size === U32_MAX) size = take();
        if (compressedSize === U32_MAX) compressedSize = take();
        if (localOffset === U32_MAX) localOffset = take();
      }
      if (method !== STORED || compressedSize !== size) {
        throw new HeimdallError(ErrorCodes.UNSUPPORTED_FORMAT, `entry ${name} is compressed (method ${method}); torch checkpoints store entries uncompressed`);
      }
      entries.set(name, { name, size, crc32: crc, dataOffset: await dataOffsetOf(file, localOffset, name, size) });
      at = nameStart + nameLength + extraLength + commentLength;
    }
    return new ZipReader(file, entries);
  }

  /** The whole entry, CRC-checked unless the check was deferred (into `scratch` when it is large enough). */
  async read(name: string, scratch?: Uint8Array): Promise<Uint8Array> {
    const entry = this.entries.get(name);
    if (!entry) throw corrupt(`archive has no entry ${name}`);
    const data = await this.file.read(entry.dataOffset, entry.size, scratch);
    if (this.deferred.has(name)) this.readUnchecked.add(name);
    else checkCrc(entry, crc32(data));
    return data;
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
  const tailLength = Math.min(file.size, EOCD_SIZE + MAX_COMMENT);
  const tailStart = file.size - tailLength;
  const tail = view(await file.read(tailStart, tailLength));
  let eocd = -1;
  for (let i = tailLength - EOCD_SIZE; i >= 0; i--) {
    if (tail.getUint32(i, true) === EOCD_SIGNATURE) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) throw corrupt('no end-of-central-directory record: the archive is truncated or not a zip file');
  let count = tail.getUint16(eocd + 10, true);
  let directorySize = tail.getUint32(eocd + 12, true);
  let directoryOffset = tail.getUint32(eocd + 16, true);
  const saturated = count === U16_MAX || directorySize === U32_MAX || directoryOffset === U32_MAX;
  const locatorAt = eocd - ZIP64_LOCATOR_SIZE;
  if (locatorAt >= 0 && tail.getUint32(locatorAt, true) === ZIP64_LOCATOR_SIGNATURE) {
    const recordOffset = Number(tail.getBigUint64(locatorAt + 8, true));
    const record = view(await file.read(recordOffset, ZIP64_EOCD_SIZE));
    if (record.getUint32(0, true) !== ZIP64_EOCD_SIGNATURE) throw corrupt('ZIP64 end-of-central-directory record is missing');
    count = Number(record.getBigUint64(32, true));
    directorySize = Number(record.getBigUint64(40, true));
    directoryOffset = Number(record.getBigUint64(48, true));
  } else if (saturated) {
    throw corrupt('archive needs ZIP64 records but has none');
  }
  return { count, directoryOffset, directorySize };
}

async function dataOffsetOf(file: RandomAccessFile, localOffset: number, name: string, size: number): Promise<number> {
  const header = view(await file.read(localOffset, LOCAL_HEADER_SIZE));
  if (header.getUint32(0, true) !== LOCAL_SIGNATURE) throw corrupt(`local header of ${name} is missing`);
  const dataOffset = localOffset + LOCAL_HEADER_SIZE + header.getUint16(26, true) + header.getUint16(28, true);
  if (dataOffset + size > file.size) throw corrupt(`entry ${name} runs past the end of the file (truncated?)`);
  return dataOffset;
}

function findExtra(data: DataView, start: number, length: number, id: number) {
  for (let at = start; at + 4 <= start + length; ) {
    const blockId = data.getUint16(at, true);
    const blockLength = data.getUint16(at + 2, true);
    if (blockId === id) return { offset: at + 4, length: blockLength };
    at += 4 + blockLength;
  }
  return undefined;
}

const view = (bytes: Uint8Array) => new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
const hex = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;
