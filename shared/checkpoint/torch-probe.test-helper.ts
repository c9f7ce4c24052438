/**
 * Test helper (not a test file): loads a checkpoint in real PyTorch and describes everything in it
 * as JSON, and describes a writer-side PickleValue the same way, so tests can compare the two.
 * Used by torch-writer.test.ts and sample-weights.test.ts.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'vitest';
import { runPython } from '../../test/support/oracle.ts';
import { tensorBytes, tensorData, type PickleKey, type PickleValue, type TensorData, type TensorValue } from './pickle-writer.ts';

export interface ProbedTensor {
  dtype: string;
  shape: number[];
  stride: number[];
  offset: number;
  sha256: string;
  sum: number;
  first: number[];
}

/** JSON shape of a loaded object: tagged where JSON alone would lose the Python type. */
export type Probed =
  | null
  | boolean
  | string
  | Probed[]
  | { $int: string }
  | { $float: string }
  | { $tuple: Probed[] }
  | { $dict: Array<[Probed, Probed]> }
  | { $od: Array<[Probed, Probed]>; $state: Record<string, Probed> }
  | { $tensor: ProbedTensor };

export interface ProbeResult {
  torch: string;
  value: Probed;
  /** data_ptr() of each tensor, in the order met (to see shared storages). */
  pointers: number[];
}

const PROBE = String.raw`
import collections, hashlib, json, sys
import torch

path, weights_only = sys.argv[1], sys.argv[2] == "1"
obj = torch.load(path, weights_only=weights_only, map_location="cpu")
pointers = []

def tensor(t):
    t = t.detach()
    pointers.append(t.data_ptr())
    raw = t.contiguous()
    if raw.dtype == torch.bfloat16:
        raw = raw.view(torch.int16)
    flat = t.reshape(-1)
    first = [float(x) if t.is_floating_point() else int(x) for x in flat[:4].tolist()]
    return {
        "dtype": str(t.dtype).replace("torch.", ""),
        "shape": list(t.shape),
        "stride": list(t.stride()),
        "offset": t.storage_offset(),
        "sha256": hashlib.sha256(raw.numpy().tobytes()).hexdigest(),
        "sum": float(flat.double().sum().item()) if flat.numel() else 0.0,
        "first": first,
    }

def enc(v):
    if isinstance(v, torch.Tensor):
        return {"$tensor": tensor(v)}
    if isinstance(v, collections.OrderedDict):
        return {"$od": [[enc(k), enc(x)] for k, x in v.items()], "$state": {k: enc(x) for k, x in vars(v).items()}}
    if isinstance(v, dict):
        return {"$dict": [[enc(k), enc(x)] for k, x in v.items()]}
    if isinstance(v, tuple):
        return {"$tuple": [enc(x) for x in v]}
    if isinstance(v, list):
        return [enc(x) for x in v]
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        return {"$int": str(v)}
    if isinstance(v, float):
        return {"$float": repr(v)}
    raise TypeError("unexpected " + type(v).__name__)

value = enc(obj)
print(json.dumps({"torch": torch.__version__, "value": value, "pointers": pointers}))
`;

let scriptPath: Promise<string> | undefined;

/** torch.load(path, weights_only) in `python`, described as JSON. */
export async function probeCheckpoint(python: string, path: string, weightsOnly: boolean): Promise<ProbeResult> {
  scriptPath ??= (async () => {
    const dir = await mkdtemp(join(tmpdir(), 'torch-probe-'));
    const file = join(dir, 'probe.py');
    await writeFile(file, PROBE, 'utf8');
    process.once('exit', () => void rm(dir, { recursive: true, force: true }));
    return file;
  })();
  const stdout = await runPython(python, await scriptPath, [path, weightsOnly ? '1' : '0'], { timeoutMs: 300_000 });
  return JSON.parse(stdout) as ProbeResult;
}

/** What the probe should print for `value` (tensors are materialised one at a time). */
export async function describeValue(value: PickleValue | PickleKey): Promise<Probed> {
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return value;
  if (typeof value === 'bigint') return { $int: value.toString() };
  if (typeof value === 'number') {
    return Number.isInteger(value) && !Object.is(value, -0) ? { $int: BigInt(value).toString() } : { $float: pyRepr(value) };
  }
  if (Array.isArray(value)) {
    const out: Probed[] = [];
    for (const item of value as readonly PickleValue[]) out.push(await describeValue(item));
    return out;
  }
  const v = value as Exclude<PickleValue, null | boolean | number | bigint | string | readonly PickleValue[]>;
  switch (v.kind) {
    case 'float':
      return { $float: pyRepr(v.value) };
    case 'tuple': {
      const items: Probed[] = [];
      for (const item of v.items) items.push(await describeValue(item));
      return { $tuple: items };
    }
    case 'dict':
      return { $dict: await describePairs(v.entries) };
    case 'ordered_dict': {
      const state: Record<string, Probed> = {};
      for (const [k, x] of v.state?.entries ?? []) state[String(k)] = await describeValue(x);
      return { $od: await describePairs(v.entries), $state: state };
    }
    case 'tensor':
      return { $tensor: await describeTensor(v) };
  }
}

async function describePairs(entries: ReadonlyArray<readonly [PickleKey, PickleValue]>): Promise<Array<[Probed, Probed]>> {
  const out: Array<[Probed, Probed]> = [];
  for (const [k, x] of entries) out.push([await describeValue(k), await describeValue(x)]);
  return out;
}

export async function describeTensor(t: TensorValue): Promise<ProbedTensor> {
  const data = await tensorData(t);
  const values = (i: number) => valueAt(t.dtype, data, i);
  let sum = 0;
  for (let i = 0; i < data.length; i++) sum += values(i);
  const stride: number[] = [];
  let s = 1;
  for (let i = t.shape.length - 1; i >= 0; i--) {
    stride.unshift(s);
    s *= t.shape[i]!;
  }
  return {
    dtype: t.dtype,
    shape: [...t.shape],
    stride,
    offset: 0,
    sha256: createHash('sha256').update(tensorBytes(data)).digest('hex'),
    sum,
    first: Array.from({ length: Math.min(4, data.length) }, (_, i) => values(i)),
  };
}

function valueAt(dtype: TensorValue['dtype'], data: TensorData, i: number): number {
  const raw = data[i]!;
  if (dtype === 'float16') return halfToNumber(raw as number);
  if (dtype === 'bfloat16') return bfloatToNumber(raw as number);
  return Number(raw);
}

function halfToNumber(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 0x1f) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

function bfloatToNumber(bits: number): number {
  const view = new DataView(new ArrayBuffer(4));
  view.setUint32(0, bits << 16);
  return view.getFloat32(0);
}

/** Python's repr for a float (the shortest round-trip form, like JS, spelled Python's way). */
function pyRepr(x: number): string {
  if (Number.isNaN(x)) return 'nan';
  if (x === Infinity) return 'inf';
  if (x === -Infinity) return '-inf';
  if (Object.is(x, -0)) return '-0.0';
  if (x === 0) return '0.0';
  const abs = Math.abs(x);
  if (abs >= 1e16 || abs < 1e-4) {
    // Python: 1e+16, 2.5e-05; JS: 10000000000000000 / 1e+16, 0.000025.
    const [mantissa, exp] = x.toExponential().split('e') as [string, string];
    const e = Number(exp);
    return `${mantissa}e${e < 0 ? '-' : '+'}${String(Math.abs(e)).padStart(2, '0')}`;
  }
  const s = String(x);
  return s.includes('.') ? s : `${s}.0`;
}

/**
 * Deep equality of a probe with the expected description; tensor sums are compared with a
 * tolerance (float64 sums in a different order), everything else exactly (sha256 covers the bytes).
 */
export function expectSameProbe(actual: Probed, expected: Probed, path = '$'): void {
  if (expected !== null && typeof expected === 'object' && '$tensor' in expected) {
    expect(actual, path).toHaveProperty('$tensor');
    const a = (actual as { $tensor: ProbedTensor }).$tensor;
    const e = expected.$tensor;
    const scale = Math.max(1, Math.abs(e.sum), e.shape.reduce((n, d) => n * d, 1) * 1e-3);
    expect(Math.abs(a.sum - e.sum), `${path} sum ${a.sum} vs ${e.sum}`).toBeLessThanOrEqual(1e-9 * scale);
    expect({ ...a, sum: 0 }, path).toEqual({ ...e, sum: 0 });
    return;
  }
  if (Array.isArray(expected)) {
    expect(Array.isArray(actual), `${path} is a list`).toBe(true);
    expect((actual as Probed[]).length, `${path} length`).toBe(expected.length);
    expected.forEach((item, i) => expectSameProbe((actual as Probed[])[i]!, item, `${path}[${i}]`));
    return;
  }
  if (expected !== null && typeof expected === 'object') {
    expect(actual !== null && typeof actual === 'object' && !Array.isArray(actual), `${path} is an object`).toBe(true);
    const a = actual as Record<string, unknown>;
    const e = expected as Record<string, unknown>;
    expect(Object.keys(a).sort(), `${path} tags`).toEqual(Object.keys(e).sort());
    for (const key of Object.keys(e)) expectSameProbe(a[key] as Probed, e[key] as Probed, `${path}.${key}`);
    return;
  }
  expect(actual, path).toEqual(expected);
}
