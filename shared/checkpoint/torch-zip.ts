import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import type { RandomAccessFile } from './random-access-file.ts';
import { gatherStrided, scalarOf, toFloat32 } from './tensor-data.ts';
import { StorageType, torchGlobalPolicy } from './torch-globals.ts';
import { DTYPE_BYTES, readerError, type DType, type LazyTensor } from './types.ts';
import { describe, unpickle, type PickleValue } from './unpickler.ts';
import { ZipReader, type ZipEntry } from './zip-reader.ts';

/**
 * torch.save's zip format (torch/serialization.py `_save`): `<root>/data.pkl` holds the object, each
 * storage lives in `<root>/data/<key>` and is referenced from the pickle by a persistent id
 * `('storage', storage_type, key, location, numel)`. The root folder's name is arbitrary.
 */

/**
 * data.pkl is read whole, so it is capped before it is read. A state dict pickles to ~150 bytes
 * per tensor: ConvNeXt-large LocalizationNet's Lightning checkpoint is 57 KB, 147 KB with Adam's
 * state, and a 2,000-tensor LLM with optimizer state stays in single megabytes. 16 MiB is 100x the
 * largest of those and bounds what the unpickler (whose work and memory scale with its input) may spend.
 */
export const MAX_PICKLE_BYTES = 16 * 1024 * 1024;
/** Records read whole besides the pickle (`byteorder`: "little"), and the largest storage a scalar is read from. */
export const MAX_SMALL_RECORD_BYTES = 64;

const outOfBounds = (message: string) => new HeimdallError(ErrorCodes.TENSOR_OUT_OF_BOUNDS, message);

/** A storage record, read on first use (CRC-checked) and only the part a tensor covers. */
class LazyStorage {
  readonly kind = 'storage';
  constructor(
    readonly entry: ZipEntry,
    readonly dtype: DType,
    readonly numel: number,
    private readonly zip: ZipReader,
  ) {}

  get record(): string {
    return this.entry.name;
  }

  /** Elements `first .. first + count - 1` of the storage, as raw bytes. */
  read(first: number, count: number, scratch?: Uint8Array): Promise<Uint8Array> {
    const itemSize = DTYPE_BYTES[this.dtype];
    return this.zip.readRange(this.record, first * itemSize, count * itemSize, scratch);
  }
}

export class TorchTensor implements LazyTensor {
  readonly kind = 'tensor';
  readonly numel: number;
  /** Storage elements from the first one the tensor uses to its last (0 when it is empty). */
  readonly span: number;
  constructor(
    readonly storage: LazyStorage,
    readonly offset: number,
    readonly shape: readonly number[],
    readonly stride: readonly number[],
  ) {
    const where = () => `tensor [${shape.join(', ')}] with strides [${stride.join(', ')}] in ${storage.record}`;
    this.numel = shape.reduce((a, b) => safeMul(a, b, where), 1);
    this.span = this.numel === 0 ? 0 : safeAdd(1, shape.reduce((sum, n, d) => safeAdd(sum, safeMul(n - 1, stride[d]!, where), where), 0), where);
  }

  get dtype(): DType {
    return this.storage.dtype;
  }

  /**
   * Refuses a tensor whose elements are not backed by as many stored elements: a stride of 0 on a
   * dimension longer than 1 (one stored value repeated), or strides under which its `numel` elements
   * fit in fewer stored ones (they must then alias one another).
   */
  checkBacked(name: string): void {
    const zero = this.shape.findIndex((n, d) => n > 1 && this.stride[d] === 0);
    if (zero >= 0) {
      throw outOfBounds(`${name} [${this.shape.join(', ')}] has stride 0 on dimension ${zero}: its values are not stored (${this.storage.record})`);
    }
    if (this.numel > this.span) {
      throw outOfBounds(
        `${name} [${this.shape.join(', ')}] with strides [${this.stride.join(', ')}] has ${this.numel} elements but covers only ${this.span} stored ones (${this.storage.record})`,
      );
    }
  }

  /**
   * The value of a one-element tensor (a metric saved as `torch.tensor(0.12)`) whose storage record
   * is at most MAX_SMALL_RECORD_BYTES, at its dtype's precision; undefined for any other tensor,
   * whose bytes are then not read: a "scalar" viewing a gigabyte storage costs nothing.
   */
  async scalarValue(): Promise<number | undefined> {
    if (this.numel !== 1 || this.storage.entry.size > MAX_SMALL_RECORD_BYTES) return undefined;
    try {
      return scalarOf(await this.storage.read(this.offset, 1), this.dtype);
    } catch (error) {
      throw readerError(error, ErrorCodes.CHECKPOINT_CORRUPT);
    }
  }

  async readFloat32(scratch?: Uint8Array): Promise<Float32Array> {
    try {
      this.checkBacked(`tensor in ${this.storage.record}`);
      // Only the tensor's own bytes: from its first element to its last, never the whole storage.
      const bytes = await this.storage.read(this.offset, this.span, scratch);
      const raw = gatherStrided(bytes, DTYPE_BYTES[this.dtype], 0, this.shape, this.stride);
      return toFloat32(raw, this.dtype);
    } catch (error) {
      throw readerError(error, ErrorCodes.CHECKPOINT_CORRUPT);
    }
  }
}

export interface TorchArchive {
  readonly root: PickleValue;
  /** The inert trainer types (e.g. Lightning's AttributeDict) the pickle held, read as plain data. */
  readonly inertTypes: readonly string[];
  readonly zip: ZipReader;
}

/** The storage records behind `tensors`, each once. */
export function storageEntries(tensors: Iterable<LazyTensor>): ZipEntry[] {
  const entries = new Set<ZipEntry>();
  for (const tensor of tensors) if (tensor instanceof TorchTensor) entries.add(tensor.storage.entry);
  return [...entries];
}

/**
 * The parameters of a model must be backed by as many stored bytes: each tensor by its own elements
 * (`checkBacked`), no two tensors sharing bytes of a storage, and all of them together by no more
 * bytes than the file holds. TENSOR_OUT_OF_BOUNDS otherwise.
 */
export function checkTensorsBacked(tensors: ReadonlyMap<string, LazyTensor>, fileBytes: number, where: string): void {
  const byStorage = new Map<string, Array<{ name: string; first: number; end: number }>>();
  let total = 0;
  for (const [name, tensor] of tensors) {
    if (!(tensor instanceof TorchTensor)) continue;
    tensor.checkBacked(name);
    if (tensor.numel === 0) continue;
    total += tensor.numel * DTYPE_BYTES[tensor.dtype];
    const spans = byStorage.get(tensor.storage.record) ?? [];
    spans.push({ name, first: tensor.offset, end: tensor.offset + tensor.span });
    byStorage.set(tensor.storage.record, spans);
  }
  for (const [record, spans] of byStorage) {
    spans.sort((a, b) => a.first - b.first);
    for (let i = 1; i < spans.length; i++) {
      const [previous, span] = [spans[i - 1]!, spans[i]!];
      if (span.first < previous.end) {
        throw outOfBounds(
          `${where} entries ${previous.name} (elements ${previous.first}..${previous.end - 1}) and ${span.name} (from ${span.first}) share bytes of storage ${record}`,
        );
      }
    }
  }
  if (total > fileBytes) throw outOfBounds(`${where} tensors claim ${total} bytes, more than the ${fileBytes}-byte file stores`);
}

export async function readTorchArchive(file: RandomAccessFile): Promise<TorchArchive> {
  const zip = await ZipReader.open(file);
  const pickles = [...zip.entries.keys()].filter((name) => /^[^/]+\/data\.pkl$/.test(name));
  if (pickles.length !== 1) {
    throw new HeimdallError(
      ErrorCodes.UNSUPPORTED_FORMAT,
      pickles.length === 0 ? 'zip archive has no <root>/data.pkl: not a torch.save checkpoint' : `zip archive has ${pickles.length} data.pkl records`,
    );
  }
  const pickleEntry = zip.entry(pickles[0]!);
  if (pickleEntry.size > MAX_PICKLE_BYTES) {
    throw new HeimdallError(
      ErrorCodes.PICKLE_INVALID,
      `${pickleEntry.name} is ${pickleEntry.size} bytes, over the ${MAX_PICKLE_BYTES}-byte limit (a state dict's pickle takes ~150 bytes per tensor)`,
    );
  }
  const root = pickles[0]!.slice(0, -'data.pkl'.length);
  const byteorder = zip.entries.has(`${root}byteorder`) ? await readSmallText(zip, `${root}byteorder`) : 'little';
  if (byteorder.trim() !== 'little') throw new HeimdallError(ErrorCodes.UNSUPPORTED_FORMAT, `byte order ${JSON.stringify(byteorder.trim())} is not supported`);

  const storages = new Map<string, LazyStorage>();
  const persistentLoad = (pid: PickleValue): PickleValue => {
    if (!Array.isArray(pid) || pid[0] !== 'storage' || pid.length !== 5) {
      throw new HeimdallError(ErrorCodes.PICKLE_INVALID, `unknown persistent id ${describe(pid)}`);
    }
    const [, type, key, , numel] = pid;
    if (!(type instanceof StorageType) || typeof key !== 'string' || typeof numel !== 'number' || !Number.isSafeInteger(numel) || numel < 0) {
      throw new HeimdallError(ErrorCodes.PICKLE_INVALID, `malformed storage reference ${describe(key ?? null)}`);
    }
    const existing = storages.get(key);
    if (existing) {
      if (existing.dtype !== type.dtype || existing.numel !== numel) {
        throw new HeimdallError(ErrorCodes.PICKLE_INVALID, `storage ${key} is referenced as ${existing.numel} ${existing.dtype} and as ${numel} ${type.dtype} elements`);
      }
      return existing;
    }
    const record = `${root}data/${key}`;
    const entry = zip.entries.get(record);
    if (!entry) throw new HeimdallError(ErrorCodes.CHECKPOINT_CORRUPT, `storage record ${record} is missing`);
    if (!Object.hasOwn(DTYPE_BYTES, type.dtype)) throw new HeimdallError(ErrorCodes.PICKLE_INVALID, `storage ${key} has unknown dtype ${String(type.dtype)}`);
    const expected = numel * DTYPE_BYTES[type.dtype];
    if (!Number.isSafeInteger(expected) || entry.size < expected) {
      throw outOfBounds(`storage ${key} holds ${entry.size} bytes but declares ${numel} ${type.dtype} elements (${expected} bytes)`);
    }
    const storage = new LazyStorage(entry, type.dtype, numel, zip);
    storages.set(key, storage);
    return storage;
  };

  const policy = torchGlobalPolicy((args, global) => rebuildTensor(args, global));
  const value = unpickle(await zip.read(pickleEntry.name), { resolveGlobal: policy.resolve, persistentLoad });
  return { root: value, inertTypes: [...policy.inertTypes], zip };
}

async function readSmallText(zip: ZipReader, name: string): Promise<string> {
  const entry = zip.entry(name);
  if (entry.size > MAX_SMALL_RECORD_BYTES) throw new HeimdallError(ErrorCodes.CHECKPOINT_CORRUPT, `${name} is ${entry.size} bytes, over the ${MAX_SMALL_RECORD_BYTES}-byte limit`);
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(await zip.read(name));
  } catch (error) {
    if (error instanceof HeimdallError) throw error;
    throw new HeimdallError(ErrorCodes.CHECKPOINT_CORRUPT, `${name} is not text`);
  }
}

/** `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])`. */
function rebuildTensor(args: readonly PickleValue[], global: string): TorchTensor {
  const [storage, offset, size, stride] = args;
  if (!(storage instanceof LazyStorage)) throw new HeimdallError(ErrorCodes.PICKLE_INVALID, `${global} without a storage`);
  const shape = integers(size ?? null, 'size');
  const strides = integers(stride ?? null, 'stride');
  if (typeof offset !== 'number' || !Number.isSafeInteger(offset) || offset < 0) {
    throw outOfBounds(`tensor in ${storage.record} has invalid storage offset ${describe(offset ?? null)}`);
  }
  if (shape.length !== strides.length) {
    throw outOfBounds(`tensor in ${storage.record} has ${shape.length} sizes but ${strides.length} strides`);
  }
  const tensor = new TorchTensor(storage, offset, shape, strides);
  if (tensor.numel > 0) {
    const lastElement = offset + tensor.span - 1;
    if (!Number.isSafeInteger(lastElement) || lastElement >= storage.numel) {
      throw outOfBounds(
        `tensor [${shape.join(', ')}] at offset ${offset} with strides [${strides.join(', ')}] reaches element ${lastElement} of a ${storage.numel}-element storage (${storage.record})`,
      );
    }
  }
  return tensor;
}

function integers(value: PickleValue, what: string): number[] {
  if (!Array.isArray(value) || !value.every((v) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0)) {
    throw outOfBounds(`tensor ${what} must be non-negative integers, got ${describe(value)}`);
  }
  return value as number[];
}

function safeMul(a: number, b: number, where: () => string): number {
  const product = a * b;
  if (!Number.isSafeInteger(product)) throw outOfBounds(`${where()}: its size overflows`);
  return product;
}

function safeAdd(a: number, b: number, where: () => string): number {
  const sum = a + b;
  if (!Number.isSafeInteger(sum)) throw outOfBounds(`${where()}: its extent overflows`);
  return sum;
}
