import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import type { RandomAccessFile } from './random-access-file.ts';
import { gatherStrided, toFloat32 } from './tensor-data.ts';
import { StorageType, torchGlobalPolicy } from './torch-globals.ts';
import { DTYPE_BYTES, type DType, type LazyTensor } from './types.ts';
import { describe, unpickle, type PickleValue } from './unpickler.ts';
import { ZipReader, type ZipEntry } from './zip-reader.ts';

/**
 * torch.save's zip format (torch/serialization.py `_save`): `<root>/data.pkl` holds the object, each
 * storage lives in `<root>/data/<key>` and is referenced from the pickle by a persistent id
 * `('storage', storage_type, key, location, numel)`. The root folder's name is arbitrary.
 */

/** A storage record, read on first use (CRC-checked) and only then. */
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

  read(scratch?: Uint8Array): Promise<Uint8Array> {
    return this.zip.read(this.record, scratch);
  }
}

export class TorchTensor implements LazyTensor {
  readonly kind = 'tensor';
  readonly numel: number;
  constructor(
    readonly storage: LazyStorage,
    readonly offset: number,
    readonly shape: readonly number[],
    readonly stride: readonly number[],
  ) {
    this.numel = shape.reduce((a, b) => a * b, 1);
  }

  get dtype(): DType {
    return this.storage.dtype;
  }

  async readFloat32(scratch?: Uint8Array): Promise<Float32Array> {
    const bytes = await this.storage.read(scratch);
    const raw = gatherStrided(bytes, DTYPE_BYTES[this.dtype], this.offset, this.shape, this.stride);
    return toFloat32(raw, this.dtype);
  }
}

export interface TorchArchive {
  readonly root: PickleValue;
  /** Globals that became inert placeholders. */
  readonly placeholders: readonly string[];
  readonly zip: ZipReader;
}

/** The storage records behind `tensors`, each once. */
export function storageEntries(tensors: Iterable<LazyTensor>): ZipEntry[] {
  const entries = new Set<ZipEntry>();
  for (const tensor of tensors) if (tensor instanceof TorchTensor) entries.add(tensor.storage.entry);
  return [...entries];
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
  const root = pickles[0]!.slice(0, -'data.pkl'.length);
  const byteorder = zip.entries.has(`${root}byteorder`) ? new TextDecoder().decode(await zip.read(`${root}byteorder`)) : 'little';
  if (byteorder.trim() !== 'little') throw new HeimdallError(ErrorCodes.UNSUPPORTED_FORMAT, `byte order ${byteorder.trim()} is not supported`);

  const storages = new Map<string, LazyStorage>();
  const persistentLoad = (pid: PickleValue): PickleValue => {
    if (!Array.isArray(pid) || pid[0] !== 'storage' || pid.length !== 5) {
      throw new HeimdallError(ErrorCodes.PICKLE_INVALID, `unknown persistent id ${describe(pid)}`);
    }
    const [, type, key, , numel] = pid;
    if (!(type instanceof StorageType) || typeof key !== 'string' || typeof numel !== 'number' || numel < 0) {
      throw new HeimdallError(ErrorCodes.PICKLE_INVALID, `malformed storage reference ${String(key)}`);
    }
    const existing = storages.get(key);
    if (existing) return existing;
    const record = `${root}data/${key}`;
    const entry = zip.entries.get(record);
    if (!entry) throw new HeimdallError(ErrorCodes.CHECKPOINT_CORRUPT, `storage record ${record} is missing`);
    const expected = numel * DTYPE_BYTES[type.dtype];
    if (entry.size < expected) {
      throw new HeimdallError(
        ErrorCodes.TENSOR_OUT_OF_BOUNDS,
        `storage ${key} holds ${entry.size} bytes but declares ${numel} ${type.dtype} elements (${expected} bytes)`,
      );
    }
    const storage = new LazyStorage(entry, type.dtype, numel, zip);
    storages.set(key, storage);
    return storage;
  };

  const policy = torchGlobalPolicy((args, global) => rebuildTensor(args, global));
  const value = unpickle(await zip.read(pickles[0]!), { resolveGlobal: policy.resolve, persistentLoad });
  return { root: value, placeholders: [...policy.placeholders], zip };
}

/** `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])`. */
function rebuildTensor(args: readonly PickleValue[], global: string): TorchTensor {
  const [storage, offset, size, stride] = args;
  if (!(storage instanceof LazyStorage)) throw new HeimdallError(ErrorCodes.PICKLE_INVALID, `${global} without a storage`);
  const shape = integers(size ?? null, 'size');
  const strides = integers(stride ?? null, 'stride');
  if (typeof offset !== 'number' || !Number.isInteger(offset) || offset < 0) {
    throw new HeimdallError(ErrorCodes.TENSOR_OUT_OF_BOUNDS, `tensor in ${storage.record} has invalid storage offset ${String(offset)}`);
  }
  if (shape.length !== strides.length) {
    throw new HeimdallError(ErrorCodes.TENSOR_OUT_OF_BOUNDS, `tensor in ${storage.record} has ${shape.length} sizes but ${strides.length} strides`);
  }
  const numel = shape.reduce((a, b) => a * b, 1);
  if (numel > 0) {
    const lastElement = offset + shape.reduce((sum, n, d) => sum + (n - 1) * strides[d]!, 0);
    if (lastElement >= storage.numel) {
      throw new HeimdallError(
        ErrorCodes.TENSOR_OUT_OF_BOUNDS,
        `tensor [${shape.join(', ')}] at offset ${offset} with strides [${strides.join(', ')}] reaches element ${lastElement} of a ${storage.numel}-element storage (${storage.record})`,
      );
    }
  }
  return new TorchTensor(storage, offset, shape, strides);
}

function integers(value: PickleValue, what: string): number[] {
  if (!Array.isArray(value) || !value.every((v) => typeof v === 'number' && Number.isInteger(v) && v >= 0)) {
    throw new HeimdallError(ErrorCodes.TENSOR_OUT_OF_BOUNDS, `tensor ${what} must be non-negative integers, got ${describe(value)}`);
  }
  return value as number[];
}
