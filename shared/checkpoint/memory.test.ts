import { execFile } from 'node:child_process';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/support/temp.ts';
import { SMALL_SPEC } from '../../test/support/small-model.ts';
import { sampleStateDict } from '../models/localization-net/sample-weights.ts';
import { writeViewCheckpoint, type ViewStorage, type ViewTensor } from './sparse-checkpoint.test-helper.ts';

/**
 * Memory and time on hostile sizes, each measured in a child process (its own peak RSS): a storage
 * of 1 GiB that ~100 small tensors view (each must read its own bytes, the record's CRC-32 once),
 * and a 3.5 GB data.pkl (refused before it is read). The files are sparse: gigabytes claimed,
 * kilobytes on disk.
 */

const run = promisify(execFile);
const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
/** Far below one copy of the 1 GiB storage, far above Node + tsx + the exporter (~150 MB). */
const PEAK_LIMIT = 256 * MiB;

let dir: string;
let views: string;
let tensorCount = 0;

interface Measured {
  seconds: number;
  peakRssBytes: number;
  rssBeforeBytes: number;
  values: number;
  error?: { code?: string; message: string };
}

async function measure(...args: string[]): Promise<Measured> {
  const { stdout } = await run(process.execPath, ['--import', 'tsx', join(import.meta.dirname, 'memory-child.test-helper.ts'), ...args], { maxBuffer: 1 << 20 });
  const result = JSON.parse(stdout.trim().split('\n').at(-1)!) as Measured;
  console.log(`${args[0]} ${args[1]!.split('/').at(-1)}: ${result.seconds.toFixed(2)} s, peak RSS ${(result.peakRssBytes / MiB).toFixed(0)} MiB (${(result.rssBeforeBytes / MiB).toFixed(0)} MiB before)${result.error ? `, ${result.error.code}` : ''}`);
  return result;
}

beforeAll(async () => {
  dir = await tempDir();
  // LocalizationNet's weights as views into one 1 GiB float32 storage, spread over it (each view
  // in its own stretch of pages), plus extra views so that ~100 tensors share the storage.
  const numel = GiB / 4;
  const sample = sampleStateDict(SMALL_SPEC, 4);
  const floats = sample.filter((s) => s.entry.dtype === 'float32');
  const extra = Math.max(0, 100 - floats.length);
  const stride = Math.floor(numel / (floats.length + extra));
  const chunks: Array<{ at: number; values: Float32Array }> = [];
  const tensors: ViewTensor[] = [];
  const storages: ViewStorage[] = [];
  let slot = 0;
  for (const s of sample) {
    if (s.entry.dtype !== 'float32') {
      storages.push({ key: `n${storages.length}`, dtype: 'int64', numel: 1, chunks: [{ at: 0, values: new BigInt64Array([100n]) }] });
      tensors.push({ name: s.name, storage: storages.at(-1)!.key, offset: 0, shape: [], stride: [] });
      continue;
    }
    const values = s.tensor.data() as Float32Array;
    chunks.push({ at: slot * stride, values });
    tensors.push({ name: s.name, storage: 'flat', offset: slot * stride, shape: [...s.entry.shape], stride: contiguous(s.entry.shape) });
    slot++;
  }
  for (let i = 0; i < extra; i++, slot++) {
    chunks.push({ at: slot * stride, values: Float32Array.from({ length: 1024 }, (_, k) => Math.sin(k + i)) });
    tensors.push({ name: `extra.${i}`, storage: 'flat', offset: slot * stride, shape: [32, 32], stride: [32, 1] });
  }
  storages.push({ key: 'flat', dtype: 'float32', numel, chunks });
  tensorCount = tensors.filter((t) => t.storage === 'flat').length;
  views = join(dir, 'views.pt');
  await writeViewCheckpoint(views, { storages, tensors });
});

function contiguous(shape: readonly number[]): number[] {
  const out: number[] = [];
  let s = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    out[d] = s;
    s *= shape[d]!;
  }
  return out;
}

describe('memory stays one tensor, time stays one pass over the file', () => {
  it('reads ~100 small views of a 1 GiB storage, each its own bytes, checking the record CRC once', async () => {
    expect(tensorCount).toBeGreaterThanOrEqual(100);
    expect((await stat(views)).size).toBeGreaterThan(GiB);
    const result = await measure('read', views);
    expect(result.error).toBeUndefined();
    expect(result.peakRssBytes).toBeLessThan(PEAK_LIMIT);
    // One pass over 1 GiB for the CRC (~1 s here), not 100.
    expect(result.seconds).toBeLessThan(10);
  });

  it('exports a LocalizationNet viewing a 1 GiB storage (CRC checks deferred to the hashing worker)', async () => {
    const result = await measure('export', views, join(dir, 'views.onnx'));
    expect(result.error).toBeUndefined();
    expect(result.values).toBeGreaterThan(0);
    expect(result.peakRssBytes).toBeLessThan(PEAK_LIMIT);
    expect((await stat(join(dir, 'views.onnx'))).size).toBeLessThan(10 * MiB);
  });

  it('refuses a 3.5 GB data.pkl before reading it', async () => {
    const path = join(dir, 'huge-pickle.pt');
    await writeViewCheckpoint(path, { storages: [], tensors: [], pickleSize: 3.5 * GiB });
    expect((await stat(path)).size).toBeGreaterThan(3.5 * GiB);
    const result = await measure('read', path);
    expect(result.error).toMatchObject({ code: 'PICKLE_INVALID', message: expect.stringMatching(/over the 16777216-byte limit/) });
    expect(result.peakRssBytes).toBeLessThan(PEAK_LIMIT);
    expect(result.seconds).toBeLessThan(1);
  });
});
