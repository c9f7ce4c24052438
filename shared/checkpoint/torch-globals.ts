import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import type { DType } from './types.ts';
import { OpaqueObject, type Callable, type PickleValue } from './unpickler.ts';

/**
 * Which pickle globals a checkpoint may name, after torch's weights_only unpickler
 * (torch/_weights_only_unpickler.py `_get_allowed_globals`). Three answers:
 * - allowed: mapped to our own inert implementation (tensor rebuild, OrderedDict, storage types);
 * - dangerous: refused with UNSAFE_PICKLE naming the global (anything able to run code or touch the system);
 * - anything else (a trainer's `AttributeDict`, numpy scalars in metrics): an OpaqueObject placeholder,
 *   never called, reported as a warning.
 */

export class StorageType {
  readonly kind = 'storage-type';
  constructor(
    readonly global: string,
    readonly dtype: DType,
  ) {}
}

const STORAGE_DTYPES: Record<string, DType> = {
  FloatStorage: 'float32',
  HalfStorage: 'float16',
  BFloat16Storage: 'bfloat16',
  DoubleStorage: 'float64',
  LongStorage: 'int64',
  IntStorage: 'int32',
  ShortStorage: 'int16',
  CharStorage: 'int8',
  ByteStorage: 'uint8',
  BoolStorage: 'bool',
  UntypedStorage: 'uint8',
};

const TORCH_DTYPES: Record<string, DType> = {
  float32: 'float32',
  float: 'float32',
  float16: 'float16',
  half: 'float16',
  bfloat16: 'bfloat16',
  float64: 'float64',
  double: 'float64',
  int64: 'int64',
  long: 'int64',
  int32: 'int32',
  int: 'int32',
  int16: 'int16',
  int8: 'int8',
  uint8: 'uint8',
  bool: 'bool',
};

/** Protocol-2 pickles name some modules by their Python 2 names (pickle's fix_imports). */
const PYTHON2_MODULES: Record<string, string> = { __builtin__: 'builtins', copy_reg: 'copyreg', commands: 'subprocess' };

/** Module prefixes whose globals can run code or reach the system: always refused. */
const DANGEROUS_MODULES = [
  'os', 'posix', 'nt', 'subprocess', 'sys', 'socket', 'shutil', 'importlib', 'runpy', 'pickle', '_pickle',
  'code', 'codeop', 'builtins', 'io', '_io', 'ctypes', 'multiprocessing', 'pty', 'commands',
  'webbrowser', 'signal', 'marshal', 'types', 'operator', 'functools', 'pathlib', 'tempfile', 'asyncio',
  'threading', '_thread', 'inspect', 'pdb', 'bdb', 'timeit', 'platform', 'pkgutil', 'zipimport', 'ssl',
  'http', 'urllib', 'requests', 'ftplib', 'smtplib', 'telnetlib', 'glob', 'fileinput', 'sqlite3', 'dill',
  'cloudpickle', 'joblib', 'torch', 'numpy', 'pandas', 'yaml', 'jinja2', 'setuptools', 'pip', 'distutils',
  'venv', 'site', 'gc', 'resource', 'mmap', 'fcntl', 'select', 'selectors', 'socketserver', 'xmlrpc',
];

/** Harmless builtins torch allows; everything else in `builtins` (eval, exec, open, getattr...) is refused. */
const SAFE_BUILTINS = new Set(['set', 'frozenset', 'bytearray', 'slice', 'complex', 'list', 'dict', 'tuple', 'int', 'float', 'bool', 'str', 'bytes']);

/** torch / numpy names that only describe data; any other name in those packages is refused. */
const OPAQUE_ALLOWED = new Set([
  'numpy.core.multiarray.scalar', 'numpy._core.multiarray.scalar', 'numpy.dtype', 'numpy.ndarray',
  'numpy.core.multiarray._reconstruct', 'numpy._core.multiarray._reconstruct',
  'torch.nn.parameter.Parameter', 'torch.device', 'torch.Size', 'torch.storage.TypedStorage',
]);

export interface GlobalPolicy {
  resolve(module: string, name: string): PickleValue;
  /** Unknown globals turned into placeholders, once each. */
  readonly placeholders: ReadonlySet<string>;
}

export function torchGlobalPolicy(rebuildTensor: (args: readonly PickleValue[], global: string) => PickleValue): GlobalPolicy {
  const placeholders = new Set<string>();
  const fn = (global: string, call: (args: readonly PickleValue[]) => PickleValue): Callable => ({ global, call });
  const allowed: Record<string, () => PickleValue> = {
    'collections.OrderedDict': () => fn('collections.OrderedDict', () => new Map()),
    'torch._utils._rebuild_tensor_v2': () => fn('torch._utils._rebuild_tensor_v2', (a) => rebuildTensor(a, 'torch._utils._rebuild_tensor_v2')),
    'torch._utils._rebuild_tensor': () => fn('torch._utils._rebuild_tensor', (a) => rebuildTensor(a, 'torch._utils._rebuild_tensor')),
    'torch._utils._rebuild_parameter': () => fn('torch._utils._rebuild_parameter', (a) => a[0] ?? null),
    'torch._utils._rebuild_parameter_with_state': () => fn('torch._utils._rebuild_parameter_with_state', (a) => a[0] ?? null),
    // _rebuild_from_type_v2(func, new_type, args, state): applies func (itself resolved through this policy) to args.
    'torch._tensor._rebuild_from_type_v2': () =>
      fn('torch._tensor._rebuild_from_type_v2', (a) => {
        const [inner, , innerArgs] = a;
        if (!inner || typeof inner !== 'object' || !('call' in inner) || !Array.isArray(innerArgs)) {
          throw new HeimdallError(ErrorCodes.PICKLE_INVALID, '_rebuild_from_type_v2 with malformed arguments');
        }
        return (inner as Callable).call(innerArgs);
      }),
    '_codecs.encode': () => fn('_codecs.encode', (a) => new TextEncoder().encode(String(a[0] ?? ''))),
  };

  return {
    placeholders,
    resolve(pickledModule, name) {
      const module = PYTHON2_MODULES[pickledModule] ?? pickledModule;
      const global = `${module}.${name}`;
      const make = allowed[global];
      if (make) return make();
      if (module === 'torch' && name in STORAGE_DTYPES) return new StorageType(global, STORAGE_DTYPES[name]!);
      if (module === 'torch' && name in TORCH_DTYPES) return { kind: 'dtype', dtype: TORCH_DTYPES[name]! };
      if (module === 'builtins' && SAFE_BUILTINS.has(name)) return opaque(global);
      if (!OPAQUE_ALLOWED.has(global) && isDangerous(module)) {
        throw new HeimdallError(ErrorCodes.UNSAFE_PICKLE, `refused global ${global}: module ${module} is not allowed in checkpoints`);
      }
      return opaque(global);
    },
  };

  function opaque(global: string): OpaqueObject {
    placeholders.add(global);
    return new OpaqueObject(global, []);
  }
}

function isDangerous(module: string): boolean {
  return DANGEROUS_MODULES.some((m) => module === m || module.startsWith(`${m}.`));
}
