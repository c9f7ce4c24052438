import { rm } from 'node:fs/promises';
import { basename } from 'node:path';
import { pickle, tensorBytes, tensorData, type PickleValue } from './pickle-writer.ts';
import { ZipWriter, type ZipWriterOptions } from './zip-writer.ts';

export type { PickleValue, TensorValue, TensorData } from './pickle-writer.ts';

/**
 * Writes real PyTorch checkpoints (what `torch.save(obj, path)` writes with torch 2.x, loadable by
 * `torch.load(path, weights_only=True)`), without Python. The archive holds, under one folder:
 *
 *   data.pkl                  the pickled object (protocol 2), tensors as persistent ids
 *   .format_version           "1"   (torch >= 2.4: storages numbered in order)
 *   .storage_alignment        "64"  (torch >= 2.4)
 *   byteorder                 "little"
 *   data/0, data/1, …         one record per storage, raw little-endian values, 64-byte aligned
 *   version                   "3\n" (torch.save's file format version; `.data/version` is only
 *                             written by TorchScript, for versions >= 6)
 *   .data/serialization_id    40 digits, as PyTorchStreamWriter appends at the end
 *
 * Tensors whose `data` is a function are materialised one at a time, the next while the previous
 * one's record is being written.
 */

export interface TorchCheckpointOptions {
  /**
   * The archive's top folder. torch uses the file's base name without its extension ("model" for
   * `/x/model.pt`), and "archive" when writing to a stream or a non-ASCII path; same default here.
   */
  readonly archiveName?: string;
  /** Passed to the zip writer (tests lower the ZIP64 thresholds). */
  readonly zip?: ZipWriterOptions;
}

/** torch.save's file format version (caffe2 kMinProducedFileFormatVersion). */
const FILE_FORMAT_VERSION = 3;

export function defaultArchiveName(path: string): string {
  if (!/^[\x00-\x7f]*$/.test(path)) return 'archive';
  const base = basename(path);
  const dot = base.lastIndexOf('.');
  const stem = dot >= 0 ? base.slice(0, dot) : base;
  return stem.length > 0 ? stem : 'archive';
}

/** Writes `root` as a torch checkpoint at `path`; returns the file's size in bytes. */
export async function writeTorchCheckpoint(path: string, root: PickleValue, options: TorchCheckpointOptions = {}): Promise<number> {
  const archive = options.archiveName ?? defaultArchiveName(path);
  if (archive.length === 0 || archive.includes('/') || archive.includes('\\')) {
    throw new RangeError(`archive name must be a non-empty folder name without slashes, got ${JSON.stringify(archive)}`);
  }
  const { bytes: pickled, storages } = pickle(root);
  const writer = await ZipWriter.create(path, options.zip);
  const id = new SerializationId();
  const add = async (name: string, data: Uint8Array) => {
    const entry = await writer.addEntry(`${archive}/${name}`, data);
    id.add(name, entry.crc32);
  };
  try {
    await add('data.pkl', pickled);
    await add('.format_version', ascii('1'));
    await add('.storage_alignment', ascii('64'));
    await add('byteorder', ascii('little'));
    // Each record's write is in flight while the next tensor is produced: at most two tensors'
    // values are held at once, and generating them overlaps the disk.
    let pending: Promise<void> | undefined;
    try {
      for (const storage of storages) {
        const data = await tensorData(storage.tensor);
        await pending;
        pending = add(`data/${storage.key}`, tensorBytes(data));
      }
    } finally {
      // Never leave a write running past this point, even when producing a tensor failed.
      await pending?.catch(() => undefined);
    }
    await pending;
    await add('version', ascii(`${FILE_FORMAT_VERSION}\n`));
    await add('.data/serialization_id', ascii(id.value()));
    return await writer.finish();
  } catch (error) {
    await writer.abort().catch(() => undefined);
    await rm(path, { force: true }).catch(() => undefined);
    throw error;
  }
}

const ascii = (s: string) => Buffer.from(s, 'latin1');

const MASK64 = (1n << 64n) - 1n;

/** c10::hash_combine on 64-bit size_t. */
function hashCombine(seed: bigint, value: bigint): bigint {
  return (seed ^ ((value + 0x9e3779b9n + ((seed << 6n) & MASK64) + (seed >> 2n)) & MASK64)) & MASK64;
}

/**
 * PyTorchStreamWriter's serialization id: 20 digits of a combined hash of the record names, then 20
 * digits of a combined hash of the records' CRC-32s. torch hashes names with std::hash (not
 * portable); FNV-1a stands in for it, so ids are deterministic but not torch's for the same content.
 */
class SerializationId {
  private names = 0n;
  private crcs = 0n;

  add(name: string, crc: number): void {
    this.names = hashCombine(this.names, fnv1a64(name));
    this.crcs = hashCombine(this.crcs, BigInt(crc >>> 0));
  }

  value(): string {
    return this.names.toString().padStart(20, '0') + this.crcs.toString().padStart(20, '0');
  }
}

function fnv1a64(s: string): bigint {
  let h = 0xcbf29ce484222325n;
  for (const byte of Buffer.from(s, 'utf8')) {
    h ^= BigInt(byte);
    h = (h * 0x100000001b3n) & MASK64;
  }
  return h;
}

