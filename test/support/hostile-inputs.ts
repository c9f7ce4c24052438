/**
 * A corpus of hostile, corrupt and extreme checkpoint inputs (issue 11), each at most a few MB on
 * disk: the cases that claim gigabytes are sparse files (holes cost no disk). Each case names the
 * error codes a correct exporter may answer with; 'OK' marks the few inputs a correct exporter must
 * (or may) export, within the same time and memory bounds.
 *
 * Built with the project's own writers (pickle-writer, torch-writer, zip-writer, the sample weights)
 * where they can express the input; where they cannot (strided views, stride-0 weights, bombs,
 * calls of arbitrary globals, broken zip fields), from raw pickle opcodes and a raw zip writer
 * below. Real CPython pickles come from test/fixtures/bad_checkpoints.py.
 */
import { execFile } from 'node:child_process';
import { mkdir, open, readFile, symlink, truncate, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { crc32 } from 'node:zlib';
import { encodeLong, pyDict, pyFloat, STORAGE_CLASS, type PickleValue } from '../../shared/checkpoint/pickle-writer.ts';
import { writeTorchCheckpoint } from '../../shared/checkpoint/torch-writer.ts';
import type { DType } from '../../shared/checkpoint/types.ts';
import { ZipWriter } from '../../shared/checkpoint/zip-writer.ts';
import { specForVariant, stateDictEntries, type LocalizationNetSpec } from '../../shared/models/localization-net/architecture.ts';
import { sampleCheckpointRoot, sampleStateDict } from '../../shared/models/localization-net/sample-weights.ts';
import { SMALL_SPEC, writeSmallCheckpoint } from './small-model.ts';

/** An error code the CLI prints (`error: CODE: ...`), or OK for a successful export. */
export type Outcome = string;
export const OK = 'OK';

export interface HostileCase {
  readonly name: string;
  /** The class of the issue it stands for. */
  readonly group: string;
  /** Accepted outcomes: codes (non-retriable ones) or OK. */
  readonly expect: readonly Outcome[];
  /** Writes the input (or prepares the special file) and returns the path to give `heimdall export`. */
  make(ctx: CorpusContext): Promise<string>;
}

/** Where the corpus is written, plus what cases share (the CPython fixtures, the valid tiny checkpoint). */
export class CorpusContext {
  private python?: Promise<string>;
  private tiny?: Promise<Buffer>;
  private readonly servers: Server[] = [];

  constructor(readonly dir: string) {}

  path(name: string): string {
    return join(this.dir, name);
  }

  /** test/fixtures/bad_checkpoints.py's outputs (real CPython pickles), written once. */
  pythonFixture(file: string): Promise<string> {
    this.python ??= (async () => {
      const out = join(this.dir, 'python-fixtures');
      await promisify(execFile)('python3', [join(import.meta.dirname, '../fixtures/bad_checkpoints.py'), out, join(out, 'MARKER')]);
      return out;
    })();
    return this.python.then((dir) => join(dir, file));
  }

  /** The bytes of a valid tiny checkpoint (small-model.ts, bare state dict). */
  tinyCheckpoint(): Promise<Buffer> {
    this.tiny ??= (async () => {
      const path = join(this.dir, 'tiny-source.pth');
      await writeSmallCheckpoint(path);
      return readFile(path);
    })();
    return this.tiny;
  }

  /** A listening Unix socket at `path`, closed by `close()`. */
  async unixSocket(path: string): Promise<string> {
    const server = createServer((socket) => socket.destroy());
    await new Promise<void>((resolve, reject) => server.once('error', reject).listen(path, resolve));
    this.servers.push(server);
    return path;
  }

  async close(): Promise<void> {
    await Promise.all(this.servers.map((s) => new Promise((resolve) => s.close(resolve))));
  }
}

// ---------------------------------------------------------------------------------------------
// Raw pickle opcodes (CPython Lib/pickletools.py), for what the pickle writer cannot express.

export class PickleOps {
  private readonly chunks: Buffer[] = [];
  private memoNext = 0;
  private readonly globals = new Map<string, number>();

  op(...bytes: number[]): this {
    this.chunks.push(Buffer.from(bytes));
    return this;
  }
  raw(bytes: Uint8Array): this {
    this.chunks.push(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    return this;
  }
  u32(n: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(n);
    return this.raw(b);
  }
  proto(version = 2): this {
    return this.op(0x80, version);
  }
  stop(): this {
    return this.op(0x2e);
  }
  mark(): this {
    return this.op(0x28);
  }
  none(): this {
    return this.op(0x4e);
  }
  bool(v: boolean): this {
    return this.op(v ? 0x88 : 0x89);
  }
  int(v: number | bigint): this {
    const n = BigInt(v);
    if (n >= 0n && n <= 0xffn) return this.op(0x4b, Number(n));
    if (n >= 0n && n <= 0xffffn) return this.op(0x4d, Number(n & 0xffn), Number(n >> 8n));
    if (n >= -0x80000000n && n <= 0x7fffffffn) {
      const b = Buffer.alloc(5);
      b[0] = 0x4a;
      b.writeInt32LE(Number(n), 1);
      return this.raw(b);
    }
    const encoded = encodeLong(n);
    return this.op(0x8a, encoded.byteLength).raw(encoded);
  }
  /** LONG4 with `length` payload bytes (a positive integer of 8*length bits). */
  long4(length: number, fill = 0x5a): this {
    this.op(0x8b).u32(length);
    return this.raw(Buffer.alloc(length, fill));
  }
  float(v: number): this {
    const b = Buffer.alloc(9);
    b[0] = 0x47;
    b.writeDoubleBE(v, 1);
    return this.raw(b);
  }
  str(s: string): this {
    const bytes = Buffer.from(s, 'utf8');
    return this.op(0x58).u32(bytes.byteLength).raw(bytes);
  }
  shortStr(s: string): this {
    const bytes = Buffer.from(s, 'utf8');
    return this.op(0x8c, bytes.byteLength).raw(bytes);
  }
  emptyDict(): this {
    return this.op(0x7d);
  }
  emptyList(): this {
    return this.op(0x5d);
  }
  emptyTuple(): this {
    return this.op(0x29);
  }
  tuple(): this {
    return this.op(0x74);
  }
  tuple1(): this {
    return this.op(0x85);
  }
  tuple2(): this {
    return this.op(0x86);
  }
  setitem(): this {
    return this.op(0x73);
  }
  setitems(): this {
    return this.op(0x75);
  }
  append(): this {
    return this.op(0x61);
  }
  appends(): this {
    return this.op(0x65);
  }
  reduce(): this {
    return this.op(0x52);
  }
  newobj(): this {
    return this.op(0x81);
  }
  build(): this {
    return this.op(0x62);
  }
  binpersid(): this {
    return this.op(0x51);
  }
  stackGlobal(): this {
    return this.op(0x93);
  }
  /** LONG_BINPUT of the top of the stack into a fresh slot; returns the slot. */
  put(): number {
    const slot = this.memoNext++;
    this.op(0x72).u32(slot);
    return slot;
  }
  /** LONG_BINGET. */
  get(slot: number): this {
    return this.op(0x6a).u32(slot);
  }
  /** GLOBAL, memoized: a second use of the same global is a BINGET, as CPython writes it. */
  global(module: string, name: string, memoize = true): this {
    const key = `${module}\n${name}`;
    const slot = this.globals.get(key);
    if (slot !== undefined && memoize) return this.get(slot);
    this.op(0x63).raw(Buffer.from(`${module}\n${name}\n`, 'latin1'));
    if (memoize) this.globals.set(key, this.put());
    return this;
  }
  intTuple(values: readonly (number | bigint)[]): this {
    if (values.length === 0) return this.emptyTuple();
    this.mark();
    for (const v of values) this.int(v);
    return this.tuple();
  }
  get length(): number {
    return this.chunks.reduce((n, c) => n + c.byteLength, 0);
  }
  bytes(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

export interface StorageRef {
  readonly key: string;
  readonly dtype: DType;
  /** numel as the persistent id declares it. */
  readonly numel: number | bigint;
}

export interface TensorRef {
  readonly storage: StorageRef;
  readonly offset: number | bigint;
  readonly shape: readonly (number | bigint)[];
  readonly stride: readonly (number | bigint)[];
}

/** `_rebuild_tensor_v2(persistent_id(('storage', T, key, 'cpu', numel)), offset, size, stride, False, OrderedDict())`. */
export function emitTensor(o: PickleOps, t: TensorRef): void {
  o.global('torch._utils', '_rebuild_tensor_v2');
  o.mark();
  o.mark().str('storage').global('torch', STORAGE_CLASS[t.storage.dtype]).str(t.storage.key).str('cpu').int(t.storage.numel).tuple();
  o.binpersid();
  o.int(t.offset).intTuple(t.shape).intTuple(t.stride).bool(false);
  o.global('collections', 'OrderedDict').emptyTuple().reduce();
  o.tuple().reduce();
}

export type Emit = (o: PickleOps) => void;

export interface ModelPickle {
  readonly tensors: ReadonlyArray<readonly [string, TensorRef]>;
  /** 'model_state_dict' (default): `{'model_state_dict': {...}, <extras>}`; 'bare': the dict of tensors itself. */
  readonly layout?: 'model_state_dict' | 'bare';
  /** More root entries, emitted after the state dict: key and the opcodes of its value. */
  readonly extras?: ReadonlyArray<readonly [string, Emit]>;
  readonly protocol?: number;
}

export function modelPickle(spec: ModelPickle, o = new PickleOps()): Buffer {
  o.proto(spec.protocol ?? 2);
  const stateDict = () => {
    o.emptyDict().mark();
    for (const [name, t] of spec.tensors) {
      o.str(name);
      emitTensor(o, t);
    }
    o.setitems();
  };
  if (spec.layout === 'bare') {
    stateDict();
    if (spec.extras?.length) {
      o.mark();
      for (const [key, emit] of spec.extras) (o.str(key), emit(o));
      o.setitems();
    }
  } else {
    o.emptyDict().mark().str('model_state_dict');
    stateDict();
    for (const [key, emit] of spec.extras ?? []) (o.str(key), emit(o));
    o.setitems();
  }
  return o.stop().bytes();
}

// ---------------------------------------------------------------------------------------------
// Models: the tiny LocalizationNet's tensors, each in its own storage or as views.

interface TinyTensor {
  readonly name: string;
  readonly dtype: 'float32' | 'int64';
  readonly shape: readonly number[];
  readonly bytes: Uint8Array;
}

function tinyTensors(spec: LocalizationNetSpec = SMALL_SPEC, seed = 5): TinyTensor[] {
  return sampleStateDict(spec, seed).map(({ name, tensor }) => {
    const data = tensor.data();
    return { name, dtype: tensor.dtype as 'float32' | 'int64', shape: tensor.shape, bytes: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
  });
}

const contiguous = (shape: readonly number[]) => {
  const stride = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    stride[i] = s;
    s *= shape[i]!;
  }
  return stride;
};
const numel = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/** The tiny model with each tensor in its own storage (as torch.save writes it): tensors and records. */
function tinyModel(): { tensors: Array<readonly [string, TensorRef]>; records: StorageRecordBytes[] } {
  const tensors: Array<readonly [string, TensorRef]> = [];
  const records: StorageRecordBytes[] = [];
  for (const [i, t] of tinyTensors().entries()) {
    const storage = { key: String(i), dtype: t.dtype, numel: numel(t.shape) };
    tensors.push([t.name, { storage, offset: 0, shape: t.shape, stride: contiguous(t.shape) }]);
    records.push({ key: storage.key, data: t.bytes });
  }
  return { tensors, records };
}

/**
 * A model whose float tensors are all views of storage '0' and int64 buffers views of storage '1'.
 * place(dtype, i) gives the i-th view's element offset in its storage (default 0: all overlap);
 * strides are contiguous unless stride0.
 */
function viewModel(
  spec: LocalizationNetSpec,
  floatNumel: number | bigint,
  intNumel: number | bigint,
  opts: { stride0?: boolean; place?: (dtype: 'float32' | 'int64', index: number) => number },
) {
  const floats: StorageRef = { key: '0', dtype: 'float32', numel: floatNumel };
  const ints: StorageRef = { key: '1', dtype: 'int64', numel: intNumel };
  let f = 0;
  let n = 0;
  return stateDictEntries(spec).map((entry) => {
    const storage = entry.dtype === 'int64' ? ints : floats;
    const index = entry.dtype === 'int64' ? n++ : f++;
    const stride = opts.stride0 ? entry.shape.map(() => 0) : contiguous(entry.shape);
    const offset = opts.place ? opts.place(entry.dtype, index) : 0;
    return [entry.name, { storage, offset, shape: entry.shape, stride }] as const;
  });
}

// ---------------------------------------------------------------------------------------------
// Archives.

export interface StorageRecordBytes {
  readonly key: string;
  readonly data: Uint8Array;
}

const ascii = (s: string) => Buffer.from(s, 'latin1');

/** torch.save's layout (torch-writer.ts) around a given data.pkl, with the project's ZipWriter. */
export async function writeTorchZip(path: string, pkl: Uint8Array, records: readonly StorageRecordBytes[], archive = 'archive'): Promise<void> {
  const writer = await ZipWriter.create(path);
  await writer.addEntry(`${archive}/data.pkl`, pkl);
  await writer.addEntry(`${archive}/.format_version`, ascii('1'));
  await writer.addEntry(`${archive}/.storage_alignment`, ascii('64'));
  await writer.addEntry(`${archive}/byteorder`, ascii('little'));
  for (const r of records) await writer.addEntry(`${archive}/data/${r.key}`, r.data);
  await writer.addEntry(`${archive}/version`, ascii('3\n'));
  await writer.finish();
}

export interface RawEntry {
  readonly name: string;
  /** Bytes written at the start of the entry's data. */
  readonly data?: Uint8Array;
  /** The entry's size: `data` then a hole (zeros that take no disk) up to this many bytes. */
  readonly sparseSize?: number;
  /** Stored CRC-32 (default: the real one, zeros of a hole included). */
  readonly crc?: number;
  /** Overrides of the central directory's fields. */
  readonly centralSize?: number;
  readonly centralOffset?: number;
  readonly centralExtra?: Uint8Array;
  /** Override of the local header's extra-field length (no bytes are added). */
  readonly localExtraLength?: number;
}

export interface RawZipOptions {
  readonly eocd?: { count?: number; size?: number; offset?: number };
  /** Write ZIP64 end records (before the EOCD) with these values (defaults: the real ones). */
  readonly zip64?: { count?: bigint; size?: bigint; offset?: bigint; locatorTarget?: bigint };
}

const ZERO_CHUNK = Buffer.alloc(64 << 20);

function crcWithZeros(data: Uint8Array, total: number): number {
  let crc = crc32(data);
  for (let left = total - data.byteLength; left > 0; left -= ZERO_CHUNK.byteLength) {
    crc = crc32(left >= ZERO_CHUNK.byteLength ? ZERO_CHUNK : ZERO_CHUNK.subarray(0, left), crc);
  }
  return crc >>> 0;
}

/**
 * A stored-entries zip written field by field (APPNOTE §4.3), 64-byte aligned like torch's, where
 * every field can be made wrong and an entry can be a hole: the file is written with positional
 * writes, so the bytes never written stay sparse.
 */
export async function writeRawZip(path: string, entries: readonly RawEntry[], options: RawZipOptions = {}): Promise<void> {
  const file = await open(path, 'w');
  try {
    let pos = 0;
    const central: Buffer[] = [];
    for (const e of entries) {
      const name = Buffer.from(e.name, 'utf8');
      const data = e.data ?? new Uint8Array(0);
      const size = e.sparseSize ?? data.byteLength;
      const crc = e.crc ?? crcWithZeros(data, size);
      const pad = (64 - ((pos + 30 + name.byteLength + 4) % 64)) % 64;
      const extra = Buffer.alloc(4 + pad, 'Z');
      extra.writeUInt16LE(0x4246, 0);
      extra.writeUInt16LE(pad, 2);
      const local = Buffer.alloc(30);
      local.writeUInt32LE(0x04034b50, 0);
      local.writeUInt16LE(20, 4);
      local.writeUInt16LE(33, 12); // 1980-01-01
      local.writeUInt32LE(crc, 14);
      local.writeUInt32LE(size, 18);
      local.writeUInt32LE(size, 22);
      local.writeUInt16LE(name.byteLength, 26);
      local.writeUInt16LE(e.localExtraLength ?? extra.byteLength, 28);
      await file.write(Buffer.concat([local, name, extra]), 0, undefined, pos);
      const dataAt = pos + 30 + name.byteLength + extra.byteLength;
      if (data.byteLength > 0) await file.write(data, 0, data.byteLength, dataAt);
      const centralExtra = e.centralExtra ?? new Uint8Array(0);
      const header = Buffer.alloc(46);
      header.writeUInt32LE(0x02014b50, 0);
      header.writeUInt16LE(20, 4);
      header.writeUInt16LE(20, 6);
      header.writeUInt16LE(33, 14);
      header.writeUInt32LE(crc, 16);
      header.writeUInt32LE(e.centralSize ?? size, 20);
      header.writeUInt32LE(e.centralSize ?? size, 24);
      header.writeUInt16LE(name.byteLength, 28);
      header.writeUInt16LE(centralExtra.byteLength, 30);
      header.writeUInt32LE(e.centralOffset ?? pos, 42);
      central.push(header, name, Buffer.from(centralExtra));
      pos = dataAt + size;
    }
    const directory = Buffer.concat(central);
    const directoryAt = pos;
    const tail: Buffer[] = [directory];
    if (options.zip64) {
      const record = Buffer.alloc(56);
      record.writeUInt32LE(0x06064b50, 0);
      record.writeBigUInt64LE(44n, 4);
      record.writeUInt16LE(45, 12);
      record.writeUInt16LE(45, 14);
      record.writeBigUInt64LE(options.zip64.count ?? BigInt(entries.length), 24);
      record.writeBigUInt64LE(options.zip64.count ?? BigInt(entries.length), 32);
      record.writeBigUInt64LE(options.zip64.size ?? BigInt(directory.byteLength), 40);
      record.writeBigUInt64LE(options.zip64.offset ?? BigInt(directoryAt), 48);
      const locator = Buffer.alloc(20);
      locator.writeUInt32LE(0x07064b50, 0);
      locator.writeBigUInt64LE(options.zip64.locatorTarget ?? BigInt(directoryAt + directory.byteLength), 8);
      locator.writeUInt32LE(1, 16);
      tail.push(record, locator);
    }
    const eocd = Buffer.alloc(22);
    eocd.writeUInt32LE(0x06054b50, 0);
    eocd.writeUInt16LE(options.eocd?.count ?? Math.min(entries.length, 0xffff), 8);
    eocd.writeUInt16LE(options.eocd?.count ?? Math.min(entries.length, 0xffff), 10);
    eocd.writeUInt32LE(options.eocd?.size ?? directory.byteLength, 12);
    eocd.writeUInt32LE(options.eocd?.offset ?? directoryAt, 16);
    tail.push(eocd);
    await file.write(Buffer.concat(tail), 0, undefined, directoryAt);
  } finally {
    await file.close();
  }
}

/** torch.save's records as raw entries: data.pkl, the small text records, the storages, version. */
function torchEntries(pkl: RawEntry | Uint8Array, records: readonly (StorageRecordBytes | RawEntry)[], archive = 'archive'): RawEntry[] {
  const pklEntry = pkl instanceof Uint8Array ? { name: `${archive}/data.pkl`, data: pkl } : pkl;
  return [
    pklEntry,
    { name: `${archive}/.format_version`, data: ascii('1') },
    { name: `${archive}/byteorder`, data: ascii('little') },
    ...records.map((r) => ('key' in r ? { name: `${archive}/data/${r.key}`, data: r.data } : r)),
    { name: `${archive}/version`, data: ascii('3\n') },
  ];
}

/** The tiny model as raw entries, with `change` applied to the entries before they are written. */
async function tinyRawZip(path: string, change: (entries: RawEntry[]) => RawEntry[], options: RawZipOptions = {}): Promise<string> {
  const { tensors, records } = tinyModel();
  await writeRawZip(path, change(torchEntries(modelPickle({ tensors }), records)), options);
  return path;
}

// ---------------------------------------------------------------------------------------------
// safetensors (https://github.com/huggingface/safetensors, "Format").

const ST_DTYPE = { float32: 'F32', int64: 'I64' } as const;

function safetensors(header: Record<string, unknown>, data: Uint8Array): Buffer {
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  json = Buffer.concat([json, Buffer.alloc((8 - (json.byteLength % 8)) % 8, 0x20)]);
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(json.byteLength));
  return Buffer.concat([length, json, data]);
}

function tinySafetensors(metadata?: Record<string, string>, extra: Record<string, unknown> = {}): Buffer {
  const header: Record<string, unknown> = metadata ? { __metadata__: metadata } : {};
  const parts: Uint8Array[] = [];
  let at = 0;
  for (const t of tinyTensors()) {
    header[t.name] = { dtype: ST_DTYPE[t.dtype], shape: t.shape, data_offsets: [at, at + t.bytes.byteLength] };
    parts.push(t.bytes);
    at += t.bytes.byteLength;
  }
  return safetensors({ ...header, ...extra }, Buffer.concat(parts));
}

/** safetensors with only a length prefix and a header text (no tensors follow unless `data`). */
function safetensorsRawHeader(length: bigint, text: string): Buffer {
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(length);
  return Buffer.concat([prefix, Buffer.from(text, 'utf8')]);
}

// ---------------------------------------------------------------------------------------------
// Helpers for the cases.

/** mulberry32: deterministic bytes. */
function randomBytes(n: number, seed: number): Buffer {
  const out = Buffer.alloc(n);
  let a = seed >>> 0;
  for (let i = 0; i < n; i++) {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = ((t ^ (t >>> 14)) >>> 0) & 0xff;
  }
  return out;
}

/** Random bytes that no reader can mistake for a zip, a legacy pickle or safetensors. */
function plainRandom(n: number, seed: number): Buffer {
  const b = randomBytes(n, seed);
  if (b[0] === 0x50 || b[0] === 0x80) b[0] = 0x00;
  if (b.byteLength > 8 && b[8] === 0x7b) b[8] = 0x00;
  return b;
}

async function write(ctx: CorpusContext, name: string, bytes: Uint8Array): Promise<string> {
  const path = ctx.path(name);
  await writeFile(path, bytes);
  return path;
}

/** A valid tiny model (own storages) with `payload` emitted as root['payload']: only the payload is wrong. */
async function modelWith(ctx: CorpusContext, name: string, payload: Emit, protocol = 2): Promise<string> {
  const { tensors, records } = tinyModel();
  const path = ctx.path(name);
  await writeTorchZip(path, modelPickle({ tensors, extras: [['payload', payload]], protocol }), records);
  return path;
}

/** `module.name(*args)` by REDUCE. */
const call =
  (module: string, name: string, args: Emit = (o) => o.emptyTuple()): Emit =>
  (o) => {
    o.global(module, name, false);
    args(o);
    o.reduce();
  };
const strArgs =
  (...values: string[]): Emit =>
  (o) => {
    o.mark();
    for (const v of values) o.str(v);
    o.tuple();
  };

/** A sample checkpoint (project writers) of the tiny spec whose config/hyper_parameters get `config`. */
async function withConfig(ctx: CorpusContext, name: string, config: Record<string, PickleValue>, layout: 'model_state_dict' | 'lightning' = 'model_state_dict'): Promise<string> {
  const { root } = sampleCheckpointRoot({ variant: 'custom', spec: SMALL_SPEC, seed: 5, layout });
  const key = layout === 'lightning' ? 'hyper_parameters' : 'config';
  const entries = (root as { entries: ReadonlyArray<readonly [string, PickleValue]> }).entries.map(([k, v]) =>
    k === key ? ([k, pyDict({ backbone_size: 'custom', ...config })] as const) : ([k, v] as const),
  );
  const path = ctx.path(name);
  await writeTorchCheckpoint(path, pyDict(entries as Array<readonly [string, PickleValue]>));
  return path;
}

async function truncatedTiny(ctx: CorpusContext, name: string, at: (size: number) => number): Promise<string> {
  const bytes = await ctx.tinyCheckpoint();
  return write(ctx, name, bytes.subarray(0, at(bytes.byteLength)));
}

const GiB = 1 << 30;

// ---------------------------------------------------------------------------------------------
// The corpus.

const C = {
  PICKLE_INVALID: 'PICKLE_INVALID',
  UNSAFE_PICKLE: 'UNSAFE_PICKLE',
  CHECKPOINT_CORRUPT: 'CHECKPOINT_CORRUPT',
  TENSOR_OUT_OF_BOUNDS: 'TENSOR_OUT_OF_BOUNDS',
  SAFETENSORS_INVALID: 'SAFETENSORS_INVALID',
  NOT_A_FILE: 'NOT_A_FILE',
  INVALID_CONFIG: 'INVALID_CONFIG',
  UNSUPPORTED_FORMAT: 'UNSUPPORTED_FORMAT',
  INVALID_STATE_DICT: 'INVALID_STATE_DICT',
} as const;

const unsafeCall = (name: string, module: string, fn: string, args?: Emit): HostileCase => ({
  name: `call_${name}`,
  group: 'non-allowlisted call',
  expect: [C.UNSAFE_PICKLE],
  make: (ctx) => modelWith(ctx, `call_${name}.pt`, call(module, fn, args)),
});

const pythonCase = (file: string, group: string, expect: readonly Outcome[]): HostileCase => ({
  name: `py_${file.replace(/\.pt$/, '')}`,
  group,
  expect,
  make: (ctx) => ctx.pythonFixture(file),
});

export const HOSTILE_CASES: readonly HostileCase[] = [
  // --- sanity: the harness sees success, and valid files with unusual (legal) layouts stay exportable
  { name: 'valid_tiny', group: 'sanity', expect: [OK], make: async (ctx) => (await ctx.tinyCheckpoint(), ctx.path('tiny-source.pth')) },
  {
    name: 'valid_tiny_raw_pickle',
    group: 'sanity',
    expect: [OK],
    make: async (ctx) => {
      const { tensors, records } = tinyModel();
      await writeTorchZip(ctx.path('valid_tiny_raw_pickle.pt'), modelPickle({ tensors }), records);
      return ctx.path('valid_tiny_raw_pickle.pt');
    },
  },
  { name: 'valid_tiny_safetensors', group: 'sanity', expect: [OK], make: (ctx) => write(ctx, 'valid_tiny.safetensors', tinySafetensors()) },
  {
    // ~100 views of one 1 GiB (sparse) storage, each with its own range: legal, and each tensor
    // must read only its own bytes (the old reader re-read the whole GiB per tensor: 5.2 GB).
    name: 'views_of_1gib_storage',
    group: 'views of one 1 GiB storage',
    expect: [OK],
    make: (ctx) => viewsOfOneGiB(ctx, 'views_of_1gib_storage.pt', false),
  },

  // --- pickle work and memory bounded by the pickle's size
  {
    // _codecs.encode over nested memo references: 1 KB string, lists of 16 references, 5 levels:
    // each call stringifies ~256 MB; 20 calls.
    name: 'codecs_encode_nested_refs',
    group: 'pickle bomb',
    expect: [C.PICKLE_INVALID],
    make: (ctx) =>
      modelWith(ctx, 'codecs_encode_nested_refs.pt', (o) => {
        // Each value is memoized and POPped: only the memo holds them.
        o.str('A'.repeat(1024));
        let slot = o.put();
        o.op(0x30);
        for (const fanout of [16, 16, 16, 16, 4]) {
          o.emptyList();
          const list = o.put();
          o.mark();
          for (let i = 0; i < fanout; i++) o.get(slot);
          o.appends().op(0x30);
          slot = list;
        }
        o.emptyList().mark();
        for (let i = 0; i < 20; i++) o.global('_codecs', 'encode').get(slot).str('latin1').tuple2().reduce();
        o.appends();
      }),
  },
  {
    // The Python-plausible form: one 1 MB str encoded 3000 times (3 GB of bytes from 1 MB).
    name: 'codecs_encode_repeat_1mb',
    group: 'pickle bomb',
    expect: [C.PICKLE_INVALID],
    make: (ctx) =>
      modelWith(ctx, 'codecs_encode_repeat_1mb.pt', (o) => {
        o.str('B'.repeat(1 << 20));
        const slot = o.put();
        o.op(0x30);
        o.emptyList().mark();
        for (let i = 0; i < 3000; i++) o.global('_codecs', 'encode').get(slot).str('latin1').tuple2().reduce();
        o.appends();
      }),
  },
  { name: 'long4_256kb', group: 'LONG4', expect: [C.PICKLE_INVALID], make: (ctx) => modelWith(ctx, 'long4_256kb.pt', (o) => o.long4(256 << 10)) },
  { name: 'long4_2mb', group: 'LONG4', expect: [C.PICKLE_INVALID], make: (ctx) => modelWith(ctx, 'long4_2mb.pt', (o) => o.long4(2 << 20)) },
  {
    // data.pkl of 3.5 GB (a valid model pickle, then a hole), CRC right: the record must be capped, not read.
    name: 'data_pkl_3_5gb_sparse',
    group: 'pickle record size',
    expect: [C.PICKLE_INVALID],
    make: async (ctx) => {
      const { tensors, records } = tinyModel();
      const path = ctx.path('data_pkl_3_5gb_sparse.pt');
      await writeRawZip(path, torchEntries({ name: 'archive/data.pkl', data: modelPickle({ tensors }), sparseSize: 3.5e9 }, records));
      return path;
    },
  },
  {
    // A 500k-item APPENDS as the whole pickle (was: stack overflow, reported as retriable IO_ERROR).
    name: 'appends_500k',
    group: 'APPENDS',
    expect: [C.PICKLE_INVALID, C.INVALID_STATE_DICT],
    make: async (ctx) => {
      const o = new PickleOps().proto(2).emptyList().mark();
      for (let i = 0; i < 500_000; i++) o.op(0x4b, i & 0xff);
      await writeTorchZip(ctx.path('appends_500k.pt'), o.appends().stop().bytes(), []);
      return ctx.path('appends_500k.pt');
    },
  },
  {
    // The same 500k items in a valid model's extra entry: loading it is legal (torch would), refusing it too.
    name: 'appends_500k_in_model',
    group: 'APPENDS',
    expect: [OK, C.PICKLE_INVALID],
    make: (ctx) =>
      modelWith(ctx, 'appends_500k_in_model.pt', (o) => {
        o.emptyList().mark();
        for (let i = 0; i < 500_000; i++) o.op(0x4b, i & 0xff);
        o.appends();
      }),
  },
  {
    // A DAG of memo references in the config: 6 KB that a naive tree walk turns into 10^9 values.
    name: 'nested_refs_in_config',
    group: 'pickle bomb',
    expect: [OK, C.PICKLE_INVALID, C.INVALID_CONFIG],
    make: async (ctx) => {
      const { tensors, records } = tinyModel();
      const config: Emit = (o) => {
        o.emptyList().mark();
        for (let i = 0; i < 1000; i++) o.int(i & 0xff);
        o.appends();
        let slot = o.put();
        for (let level = 0; level < 2; level++) {
          o.op(0x30).emptyList();
          const list = o.put();
          o.mark();
          for (let i = 0; i < 1000; i++) o.get(slot);
          o.appends();
          slot = list;
        }
        o.op(0x30);
        o.emptyDict().mark().str('uncertainty_min').float(0.01).str('uncertainty_max').float(1).str('history').get(slot).setitems();
      };
      const path = ctx.path('nested_refs_in_config.pt');
      await writeTorchZip(path, modelPickle({ tensors, extras: [['config', config]] }), records);
      return path;
    },
  },
  {
    // 300k nested lists (600 KB): nothing may recurse over it.
    name: 'deep_nesting_300k',
    group: 'pickle bomb',
    expect: [OK, C.PICKLE_INVALID],
    make: (ctx) =>
      modelWith(ctx, 'deep_nesting_300k.pt', (o) => {
        o.raw(Buffer.alloc(300_000, 0x5d)); // EMPTY_LIST x n
        o.raw(Buffer.alloc(300_000 - 1, 0x61)); // APPEND x n-1: each list into the one below it
      }),
  },
  {
    name: 'binunicode8_claims_1tb',
    group: 'pickle size',
    expect: [C.PICKLE_INVALID],
    make: (ctx) =>
      modelWith(
        ctx,
        'binunicode8_claims_1tb.pt',
        (o) => {
          const b = Buffer.alloc(9);
          b[0] = 0x8d;
          b.writeBigUInt64LE(1n << 40n, 1);
          o.raw(b);
        },
        4,
      ),
  },

  // --- calls of globals outside torch's weights_only allowlist, in a valid model: one of each way
  // to call (REDUCE, NEWOBJ, BUILD, STACK_GLOBAL, CPython's own encoding); the table of refused
  // globals is shared/checkpoint/torch-globals.test.ts.
  unsafeCall('cprofile_run', 'cProfile', 'run', strArgs('import os; os.system("true")')),
  unsafeCall('pydoc_locate', 'pydoc', 'locate', strArgs('os.system')),
  unsafeCall('os_system', 'os', 'system', strArgs('true')),
  unsafeCall('builtins_getattr', '__builtin__', 'getattr', (o) => o.global('os', 'path', false).str('join').tuple2()),
  {
    name: 'newobj_trace_trace',
    group: 'non-allowlisted call',
    expect: [C.UNSAFE_PICKLE],
    make: (ctx) => modelWith(ctx, 'newobj_trace_trace.pt', (o) => o.global('trace', 'Trace', false).emptyTuple().newobj()),
  },
  {
    name: 'build_on_logging_root',
    group: 'non-allowlisted call',
    expect: [C.UNSAFE_PICKLE],
    make: (ctx) => modelWith(ctx, 'build_on_logging_root.pt', (o) => o.global('logging', 'root', false).emptyDict().str('disabled').bool(true).setitem().build()),
  },
  {
    name: 'stack_global_pydoc_locate',
    group: 'non-allowlisted call',
    expect: [C.UNSAFE_PICKLE],
    make: (ctx) => modelWith(ctx, 'stack_global_pydoc_locate.pt', (o) => o.shortStr('pydoc').shortStr('locate').stackGlobal().str('os.system').tuple1().reduce(), 4),
  },
  pythonCase('os_system.pt', 'non-allowlisted call', [C.UNSAFE_PICKLE]),
  pythonCase('call_cprofile_run.pt', 'non-allowlisted call', [C.UNSAFE_PICKLE]),

  // --- tensors: bounds, stride-0 and overlapping weights, huge dims
  {
    // ConvNeXt-large (197M parameters) with every weight a stride-0 view of one float: tens of KB.
    name: 'stride0_large_model',
    group: 'stride-0 weights',
    expect: [C.TENSOR_OUT_OF_BOUNDS],
    make: async (ctx) => {
      const path = ctx.path('stride0_large_model.pt');
      const tensors = viewModel(specForVariant('large'), 1, 1, { stride0: true });
      await writeTorchZip(path, modelPickle({ tensors }), [
        { key: '0', data: new Uint8Array(new Float32Array([0.01]).buffer) },
        { key: '1', data: new Uint8Array(new BigInt64Array([1n]).buffer) },
      ]);
      return path;
    },
  },
  {
    // Every weight of the tiny model a contiguous view at offset 0 of one storage as big as the largest.
    name: 'overlapping_views_model',
    group: 'stride-0 weights',
    expect: [C.TENSOR_OUT_OF_BOUNDS],
    make: async (ctx) => {
      const largest = Math.max(...stateDictEntries(SMALL_SPEC).map((e) => numel(e.shape)));
      const path = ctx.path('overlapping_views_model.pt');
      await writeTorchZip(path, modelPickle({ tensors: viewModel(SMALL_SPEC, largest, 1, {}) }), [
        { key: '0', data: new Uint8Array(largest * 4).fill(0x3c) },
        { key: '1', data: new Uint8Array(8) },
      ]);
      return path;
    },
  },
  {
    // The tiny model's structure at 65536x the width (10^14 parameters), all stride 0 (was: "Invalid typed array length").
    name: 'huge_dims_model',
    group: 'huge dims',
    expect: [C.TENSOR_OUT_OF_BOUNDS],
    make: async (ctx) => {
      const spec: LocalizationNetSpec = { ...SMALL_SPEC, dims: SMALL_SPEC.dims.map((d) => d * 65536) };
      const path = ctx.path('huge_dims_model.pt');
      await writeTorchZip(path, modelPickle({ tensors: viewModel(spec, 1, 1, { stride0: true }) }), [
        { key: '0', data: new Uint8Array(4) },
        { key: '1', data: new Uint8Array(8) },
      ]);
      return path;
    },
  },
  {
    // A valid model plus one unused tensor of 2^93 elements (stride 0): the size overflows.
    name: 'huge_dims_extra_tensor',
    group: 'huge dims',
    expect: [C.TENSOR_OUT_OF_BOUNDS],
    make: (ctx) => tensorCase(ctx, 'huge_dims_extra_tensor.pt', { numel: 1, offset: 0, shape: [2 ** 31, 2 ** 31, 2 ** 31], stride: [0, 0, 0] }),
  },
  {
    name: 'negative_stride',
    group: 'tensor bounds',
    expect: [C.TENSOR_OUT_OF_BOUNDS],
    make: (ctx) => tensorCase(ctx, 'negative_stride.pt', { numel: 16, offset: 15, shape: [16], stride: [-1] }),
  },
  {
    name: 'offset_2_pow_70',
    group: 'tensor bounds',
    expect: [C.TENSOR_OUT_OF_BOUNDS],
    make: (ctx) => tensorCase(ctx, 'offset_2_pow_70.pt', { numel: 16, offset: 1n << 70n, shape: [4], stride: [1] }),
  },
  {
    name: 'storage_numel_2_pow_62',
    group: 'tensor bounds',
    expect: [C.TENSOR_OUT_OF_BOUNDS, C.PICKLE_INVALID],
    make: (ctx) => tensorCase(ctx, 'storage_numel_2_pow_62.pt', { numel: 1n << 62n, offset: 0, shape: [4], stride: [1] }),
  },
  pythonCase('storage_short.pt', 'tensor bounds', [C.TENSOR_OUT_OF_BOUNDS]),
  pythonCase('offset_out_of_bounds.pt', 'tensor bounds', [C.TENSOR_OUT_OF_BOUNDS]),
  pythonCase('stride_out_of_bounds.pt', 'tensor bounds', [C.TENSOR_OUT_OF_BOUNDS]),
  pythonCase('non_tensor_weight.pt', 'state dict', [C.INVALID_STATE_DICT]),
  {
    // The 1 GiB views again, the big record's CRC wrong: found by the one streaming pass, not by re-reading.
    name: 'views_of_1gib_storage_bad_crc',
    group: 'views of one 1 GiB storage',
    expect: [C.CHECKPOINT_CORRUPT],
    make: (ctx) => viewsOfOneGiB(ctx, 'views_of_1gib_storage_bad_crc.pt', true),
  },

  // --- zip structure
  {
    // The last central entry saturates its size and has a 4-byte extra field whose ZIP64 block claims 24 bytes.
    name: 'zip64_extra_longer_than_field',
    group: 'zip structure',
    expect: [C.CHECKPOINT_CORRUPT],
    make: (ctx) =>
      tinyRawZip(ctx.path('zip64_extra_longer_than_field.pt'), (entries) => {
        const last = entries.pop()!;
        return [...entries, { ...last, centralSize: 0xffffffff, centralExtra: Uint8Array.of(0x01, 0x00, 0x18, 0x00) }];
      }),
  },
  {
    name: 'zip64_locator_past_end',
    group: 'zip structure',
    expect: [C.CHECKPOINT_CORRUPT],
    make: (ctx) => tinyRawZip(ctx.path('zip64_locator_past_end.pt'), (e) => e, { zip64: { locatorTarget: 1n << 40n } }),
  },
  {
    name: 'zip64_eocd_count_2_pow_40',
    group: 'zip structure',
    expect: [C.CHECKPOINT_CORRUPT],
    make: (ctx) => tinyRawZip(ctx.path('zip64_eocd_count_2_pow_40.pt'), (e) => e, { zip64: { count: 1n << 40n } }),
  },
  {
    name: 'zip64_eocd_directory_2_pow_62',
    group: 'zip structure',
    expect: [C.CHECKPOINT_CORRUPT],
    make: (ctx) => tinyRawZip(ctx.path('zip64_eocd_directory_2_pow_62.pt'), (e) => e, { zip64: { size: 1n << 62n } }),
  },
  {
    name: 'eocd_count_saturated_without_zip64',
    group: 'zip structure',
    expect: [C.CHECKPOINT_CORRUPT],
    make: (ctx) => tinyRawZip(ctx.path('eocd_count_saturated_without_zip64.pt'), (e) => e, { eocd: { count: 0xffff } }),
  },
  {
    name: 'eocd_directory_past_end',
    group: 'zip structure',
    expect: [C.CHECKPOINT_CORRUPT],
    make: (ctx) => tinyRawZip(ctx.path('eocd_directory_past_end.pt'), (e) => e, { eocd: { offset: 0xfffffff0 } }),
  },
  {
    name: 'entry_claims_3gb',
    group: 'zip structure',
    expect: [C.CHECKPOINT_CORRUPT],
    make: (ctx) => tinyRawZip(ctx.path('entry_claims_3gb.pt'), (e) => e.map((x) => (x.name === 'archive/data/0' ? { ...x, centralSize: 3_000_000_000 } : x))),
  },
  {
    name: 'data_pkl_claims_3_5gb',
    group: 'zip structure',
    expect: [C.CHECKPOINT_CORRUPT, C.PICKLE_INVALID],
    make: (ctx) => tinyRawZip(ctx.path('data_pkl_claims_3_5gb.pt'), (e) => e.map((x) => (x.name === 'archive/data.pkl' ? { ...x, centralSize: 3_500_000_000 } : x))),
  },
  {
    name: 'local_header_missing',
    group: 'zip structure',
    expect: [C.CHECKPOINT_CORRUPT],
    make: (ctx) => tinyRawZip(ctx.path('local_header_missing.pt'), (e) => e.map((x) => (x.name === 'archive/data/3' ? { ...x, centralOffset: 7 } : x))),
  },
  {
    name: 'local_extra_past_end',
    group: 'zip structure',
    expect: [C.CHECKPOINT_CORRUPT],
    make: (ctx) => tinyRawZip(ctx.path('local_extra_past_end.pt'), (e) => e.map((x) => (x.name === 'archive/version' ? { ...x, localExtraLength: 0xffff } : x))),
  },
  {
    name: 'crc_mismatch_pickle',
    group: 'zip structure',
    expect: [C.CHECKPOINT_CORRUPT],
    make: (ctx) => tinyRawZip(ctx.path('crc_mismatch_pickle.pt'), (e) => e.map((x) => (x.name === 'archive/data.pkl' ? { ...x, crc: 0x12345678 } : x))),
  },
  {
    name: 'crc_mismatch_storage',
    group: 'zip structure',
    expect: [C.CHECKPOINT_CORRUPT],
    make: (ctx) => tinyRawZip(ctx.path('crc_mismatch_storage.pt'), (e) => e.map((x) => (x.name === 'archive/data/5' ? { ...x, crc: 0x12345678 } : x))),
  },
  {
    name: 'storage_record_missing',
    group: 'zip structure',
    expect: [C.CHECKPOINT_CORRUPT],
    make: (ctx) => tinyRawZip(ctx.path('storage_record_missing.pt'), (e) => e.filter((x) => x.name !== 'archive/data/7')),
  },
  {
    name: 'no_data_pkl',
    group: 'zip structure',
    expect: [C.UNSUPPORTED_FORMAT, C.CHECKPOINT_CORRUPT],
    make: (ctx) => tinyRawZip(ctx.path('no_data_pkl.pt'), (e) => e.filter((x) => x.name !== 'archive/data.pkl')),
  },
  ...[1].map((n) => ({ name: `truncated_at_${n}`, group: 'truncated', expect: [C.UNSUPPORTED_FORMAT, C.CHECKPOINT_CORRUPT], make: (ctx: CorpusContext) => truncatedTiny(ctx, `truncated_at_${n}.pt`, () => n) })),
  ...(
    [
      ['4', () => 4],
      ['1000', () => 1000],
      ['half', (s: number) => Math.floor(s / 2)],
      ['end_minus_22', (s: number) => s - 22],
      ['end_minus_1', (s: number) => s - 1],
    ] as const
  ).map(([label, at]) => ({
    name: `truncated_at_${label}`,
    group: 'truncated',
    expect: [C.CHECKPOINT_CORRUPT],
    make: (ctx: CorpusContext) => truncatedTiny(ctx, `truncated_at_${label}.pt`, at),
  })),

  // --- safetensors
  {
    name: 'st_dtype_proto',
    group: 'safetensors',
    expect: [C.SAFETENSORS_INVALID],
    make: (ctx) => write(ctx, 'st_dtype_proto.safetensors', tinySafetensors(undefined, { extra: { dtype: '__proto__', shape: [1], data_offsets: [0, 4] } })),
  },
  {
    name: 'st_dtype_constructor',
    group: 'safetensors',
    expect: [C.SAFETENSORS_INVALID],
    make: (ctx) => write(ctx, 'st_dtype_constructor.safetensors', safetensors({ w: { dtype: 'constructor', shape: [1], data_offsets: [0, 4] } }, new Uint8Array(4))),
  },
  {
    name: 'st_header_claims_100mb',
    group: 'safetensors',
    expect: [C.SAFETENSORS_INVALID],
    make: (ctx) => write(ctx, 'st_header_claims_100mb.safetensors', safetensorsRawHeader(100_000_000n, '{"__metadata__":{"a":"b"}}')),
  },
  {
    // A header of exactly the reference cap, 100 MB, real (sparse: the hole is zeros, so not JSON).
    name: 'st_header_100mb_sparse',
    group: 'safetensors',
    expect: [C.SAFETENSORS_INVALID],
    make: async (ctx) => {
      const path = await write(ctx, 'st_header_100mb_sparse.safetensors', safetensorsRawHeader(100_000_000n, '{"__metadata__":{"a":"'));
      await truncate(path, 8 + 100_000_000);
      return path;
    },
  },
  {
    name: 'st_header_length_u64_max',
    group: 'safetensors',
    expect: [C.SAFETENSORS_INVALID],
    make: (ctx) => write(ctx, 'st_header_length_u64_max.safetensors', safetensorsRawHeader(0xffffffffffffffffn, '{}')),
  },
  {
    name: 'st_huge_shape',
    group: 'safetensors',
    expect: [C.SAFETENSORS_INVALID],
    make: (ctx) => write(ctx, 'st_huge_shape.safetensors', safetensors({ w: { dtype: 'F32', shape: [2 ** 32, 2 ** 32], data_offsets: [0, 4] } }, new Uint8Array(4))),
  },
  {
    name: 'st_truncated',
    group: 'safetensors',
    expect: [C.SAFETENSORS_INVALID, C.CHECKPOINT_CORRUPT],
    make: (ctx) => {
      const bytes = tinySafetensors();
      return write(ctx, 'st_truncated.safetensors', bytes.subarray(0, bytes.byteLength - 1000));
    },
  },

  // --- config values read from checkpoints
  { name: 'config_range_negative', group: 'config', expect: [C.INVALID_CONFIG], make: (ctx) => withConfig(ctx, 'config_range_negative.pt', { uncertainty_min: pyFloat(-5), uncertainty_max: pyFloat(-1) }) },
  { name: 'config_range_pm_1e308', group: 'config', expect: [C.INVALID_CONFIG], make: (ctx) => withConfig(ctx, 'config_range_pm_1e308.pt', { uncertainty_min: pyFloat(-1e308), uncertainty_max: pyFloat(1e308) }) },
  { name: 'config_max_1e308', group: 'config', expect: [C.INVALID_CONFIG], make: (ctx) => withConfig(ctx, 'config_max_1e308.pt', { uncertainty_min: pyFloat(0.01), uncertainty_max: pyFloat(1e308) }) },
  { name: 'config_max_hex_string', group: 'config', expect: [C.INVALID_CONFIG], make: (ctx) => withConfig(ctx, 'config_max_hex_string.pt', { uncertainty_min: pyFloat(0.01), uncertainty_max: '0x10' }) },
  { name: 'config_min_nan', group: 'config', expect: [C.INVALID_CONFIG], make: (ctx) => withConfig(ctx, 'config_min_nan.pt', { uncertainty_min: pyFloat(Number.NaN), uncertainty_max: pyFloat(1) }) },
  { name: 'config_min_above_max', group: 'config', expect: [C.INVALID_CONFIG], make: (ctx) => withConfig(ctx, 'config_min_above_max.pt', { uncertainty_min: pyFloat(1), uncertainty_max: pyFloat(0.5) }) },
  {
    name: 'lightning_config_range_negative',
    group: 'config',
    expect: [C.INVALID_CONFIG],
    make: (ctx) => withConfig(ctx, 'lightning_config_range_negative.ckpt', { uncertainty_min: pyFloat(-5), uncertainty_max: pyFloat(-1) }, 'lightning'),
  },
  {
    name: 'st_config_range_negative',
    group: 'config',
    expect: [C.INVALID_CONFIG],
    make: (ctx) => write(ctx, 'st_config_range_negative.safetensors', tinySafetensors({ uncertainty_min: '-5', uncertainty_max: '-1' })),
  },
  {
    name: 'st_config_max_hex',
    group: 'config',
    expect: [C.INVALID_CONFIG],
    make: (ctx) => write(ctx, 'st_config_max_hex.safetensors', tinySafetensors({ uncertainty_min: '0.01', uncertainty_max: '0x10' })),
  },

  // --- only regular files are read
  {
    name: 'fifo',
    group: 'special file',
    expect: [C.NOT_A_FILE],
    make: async (ctx) => {
      await promisify(execFile)('mkfifo', [ctx.path('fifo.pt')]);
      return ctx.path('fifo.pt');
    },
  },
  {
    name: 'symlink_to_fifo',
    group: 'special file',
    expect: [C.NOT_A_FILE],
    make: async (ctx) => {
      await promisify(execFile)('mkfifo', [ctx.path('fifo-target')]);
      await symlink(ctx.path('fifo-target'), ctx.path('symlink_to_fifo.pt'));
      return ctx.path('symlink_to_fifo.pt');
    },
  },
  {
    name: 'directory',
    group: 'special file',
    expect: [C.NOT_A_FILE],
    make: async (ctx) => {
      await mkdir(ctx.path('directory.pt'));
      return ctx.path('directory.pt');
    },
  },
  { name: 'dev_zero', group: 'special file', expect: [C.NOT_A_FILE], make: async () => '/dev/zero' },
  { name: 'unix_socket', group: 'special file', expect: [C.NOT_A_FILE], make: (ctx) => ctx.unixSocket(ctx.path('socket.pt')) },

  // --- not a checkpoint at all
  { name: 'empty_file', group: 'random bytes', expect: [C.UNSUPPORTED_FORMAT, C.CHECKPOINT_CORRUPT], make: (ctx) => write(ctx, 'empty_file.pt', new Uint8Array(0)) },
  { name: 'random_1kb', group: 'random bytes', expect: [C.UNSUPPORTED_FORMAT], make: (ctx) => write(ctx, 'random_1kb.pt', plainRandom(1024, 1)) },
  { name: 'random_64kb', group: 'random bytes', expect: [C.UNSUPPORTED_FORMAT], make: (ctx) => write(ctx, 'random_64kb.pt', plainRandom(64 << 10, 2)) },
  { name: 'random_2mb', group: 'random bytes', expect: [C.UNSUPPORTED_FORMAT], make: (ctx) => write(ctx, 'random_2mb.pt', plainRandom(2 << 20, 3)) },
  {
    name: 'random_after_pickle_magic',
    group: 'random bytes',
    expect: [C.UNSUPPORTED_FORMAT],
    make: (ctx) => write(ctx, 'random_after_pickle_magic.pt', Buffer.concat([Buffer.from([0x80, 0x02]), randomBytes(64 << 10, 4)])),
  },
  {
    name: 'random_after_zip_magic',
    group: 'random bytes',
    expect: [C.CHECKPOINT_CORRUPT],
    make: (ctx) => write(ctx, 'random_after_zip_magic.pt', Buffer.concat([Buffer.from([0x50, 0x4b, 0x03, 0x04]), randomBytes(1 << 20, 5)])),
  },
  {
    name: 'random_after_safetensors_prefix',
    group: 'random bytes',
    expect: [C.SAFETENSORS_INVALID],
    make: (ctx) => write(ctx, 'random_after_safetensors_prefix.safetensors', Buffer.concat([safetensorsRawHeader(4096n, '{'), randomBytes(8192, 6)])),
  },
  pythonCase('legacy.pt', 'random bytes', [C.UNSUPPORTED_FORMAT]),
];

/** A valid tiny model plus one extra tensor `extra.weight` over its own storage of `numel` floats (16 stored). */
async function tensorCase(ctx: CorpusContext, name: string, t: { numel: number | bigint; offset: number | bigint; shape: (number | bigint)[]; stride: (number | bigint)[] }): Promise<string> {
  const { tensors, records } = tinyModel();
  const key = String(records.length);
  const path = ctx.path(name);
  await writeTorchZip(
    path,
    modelPickle({ tensors: [...tensors, ['extra.weight', { storage: { key, dtype: 'float32', numel: t.numel }, offset: t.offset, shape: t.shape, stride: t.stride }]] }),
    [...records, { key, data: new Uint8Array(64) }],
  );
  return path;
}

/**
 * The tiny model with every float tensor a view of one sparse 1 GiB storage record (spread over it,
 * each in its own range) and the int64 buffers views of a small second storage.
 */
async function viewsOfOneGiB(ctx: CorpusContext, name: string, badCrc: boolean): Promise<string> {
  const floatNumel = GiB / 4;
  const entries = stateDictEntries(SMALL_SPEC);
  const floats = entries.filter((e) => e.dtype === 'float32').length;
  const ints = entries.filter((e) => e.dtype === 'int64').length;
  const slot = Math.floor(floatNumel / floats);
  const tensors = viewModel(SMALL_SPEC, floatNumel, ints, { place: (dtype, i) => (dtype === 'float32' ? i * slot : i) });
  const intsRecord = new Uint8Array(new BigInt64Array(ints).fill(1000n).buffer);
  const path = ctx.path(name);
  await writeRawZip(
    path,
    torchEntries(modelPickle({ tensors }), [
      { name: 'archive/data/0', sparseSize: GiB, ...(badCrc ? { crc: 0x0badc0de } : {}) },
      { key: '1', data: intsRecord },
    ]),
  );
  return path;
}

/** Every case's input, written under ctx.dir. */
export async function buildHostileCorpus(ctx: CorpusContext, cases: readonly HostileCase[] = HOSTILE_CASES): Promise<Array<{ case: HostileCase; path: string }>> {
  const out: Array<{ case: HostileCase; path: string }> = [];
  for (const c of cases) out.push({ case: c, path: await c.make(ctx) });
  return out;
}
