import { DTYPE_BYTES, type DType } from './types.ts';

/**
 * A pickle protocol-2 emitter for the values a PyTorch checkpoint holds, writing what CPython's
 * `pickle.Pickler(protocol=2)` inside `torch.save` writes: the same opcodes, batching (APPENDS /
 * SETITEMS per 1000 items) and memo use (BINPUT after each string, container, tuple, global and
 * reduced object; BINGET when the same one comes again), matching the C `_pickle` module byte
 * for byte (checked by the tests). Two deliberate differences, both valid
 * pickle: equal strings share one memo slot (CPython memoizes by object identity), and a tensor's
 * storage is keyed by the TensorValue object (torch keys by the storage it shares).
 *
 * Tensors become `torch._utils._rebuild_tensor_v2(persistent_id(('storage', torch.<T>Storage, key,
 * 'cpu', numel)), 0, size, stride, False, collections.OrderedDict())`, exactly as torch.save does;
 * the storages themselves are returned for the caller (torch-writer.ts) to write as `data/<key>`.
 */

/** A Python float; needed because a JS number with an integral value is pickled as a Python int. */
export interface PickleFloat {
  readonly kind: 'float';
  readonly value: number;
}

export interface PickleTuple {
  readonly kind: 'tuple';
  readonly items: readonly PickleValue[];
}

export type PickleKey = string | number | bigint | boolean | null | PickleFloat | PickleTuple;

/** A plain Python `dict`, insertion-ordered. */
export interface PickleDict {
  readonly kind: 'dict';
  readonly entries: ReadonlyArray<readonly [PickleKey, PickleValue]>;
}

/** `collections.OrderedDict` (what `state_dict()` returns); `state` becomes its `__dict__` (torch's `_metadata`). */
export interface PickleOrderedDict {
  readonly kind: 'ordered_dict';
  readonly entries: ReadonlyArray<readonly [PickleKey, PickleValue]>;
  readonly state?: PickleDict;
}

/** Typed arrays a tensor's values can come in; float16 and bfloat16 are their raw bits in a Uint16Array. */
export type TensorData =
  | Float32Array
  | Float64Array
  | Uint16Array
  | BigInt64Array
  | Int32Array
  | Int16Array
  | Int8Array
  | Uint8Array;

/**
 * A contiguous CPU tensor with its own storage. `data` may be a function: it is called only when the
 * storage bytes are written, so a checkpoint can be produced holding one tensor in memory at a time.
 */
export interface TensorValue {
  readonly kind: 'tensor';
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly data: TensorData | (() => TensorData | Promise<TensorData>);
}

/**
 * What the writer can pickle:
 * - `null` → None, `boolean` → bool, `bigint` → int;
 * - `number` → int when it is integral (and not -0), float otherwise (use `pyFloat(1)` for `1.0`);
 * - `string` → str, arrays → list;
 * - tagged objects: tuple, float, dict, ordered_dict, tensor (build them with the helpers below).
 */
export type PickleValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | readonly PickleValue[]
  | PickleFloat
  | PickleTuple
  | PickleDict
  | PickleOrderedDict
  | TensorValue;

export const pyFloat = (value: number): PickleFloat => ({ kind: 'float', value });
export const pyTuple = (...items: PickleValue[]): PickleTuple => ({ kind: 'tuple', items });

type EntriesInput = Iterable<readonly [PickleKey, PickleValue]> | Readonly<Record<string, PickleValue>>;

function toEntries(input: EntriesInput): Array<readonly [PickleKey, PickleValue]> {
  if (Symbol.iterator in input && typeof (input as Iterable<unknown>)[Symbol.iterator] === 'function') {
    return [...(input as Iterable<readonly [PickleKey, PickleValue]>)];
  }
  return Object.entries(input as Readonly<Record<string, PickleValue>>);
}

/** A Python dict from a record (string keys, in insertion order), a Map or [key, value] pairs. */
export const pyDict = (input: EntriesInput): PickleDict => ({ kind: 'dict', entries: toEntries(input) });

export const pyOrderedDict = (input: EntriesInput, state?: PickleDict): PickleOrderedDict =>
  state ? { kind: 'ordered_dict', entries: toEntries(input), state } : { kind: 'ordered_dict', entries: toEntries(input) };

export function tensor(dtype: DType, shape: readonly number[], data: TensorValue['data']): TensorValue {
  return { kind: 'tensor', dtype, shape, data };
}

/** torch's storage class for each dtype, as `torch.save` names it in the pickle. */
export const STORAGE_CLASS: Readonly<Record<DType, string>> = {
  float32: 'FloatStorage',
  float64: 'DoubleStorage',
  float16: 'HalfStorage',
  bfloat16: 'BFloat16Storage',
  int64: 'LongStorage',
  int32: 'IntStorage',
  int16: 'ShortStorage',
  int8: 'CharStorage',
  uint8: 'ByteStorage',
  bool: 'BoolStorage',
};

const ARRAY_FOR_DTYPE: Readonly<Record<DType, new (length: number) => TensorData>> = {
  float32: Float32Array,
  float64: Float64Array,
  float16: Uint16Array,
  bfloat16: Uint16Array,
  int64: BigInt64Array,
  int32: Int32Array,
  int16: Int16Array,
  int8: Int8Array,
  uint8: Uint8Array,
  bool: Uint8Array,
};

/** One storage the pickle refers to; its bytes belong in the archive at `data/<key>`. */
export interface StorageRecord {
  readonly key: string;
  readonly dtype: DType;
  readonly numel: number;
  readonly byteLength: number;
  readonly tensor: TensorValue;
}

export interface PickleResult {
  readonly bytes: Uint8Array;
  /** In key order ('0', '1', …), i.e. the order in which the tensors were first met. */
  readonly storages: readonly StorageRecord[];
}

export function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) throw new RangeError(`bad tensor dimension ${d} in shape [${shape.join(', ')}]`);
    n *= d;
  }
  if (!Number.isSafeInteger(n)) throw new RangeError(`tensor of shape [${shape.join(', ')}] is too large`);
  return n;
}

/** Resolves a tensor's values and checks they match its dtype and shape. */
export async function tensorData(value: TensorValue): Promise<TensorData> {
  const data = typeof value.data === 'function' ? await value.data() : value.data;
  const expected = ARRAY_FOR_DTYPE[value.dtype];
  if (!(data instanceof expected)) {
    throw new TypeError(`tensor of dtype ${value.dtype} needs a ${expected.name}, got ${data.constructor.name}`);
  }
  const numel = numelOf(value.shape);
  if (data.length !== numel) {
    throw new RangeError(`tensor of shape [${value.shape.join(', ')}] needs ${numel} values, got ${data.length}`);
  }
  return data;
}

/** The values' bytes, little-endian as torch stores them (Node runs little-endian on every platform torch supports). */
export function tensorBytes(data: TensorData): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/** Pickles `root` (protocol 2); tensors become persistent-id references to the storages returned. */
export function pickle(root: PickleValue): PickleResult {
  const writer = new PickleEmitter();
  writer.dump(root);
  return { bytes: writer.finish(), storages: writer.storages };
}

// Opcodes (CPython Lib/pickle.py).
const OP = {
  PROTO: 0x80,
  STOP: 0x2e, // .
  MARK: 0x28, // (
  NONE: 0x4e, // N
  NEWTRUE: 0x88,
  NEWFALSE: 0x89,
  BININT: 0x4a, // J
  BININT1: 0x4b, // K
  BININT2: 0x4d, // M
  LONG1: 0x8a,
  LONG4: 0x8b,
  BINFLOAT: 0x47, // G
  BINUNICODE: 0x58, // X
  EMPTY_LIST: 0x5d, // ]
  APPEND: 0x61, // a
  APPENDS: 0x65, // e
  EMPTY_TUPLE: 0x29, // )
  TUPLE: 0x74, // t
  TUPLE1: 0x85,
  TUPLE2: 0x86,
  TUPLE3: 0x87,
  EMPTY_DICT: 0x7d, // }
  SETITEM: 0x73, // s
  SETITEMS: 0x75, // u
  GLOBAL: 0x63, // c
  REDUCE: 0x52, // R
  BUILD: 0x62, // b
  BINPERSID: 0x51, // Q
  BINPUT: 0x71, // q
  LONG_BINPUT: 0x72, // r
  BINGET: 0x68, // h
  LONG_BINGET: 0x6a, // j
} as const;

/** CPython's `_BATCHSIZE`. */
const BATCH = 1000;

class ByteSink {
  private buffer = Buffer.allocUnsafe(4096);
  length = 0;

  private reserve(n: number): void {
    if (this.length + n <= this.buffer.byteLength) return;
    let size = this.buffer.byteLength * 2;
    while (size < this.length + n) size *= 2;
    const next = Buffer.allocUnsafe(size);
    this.buffer.copy(next, 0, 0, this.length);
    this.buffer = next;
  }

  u8(v: number): void {
    this.reserve(1);
    this.buffer[this.length++] = v;
  }

  u32(v: number): void {
    this.reserve(4);
    this.buffer.writeUInt32LE(v, this.length);
    this.length += 4;
  }

  i32(v: number): void {
    this.reserve(4);
    this.buffer.writeInt32LE(v, this.length);
    this.length += 4;
  }

  u16(v: number): void {
    this.reserve(2);
    this.buffer.writeUInt16LE(v, this.length);
    this.length += 2;
  }

  f64be(v: number): void {
    this.reserve(8);
    this.buffer.writeDoubleBE(v, this.length);
    this.length += 8;
  }

  bytes(b: Uint8Array): void {
    this.reserve(b.byteLength);
    this.buffer.set(b, this.length);
    this.length += b.byteLength;
  }

  take(): Uint8Array {
    return new Uint8Array(this.buffer.subarray(0, this.length));
  }
}

class PickleEmitter {
  private readonly out = new ByteSink();
  private memoCount = 0;
  /** Containers, tuples and tensors by identity. */
  private readonly objectMemo = new Map<object, number>();
  private readonly stringMemo = new Map<string, number>();
  private readonly globalMemo = new Map<string, number>();
  private readonly storageKeys = new Map<TensorValue, StorageRecord>();
  /** Tuples being written: a tuple that contains itself cannot be pickled this way. */
  private readonly openTuples = new Set<object>();
  readonly storages: StorageRecord[] = [];

  dump(root: PickleValue): void {
    this.out.u8(OP.PROTO);
    this.out.u8(2);
    this.save(root);
    this.out.u8(OP.STOP);
  }

  finish(): Uint8Array {
    return this.out.take();
  }

  private save(value: PickleValue): void {
    if (value === null) return this.out.u8(OP.NONE);
    switch (typeof value) {
      case 'boolean':
        return this.out.u8(value ? OP.NEWTRUE : OP.NEWFALSE);
      case 'bigint':
        return this.saveInt(value);
      case 'number':
        if (Number.isInteger(value) && !Object.is(value, -0)) return this.saveInt(BigInt(value));
        return this.saveFloat(value);
      case 'string':
        return this.saveString(value);
      case 'object':
        break;
      default:
        throw new TypeError(`cannot pickle a ${typeof value}`);
    }
    if (this.getMemo(value)) return;
    if (Array.isArray(value)) return this.saveList(value as readonly PickleValue[]);
    const tagged = value as Exclude<PickleValue, null | boolean | number | bigint | string | readonly PickleValue[]>;
    switch (tagged.kind) {
      case 'float':
        return this.saveFloat(tagged.value);
      case 'tuple':
        return this.saveTuple(tagged);
      case 'dict':
        this.out.u8(OP.EMPTY_DICT);
        this.put(tagged);
        return this.saveDictItems(tagged.entries);
      case 'ordered_dict':
        return this.saveOrderedDict(tagged);
      case 'tensor':
        return this.saveTensor(tagged);
      default:
        throw new TypeError(`cannot pickle object with kind ${String((tagged as { kind?: unknown }).kind)}`);
    }
  }

  /** CPython `save_long` for protocol >= 2. */
  private saveInt(v: bigint): void {
    if (v >= 0n && v <= 0xffn) {
      this.out.u8(OP.BININT1);
      this.out.u8(Number(v));
    } else if (v >= 0n && v <= 0xffffn) {
      this.out.u8(OP.BININT2);
      this.out.u16(Number(v));
    } else if (v >= -0x80000000n && v <= 0x7fffffffn) {
      this.out.u8(OP.BININT);
      this.out.i32(Number(v));
    } else {
      const encoded = encodeLong(v);
      if (encoded.byteLength < 256) {
        this.out.u8(OP.LONG1);
        this.out.u8(encoded.byteLength);
      } else {
        this.out.u8(OP.LONG4);
        this.out.i32(encoded.byteLength);
      }
      this.out.bytes(encoded);
    }
  }

  private saveFloat(v: number): void {
    this.out.u8(OP.BINFLOAT);
    this.out.f64be(v);
  }

  private saveString(s: string): void {
    const slot = this.stringMemo.get(s);
    if (slot !== undefined) return this.get(slot);
    const bytes = Buffer.from(s, 'utf8');
    this.out.u8(OP.BINUNICODE);
    this.out.u32(bytes.byteLength);
    this.out.bytes(bytes);
    this.stringMemo.set(s, this.putSlot());
  }

  /** C pickle's `batch_list_exact`: one APPEND for a single item, else MARK … APPENDS per 1000. */
  private saveList(list: readonly PickleValue[]): void {
    this.out.u8(OP.EMPTY_LIST);
    this.put(list);
    if (list.length === 1) {
      this.save(list[0]!);
      this.out.u8(OP.APPEND);
      return;
    }
    for (let start = 0; start < list.length; start += BATCH) {
      this.out.u8(OP.MARK);
      for (let i = start; i < Math.min(list.length, start + BATCH); i++) this.save(list[i]!);
      this.out.u8(OP.APPENDS);
    }
  }

  /**
   * C pickle's `batch_dict_exact` (a plain dict): one SETITEM for a single item, else MARK …
   * SETITEMS per 1000, and, like CPython, one empty MARK SETITEMS after a full last batch.
   */
  private saveDictItems(entries: ReadonlyArray<readonly [PickleKey, PickleValue]>): void {
    if (entries.length === 0) return;
    if (entries.length === 1) {
      const [k, v] = entries[0]!;
      this.save(k);
      this.save(v);
      this.out.u8(OP.SETITEM);
      return;
    }
    let start = 0;
    let n: number;
    do {
      this.out.u8(OP.MARK);
      n = 0;
      for (; n < BATCH && start < entries.length; n++, start++) {
        const [k, v] = entries[start]!;
        this.save(k);
        this.save(v);
      }
      this.out.u8(OP.SETITEMS);
    } while (n === BATCH);
  }

  /** C pickle's `batch_dict` (items of a reduced object, e.g. OrderedDict): a lone last item gets SETITEM. */
  private saveIteratorItems(entries: ReadonlyArray<readonly [PickleKey, PickleValue]>): void {
    for (let start = 0; start < entries.length; start += BATCH) {
      const end = Math.min(entries.length, start + BATCH);
      if (end - start === 1) {
        const [k, v] = entries[start]!;
        this.save(k);
        this.save(v);
        this.out.u8(OP.SETITEM);
      } else {
        this.out.u8(OP.MARK);
        for (let i = start; i < end; i++) {
          const [k, v] = entries[i]!;
          this.save(k);
          this.save(v);
        }
        this.out.u8(OP.SETITEMS);
      }
    }
  }

  /** CPython `save_tuple` for protocol 2. */
  private saveTuple(tuple: PickleTuple): void {
    const n = tuple.items.length;
    if (n === 0) return this.out.u8(OP.EMPTY_TUPLE);
    if (this.openTuples.has(tuple)) throw new TypeError('cannot pickle a tuple that contains itself');
    this.openTuples.add(tuple);
    if (n <= 3) {
      for (const item of tuple.items) this.save(item);
      this.out.u8(n === 1 ? OP.TUPLE1 : n === 2 ? OP.TUPLE2 : OP.TUPLE3);
    } else {
      this.out.u8(OP.MARK);
      for (const item of tuple.items) this.save(item);
      this.out.u8(OP.TUPLE);
    }
    this.openTuples.delete(tuple);
    this.put(tuple);
  }

  /** `OrderedDict.__reduce__` through `save_reduce`: cls, (), REDUCE, items, then state + BUILD. */
  private saveOrderedDict(od: PickleOrderedDict): void {
    this.saveGlobal('collections', 'OrderedDict');
    this.out.u8(OP.EMPTY_TUPLE);
    this.out.u8(OP.REDUCE);
    this.put(od);
    this.saveIteratorItems(od.entries);
    if (od.state && od.state.entries.length > 0) {
      this.save(od.state);
      this.out.u8(OP.BUILD);
    }
  }

  private saveTensor(t: TensorValue): void {
    const numel = numelOf(t.shape);
    const storage = this.storageFor(t, numel);
    const strides: number[] = new Array<number>(t.shape.length);
    let stride = 1;
    for (let i = t.shape.length - 1; i >= 0; i--) {
      strides[i] = stride;
      stride *= t.shape[i]!;
    }
    this.saveGlobal('torch._utils', '_rebuild_tensor_v2');
    this.out.u8(OP.MARK);
    // persistent_id(storage) = ('storage', torch.<T>Storage, key, 'cpu', numel), loaded by BINPERSID.
    this.out.u8(OP.MARK);
    this.saveString('storage');
    this.saveGlobal('torch', STORAGE_CLASS[t.dtype]);
    this.saveString(storage.key);
    this.saveString('cpu');
    this.saveInt(BigInt(numel));
    this.out.u8(OP.TUPLE);
    this.putSlot();
    this.out.u8(OP.BINPERSID);
    this.saveInt(0n); // storage_offset
    this.saveTuple(pyTuple(...t.shape));
    this.saveTuple(pyTuple(...strides));
    this.out.u8(OP.NEWFALSE); // requires_grad
    // backward_hooks: collections.OrderedDict()
    this.saveGlobal('collections', 'OrderedDict');
    this.out.u8(OP.EMPTY_TUPLE);
    this.out.u8(OP.REDUCE);
    this.putSlot();
    this.out.u8(OP.TUPLE);
    this.putSlot(); // the args tuple, as CPython memoizes it
    this.out.u8(OP.REDUCE);
    this.put(t);
  }

  private storageFor(t: TensorValue, numel: number): StorageRecord {
    let record = this.storageKeys.get(t);
    if (!record) {
      record = { key: String(this.storages.length), dtype: t.dtype, numel, byteLength: numel * DTYPE_BYTES[t.dtype], tensor: t };
      this.storageKeys.set(t, record);
      this.storages.push(record);
    }
    return record;
  }

  private saveGlobal(module: string, name: string): void {
    const key = `${module}\n${name}`;
    const slot = this.globalMemo.get(key);
    if (slot !== undefined) return this.get(slot);
    this.out.u8(OP.GLOBAL);
    this.out.bytes(Buffer.from(`${module}\n${name}\n`, 'utf8'));
    this.globalMemo.set(key, this.putSlot());
  }

  private getMemo(value: object): boolean {
    const slot = this.objectMemo.get(value);
    if (slot === undefined) return false;
    this.get(slot);
    return true;
  }

  /** BINPUT the object on top of the stack and remember it by identity. */
  private put(value: object): void {
    this.objectMemo.set(value, this.putSlot());
  }

  private putSlot(): number {
    const slot = this.memoCount++;
    if (slot < 256) {
      this.out.u8(OP.BINPUT);
      this.out.u8(slot);
    } else {
      this.out.u8(OP.LONG_BINPUT);
      this.out.u32(slot);
    }
    return slot;
  }

  private get(slot: number): void {
    if (slot < 256) {
      this.out.u8(OP.BINGET);
      this.out.u8(slot);
    } else {
      this.out.u8(OP.LONG_BINGET);
      this.out.u32(slot);
    }
  }
}

/** CPython `pickle.encode_long`: minimal little-endian two's complement. */
export function encodeLong(v: bigint): Uint8Array {
  if (v === 0n) return new Uint8Array(0);
  const bytes: number[] = [];
  let x = v;
  // Emit bytes until the remaining value is pure sign extension of the last byte's top bit.
  for (;;) {
    const byte = Number(x & 0xffn);
    bytes.push(byte);
    x >>= 8n;
    if ((x === 0n && (byte & 0x80) === 0) || (x === -1n && (byte & 0x80) !== 0)) break;
  }
  return Uint8Array.from(bytes);
}
