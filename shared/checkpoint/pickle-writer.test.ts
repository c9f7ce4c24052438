import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeLong, pickle, pyDict, pyFloat, pyOrderedDict, pyTuple, tensor, tensorData, type PickleValue } from './pickle-writer.ts';

const run = promisify(execFile);
const PYTHON = process.env.HEIMDALL_TEST_PYTHON ?? 'python3';

/** The same value as Python source, so CPython can build it and pickle it itself. */
function pyLiteral(v: PickleValue): string {
  if (v === null) return 'None';
  if (typeof v === 'boolean') return v ? 'True' : 'False';
  if (typeof v === 'bigint') return v.toString();
  if (typeof v === 'number') return Number.isInteger(v) && !Object.is(v, -0) ? BigInt(v).toString() : floatLiteral(v);
  if (typeof v === 'string') return JSON.stringify(v);
  if (Array.isArray(v)) return `[${(v as readonly PickleValue[]).map(pyLiteral).join(', ')}]`;
  const t = v as Exclude<PickleValue, null | boolean | number | bigint | string | readonly PickleValue[]>;
  switch (t.kind) {
    case 'float':
      return floatLiteral(t.value);
    case 'tuple':
      return t.items.length === 1 ? `(${pyLiteral(t.items[0]!)},)` : `(${t.items.map(pyLiteral).join(', ')})`;
    case 'dict':
      return `{${t.entries.map(([k, x]) => `${pyLiteral(k)}: ${pyLiteral(x)}`).join(', ')}}`;
    case 'ordered_dict':
      return `collections.OrderedDict([${t.entries.map(([k, x]) => `(${pyLiteral(k)}, ${pyLiteral(x)})`).join(', ')}])`;
    case 'tensor':
      throw new Error('no literal for tensors');
  }
}

function floatLiteral(x: number): string {
  if (Number.isNaN(x)) return "float('nan')";
  if (x === Infinity) return "float('inf')";
  if (x === -Infinity) return "float('-inf')";
  if (Object.is(x, -0)) return '-0.0';
  const s = String(x);
  return /[.e]/.test(s) ? s : `${s}.0`;
}

const CHECK = `
import collections, json, pickle, pickletools, sys
literal = open(sys.argv[1], encoding="utf-8").read()
ours = open(sys.argv[2], "rb").read()
expected = eval(literal, {"collections": collections})
theirs = pickle.dumps(expected, protocol=2)
loaded = pickle.loads(ours)
print(json.dumps({
    "sameBytes": ours == theirs,
    "sameRepr": repr(loaded) == repr(expected),
    "loadedRepr": repr(loaded)[:2000],
    "theirs": theirs.hex(),
    "ourOps": [op.name for op, _, _ in pickletools.genops(ours)][:5000],
    "theirOps": [op.name for op, _, _ in pickletools.genops(theirs)][:5000],
}))
`;

interface CheckResult {
  sameBytes: boolean;
  sameRepr: boolean;
  loadedRepr: string;
  theirs: string;
  ourOps: string[];
  theirOps: string[];
}

let dir: string;
let counter = 0;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pickle-writer-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Pickles `value` here and, from the same value written as Python source, in CPython. */
async function compareWithCPython(value: PickleValue, literal = pyLiteral(value)): Promise<CheckResult> {
  const { bytes, storages } = pickle(value);
  expect(storages).toEqual([]);
  const n = counter++;
  const literalPath = join(dir, `value-${n}.py`);
  const picklePath = join(dir, `value-${n}.pkl`);
  await writeFile(literalPath, literal, 'utf8');
  await writeFile(picklePath, bytes);
  const { stdout } = await run(PYTHON, ['-c', CHECK, literalPath, picklePath], { maxBuffer: 64 << 20 });
  const result = JSON.parse(stdout) as CheckResult;
  // On a mismatch, the opcode lists show where.
  if (!result.sameBytes) expect(result.ourOps).toEqual(result.theirOps);
  return result;
}

describe('pickle-writer against CPython pickle (protocol 2)', () => {
  it('writes the same bytes as pickle.dumps for scalars, strings, containers and OrderedDict', async () => {
    const value = pyDict({
      none: null,
      yes: true,
      no: false,
      ints: [0, 1, 255, 256, 65535, 65536, -1, -255, -256, 2 ** 31 - 1, -(2 ** 31), 2 ** 31, -(2 ** 31) - 1, 2 ** 53, 2n ** 63n, -(2n ** 63n) - 1n, 2n ** 64n, 10n ** 80n, -(10n ** 80n)],
      huge: 2n ** 2100n, // 263 bytes: LONG4
      floats: [0.5, -0, pyFloat(1), pyFloat(0), 1e300, -2.5e-310, Infinity, -Infinity, NaN, Math.PI],
      strings: ['', 'ascii', 'héllo wörld', '日本語', '😀 emoji', 'quote " and \\ backslash\n\ttab'],
      tuples: [pyTuple(), pyTuple(1), pyTuple(1, 2), pyTuple(1, 2, 3), pyTuple(1, 2, 3, 4), pyTuple('nested', pyTuple('deeper', [1]))],
      lists: [[], [1], [1, 2], Array.from({ length: 2500 }, (_, i) => i)],
      manyStrings: [...Array.from({ length: 300 }, (_, i) => `s${i}`), 's299', 's3'], // memo past 255: LONG_BINPUT/LONG_BINGET
      repeated: ['same', 'same', 'same'],
      keys: pyDict([
        [1, 'int key'],
        [pyTuple(7, 't'), 'tuple key'],
        [null, 'none key'],
        [pyFloat(2.5), 'float key'],
      ]),
      od: pyOrderedDict({ b: 1, a: 2 }),
      odEmpty: pyOrderedDict([]),
      bigDict: pyDict(Array.from({ length: 1001 }, (_, i) => [`k${i}`, i] as const)), // batches of 1000 and 1
      dict1000: pyDict(Array.from({ length: 1000 }, (_, i) => [i, i] as const)), // C pickle adds an empty batch
      list1001: Array.from({ length: 1001 }, (_, i) => -i),
      od1001: pyOrderedDict(Array.from({ length: 1001 }, (_, i) => [i + 5000, i] as const)), // trailing SETITEM
    });
    const result = await compareWithCPython(value);
    expect(result.sameRepr).toBe(true);
    expect(result.sameBytes).toBe(true);
    expect(result.ourOps).toContain('LONG_BINPUT');
    expect(result.ourOps).toContain('LONG_BINGET');
    expect(result.ourOps).toContain('LONG1');
    expect(result.ourOps).toContain('LONG4');
  });

  it('memoizes a shared list so CPython loads one object, as pickle.dumps does', async () => {
    const shared: PickleValue[] = [1, 2];
    const value = pyDict({ a: shared, b: shared, c: pyTuple(shared, shared) });
    const result = await compareWithCPython(value, '(lambda s: {"a": s, "b": s, "c": (s, s)})([1, 2])');
    expect(result.sameBytes).toBe(true);
    expect(result.ourOps.filter((op) => op === 'BINGET')).toHaveLength(3);
  });

  it('OrderedDict state (a state_dict _metadata) is pickled with BUILD and restored as attributes', async () => {
    const od = pyOrderedDict({ w: 1 }, pyDict({ _metadata: pyOrderedDict({ '': pyDict({ version: 1 }) }) }));
    const { bytes } = pickle(od);
    const path = join(dir, 'state.pkl');
    await writeFile(path, bytes);
    const { stdout } = await run(PYTHON, [
      '-c',
      'import pickle, sys; o = pickle.load(open(sys.argv[1], "rb")); print(type(o).__name__, dict(o), dict(o._metadata))',
      path,
    ]);
    expect(stdout.trim()).toBe("OrderedDict {'w': 1} {'': {'version': 1}}");
  });
});

describe('pickle-writer unit behaviour', () => {
  it('encodes longs like CPython encode_long', () => {
    const hex = (v: bigint) => Buffer.from(encodeLong(v)).toString('hex');
    expect(hex(0n)).toBe('');
    expect(hex(255n)).toBe('ff00');
    expect(hex(-1n)).toBe('ff');
    expect(hex(-128n)).toBe('80');
    expect(hex(-129n)).toBe('7fff');
    expect(hex(-256n)).toBe('00ff');
    expect(hex(2n ** 31n)).toBe('00000080' + '00');
    expect(hex(2n ** 63n)).toBe('0000000000000080' + '00');
  });

  it('pickles integral numbers as int and others as float', () => {
    const ops = (v: PickleValue) => Buffer.from(pickle(v).bytes).subarray(2, -1).toString('hex');
    expect(ops(1)).toBe('4b01'); // BININT1
    expect(ops(pyFloat(1))).toBe('47' + '3ff0000000000000'); // BINFLOAT 1.0
    expect(ops(1.5)).toBe('47' + '3ff8000000000000');
    expect(ops(-0)).toBe('47' + '8000000000000000');
    expect(ops(2 ** 40)).toBe('8a06' + '000000000001'); // LONG1
  });

  it('pickles a tensor as torch.save does and collects its storage once', () => {
    const t = tensor('float32', [2, 3], new Float32Array(6));
    const { bytes, storages } = pickle(pyOrderedDict({ a: t, b: t, c: tensor('int64', [], BigInt64Array.of(5n)) }));
    expect(storages.map((s) => [s.key, s.dtype, s.numel, s.byteLength])).toEqual([
      ['0', 'float32', 6, 24],
      ['1', 'int64', 1, 8],
    ]);
    const text = Buffer.from(bytes).toString('latin1');
    expect(text).toContain('ctorch._utils\n_rebuild_tensor_v2\n');
    expect(text).toContain('ctorch\nFloatStorage\n');
    expect(text).toContain('ctorch\nLongStorage\n');
    expect(text.split('_rebuild_tensor_v2').length).toBe(2); // the global is memoized
  });

  it('refuses what it cannot pickle faithfully', async () => {
    const loop: { kind: 'tuple'; items: PickleValue[] } = { kind: 'tuple', items: [] };
    loop.items.push(loop);
    expect(() => pickle(loop)).toThrow(/contains itself/);
    expect(() => pickle({ kind: 'set' } as unknown as PickleValue)).toThrow(/kind set/);
    expect(() => pickle(tensor('float32', [2, -1], new Float32Array(0)))).toThrow(/dimension/);
    await expect(tensorData(tensor('float32', [3], new Float64Array(3)))).rejects.toThrow(/Float32Array/);
    await expect(tensorData(tensor('int64', [2, 2], new BigInt64Array(3)))).rejects.toThrow(/4 values/);
    await expect(tensorData(tensor('float16', [2], () => new Uint16Array(2)))).resolves.toHaveLength(2);
  });
});
