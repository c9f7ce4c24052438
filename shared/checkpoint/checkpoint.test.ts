import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/support/temp.ts';
import { SMALL_SPEC } from '../../test/support/small-model.ts';
import { stateDictEntries } from '../models/localization-net/architecture.ts';
import { writeSampleCheckpoint } from '../models/localization-net/sample-weights.ts';
import { openCheckpoint } from './index.ts';
import { ZipReader } from './zip-reader.ts';
import { RandomAccessFile } from './random-access-file.ts';
import { writeViewCheckpoint } from './sparse-checkpoint.test-helper.ts';

let dir: string;
let bad: string;
let marker: string;

beforeAll(async () => {
  dir = await tempDir();
  bad = join(dir, 'bad');
  marker = join(dir, 'MARKER');
  execFileSync('python3', [join(import.meta.dirname, '../../test/fixtures/bad_checkpoints.py'), bad, marker]);
});

const expectCode = async (path: string, code: string, message?: RegExp) => {
  const attempt = openCheckpoint(path).then(async (c) => {
    // Reading every tensor surfaces lazy failures (CRC, bounds) too.
    for (const t of c.tensors.values()) await t.readFloat32();
    await c.close();
  });
  await expect(attempt).rejects.toMatchObject({ code, ...(message ? { message: expect.stringMatching(message) } : {}) });
};

describe('openCheckpoint on the layouts trainers write', () => {
  for (const layout of ['bare', 'model_state_dict', 'lightning'] as const) {
    it(`reads a ${layout} checkpoint lazily, with names as LocalizationNet's state_dict has them`, async () => {
      const path = join(dir, `${layout}.pth`);
      await writeSampleCheckpoint(path, { variant: 'custom', spec: SMALL_SPEC, seed: 1, layout });
      const checkpoint = await openCheckpoint(path);
      expect(checkpoint.format).toBe('torch-zip');
      expect(checkpoint.layout).toBe(layout);
      const expected = stateDictEntries(SMALL_SPEC);
      expect([...checkpoint.tensors.keys()]).toEqual(expected.map((e) => e.name));
      for (const entry of expected) expect(checkpoint.tensors.get(entry.name)!.shape).toEqual(entry.shape);
      const stem = await checkpoint.tensors.get('backbone.0.0.0.weight')!.readFloat32();
      expect(stem).toHaveLength(8 * 3 * 4 * 4);
      expect(stem.every(Number.isFinite)).toBe(true);
      if (layout !== 'bare') expect(checkpoint.config).toMatchObject({ uncertainty_min: 0.01, uncertainty_max: 1 });
      await checkpoint.close();
    });
  }

  it('reads ZIP64 archives (per-entry ZIP64 fields and the ZIP64 end record)', async () => {
    const path = join(dir, 'zip64.pth');
    await writeSampleCheckpoint(path, {
      variant: 'custom',
      spec: SMALL_SPEC,
      seed: 1,
      layout: 'bare',
      zip: { zip64SizeThreshold: 1, zip64OffsetThreshold: 1, zip64CountThreshold: 1 },
    });
    const [zip64, plain] = await Promise.all([openCheckpoint(path), openCheckpoint(join(dir, 'bare.pth'))]);
    for (const name of ['backbone.0.0.0.weight', 'uncertainty_head.8.bias']) {
      expect(Array.from(await zip64.tensors.get(name)!.readFloat32())).toEqual(Array.from(await plain.tensors.get(name)!.readFloat32()));
    }
    await Promise.all([zip64.close(), plain.close()]);
  });

  it('reads the same values whatever the layout', async () => {
    const read = async (layout: string) => {
      const c = await openCheckpoint(join(dir, `${layout}.pth`));
      const values = await c.tensors.get('position_head.8.weight')!.readFloat32();
      await c.close();
      return Array.from(values);
    };
    expect(await read('lightning')).toEqual(await read('bare'));
  });
});

describe('bad checkpoints fail with a stable code', () => {
  it('refuses os.system, builtins.exec and subprocess.Popen, and runs none of them', async () => {
    for (const name of ['os_system', 'builtins_exec', 'subprocess_popen']) {
      await expectCode(join(bad, `${name}.pt`), 'UNSAFE_PICKLE', /refused global (posix\.system|builtins\.exec|subprocess\.Popen)/);
    }
    expect(existsSync(marker)).toBe(false);
  });

  it('uses payloads that really are hostile: a real unpickler runs them', () => {
    // Point the payload at another marker of the same length (the pickle's string length stays valid).
    const control = `${marker.slice(0, -1)}C`;
    const pkl = join(dir, 'control.pkl');
    const script = `import pickle, sys
data = open(sys.argv[1], 'rb').read().replace(sys.argv[2].encode(), sys.argv[3].encode())
open(sys.argv[4], 'wb').write(data)
pickle.loads(data)`;
    execFileSync('python3', ['-c', script, join(bad, 'os_system.pkl'), marker, control, pkl]);
    expect(existsSync(control)).toBe(true);
  });

  it('names a storage shorter than its tensor', async () => {
    await expectCode(join(bad, 'storage_short.pt'), 'TENSOR_OUT_OF_BOUNDS', /holds 160 bytes but declares 100/);
  });

  it('rejects offsets and strides that reach outside the storage', async () => {
    await expectCode(join(bad, 'offset_out_of_bounds.pt'), 'TENSOR_OUT_OF_BOUNDS', /offset 95/);
    await expectCode(join(bad, 'stride_out_of_bounds.pt'), 'TENSOR_OUT_OF_BOUNDS', /strides \[20, 1\]/);
  });

  it('rejects a non-tensor where a weight belongs', async () => {
    await expectCode(join(bad, 'non_tensor_weight.pt'), 'INVALID_STATE_DICT', /backbone\.0\.0\.0\.weight is a string/);
  });

  it('explains that legacy (pre-zip) torch files are unsupported', async () => {
    await expectCode(join(bad, 'legacy.pt'), 'UNSUPPORTED_FORMAT', /legacy/);
  });

  it('detects a truncated archive', async () => {
    const path = join(dir, 'truncated.pth');
    await copyFile(join(dir, 'bare.pth'), path);
    const { size } = await import('node:fs').then((fs) => fs.statSync(path));
    await truncate(path, Math.floor(size / 2));
    await expectCode(path, 'CHECKPOINT_CORRUPT', /truncated/);
  });

  it('detects a CRC mismatch when the damaged tensor is read', async () => {
    const path = join(dir, 'crc.pth');
    const bytes = await readFile(join(dir, 'bare.pth'));
    const file = await RandomAccessFile.open(join(dir, 'bare.pth'));
    const zip = await ZipReader.open(file);
    const record = [...zip.entries.values()].find((e) => e.name.endsWith('/data/3'))!;
    await file.close();
    bytes[record.dataOffset + 5]! ^= 0xff;
    await writeFile(path, bytes);
    await expectCode(path, 'CHECKPOINT_CORRUPT', /CRC mismatch in .*data\/3/);
  });

  it('hands the CRC checks of the records it reads to a caller that checksums them itself', async () => {
    const path = join(dir, 'crc-deferred.pth');
    const bytes = await readFile(join(dir, 'bare.pth'));
    const file = await RandomAccessFile.open(join(dir, 'bare.pth'));
    const zip = await ZipReader.open(file);
    const damaged = [...zip.entries.values()].find((e) => e.name.endsWith('/data/3'))!;
    await file.close();
    bytes[damaged.dataOffset + 5]! ^= 0xff;
    await writeFile(path, bytes);

    const checkpoint = await openCheckpoint(path);
    const checks = checkpoint.deferRecordChecks!();
    const crcs = checks.records.map((r) => crc32(bytes.subarray(r.offset, r.offset + r.length)));
    expect(checks.records).toContainEqual({ offset: damaged.dataOffset, length: damaged.size });
    // Nothing read yet: nothing to fail.
    checks.verify(crcs);
    for (const t of checkpoint.tensors.values()) await t.readFloat32();
    expect(() => checks.verify(crcs)).toThrow(expect.objectContaining({ code: 'CHECKPOINT_CORRUPT', message: expect.stringMatching(/CRC mismatch in .*data\/3/) }));
    await checkpoint.close();
  });

  it('refuses a config whose shared references expand to billions of values, at once (was an unbounded tree walk)', async () => {
    const path = join(dir, 'config-dag.pt');
    await writeViewCheckpoint(path, {
      storages: [{ key: '0', dtype: 'float32', numel: 1 }],
      tensors: [{ name: 'w', storage: '0', offset: 0, shape: [1], stride: [1] }],
      // 1000^3 values from ~12 KB of pickle.
      config: { uncertainty_min: { float: 0.01 }, history: { dag: { width: 1000, levels: 2 } } },
    });
    const started = performance.now();
    await expect(openCheckpoint(path)).rejects.toMatchObject({ code: 'INVALID_CONFIG', message: expect.stringMatching(/^config config\.history.* expands to more than 100000 values/) });
    expect(performance.now() - started).toBeLessThan(2000);
    // The same shape, small, is plain data.
    const small = join(dir, 'config-small-dag.pt');
    await writeViewCheckpoint(small, {
      storages: [{ key: '0', dtype: 'float32', numel: 1 }],
      tensors: [{ name: 'w', storage: '0', offset: 0, shape: [1], stride: [1] }],
      config: { history: { dag: { width: 3, levels: 1 } } },
    });
    const checkpoint = await openCheckpoint(small);
    expect(checkpoint.config).toEqual({ history: [[0, 1, 2], [0, 1, 2], [0, 1, 2]] });
    await checkpoint.close();
  });

  it('reports a missing file as CHECKPOINT_NOT_FOUND', async () => {
    await expectCode(join(dir, 'nope.pth'), 'CHECKPOINT_NOT_FOUND');
  });
});
