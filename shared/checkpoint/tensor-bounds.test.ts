import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/support/temp.ts';
import { SMALL_SPEC } from '../../test/support/small-model.ts';
import { stateDictEntries } from '../models/localization-net/architecture.ts';
import { exportCheckpoint } from '../models/localization-net/export.ts';
import { sampleStateDict } from '../models/localization-net/sample-weights.ts';
import { openCheckpoint } from './index.ts';
import { contiguousStrides, writeSparseZip, writeViewCheckpoint, type ViewCheckpoint, type ViewStorage, type ViewTensor } from './sparse-checkpoint.test-helper.ts';
import { MAX_PICKLE_BYTES, MAX_SMALL_RECORD_BYTES } from './torch-zip.ts';

let dir: string;
beforeAll(async () => {
  dir = await tempDir();
});

let serial = 0;
async function write(checkpoint: ViewCheckpoint): Promise<string> {
  const path = join(dir, `c${serial++}.pt`);
  await writeViewCheckpoint(path, checkpoint);
  return path;
}

/** Opens and reads every tensor; resolves to their values by name. */
async function readAll(path: string): Promise<Map<string, number[]>> {
  const checkpoint = await openCheckpoint(path);
  try {
    const out = new Map<string, number[]>();
    for (const [name, t] of checkpoint.tensors) out.set(name, Array.from(await t.readFloat32()));
    return out;
  } finally {
    await checkpoint.close();
  }
}

const ramp = (n: number, from = 0) => Float32Array.from({ length: n }, (_, i) => from + i);
const storage = (key: string, numel: number, values?: Float32Array): ViewStorage => ({ key, dtype: 'float32', numel, ...(values ? { chunks: [{ at: 0, values }] } : {}) });
const view = (name: string, key: string, offset: number, shape: number[], stride = contiguousStrides(shape)): ViewTensor => ({ name, storage: key, offset, shape, stride });

describe('tensor views: each reads its own bytes, and its values are stored ones', () => {
  it('reads disjoint views of one storage (narrow, transpose, slice), as torch lays them out', async () => {
    const path = await write({
      storages: [storage('0', 40, ramp(40))],
      tensors: [
        view('flat', '0', 0, [2, 3]),
        view('transposed', '0', 6, [3, 2], [1, 3]), // (a [2, 3] at 6).t()
        view('every_other', '0', 12, [4], [2]),
        view('tail', '0', 30, [10]),
      ],
    });
    const values = await readAll(path);
    expect(values.get('flat')).toEqual([0, 1, 2, 3, 4, 5]);
    expect(values.get('transposed')).toEqual([6, 9, 7, 10, 8, 11]);
    expect(values.get('every_other')).toEqual([12, 14, 16, 18]);
    expect(values.get('tail')).toEqual(Array.from(ramp(10, 30)));
  });

  it('refuses a stride-0 weight with TENSOR_OUT_OF_BOUNDS', async () => {
    const path = await write({ storages: [storage('0', 4, ramp(4))], tensors: [view('w', '0', 0, [1000, 4], [0, 1])] });
    await expect(openCheckpoint(path)).rejects.toMatchObject({ code: 'TENSOR_OUT_OF_BOUNDS', message: expect.stringMatching(/w \[1000, 4\] has stride 0 on dimension 0/) });
  });

  it('refuses strides under which a weight has more elements than it covers (aliasing without a 0 stride)', async () => {
    const path = await write({ storages: [storage('0', 4096 + 4095, ramp(8191))], tensors: [view('w', '0', 0, [4096, 4096], [1, 1])] });
    await expect(openCheckpoint(path)).rejects.toMatchObject({ code: 'TENSOR_OUT_OF_BOUNDS', message: expect.stringMatching(/16777216 elements but covers only 8191/) });
  });

  it('refuses two weights sharing bytes of one storage, naming both', async () => {
    const path = await write({ storages: [storage('0', 20, ramp(20))], tensors: [view('a', '0', 0, [10]), view('b', '0', 5, [10])] });
    await expect(openCheckpoint(path)).rejects.toMatchObject({ code: 'TENSOR_OUT_OF_BOUNDS', message: expect.stringMatching(/entries a .* and b .* share bytes of storage archive\/data\/0/) });
  });

  it('refuses sizes and extents that overflow (was RangeError: Invalid typed array length, retried as IO_ERROR)', async () => {
    const big = 2 ** 40;
    for (const tensors of [
      [view('w', '0', 0, [big, big], [0, 0])],
      [view('w', '0', 0, [big], [big])],
      [view('w', '0', 0, [2 ** 53, 1], [1, 1])],
    ]) {
      const path = await write({ storages: [storage('0', 4, ramp(4))], tensors });
      await expect(openCheckpoint(path)).rejects.toMatchObject({ code: 'TENSOR_OUT_OF_BOUNDS' });
    }
  });

  it('refuses a storage that claims more elements than its record holds, and a tensor past its storage', async () => {
    const path = await write({ storages: [{ key: '0', dtype: 'float32', numel: 4 }], tensors: [view('w', '0', 0, [4])] });
    // The same record, 16 bytes long, with a pickle that claims 2^50 elements for it.
    const claimed = await write({ storages: [{ key: '0', dtype: 'float32', numel: 2 ** 50, recordBytes: 16 }], tensors: [view('w', '0', 0, [4])] });
    await expect(readAll(path)).resolves.toBeDefined();
    await expect(openCheckpoint(claimed)).rejects.toMatchObject({ code: 'TENSOR_OUT_OF_BOUNDS', message: expect.stringMatching(/declares 1125899906842624 float32 elements/) });
    const past = await write({ storages: [storage('0', 4, ramp(4))], tensors: [view('w', '0', 2, [4])] });
    await expect(openCheckpoint(past)).rejects.toMatchObject({ code: 'TENSOR_OUT_OF_BOUNDS', message: expect.stringMatching(/reaches element 5 of a 4-element storage/) });
  });

  it('a 10 KB file claiming a LocalizationNet by stride-0 weights exports nothing', async () => {
    // Every weight a stride-0 view of one stored value: the parameters are not backed by stored bytes.
    const entries = stateDictEntries(SMALL_SPEC);
    const path = await write({
      storages: [storage('0', 1, new Float32Array([0.5])), { key: '1', dtype: 'int64', numel: 1 }],
      tensors: entries.map((e) =>
        e.dtype === 'int64' ? view(e.name, '1', 0, []) : view(e.name, '0', 0, [...e.shape], e.shape.map(() => 0)),
      ),
    });
    await expect(exportCheckpoint(path, join(dir, 'never.onnx'))).rejects.toMatchObject({ code: 'TENSOR_OUT_OF_BOUNDS', message: expect.stringMatching(/stride 0/) });
  });

  it('exports a LocalizationNet whose weights are disjoint views of one flat buffer (DeepSpeed zero_to_fp32 style)', async () => {
    const sample = sampleStateDict(SMALL_SPEC, 3);
    const floats = sample.filter((s) => s.entry.dtype === 'float32');
    const total = floats.reduce((n, s) => n + s.entry.shape.reduce((a, b) => a * b, 1), 0);
    const flat = new Float32Array(total);
    const tensors: ViewTensor[] = [];
    let at = 0;
    for (const s of sample) {
      if (s.entry.dtype !== 'float32') {
        tensors.push(view(s.name, `n${tensors.length}`, 0, []));
        continue;
      }
      const values = s.tensor.data() as Float32Array;
      flat.set(values, at);
      tensors.push(view(s.name, 'flat', at, [...s.entry.shape]));
      at += values.length;
    }
    const counters = tensors.filter((t) => t.storage !== 'flat').map((t) => ({ key: t.storage, dtype: 'int64' as const, numel: 1 }));
    const path = await write({ storages: [storage('flat', total, flat), ...counters], tensors });
    const result = await exportCheckpoint(path, join(dir, 'flat.onnx'));
    expect(result.parameters).toBeGreaterThan(0);
    expect(result.warnings).toEqual([]);
  });
});

describe('records read whole are capped before they are read', () => {
  it(`refuses a data.pkl over ${MAX_PICKLE_BYTES} bytes with PICKLE_INVALID`, async () => {
    const path = await write({ storages: [], tensors: [], pickleSize: MAX_PICKLE_BYTES + 1 });
    await expect(openCheckpoint(path)).rejects.toMatchObject({ code: 'PICKLE_INVALID', message: expect.stringMatching(/over the 16777216-byte limit/) });
  });

  it(`refuses a byteorder record over ${MAX_SMALL_RECORD_BYTES} bytes`, async () => {
    const huge = join(dir, 'byteorder.pt');
    await writeSparseZip(huge, [
      { name: 'archive/data.pkl', size: 3, chunks: [{ at: 0, bytes: Uint8Array.from([0x80, 2, 0x2e]) }] },
      { name: 'archive/byteorder', size: 1 << 30 },
    ]);
    await expect(openCheckpoint(huge)).rejects.toMatchObject({ code: 'CHECKPOINT_CORRUPT', message: expect.stringMatching(/byteorder is 1073741824 bytes, over the 64-byte limit/) });
  });
});
