import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import type { DType } from './types.ts';
import { COST, OpaqueObject, describe, isCallable, type Budget, type Callable, type PickleValue } from './unpickler.ts';

/**
 * Which pickle globals a checkpoint may name, and what calling them builds. Every global resolves
 * here, at lookup (the GLOBAL / STACK_GLOBAL opcode), to one of:
 *
 * - torch's weights_only allowlist (torch/_weights_only_unpickler.py `_get_allowed_globals` and
 *   `_tensor_rebuild_functions`, torch 2.13), the part of it that describes plain data and dense
 *   tensors: `torchAllowlist` below, the legacy storage types (`torch.FloatStorage`, ...,
 *   `torch.UntypedStorage`) and the dtypes (`torch.float32`, ...), each our own inert code;
 * - `inertTrainerTypes`: a short list of trainer types torch's allowlist lacks, built as plain data;
 * - anything else is refused with UNSAFE_PICKLE naming the global, whether the pickle calls it or
 *   only names it, as torch's weights_only refuses any unknown GLOBAL ("Unsupported global"). That
 *   includes the rest of torch's allowlist: sparse, quantized, nested, meta and subclass tensors,
 *   which no LocalizationNet checkpoint holds.
 *
 * No resolved value runs code from the checkpoint; a value that is not a Callable cannot be called
 * at all (the unpickler refuses it with UNSAFE_PICKLE).
 */

export class StorageType {
  readonly kind = 'storage-type';
  constructor(
    readonly global: string,
    readonly dtype: DType,
  ) {}
}

/** torch.<Name>Storage as torch.save names a storage's type in its persistent id. */
const STORAGE_DTYPES: ReadonlyMap<string, DType> = new Map([
  ['FloatStorage', 'float32'],
  ['HalfStorage', 'float16'],
  ['BFloat16Storage', 'bfloat16'],
  ['DoubleStorage', 'float64'],
  ['LongStorage', 'int64'],
  ['IntStorage', 'int32'],
  ['ShortStorage', 'int16'],
  ['CharStorage', 'int8'],
  ['ByteStorage', 'uint8'],
  ['BoolStorage', 'bool'],
  ['UntypedStorage', 'uint8'],
]);

/** `torch.<dtype>` as a dtype pickles (`str(torch.float32)`); torch's other dtypes have no use here. */
const TORCH_DTYPES: ReadonlySet<string> = new Set<DType>(['float32', 'float16', 'bfloat16', 'float64', 'int64', 'int32', 'int16', 'int8', 'uint8', 'bool']);

/**
 * Protocol-2 pickles name some modules by their Python 2 names (pickle's fix_imports, undone on load
 * by Lib/_compat_pickle.py IMPORT_MAPPING): builtins for the allowlist, the others so that a refusal
 * names what Python 3 would import (`commands.Popen` is subprocess.Popen).
 */
const PYTHON2_MODULES: ReadonlyMap<string, string> = new Map([
  ['__builtin__', 'builtins'],
  ['copy_reg', 'copyreg'],
  ['commands', 'subprocess'],
]);

/** No real tensor has more dimensions; the cap keeps a rebuild's checks constant-time. */
export const MAX_TENSOR_DIMS = 64;

type Make = (global: string) => PickleValue;
type Rebuild = (args: readonly PickleValue[], global: string) => PickleValue;

export interface GlobalPolicy {
  resolve(module: string, name: string): PickleValue;
  /** Inert trainer types kept as OpaqueObjects in the result (e.g. AttributeDict), once each. */
  readonly inertTypes: ReadonlySet<string>;
}

const invalid = (message: string) => new HeimdallError(ErrorCodes.PICKLE_INVALID, message);
const fn = (global: string, call: Callable['call']): Callable => ({ global, call });
/** A Python tuple: frozen, as the unpickler builds tuples. */
const tuple = (items: PickleValue[]) => Object.freeze(items) as PickleValue[];

export function torchGlobalPolicy(rebuildTensor: Rebuild): GlobalPolicy {
  const inertTypes = new Set<string>();
  const inert = (global: string, args: readonly PickleValue[]) => {
    inertTypes.add(global);
    return new OpaqueObject(global, args);
  };
  // A Map, not an object: a name like "constructor" must not find Object.prototype's.
  const allowed = new Map(Object.entries({ ...torchAllowlist(rebuildTensor), ...inertTrainerTypes(inert) }));
  return {
    inertTypes,
    resolve(pickledModule, name) {
      const module = PYTHON2_MODULES.get(pickledModule) ?? pickledModule;
      const global = `${module}.${name}`;
      const make = allowed.get(global);
      if (make) return make(global);
      const storageDtype = module === 'torch' ? STORAGE_DTYPES.get(name) : undefined;
      if (storageDtype) return new StorageType(global, storageDtype);
      if (module === 'torch' && TORCH_DTYPES.has(name)) return { kind: 'dtype', dtype: name as DType };
      throw new HeimdallError(
        ErrorCodes.UNSAFE_PICKLE,
        `refused global ${global}: not among the globals a checkpoint may use (torch's weights_only allowlist for dense tensors and plain data, and inert trainer types)`,
      );
    },
  };
}

/** torch's allowlist (`_get_allowed_globals`), as far as dense tensors and plain data need it. */
function torchAllowlist(rebuildTensor: Rebuild): Record<string, Make> {
  const tensorType = (global: string) => ({ kind: 'tensor-type', global });
  const rebuild = (global: string) => fn(global, (a) => rebuildTensor(tensorArgs(a, global), global));
  const parameter = (global: string) => fn(global, (a) => a[0] ?? null); // requires_grad, hooks, state: training only
  return {
    'torch._utils._rebuild_tensor_v2': rebuild,
    'torch._utils._rebuild_tensor': rebuild,
    'torch._utils._rebuild_parameter': parameter,
    'torch._utils._rebuild_parameter_with_state': parameter,
    'torch._tensor._rebuild_from_type_v2': (g) => fn(g, rebuildFromType),
    // Named only, as _rebuild_from_type_v2's new_type: calling them is refused (not Callables).
    'torch.Tensor': tensorType,
    'torch.nn.parameter.Parameter': tensorType,
    'torch.Size': (g) => fn(g, (a, budget) => tuple(integers(a[0], g, budget))),
    'torch.device': (g) => fn(g, device),
    'collections.OrderedDict': (g) => fn(g, (a) => (a.length === 0 ? new Map() : fail(`${g} called with arguments (pickle adds its items with SETITEMS)`))),
    'collections.Counter': (g) => fn(g, (a, budget) => copyMap(a[0], g, budget)),
    '_codecs.encode': (g) => fn(g, encodeLatin1),
    'builtins.set': (g) => fn(g, (a, budget) => new Set(items(a[0], g, budget))),
    'builtins.bytearray': (g) => fn(g, (a, budget) => copyBytes(a[0], g, budget)),
    'builtins.complex': (g) => fn(g, ([real = 0, imag = 0]) => ({ kind: 'complex', real, imag })),
  };
}

/**
 * Trainer types torch's allowlist lacks but real checkpoints hold, built as plain data:
 * - Lightning's AttributeDict, the dict subclass `save_hyperparameters()` stores as
 *   `hyper_parameters`, under each name Lightning versions pickle it by: defined in
 *   `pytorch_lightning.utilities.parsing` (`lightning.pytorch.utilities.parsing` in the `lightning`
 *   package) before 2.2, in `lightning_fabric.utilities.data` (`lightning.fabric.utilities.data`)
 *   since (Lightning-AI/pytorch-lightning#18515). NEWOBJ builds an OpaqueObject, SETITEMS its items.
 * - numpy scalars, as trainers log metrics (`np.float64(0.12)`): `scalar(dtype, bytes)` from
 *   `numpy.core.multiarray` (numpy 1) or `numpy._core.multiarray` (numpy 2), with `numpy.dtype(code,
 *   align, copy)` whose BUILD state gives the byte order. Numbers and bools are decoded; any other
 *   dtype stays an OpaqueObject.
 */
function inertTrainerTypes(inert: (global: string, args: readonly PickleValue[]) => OpaqueObject): Record<string, Make> {
  const attributeDict = (g: string) => fn(g, (a) => inert(g, a));
  const scalar = (g: string) => fn(g, (a) => numpyScalar(a) ?? inert(g, a));
  return {
    'lightning.fabric.utilities.data.AttributeDict': attributeDict,
    'lightning_fabric.utilities.data.AttributeDict': attributeDict,
    'lightning.pytorch.utilities.parsing.AttributeDict': attributeDict,
    'pytorch_lightning.utilities.parsing.AttributeDict': attributeDict,
    'numpy.core.multiarray.scalar': scalar,
    'numpy._core.multiarray.scalar': scalar,
    'numpy.dtype': (g) => fn(g, (a) => (typeof a[0] === 'string' ? new OpaqueObject(g, a) : fail(`${g} of ${describe(a[0])}`))),
  };
}

function fail(message: string): never {
  throw invalid(message);
}

/**
 * `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])` as the
 * four arguments a tensor needs, size and stride as frozen copies of at most MAX_TENSOR_DIMS items:
 * constant work per call however large the tuples a pickle passes, and nothing the pickle does
 * afterwards can change a tensor's shape once checked.
 */
function tensorArgs(args: readonly PickleValue[], global: string): PickleValue[] {
  const [storage = null, offset = null, size, stride] = args;
  const dims = (v: PickleValue | undefined) => {
    if (!Array.isArray(v) || v.length > MAX_TENSOR_DIMS) fail(`${global} with a size or stride of ${describe(v ?? null)} (at most ${MAX_TENSOR_DIMS} dimensions)`);
    return tuple([...v]);
  };
  return [storage, offset, dims(size), dims(stride)];
}

/**
 * `_rebuild_from_type_v2(func, new_type, args, state)` (torch/_tensor.py, for a tensor with python
 * attributes): func(*args), func a tensor rebuild (never itself: no recursion), new_type torch.Tensor
 * or Parameter; the attributes (state) are training state.
 */
function rebuildFromType([inner, newType, innerArgs]: readonly PickleValue[], budget: Budget): PickleValue {
  const isTensorType = typeof newType === 'object' && newType !== null && 'kind' in newType && newType.kind === 'tensor-type';
  if (!isCallable(inner) || !inner.global.startsWith('torch._utils._rebuild_tensor') || !isTensorType || !Array.isArray(innerArgs)) {
    fail(`_rebuild_from_type_v2 of ${describe(inner ?? null)} with malformed arguments`);
  }
  return inner.call(innerArgs, budget);
}

/** `torch.device(type[, index])`, kept as torch prints it ('cuda:0'). */
function device([type, index]: readonly PickleValue[]): string {
  if (typeof type !== 'string' || (index !== undefined && index !== null && typeof index !== 'number')) fail('torch.device with malformed arguments');
  return typeof index === 'number' ? `${type}:${index}` : type;
}

/** `_codecs.encode(text, 'latin1')`: how protocol 2 pickles `bytes`. */
function encodeLatin1([text, encoding]: readonly PickleValue[], budget: Budget): Uint8Array {
  if (typeof text !== 'string' || (encoding !== 'latin1' && encoding !== 'latin-1')) {
    const as = typeof encoding === 'string' ? JSON.stringify(encoding.slice(0, 32)) : describe(encoding ?? null);
    fail(`_codecs.encode of ${describe(text ?? null)} as ${as} (only str as latin1 is allowed)`);
  }
  budget.charge(COST.object + text.length);
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code > 0xff) fail(`_codecs.encode: character U+${code.toString(16)} is not latin1`);
    out[i] = code;
  }
  return out;
}

function items(value: PickleValue | undefined, global: string, budget: Budget): readonly PickleValue[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) fail(`${global} of ${describe(value)}`);
  budget.charge(value.length * COST.slot);
  return value;
}

function integers(value: PickleValue | undefined, global: string, budget: Budget): PickleValue[] {
  const list = items(value, global, budget);
  if (!list.every((v) => typeof v === 'number')) fail(`${global} of non-integers`);
  return [...list];
}

function copyMap(value: PickleValue | undefined, global: string, budget: Budget): Map<PickleValue, PickleValue> {
  if (value === undefined) return new Map();
  if (!(value instanceof Map)) fail(`${global} of ${describe(value)}`);
  budget.charge(value.size * COST.slot);
  return new Map(value);
}

function copyBytes(value: PickleValue | undefined, global: string, budget: Budget): Uint8Array {
  if (value === undefined) return new Uint8Array(0);
  if (!(value instanceof Uint8Array)) fail(`${global} of ${describe(value)}`);
  budget.charge(value.byteLength);
  return value.slice();
}

const safeNumber = (v: bigint): number | bigint => (v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);

/** numpy dtype codes ('<kind><itemsize>') of the scalars decoded to numbers and bools. */
type ReadScalar = (view: DataView, little: boolean) => number | bigint | boolean;
const NUMPY_SCALARS: ReadonlyMap<string, ReadScalar> = new Map<string, ReadScalar>([
  ['b1', (v) => v.getUint8(0) !== 0],
  ['i1', (v) => v.getInt8(0)],
  ['u1', (v) => v.getUint8(0)],
  ['i2', (v, le) => v.getInt16(0, le)],
  ['u2', (v, le) => v.getUint16(0, le)],
  ['i4', (v, le) => v.getInt32(0, le)],
  ['u4', (v, le) => v.getUint32(0, le)],
  ['i8', (v, le) => safeNumber(v.getBigInt64(0, le))],
  ['u8', (v, le) => safeNumber(v.getBigUint64(0, le))],
  ['f4', (v, le) => v.getFloat32(0, le)],
  ['f8', (v, le) => v.getFloat64(0, le)],
]);

/** numpy's `scalar(dtype, raw bytes)` as a number or bool; undefined for any other dtype. */
function numpyScalar([dtype, raw]: readonly PickleValue[]): number | bigint | boolean | undefined {
  if (!(dtype instanceof OpaqueObject) || dtype.global !== 'numpy.dtype' || !(raw instanceof Uint8Array)) return undefined;
  const code = String(dtype.args[0]);
  const read = NUMPY_SCALARS.get(code);
  if (!read || raw.byteLength !== Number(code.slice(1))) return undefined;
  // The dtype's BUILD state is (version, byte order, ...): '>' is big-endian; '<', '|' and '=' little here.
  const little = !(Array.isArray(dtype.state) && dtype.state[1] === '>');
  return read(new DataView(raw.buffer, raw.byteOffset, raw.byteLength), little);
}
