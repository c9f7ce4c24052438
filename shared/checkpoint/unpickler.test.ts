import { describe, expect, it } from 'vitest';
import { encodeLong } from './pickle-writer.ts';
import { torchGlobalPolicy } from './torch-globals.ts';
import { DEFAULT_LIMITS, MAX_LONG_BYTES, OpaqueObject, unpickle, type PickleValue, type UnpicklerOptions } from './unpickler.ts';

// Opcodes (Lib/pickletools.py).
const OP = {
  PROTO: 0x80, STOP: 0x2e, MARK: 0x28, POP: 0x30, NONE: 0x4e, BININT1: 0x4b, LONG1: 0x8a, LONG4: 0x8b,
  BINUNICODE: 0x58, EMPTY_LIST: 0x5d, APPEND: 0x61, APPENDS: 0x65, LIST: 0x6c, EMPTY_TUPLE: 0x29, TUPLE2: 0x86,
  EMPTY_DICT: 0x7d, SETITEMS: 0x75, GLOBAL: 0x63, REDUCE: 0x52, NEWOBJ: 0x81, BUILD: 0x62, BINGET: 0x68,
  LONG_BINGET: 0x6a, BINPUT: 0x71, LONG_BINPUT: 0x72,
} as const;

const utf8 = new TextEncoder();
const u32 = (n: number) => [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, n >>> 24];

/** A pickle from opcodes and operands (numbers), ASCII text (strings) and byte runs. */
function pickle(...parts: Array<number | string | ArrayLike<number>>): Uint8Array {
  const chunks = parts.map((p) => (typeof p === 'number' ? [p] : typeof p === 'string' ? utf8.encode(p) : p));
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}
const binunicode = (s: string) => pickle(OP.BINUNICODE, u32(utf8.encode(s).length), s);
const global = (module: string, name: string) => pickle(OP.GLOBAL, `${module}\n${name}\n`);
/** `part` n times, without spreading n items into a call. */
const repeat = (part: ArrayLike<number>, n: number) => {
  const out = new Uint8Array(part.length * n);
  for (let i = 0; i < n; i++) out.set(part, i * part.length);
  return out;
};

/** Resolves every global to an inert OpaqueObject: naming is harmless, calling is refused. */
const inertGlobals: UnpicklerOptions = {
  resolveGlobal: (module, name) => new OpaqueObject(`${module}.${name}`, []),
  persistentLoad: () => null,
};
/** Heimdall's torch policy, with tensors as plain records. */
const torchPolicy = (): UnpicklerOptions => {
  const policy = torchGlobalPolicy((args, global) => ({ kind: 'tensor', global, args } as PickleValue));
  return { resolveGlobal: policy.resolve, persistentLoad: () => ({ kind: 'storage' }) };
};

/** Runs a bomb; logs its size, seconds and heap growth (the evidence that it ended fast and small). */
function detonate(name: string, data: Uint8Array, options: UnpicklerOptions) {
  const before = process.memoryUsage();
  const started = performance.now();
  let result: PickleValue | undefined;
  let error: unknown;
  try {
    result = unpickle(data, options);
  } catch (e) {
    error = e;
  }
  const seconds = (performance.now() - started) / 1000;
  const after = process.memoryUsage();
  const grewMB = (after.heapUsed + after.arrayBuffers - before.heapUsed - before.arrayBuffers) / 2 ** 20;
  console.log(`${name}: ${data.byteLength} bytes, ${seconds.toFixed(3)} s, heap +${grewMB.toFixed(1)} MB, ${error ? `refused: ${(error as Error).message}` : 'read'}`);
  return { seconds, grewMB, result, error };
}

describe('unpickle', () => {
  it('reads protocol-2 containers, numbers and strings', () => {
    // pickle.dumps({'a': [1, 2.5, None, True], 'b': (-3,)}, protocol=2)
    const data = pickle(0x80, 2, 0x7d, 0x71, 0, 0x28, 0x58, 1, 0, 0, 0, 'a', 0x5d, 0x28, 0x4b, 1, 0x47, 0x40, 0x04, 0, 0, 0, 0, 0, 0, 0x4e, 0x88, 0x65, 0x58, 1, 0, 0, 0, 'b', 0x4a, 0xfd, 0xff, 0xff, 0xff, 0x85, 0x75, 0x2e);
    expect(unpickle(data, inertGlobals)).toEqual(new Map<unknown, unknown>([['a', [1, 2.5, null, true]], ['b', [-3]]]));
  });

  it('decodes LONG1 and LONG4 as CPython decode_long does, up to MAX_LONG_BYTES', () => {
    const max = (1n << BigInt(8 * MAX_LONG_BYTES - 1)) - 1n; // the largest 64-byte integer
    for (const value of [0n, 1n, -1n, 127n, 128n, -129n, 2n ** 31n, -(2n ** 63n), 2n ** 64n, max, -max - 1n]) {
      const bytes = encodeLong(value);
      const expected = value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
      expect(unpickle(pickle(OP.PROTO, 2, OP.LONG1, bytes.length, bytes, OP.STOP), inertGlobals)).toBe(expected);
      expect(unpickle(pickle(OP.PROTO, 2, OP.LONG4, u32(bytes.length), bytes, OP.STOP), inertGlobals)).toBe(expected);
    }
    const tooLong = encodeLong(max + 1n); // 65 bytes
    expect(() => unpickle(pickle(OP.PROTO, 2, OP.LONG1, tooLong.length, tooLong, OP.STOP), inertGlobals)).toThrowError(
      expect.objectContaining({ code: 'PICKLE_INVALID', message: expect.stringMatching(/integer of 65 bytes .* exceeds the 64-byte cap/) }),
    );
  });

  it('refuses opcodes that call code without a global check (INST, OBJ)', () => {
    expect(() => unpickle(pickle(0x80, 2, 'i', 'os\nsystem\n', 0x2e), inertGlobals)).toThrowError(expect.objectContaining({ code: 'UNSAFE_PICKLE' }));
    expect(() => unpickle(pickle(0x80, 2, 0x28, 'o', 0x2e), inertGlobals)).toThrowError(expect.objectContaining({ code: 'UNSAFE_PICKLE' }));
  });

  it('calls only the Callables a resolver returns: a named global that is not one is refused when called or BUILD-applied', () => {
    // AttributeDict-like: GLOBAL, EMPTY_TUPLE, NEWOBJ — a resolver that returns mere data refuses it.
    const newobj = pickle(OP.PROTO, 2, global('trainer.utils', 'AttributeDict'), OP.EMPTY_TUPLE, OP.NEWOBJ, OP.STOP);
    expect(() => unpickle(newobj, inertGlobals)).toThrowError(
      expect.objectContaining({ code: 'UNSAFE_PICKLE', message: expect.stringMatching(/^refused call of trainer\.utils\.AttributeDict object/) }),
    );
    const reduce = pickle(OP.PROTO, 2, global('cProfile', 'run'), binunicode('print(1)'), 0x85, OP.REDUCE, OP.STOP);
    expect(() => unpickle(reduce, inertGlobals)).toThrowError(expect.objectContaining({ code: 'UNSAFE_PICKLE', message: expect.stringMatching(/cProfile\.run/) }));
    // Naming alone is inert (whether to allow it is the resolver's choice: torch-globals.ts refuses).
    expect(unpickle(pickle(OP.PROTO, 2, global('cProfile', 'run'), OP.STOP), inertGlobals)).toBeInstanceOf(OpaqueObject);

    // A Callable is called with its arguments, and what it returns is the value.
    const calls: PickleValue[][] = [];
    const options: UnpicklerOptions = {
      resolveGlobal: (module, name) => ({ global: `${module}.${name}`, call: (args) => (calls.push([...args]), 'built') }),
      persistentLoad: () => null,
    };
    expect(unpickle(reduce, options)).toBe('built');
    expect(calls).toEqual([['print(1)']]);
    // BUILD applies to dicts and OpaqueObjects only, never to a global.
    const build = pickle(OP.PROTO, 2, global('cProfile', 'run'), OP.EMPTY_DICT, OP.BUILD, OP.STOP);
    expect(() => unpickle(build, options)).toThrowError(expect.objectContaining({ code: 'UNSAFE_PICKLE', message: expect.stringMatching(/^refused BUILD on cProfile\.run/) }));
  });

  it('keeps tuples immutable: APPEND extends lists only (a tensor size cannot grow after its check)', () => {
    const tuple = pickle(OP.PROTO, 2, OP.BININT1, 1, OP.BININT1, 2, OP.TUPLE2, OP.BININT1, 3, OP.APPEND, OP.STOP);
    expect(() => unpickle(tuple, inertGlobals)).toThrowError(expect.objectContaining({ code: 'PICKLE_INVALID', message: 'APPEND on tuple' }));
    const list = pickle(OP.PROTO, 2, OP.EMPTY_LIST, OP.BININT1, 3, OP.APPEND, OP.STOP);
    expect(unpickle(list, inertGlobals)).toEqual([3]);
  });

  it('keeps MARKs as CPython does: POP removes a bare MARK, nothing below an open MARK can be popped', () => {
    expect(unpickle(pickle(OP.PROTO, 2, OP.BININT1, 7, OP.MARK, OP.POP, OP.STOP), inertGlobals)).toBe(7);
    const belowMark = pickle(OP.PROTO, 2, OP.EMPTY_LIST, OP.BININT1, 1, OP.MARK, OP.APPEND, OP.STOP);
    expect(() => unpickle(belowMark, inertGlobals)).toThrowError(expect.objectContaining({ code: 'PICKLE_INVALID', message: 'stack underflow' }));
    expect(() => unpickle(pickle(OP.PROTO, 2, OP.NONE, OP.MARK, OP.STOP), inertGlobals)).toThrowError(expect.objectContaining({ message: 'STOP with 1 items and 1 open MARKs' }));
  });

  it('caps nesting, memo, stack and string sizes', () => {
    const marks = pickle(0x80, 2, ...Array<number>(20).fill(0x28));
    expect(() => unpickle(marks, { ...inertGlobals, limits: { maxNesting: 10 } })).toThrowError(expect.objectContaining({ code: 'PICKLE_INVALID', message: 'nesting exceeds 10 levels' }));
    const memo = pickle(0x80, 2, 0x4e, ...Array.from({ length: 5 }, (_, i) => [0x71, i]).flat(), 0x2e);
    expect(() => unpickle(memo, { ...inertGlobals, limits: { maxMemo: 3 } })).toThrowError(expect.objectContaining({ message: 'memo exceeds 3 entries' }));
    const stack = pickle(0x80, 2, ...Array<number>(6).fill(0x4e), 0x2e);
    expect(() => unpickle(stack, { ...inertGlobals, limits: { maxStack: 4 } })).toThrowError(expect.objectContaining({ message: 'stack exceeds 4 items' }));
    const string = pickle(0x80, 2, 0x58, 0x00, 0x00, 0x00, 0x40, 0x2e);
    expect(() => unpickle(string, inertGlobals)).toThrowError(expect.objectContaining({ message: expect.stringMatching(/string of 1073741824 bytes exceeds/) }));
    const name = pickle(OP.PROTO, 4, binunicode('os'), binunicode('x'.repeat(5000)), 0x93 /* STACK_GLOBAL */, OP.STOP);
    expect(() => unpickle(name, inertGlobals)).toThrowError(expect.objectContaining({ message: 'STACK_GLOBAL needs two strings of at most 4096 characters' }));
    expect(() => unpickle(pickle(OP.PROTO, 2, OP.GLOBAL, 'os\n', 'x'.repeat(5000), '\n', OP.STOP), inertGlobals)).toThrowError(
      expect.objectContaining({ message: 'unterminated GLOBAL line (or a name over 4096 characters) at byte 6' }),
    );
  });

  it('fails cleanly on a truncated pickle', () => {
    expect(() => unpickle(pickle(0x80, 2, 0x58, 10, 0, 0, 0, 'abc'), inertGlobals)).toThrowError(expect.objectContaining({ code: 'PICKLE_INVALID', message: expect.stringMatching(/ends inside an opcode/) }));
  });

  it('lets only HeimdallErrors escape: a callback throwing a TypeError becomes PICKLE_INVALID', () => {
    const options: UnpicklerOptions = { ...inertGlobals, persistentLoad: () => (null as unknown as { x: PickleValue }).x };
    const data = pickle(OP.PROTO, 2, OP.NONE, 0x51 /* BINPERSID */, OP.STOP);
    expect(() => unpickle(data, options)).toThrowError(expect.objectContaining({ name: 'HeimdallError', code: 'PICKLE_INVALID', message: expect.stringMatching(/^malformed pickle: Cannot read properties of null/) }));
  });

  it('ends every corrupted pickle with PICKLE_INVALID or UNSAFE_PICKLE, never another error', () => {
    // pickle.dumps({'set': {1, 2}, 'bytes': b'\x00\xe0?', ..., 'od': OrderedDict(x=1)}, 2) with torch 2.13 (see torch-globals.test.ts)
    const valid = Buffer.from(
      '80027d71002858030000007365747101635f5f6275696c74696e5f5f0a7365740a71025d7103284b014b0265857104527105580500000062797465737106635f636f646563730a656e636f64650a7107580400000000c3a03f710858060000006c6174696e31710986710a52710b5809000000627974656172726179710c635f5f6275696c74696e5f5f0a6279746561727261790a710d680758020000006162710e680986710f5271108571115271125807000000636f6d706c65787113635f5f6275696c74696e5f5f0a636f6d706c65780a7114473ff0000000000000474000000000000000867115527116580400000073697a65711763746f7263680a53697a650a71184b024b0386711985711a52711b5806000000646576696365711c63746f7263680a6465766963650a711d580400000063756461711e4b0086711f5271205807000000636f756e746572712163636f6c6c656374696f6e730a436f756e7465720a71227d712358010000006171244b027385712552712658020000006f64712763636f6c6c656374696f6e730a4f726465726564446963740a712829527129580100000078712a4b0173752e',
      'hex',
    );
    expect(unpickle(valid, torchPolicy())).toBeInstanceOf(Map);
    let seed = 11;
    const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed / 2 ** 31); // deterministic LCG
    const codes = new Set<string>();
    for (let i = 0; i < 1500; i++) {
      const data = Uint8Array.from(valid);
      for (let k = 0; k < 1 + Math.floor(random() * 3); k++) data[Math.floor(random() * data.length)] = Math.floor(random() * 256);
      try {
        unpickle(data.subarray(0, random() < 0.2 ? Math.floor(random() * data.length) : data.length), torchPolicy());
      } catch (error) {
        expect(error, `mutation ${i}`).toMatchObject({ name: 'HeimdallError', code: expect.stringMatching(/^(PICKLE_INVALID|UNSAFE_PICKLE)$/) });
        codes.add((error as { code: string }).code);
      }
    }
    expect(codes).toEqual(new Set(['PICKLE_INVALID', 'UNSAFE_PICKLE']));
  });
});

describe('unpickle: work and memory bounded by the pickle size', () => {
  it('refuses a 256 KB LONG4 at once (its quadratic decoding took 92 s)', () => {
    const data = pickle(OP.PROTO, 2, OP.LONG4, u32(262_144), repeat([0x7f], 262_144), OP.STOP);
    const { seconds, error } = detonate('LONG4 of 256 KB', data, inertGlobals);
    expect(error).toMatchObject({ code: 'PICKLE_INVALID', message: expect.stringMatching(/integer of 262144 bytes at byte 7 exceeds the 64-byte cap/) });
    expect(seconds).toBeLessThan(2);
  });

  it('appends 500k items in a loop (spreading them into push() overflowed the call stack)', () => {
    const data = pickle(OP.PROTO, 2, OP.EMPTY_LIST, OP.MARK, repeat([OP.BININT1, 1], 500_000), OP.APPENDS, OP.STOP);
    const { seconds, result } = detonate('APPENDS of 500k items', data, inertGlobals);
    expect((result as PickleValue[]).length).toBe(500_000);
    expect(seconds).toBeLessThan(5);
  });

  it('refuses _codecs.encode of nested memo references instead of expanding them (1.3 GB RSS for two calls before)', () => {
    // s = 'a' * 4096; L0 = [s] * 16; L(d+1) = [L(d)] * 16 (memo references); then encode(L3, 'latin1')
    // ~7000 times in 66 KB: stringifying the list made 268 MB per call.
    const levels = [0, 1, 2, 3].map((d) => pickle(OP.EMPTY_LIST, OP.BINPUT, 2 + d, OP.MARK, repeat([OP.BINGET, 1 + d], 16), OP.APPENDS, OP.POP));
    const call = pickle(OP.BINGET, 0, OP.BINGET, 5, OP.BINGET, 9, OP.TUPLE2, OP.REDUCE, OP.APPEND);
    const data = pickle(
      OP.PROTO, 2, OP.EMPTY_LIST,
      global('_codecs', 'encode'), OP.BINPUT, 0, OP.POP,
      binunicode('a'.repeat(4096)), OP.BINPUT, 1, OP.POP,
      binunicode('latin1'), OP.BINPUT, 9, OP.POP,
      ...levels, repeat(call, 6_900), OP.STOP,
    );
    expect(data.byteLength).toBeGreaterThan(66_000);
    const { seconds, grewMB, error } = detonate('_codecs.encode over nested memo references', data, torchPolicy());
    expect(error).toMatchObject({ code: 'PICKLE_INVALID', message: expect.stringMatching(/^_codecs\.encode of list/) });
    expect(seconds).toBeLessThan(2);
    expect(grewMB).toBeLessThan(100);
  });

  it('charges what allowlisted calls copy: encode of a 60 KB string 1000 times exceeds the budget', () => {
    const call = pickle(OP.BINGET, 0, OP.BINGET, 1, OP.BINGET, 2, OP.TUPLE2, OP.REDUCE, OP.APPEND);
    const data = pickle(
      OP.PROTO, 2, OP.EMPTY_LIST,
      global('_codecs', 'encode'), OP.BINPUT, 0, OP.POP,
      binunicode('a'.repeat(60_000)), OP.BINPUT, 1, OP.POP,
      binunicode('latin1'), OP.BINPUT, 2, OP.POP,
      repeat(call, 1000), OP.STOP,
    );
    const { seconds, grewMB, error } = detonate('_codecs.encode of a 60 KB string, 1000 times', data, torchPolicy());
    const budget = DEFAULT_LIMITS.allocPerPickleByte * data.byteLength + DEFAULT_LIMITS.allocSlackBytes;
    expect(error).toMatchObject({ code: 'PICKLE_INVALID', message: expect.stringContaining(`pickle of ${data.byteLength} bytes builds more than ${budget} bytes of objects`) });
    expect(seconds).toBeLessThan(2);
    expect(grewMB).toBeLessThan(100);
  });

  it('charges what allowlisted calls copy: set() of one memoized 20k-item list, 2000 times, exceeds the budget', () => {
    const call = pickle(OP.BINGET, 0, OP.BINGET, 1, 0x85 /* TUPLE1 */, OP.REDUCE, OP.APPEND);
    const data = pickle(
      OP.PROTO, 2, OP.EMPTY_LIST,
      global('__builtin__', 'set'), OP.BINPUT, 0, OP.POP,
      OP.MARK, repeat([OP.BININT1, 1], 20_000), OP.LIST, OP.BINPUT, 1, OP.POP,
      repeat(call, 2000), OP.STOP,
    );
    const { seconds, error } = detonate('set() of a 20k-item list, 2000 times', data, torchPolicy());
    expect(error).toMatchObject({ code: 'PICKLE_INVALID', message: expect.stringMatching(/builds more than \d+ bytes of objects/) });
    expect(seconds).toBeLessThan(2);
  });

  it('shares memoized values: a list of 200k references to one 1 MB string holds one string', () => {
    const data = pickle(OP.PROTO, 2, binunicode('s'.repeat(1 << 20)), OP.LONG_BINPUT, u32(70_000), OP.POP, OP.MARK, repeat([OP.LONG_BINGET, ...u32(70_000)], 200_000), OP.LIST, OP.STOP);
    const { seconds, grewMB, result } = detonate('200k references to a 1 MB string', data, inertGlobals);
    const list = result as string[];
    expect(list).toHaveLength(200_000);
    expect(list[199_999]).toBe(list[0]);
    expect(grewMB).toBeLessThan(100); // copies would be 200 GB
    expect(seconds).toBeLessThan(5);
  });

  it('keeps an exponentially shared structure shared (2^100 leaves in 809 bytes)', () => {
    // t0 = (); t(k+1) = (t(k), t(k)) through the memo.
    const levels = Array.from({ length: 100 }, (_, k) => pickle(OP.BINGET, k, OP.BINGET, k, OP.TUPLE2, OP.BINPUT, k + 1, OP.POP));
    const data = pickle(OP.PROTO, 2, OP.EMPTY_TUPLE, OP.BINPUT, 0, OP.POP, ...levels, OP.BINGET, 100, OP.STOP);
    const { seconds, result } = detonate('a 2^100-leaf DAG', data, inertGlobals);
    const root = result as PickleValue[];
    expect(root[0]).toBe(root[1]);
    expect(seconds).toBeLessThan(1);
  });

  it('refuses a pickle whose values outgrow allocPerPickleByte times its size', () => {
    // A list of 1000 empty dicts: 1 byte each, charged 64 + 16 bytes each (COST).
    const data = pickle(OP.PROTO, 2, OP.MARK, repeat([OP.EMPTY_DICT], 1000), OP.LIST, OP.STOP);
    expect((unpickle(data, inertGlobals) as PickleValue[]).length).toBe(1000);
    expect(() => unpickle(data, { ...inertGlobals, limits: { allocPerPickleByte: 64, allocSlackBytes: 0 } })).toThrowError(
      expect.objectContaining({ code: 'PICKLE_INVALID', message: expect.stringMatching(/^pickle of 1005 bytes builds more than 64320 bytes of objects/) }),
    );
  });
});
