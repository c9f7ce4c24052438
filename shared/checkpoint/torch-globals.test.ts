import { describe, expect, it } from 'vitest';
import { MAX_TENSOR_DIMS, StorageType, torchGlobalPolicy } from './torch-globals.ts';
import { OpaqueObject, unpickle, type PickleValue } from './unpickler.ts';

// Opcodes (Lib/pickletools.py).
const OP = {
  PROTO: 0x80, STOP: 0x2e, MARK: 0x28, POP: 0x30, NONE: 0x4e, BININT1: 0x4b, NEWTRUE: 0x88, NEWFALSE: 0x89,
  SHORT_BINUNICODE: 0x8c, EMPTY_LIST: 0x5d, APPEND: 0x61, EMPTY_TUPLE: 0x29, TUPLE: 0x74, TUPLE1: 0x85,
  TUPLE2: 0x86, TUPLE3: 0x87, EMPTY_DICT: 0x7d, SETITEMS: 0x75, GLOBAL: 0x63, STACK_GLOBAL: 0x93,
  REDUCE: 0x52, NEWOBJ: 0x81, BUILD: 0x62, BINPERSID: 0x51, BINGET: 0x68, BINPUT: 0x71,
} as const;

const utf8 = new TextEncoder();

/** A pickle from opcodes and operands (numbers), text (strings) and byte runs. */
function pickle(...parts: Array<number | string | ArrayLike<number>>): Uint8Array {
  return Uint8Array.from(parts.flatMap((p) => (typeof p === 'number' ? [p] : typeof p === 'string' ? [...utf8.encode(p)] : [...Array.from(p)])));
}
const str = (s: string) => pickle(OP.SHORT_BINUNICODE, utf8.encode(s).length, s);
const global = (qualified: string) => {
  const dot = qualified.lastIndexOf('.');
  return pickle(OP.GLOBAL, `${qualified.slice(0, dot)}\n${qualified.slice(dot + 1)}\n`);
};

/** Heimdall's policy with tensors as plain records of the arguments the rebuild got. */
function load(data: Uint8Array) {
  const policy = torchGlobalPolicy((args, global) => ({ kind: 'tensor', global, args }) as PickleValue);
  const value = unpickle(data, { resolveGlobal: policy.resolve, persistentLoad: () => ({ kind: 'storage' }) });
  return { value, inertTypes: policy.inertTypes };
}
const refused = (data: Uint8Array) => {
  try {
    load(data);
  } catch (error) {
    return error as { code: string; message: string };
  }
  throw new Error('loaded');
};

describe('torchGlobalPolicy refuses every global off the allowlist', () => {
  // What torch.load(weights_only=False) would import and call; each is a REDUCE of GLOBAL name with ('x',).
  const REFUSED = [
    'cProfile.run', 'profile.run', 'pydoc.locate', 'trace.Trace', 'logging.config.listen', 'tarfile.open',
    'zipfile.ZipFile', 'uuid.UUID', 'shlex.split', 'posixpath.join', 'os.system', 'posix.system', 'nt.system',
    'subprocess.Popen', 'builtins.eval', 'builtins.exec', 'builtins.getattr', 'builtins.open', 'builtins.__import__',
    'builtins.frozenset', 'copyreg._reconstructor', 'importlib.import_module', 'runpy._run_code', 'pickle.loads',
    'torch.load', 'torch.serialization.load', 'torch._utils._rebuild_qtensor', 'torch.nn.Module', 'numpy.load',
    'numpy.core.multiarray._reconstruct', 'numpy.ndarray', 'argparse.Namespace', 'functools.partial', 'operator.attrgetter',
  ];

  it.each(REFUSED)('%s, called, is refused with UNSAFE_PICKLE naming it', (name) => {
    const error = refused(pickle(OP.PROTO, 2, global(name), str('x'), OP.TUPLE1, OP.REDUCE, OP.STOP));
    expect(error).toMatchObject({ name: 'HeimdallError', code: 'UNSAFE_PICKLE' });
    expect(error.message).toContain(`refused global ${name}:`);
  });

  it('names the global Python 3 would import for a protocol-2 name, through STACK_GLOBAL and NEWOBJ alike', () => {
    const python2 = pickle(OP.PROTO, 2, global('__builtin__.eval'), str('1'), OP.TUPLE1, OP.REDUCE, OP.STOP);
    expect(refused(python2).message).toMatch(/^refused global builtins\.eval:/);
    expect(refused(pickle(OP.PROTO, 2, global('commands.getoutput'), OP.STOP)).message).toMatch(/^refused global subprocess\.getoutput:/);
    const stackGlobal = pickle(OP.PROTO, 4, str('cProfile'), str('run'), OP.STACK_GLOBAL, OP.EMPTY_TUPLE, OP.NEWOBJ, OP.STOP);
    expect(refused(stackGlobal)).toMatchObject({ code: 'UNSAFE_PICKLE', message: expect.stringMatching(/^refused global cProfile\.run:/) });
  });

  it("finds nothing on Object.prototype: torch.constructor, __proto__ and toString are refused like any unknown name", () => {
    for (const [module, name] of [['torch', 'constructor'], ['torch', '__proto__'], ['toString', 'x'], ['__builtin__', 'hasOwnProperty']]) {
      const error = refused(pickle(OP.PROTO, 2, OP.GLOBAL, `${module}\n${name}\n`, OP.STOP));
      expect(error, `${module}.${name}`).toMatchObject({ code: 'UNSAFE_PICKLE', message: expect.stringMatching(/^refused global (torch|toString|builtins)\.\w+:/) });
    }
  });

  it('refuses a global that is only named, never called (as torch weights_only does)', () => {
    const named = pickle(OP.PROTO, 2, global('cProfile.run'), OP.POP, OP.NONE, OP.STOP);
    expect(refused(named)).toMatchObject({ code: 'UNSAFE_PICKLE', message: expect.stringMatching(/^refused global cProfile\.run:/) });
  });

  it('refuses calling or BUILD on allowlisted globals that are data, not callables', () => {
    for (const name of ['torch.FloatStorage', 'torch.float32', 'torch.Tensor', 'torch.nn.parameter.Parameter']) {
      const call = pickle(OP.PROTO, 2, global(name), OP.EMPTY_TUPLE, OP.REDUCE, OP.STOP);
      expect(refused(call), name).toMatchObject({ code: 'UNSAFE_PICKLE', message: expect.stringMatching(/^refused call of (torch\.\w+|dtype|torch\.nn\.parameter\.Parameter) /) });
    }
    const build = pickle(OP.PROTO, 2, global('collections.OrderedDict'), OP.EMPTY_DICT, OP.BUILD, OP.STOP);
    expect(refused(build)).toMatchObject({ code: 'UNSAFE_PICKLE', message: expect.stringMatching(/^refused BUILD on collections\.OrderedDict/) });
  });
});

describe("torchGlobalPolicy builds torch's plain-data allowlist as inert values", () => {
  it('reads what torch 2.13 pickles for set, bytes, bytearray, complex, torch.Size, torch.device, Counter and OrderedDict', () => {
    // pickle.dumps({'set': {1, 2}, 'bytes': b'\x00\xe0?', 'bytearray': bytearray(b'ab'), 'complex': complex(1, 2),
    //   'size': torch.Size([2, 3]), 'device': torch.device('cuda', 0), 'counter': Counter({'a': 2}),
    //   'od': OrderedDict(x=1)}, 2) — Python 3.11, torch 2.13
    const data = Buffer.from(
      '80027d71002858030000007365747101635f5f6275696c74696e5f5f0a7365740a71025d7103284b014b0265857104527105580500000062797465737106635f636f646563730a656e636f64650a7107580400000000c3a03f710858060000006c6174696e31710986710a52710b5809000000627974656172726179710c635f5f6275696c74696e5f5f0a6279746561727261790a710d680758020000006162710e680986710f5271108571115271125807000000636f6d706c65787113635f5f6275696c74696e5f5f0a636f6d706c65780a7114473ff0000000000000474000000000000000867115527116580400000073697a65711763746f7263680a53697a650a71184b024b0386711985711a52711b5806000000646576696365711c63746f7263680a6465766963650a711d580400000063756461711e4b0086711f5271205807000000636f756e746572712163636f6c6c656374696f6e730a436f756e7465720a71227d712358010000006171244b027385712552712658020000006f64712763636f6c6c656374696f6e730a4f726465726564446963740a712829527129580100000078712a4b0173752e',
      'hex',
    );
    const { value, inertTypes } = load(data);
    expect(value).toEqual(
      new Map<string, unknown>([
        ['set', new Set([1, 2])],
        ['bytes', Uint8Array.from([0x00, 0xe0, 0x3f])], // latin1, not UTF-8
        ['bytearray', Uint8Array.from([0x61, 0x62])],
        ['complex', { kind: 'complex', real: 1, imag: 2 }],
        ['size', [2, 3]],
        ['device', 'cuda:0'],
        ['counter', new Map([['a', 2]])],
        ['od', new Map([['x', 1]])],
      ]),
    );
    expect(Object.isFrozen((value as Map<string, unknown>).get('size'))).toBe(true);
    expect(inertTypes.size).toBe(0);
  });

  it('resolves storage types and dtypes as data', () => {
    const { value } = load(pickle(OP.PROTO, 2, global('torch.HalfStorage'), global('torch.bfloat16'), OP.TUPLE2, OP.STOP));
    expect(value).toEqual([new StorageType('torch.HalfStorage', 'float16'), { kind: 'dtype', dtype: 'bfloat16' }]);
  });

  it('encodes only str as latin1, as protocol 2 pickles bytes', () => {
    const encode = (text: string, encoding: string) => pickle(OP.PROTO, 2, global('_codecs.encode'), str(text), str(encoding), OP.TUPLE2, OP.REDUCE, OP.STOP);
    expect(refused(encode('\u20ac', 'latin1'))).toMatchObject({ code: 'PICKLE_INVALID', message: '_codecs.encode: character U+20ac is not latin1' });
    expect(refused(encode('x', 'rot13'))).toMatchObject({ code: 'PICKLE_INVALID', message: '_codecs.encode of string as "rot13" (only str as latin1 is allowed)' });
  });

  it('refuses OrderedDict called with arguments (CPython pickles its items with SETITEMS)', () => {
    const data = pickle(OP.PROTO, 2, global('collections.OrderedDict'), OP.EMPTY_LIST, OP.TUPLE1, OP.REDUCE, OP.STOP);
    expect(refused(data)).toMatchObject({ code: 'PICKLE_INVALID', message: expect.stringMatching(/^collections\.OrderedDict called with arguments/) });
  });
});

describe('torchGlobalPolicy rebuilds tensors from bounded, frozen arguments', () => {
  const rebuild = (size: Uint8Array, after: Uint8Array = pickle()) =>
    pickle(
      OP.PROTO, 2, global('torch._utils._rebuild_tensor_v2'),
      OP.MARK, str('storage'), OP.BINPERSID, OP.BININT1, 0, size, OP.BINPUT, 1, OP.MARK, OP.BININT1, 1, OP.TUPLE,
      OP.NEWFALSE, global('collections.OrderedDict'), OP.EMPTY_TUPLE, OP.REDUCE, OP.TUPLE, OP.REDUCE,
      after, OP.STOP,
    );

  it('passes storage, offset, size and stride; a size list changed after the rebuild leaves the tensor as checked', () => {
    // size = [4]; tensor = _rebuild_tensor_v2(..., size, ...); size.append(232): the tensor keeps the size it was checked with.
    const data = rebuild(pickle(OP.EMPTY_LIST, OP.BININT1, 4, OP.APPEND), pickle(OP.BINGET, 1, OP.BININT1, 232, OP.APPEND, OP.POP));
    const tensor = load(data).value as unknown as { global: string; args: PickleValue[] };
    expect(tensor.global).toBe('torch._utils._rebuild_tensor_v2');
    expect(tensor.args).toEqual([{ kind: 'storage' }, 0, [4], [1]]);
    expect(Object.isFrozen(tensor.args[2])).toBe(true);
  });

  it(`refuses a size of more than ${MAX_TENSOR_DIMS} dimensions before any per-dimension work`, () => {
    const size = pickle(OP.MARK, ...Array.from({ length: MAX_TENSOR_DIMS + 1 }, () => [OP.BININT1, 1]).flat(), OP.TUPLE);
    expect(refused(rebuild(size))).toMatchObject({ code: 'PICKLE_INVALID', message: expect.stringMatching(/^torch\._utils\._rebuild_tensor_v2 with a size or stride of tuple \(at most 64 dimensions\)/) });
  });

  it('unwraps _rebuild_from_type_v2 only around a tensor rebuild, for torch.Tensor or Parameter', () => {
    // _rebuild_from_type_v2(func, new_type, (storage, 0, (2,), (1,)), {}): what torch.save writes for a tensor with attributes.
    const fromType = (func: string, type: string) =>
      pickle(
        OP.PROTO, 2, global('torch._tensor._rebuild_from_type_v2'),
        OP.MARK, global(func), global(type),
        OP.MARK, str('storage'), OP.BINPERSID, OP.BININT1, 0, OP.BININT1, 2, OP.TUPLE1, OP.BININT1, 1, OP.TUPLE1, OP.TUPLE,
        OP.EMPTY_DICT, OP.TUPLE, OP.REDUCE, OP.STOP,
      );
    const tensor = load(fromType('torch._utils._rebuild_tensor_v2', 'torch.nn.parameter.Parameter')).value as unknown as { args: PickleValue[] };
    expect(tensor.args).toEqual([{ kind: 'storage' }, 0, [2], [1]]);
    expect(refused(fromType('torch._tensor._rebuild_from_type_v2', 'torch.Tensor'))).toMatchObject({
      code: 'PICKLE_INVALID',
      message: expect.stringMatching(/^_rebuild_from_type_v2 of torch\._tensor\._rebuild_from_type_v2 with malformed arguments/),
    });
    expect(refused(fromType('torch._utils._rebuild_tensor_v2', 'torch.FloatStorage'))).toMatchObject({ code: 'PICKLE_INVALID' });
  });
});

describe('torchGlobalPolicy accepts a short list of inert trainer types, as plain data', () => {
  it.each([
    'lightning.fabric.utilities.data.AttributeDict',
    'lightning_fabric.utilities.data.AttributeDict',
    'lightning.pytorch.utilities.parsing.AttributeDict',
    'pytorch_lightning.utilities.parsing.AttributeDict',
  ])("reads Lightning's %s (NEWOBJ, SETITEMS) as an OpaqueObject with its items, reported as a placeholder", (name) => {
    const data = pickle(OP.PROTO, 2, global(name), OP.EMPTY_TUPLE, OP.NEWOBJ, OP.MARK, str('lr'), OP.BININT1, 3, OP.SETITEMS, OP.STOP);
    const { value, inertTypes } = load(data);
    expect(value).toBeInstanceOf(OpaqueObject);
    expect((value as OpaqueObject).items).toEqual(new Map([['lr', 3]]));
    expect([...inertTypes]).toEqual([name]);
  });

  // pickle.dumps({'f8': np.float64(0.5), 'f4': np.float32(1.5), 'i8': np.int64(-3), 'b1': np.bool_(True),
  //   'u2': np.uint16(7)}, 2) — numpy 2.4: scalar(dtype('f8', False, True) + BUILD state, _codecs.encode(raw, 'latin1'))
  const NUMPY2 = Buffer.from(
    '80027d710028580200000066387101636e756d70792e5f636f72652e6d756c746961727261790a7363616c61720a7102636e756d70790a64747970650a71035802000000663871048988877105527106284b0358010000003c71074e4e4e4affffffff4affffffff4b0074710862635f636f646563730a656e636f64650a71095809000000000000000000c3a03f710a58060000006c6174696e31710b86710c52710d86710e52710f580200000066347110680268035802000000663471118988877112527113284b0368074e4e4e4affffffff4affffffff4b0074711462680958050000000000c3803f7115680b86711652711786711852711958020000006938711a6802680358020000006938711b898887711c52711d284b0368074e4e4e4affffffff4affffffff4b0074711e6268095810000000c3bdc3bfc3bfc3bfc3bfc3bfc3bfc3bf711f680b867120527121867122527123580200000062317124680268035802000000623171258988877126527127284b0358010000007c71284e4e4e4affffffff4affffffff4b00747129626809580100000001712a680b86712b52712c86712d52712e58020000007532712f680268035802000000753271308988877131527132284b0368074e4e4e4affffffff4affffffff4b00747133626809580200000007007134680b867135527136867137527138752e',
    'hex',
  );
  const METRICS = new Map<string, unknown>([['f8', 0.5], ['f4', 1.5], ['i8', -3], ['b1', true], ['u2', 7]]);

  it('decodes numpy scalars (numpy 2: numpy._core.multiarray.scalar) to numbers and bools', () => {
    const { value, inertTypes } = load(NUMPY2);
    expect(value).toEqual(METRICS);
    expect(inertTypes.size).toBe(0);
  });

  it('decodes numpy 1 scalars (numpy.core.multiarray.scalar) alike', () => {
    const numpy1 = Buffer.from(NUMPY2.toString('latin1').replace('numpy._core.multiarray', 'numpy.core.multiarray'), 'latin1');
    expect(load(numpy1).value).toEqual(METRICS);
  });

  it('keeps a numpy scalar of another dtype (complex c8) as an inert placeholder', () => {
    const data = pickle(
      OP.PROTO, 2, global('numpy._core.multiarray.scalar'),
      global('numpy.dtype'), str('c8'), OP.NEWFALSE, OP.NEWTRUE, OP.TUPLE3, OP.REDUCE,
      global('_codecs.encode'), str('\0'.repeat(8)), str('latin1'), OP.TUPLE2, OP.REDUCE,
      OP.TUPLE2, OP.REDUCE, OP.STOP,
    );
    const { value, inertTypes } = load(data);
    expect(value).toBeInstanceOf(OpaqueObject);
    expect((value as OpaqueObject).global).toBe('numpy._core.multiarray.scalar');
    expect([...inertTypes]).toEqual(['numpy._core.multiarray.scalar']);
  });
});
