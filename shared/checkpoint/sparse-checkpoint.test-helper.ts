/**
 * Test inputs the regular writers (torch-writer.ts) do not make: torch.save archives whose tensors
 * are views (offset, size, stride) into shared storages, records of any size that stay sparse on
 * disk (gigabytes claimed, kilobytes written: holes read as zeros), and raw zip layouts to damage.
 * What it writes is what torch.save writes for such tensors (`t.narrow(...)`, `t.expand(...)`,
 * DeepSpeed's flat fp32 buffer): `_rebuild_tensor_v2(persistent_id(('storage', torch.FloatStorage,
 * key, 'cpu', numel)), offset, size, stride, False, OrderedDict())`.
 */
import { open } from 'node:fs/promises';
import { crc32 } from 'node:zlib';
import type { DType } from './types.ts';
import { STORAGE_CLASS } from './pickle-writer.ts';
import {
  CENTRAL_HEADER_SIZE,
  CENTRAL_SIGNATURE,
  EOCD_SIGNATURE,
  EOCD_SIZE,
  LOCAL_HEADER_SIZE,
  LOCAL_SIGNATURE,
  ZIP64_EOCD_SIGNATURE,
  ZIP64_EOCD_SIZE,
  ZIP64_EXTRA_ID,
  ZIP64_LOCATOR_SIGNATURE,
  ZIP64_LOCATOR_SIZE,
} from './zip-format.ts';

// ---------------------------------------------------------------------------------------------
// CRC-32 of data followed by zeros, without the zeros (zlib's crc32_combine arithmetic, GF(2)).

const POLY = 0xedb88320;

/** a(x) * b(x) mod p(x), reflected bit order as zlib's multmodp. */
function multmodp(a: number, b: number): number {
  let m = 0x80000000;
  let p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) === 0) break;
    }
    m >>>= 1;
    b = b & 1 ? (b >>> 1) ^ POLY : b >>> 1;
  }
  return p >>> 0;
}

const X2N: number[] = [0x40000000];
for (let k = 1; k < 32; k++) X2N.push(multmodp(X2N[k - 1]!, X2N[k - 1]!));

/** x^(n * 2^k) mod p(x). */
function x2nmodp(n: number, k: number): number {
  let p = 0x80000000;
  while (n > 0) {
    if (n % 2) p = multmodp(X2N[k & 31]!, p);
    n = Math.floor(n / 2);
    k++;
  }
  return p;
}

/** CRC-32 of (bytes whose CRC-32 is `crc`) followed by `zeros` zero bytes. */
export function crc32ZeroExtend(crc: number, zeros: number): number {
  if (zeros === 0) return crc >>> 0;
  return (multmodp(x2nmodp(zeros, 3), (crc ^ 0xffffffff) >>> 0) ^ 0xffffffff) >>> 0;
}

// ---------------------------------------------------------------------------------------------
// Sparse zip archives.

export interface SparseRecord {
  readonly name: string;
  /** Bytes the record holds; only `chunks` are written, the rest stays a hole (zeros). */
  readonly size: number;
  readonly chunks?: ReadonlyArray<{ readonly at: number; readonly bytes: Uint8Array }>;
  /** Overrides the CRC-32 stored for the record (the right one by default). */
  readonly crc32?: number;
}

export interface SparseEntry {
  readonly name: string;
  readonly size: number;
  readonly crc32: number;
  readonly headerOffset: number;
  readonly dataOffset: number;
}

/**
 * Writes a stored (uncompressed) zip of `records`, 64-byte aligned, with ZIP64 fields for sizes and
 * offsets past 32 bits (or for all of them with `zip64: true`); returns the entries written.
 */
export async function writeSparseZip(path: string, records: readonly SparseRecord[], options: { zip64?: boolean } = {}): Promise<SparseEntry[]> {
  const handle = await open(path, 'w');
  const entries: SparseEntry[] = [];
  try {
    let offset = 0;
    for (const record of records) {
      const name = Buffer.from(record.name, 'utf8');
      const headerOffset = offset;
      // Pad with an 'FB' extra block so data starts on a 64-byte boundary, as torch does.
      let extra = 4;
      while ((headerOffset + LOCAL_HEADER_SIZE + name.byteLength + extra) % 64 !== 0) extra++;
      const header = Buffer.alloc(LOCAL_HEADER_SIZE + name.byteLength + extra);
      header.writeUInt32LE(LOCAL_SIGNATURE, 0);
      header.writeUInt16LE(20, 4);
      header.writeUInt16LE(0, 8);
      header.writeUInt16LE(name.byteLength, 26);
      header.writeUInt16LE(extra, 28);
      name.copy(header, LOCAL_HEADER_SIZE);
      header.writeUInt16LE(0x4246, LOCAL_HEADER_SIZE + name.byteLength);
      header.writeUInt16LE(extra - 4, LOCAL_HEADER_SIZE + name.byteLength + 2);
      await handle.write(header, 0, header.byteLength, headerOffset);
      const dataOffset = headerOffset + header.byteLength;
      let crc = 0;
      let at = 0;
      for (const chunk of [...(record.chunks ?? [])].sort((a, b) => a.at - b.at)) {
        crc = crc32ZeroExtend(crc, chunk.at - at);
        crc = crc32(chunk.bytes, crc);
        await handle.write(chunk.bytes, 0, chunk.bytes.byteLength, dataOffset + chunk.at);
        at = chunk.at + chunk.bytes.byteLength;
      }
      crc = crc32ZeroExtend(crc, record.size - at);
      entries.push({ name: record.name, size: record.size, crc32: record.crc32 ?? crc >>> 0, headerOffset, dataOffset });
      offset = dataOffset + record.size;
    }
    const directoryOffset = offset;
    const parts: Buffer[] = [];
    for (const entry of entries) {
      const name = Buffer.from(entry.name, 'utf8');
      const big = options.zip64 || entry.size >= 0xffffffff || entry.headerOffset >= 0xffffffff;
      const extra = big ? Buffer.alloc(4 + 24) : Buffer.alloc(0);
      if (big) {
        extra.writeUInt16LE(ZIP64_EXTRA_ID, 0);
        extra.writeUInt16LE(24, 2);
        extra.writeBigUInt64LE(BigInt(entry.size), 4);
        extra.writeBigUInt64LE(BigInt(entry.size), 12);
        extra.writeBigUInt64LE(BigInt(entry.headerOffset), 20);
      }
      const header = Buffer.alloc(CENTRAL_HEADER_SIZE);
      header.writeUInt32LE(CENTRAL_SIGNATURE, 0);
      header.writeUInt16LE(big ? 45 : 20, 4);
      header.writeUInt16LE(big ? 45 : 20, 6);
      header.writeUInt32LE(entry.crc32, 16);
      header.writeUInt32LE(big ? 0xffffffff : entry.size, 20);
      header.writeUInt32LE(big ? 0xffffffff : entry.size, 24);
      header.writeUInt16LE(name.byteLength, 28);
      header.writeUInt16LE(extra.byteLength, 30);
      header.writeUInt32LE(big ? 0xffffffff : entry.headerOffset, 42);
      parts.push(header, name, extra);
    }
    const directory = Buffer.concat(parts);
    const zip64 = options.zip64 || directoryOffset >= 0xffffffff || entries.some((e) => e.size >= 0xffffffff);
    const tail: Buffer[] = [];
    if (zip64) {
      const record = Buffer.alloc(ZIP64_EOCD_SIZE);
      record.writeUInt32LE(ZIP64_EOCD_SIGNATURE, 0);
      record.writeBigUInt64LE(BigInt(ZIP64_EOCD_SIZE - 12), 4);
      record.writeUInt16LE(45, 12);
      record.writeUInt16LE(45, 14);
      record.writeBigUInt64LE(BigInt(entries.length), 24);
      record.writeBigUInt64LE(BigInt(entries.length), 32);
      record.writeBigUInt64LE(BigInt(directory.byteLength), 40);
      record.writeBigUInt64LE(BigInt(directoryOffset), 48);
      const locator = Buffer.alloc(ZIP64_LOCATOR_SIZE);
      locator.writeUInt32LE(ZIP64_LOCATOR_SIGNATURE, 0);
      locator.writeBigUInt64LE(BigInt(directoryOffset + directory.byteLength), 8);
      locator.writeUInt32LE(1, 16);
      tail.push(record, locator);
    }
    const eocd = Buffer.alloc(EOCD_SIZE);
    eocd.writeUInt32LE(EOCD_SIGNATURE, 0);
    eocd.writeUInt16LE(zip64 ? 0xffff : entries.length, 8);
    eocd.writeUInt16LE(zip64 ? 0xffff : entries.length, 10);
    eocd.writeUInt32LE(zip64 ? 0xffffffff : directory.byteLength, 12);
    eocd.writeUInt32LE(zip64 ? 0xffffffff : directoryOffset, 16);
    tail.push(eocd);
    const end = Buffer.concat([directory, ...tail]);
    await handle.write(end, 0, end.byteLength, directoryOffset);
  } finally {
    await handle.close();
  }
  return entries;
}

// ---------------------------------------------------------------------------------------------
// torch.save archives of views.

export interface ViewStorage {
  readonly key: string;
  readonly dtype: DType;
  readonly numel: number;
  /** The record's size in bytes, when it should not be `numel` elements (a storage that claims more than it holds). */
  readonly recordBytes?: number;
  /** Values written at element offsets of the storage; everything else is zero (a hole). */
  readonly chunks?: ReadonlyArray<{ readonly at: number; readonly values: Float32Array | BigInt64Array | Uint8Array }>;
}

export interface ViewTensor {
  readonly name: string;
  readonly storage: string;
  readonly offset: number;
  readonly shape: readonly number[];
  readonly stride: readonly number[];
}

/**
 * Config values a `model_state_dict` checkpoint may carry; `dag` is a list of `width` ints, then
 * `levels` lists each holding `width` memo references to the one before (width^(levels+1) values
 * to a tree walk, a few KB of pickle).
 */
export type ConfigValue = number | { float: number } | { dag: { width: number; levels: number } } | string | boolean | null | readonly ConfigValue[];

export interface ViewCheckpoint {
  readonly storages: readonly ViewStorage[];
  readonly tensors: readonly ViewTensor[];
  /** `{'model_state_dict': sd, 'config': config}` when given, else the bare state dict. */
  readonly config?: Readonly<Record<string, ConfigValue>>;
  /** Extra records beside the storages (e.g. a huge `byteorder`). */
  readonly extraRecords?: readonly SparseRecord[];
  /** Replaces data.pkl's size (its bytes then lie at its start, the rest is a hole). */
  readonly pickleSize?: number;
}

/** Writes a torch.save archive (root folder `archive`) of `checkpoint`; returns its zip entries. */
export async function writeViewCheckpoint(path: string, checkpoint: ViewCheckpoint): Promise<SparseEntry[]> {
  const pickled = viewPickle(checkpoint);
  const itemSize = (dtype: DType) => ({ float32: 4, float16: 2, bfloat16: 2, float64: 8, int64: 8, int32: 4, int16: 2, int8: 1, uint8: 1, bool: 1 })[dtype];
  const records: SparseRecord[] = [
    { name: 'archive/data.pkl', size: checkpoint.pickleSize ?? pickled.byteLength, chunks: [{ at: 0, bytes: pickled }] },
    { name: 'archive/byteorder', size: 6, chunks: [{ at: 0, bytes: Buffer.from('little') }] },
    ...(checkpoint.extraRecords ?? []),
    ...checkpoint.storages.map((s) => ({
      name: `archive/data/${s.key}`,
      size: s.recordBytes ?? s.numel * itemSize(s.dtype),
      chunks: (s.chunks ?? []).map((c) => ({ at: c.at * itemSize(s.dtype), bytes: new Uint8Array(c.values.buffer, c.values.byteOffset, c.values.byteLength) })),
    })),
    { name: 'archive/version', size: 2, chunks: [{ at: 0, bytes: Buffer.from('3\n') }] },
  ];
  return writeSparseZip(path, records);
}

/** The pickle (protocol 2) torch.save writes for these tensors: no memo, which every unpickler accepts. */
export function viewPickle(checkpoint: Pick<ViewCheckpoint, 'storages' | 'tensors' | 'config'>): Uint8Array {
  const out: number[] = [0x80, 2];
  const bytes = (b: Uint8Array | number[]) => out.push(...b);
  const string = (s: string) => {
    const b = Buffer.from(s, 'utf8');
    out.push(0x58, ...u32(b.byteLength));
    bytes(b);
  };
  const int = (n: number) => {
    if (n >= 0 && n < 256) out.push(0x4b, n);
    else if (n >= 0 && n < 65536) out.push(0x4d, n & 0xff, n >> 8);
    else if (n >= -0x80000000 && n <= 0x7fffffff) out.push(0x4a, ...i32(n));
    else {
      // LONG1: little-endian two's complement.
      let v = BigInt(n);
      const b: number[] = [];
      do {
        b.push(Number(v & 0xffn));
        v >>= 8n;
      } while (!((v === 0n && (b.at(-1)! & 0x80) === 0) || (v === -1n && (b.at(-1)! & 0x80) !== 0)));
      out.push(0x8a, b.length, ...b);
    }
  };
  const float = (f: number) => {
    const b = Buffer.alloc(8);
    b.writeDoubleBE(f);
    out.push(0x47, ...b);
  };
  const global = (module: string, name: string) => {
    out.push(0x63);
    bytes(Buffer.from(`${module}\n${name}\n`));
  };
  const tuple = (items: readonly number[]) => {
    out.push(0x28);
    items.forEach(int);
    out.push(0x74);
  };
  const orderedDict = () => {
    global('collections', 'OrderedDict');
    out.push(0x29, 0x52);
  };
  const value = (v: ConfigValue) => {
    if (v === null) out.push(0x4e);
    else if (typeof v === 'boolean') out.push(v ? 0x88 : 0x89);
    else if (typeof v === 'number') (Number.isInteger(v) ? int(v) : float(v));
    else if (typeof v === 'string') string(v);
    else if (Array.isArray(v)) {
      out.push(0x5d, 0x28);
      v.forEach(value);
      out.push(0x65);
    } else if ('dag' in v) {
      const { width, levels } = v.dag;
      out.push(0x5d, 0x28);
      for (let i = 0; i < width; i++) int(i & 0xff);
      out.push(0x65);
      for (let level = 0; level < levels; level++) {
        const slot = memo++;
        out.push(0x72, ...u32(slot), 0x30, 0x5d, 0x28); // LONG_BINPUT the previous list, POP it, new list, MARK
        for (let i = 0; i < width; i++) out.push(0x6a, ...u32(slot)); // LONG_BINGET
        out.push(0x65);
      }
    } else float((v as { float: number }).float);
  };
  let memo = 0;
  const storages = new Map(checkpoint.storages.map((s) => [s.key, s]));
  const stateDict = () => {
    orderedDict();
    for (const t of checkpoint.tensors) {
      const s = storages.get(t.storage)!;
      string(t.name);
      global('torch._utils', '_rebuild_tensor_v2');
      out.push(0x28, 0x28);
      string('storage');
      global('torch', STORAGE_CLASS[s.dtype]);
      string(s.key);
      string('cpu');
      int(s.numel);
      out.push(0x74, 0x51);
      int(t.offset);
      tuple(t.shape);
      tuple(t.stride);
      out.push(0x89);
      orderedDict();
      out.push(0x74, 0x52, 0x73);
    }
  };
  if (checkpoint.config) {
    out.push(0x7d, 0x28);
    string('model_state_dict');
    stateDict();
    string('config');
    out.push(0x7d, 0x28);
    for (const [k, v] of Object.entries(checkpoint.config)) {
      string(k);
      value(v);
    }
    out.push(0x75, 0x75);
  } else stateDict();
  out.push(0x2e);
  return Uint8Array.from(out);
}

const u32 = (n: number) => [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff];
const i32 = (n: number) => u32(n >>> 0);

/** Row-major strides of `shape`. */
export function contiguousStrides(shape: readonly number[]): number[] {
  const strides = new Array<number>(shape.length);
  let s = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    strides[d] = s;
    s *= shape[d]!;
  }
  return strides;
}
