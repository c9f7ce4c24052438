/**
 * Smoke test of the Python oracle itself: the fixture set for ConvNeXt-tiny is complete, the
 * golden outputs are usable (finite, clamp binding both ways), the torch-2 re-saves really are
 * torch-2 files that real torch loads with weights_only, and the ONNX checker script reports.
 */
import { openSync, readSync, closeSync, statSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  ensureFixtures,
  ensureOracle,
  readSafetensorsF32,
  readSafetensorsMetadata,
  runPython,
  type FixtureSet,
  type OraclePythons,
} from '../support/oracle.ts';

/** Name of the first entry of a zip file (its local file header). */
function firstZipEntry(path: string): string {
  const fd = openSync(path, 'r');
  try {
    const head = Buffer.alloc(30 + 256);
    readSync(fd, head, 0, head.length, 0);
    expect(head.readUInt32LE(0)).toBe(0x04034b50);
    const nameLen = head.readUInt16LE(26);
    return head.subarray(30, 30 + nameLen).toString('utf8');
  } finally {
    closeSync(fd);
  }
}

function get<T>(map: Map<string, T>, key: string): T {
  const v = map.get(key);
  if (v === undefined) throw new Error(`missing ${key}`);
  return v;
}

describe('python oracle: tiny fixture set', () => {
  let set: FixtureSet;
  let py: OraclePythons;

  beforeAll(async () => {
    py = await ensureOracle();
    set = await ensureFixtures('tiny');
  });

  it('has every file the manifest lists, in every layout, from both torch versions', () => {
    const m = set.manifest;
    expect(m.variant).toBe('tiny');
    expect(m.dims).toEqual([96, 192, 384, 768]);
    expect(m.depths).toEqual([3, 3, 9, 3]);
    expect(m.position_hidden).toEqual([256, 128]);
    expect(m.uncertainty_hidden).toEqual([192, 96]);
    expect(m.config_range).toEqual([0.05, 0.8]);
    const names = set.files.map((f) => f.name).sort();
    expect(names).toEqual(
      ['bare.pt', 'full.pth', 'lightning.ckpt', 'model.safetensors', 't2-bare.pt', 't2-full.pth'].sort(),
    );
    expect(new Set(set.files.map((f) => f.layout))).toEqual(new Set(['bare', 'full', 'lightning', 'safetensors']));
    for (const f of set.files) {
      expect(statSync(f.path).size, f.name).toBe(f.bytes);
      expect(statSync(f.golden).isFile(), f.golden).toBe(true);
      expect(f.golden.endsWith(f.layout === 'bare' ? 'golden-default.safetensors' : 'golden.safetensors')).toBe(true);
    }
    const byName = new Map(set.files.map((f) => [f.name, f]));
    expect(get(byName, 'bare.pt').torch).toBe('1.13');
    expect(get(byName, 't2-bare.pt').torch).toMatch(/^2\./);
    // torch 1.13 names the zip root after the file; torch 2 always uses "archive/".
    expect(firstZipEntry(get(byName, 'bare.pt').path)).toBe('bare/data.pkl');
    expect(firstZipEntry(get(byName, 'full.pth').path)).toBe('full/data.pkl');
    expect(firstZipEntry(get(byName, 't2-bare.pt').path)).toBe('archive/data.pkl');
    expect(firstZipEntry(get(byName, 't2-full.pth').path)).toBe('archive/data.pkl');
  });

  it('golden outputs are finite and the clamp binds both ways', () => {
    const cases = [
      { file: 'golden.safetensors', range: set.manifest.config_range },
      { file: 'golden-default.safetensors', range: set.manifest.default_range },
    ];
    const loaded = cases.map(({ file, range }) => {
      const g = readSafetensorsF32(join(set.dir, file));
      const inputs = get(g, 'inputs');
      const positions = get(g, 'positions');
      const uncertainties = get(g, 'uncertainties');
      expect(inputs.shape).toEqual([16, 3, 128, 32]);
      expect(positions.shape).toEqual([16, 2]);
      expect(uncertainties.shape).toEqual([16, 2]);
      for (const t of [inputs, positions, uncertainties]) expect(t.data.every(Number.isFinite)).toBe(true);

      const [lo, hi] = range.map(Math.fround) as [number, number];
      const meta = readSafetensorsMetadata(join(set.dir, file));
      expect(Number(meta['uncertainty_min'])).toBe(range[0]);
      expect(Number(meta['uncertainty_max'])).toBe(range[1]);
      const values = Array.from(uncertainties.data);
      expect(values.every((v) => v >= lo && v <= hi)).toBe(true);
      expect(values.filter((v) => v === lo).length, 'clamped at min').toBeGreaterThan(0);
      expect(values.filter((v) => v === hi).length, 'clamped at max').toBeGreaterThan(0);
      const inside = values.filter((v) => v > lo && v < hi).length;
      // The default range leaves about half of the values to softplus (see generate.py UNCERTAINTY_CENTRES).
      if (file === 'golden-default.safetensors') expect(inside).toBeGreaterThanOrEqual(8);
      expect(set.manifest.golden[file]?.clamp.inside).toBe(inside);
      // positions vary over the inputs in both columns, far above float32 noise (the weights have a
      // trained model's scale, so outputs are O(0.1): see generate.py randomize)
      for (let col = 0; col < 2; col++) {
        const values = Array.from({ length: 16 }, (_, row) => positions.data[row * 2 + col]!);
        expect(Math.max(...values) - Math.min(...values)).toBeGreaterThan(1e-2);
      }
      return { inputs, positions, uncertainties };
    });
    const [cfg, def] = loaded as [(typeof loaded)[0], (typeof loaded)[0]];
    const bytes = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
    expect(bytes(def.inputs.data).equals(bytes(cfg.inputs.data))).toBe(true);
    expect(bytes(def.positions.data).equals(bytes(cfg.positions.data))).toBe(true);
    expect(bytes(def.uncertainties.data).equals(bytes(cfg.uncertainties.data))).toBe(false);
  });

  it('real torch 2 loads the checkpoints with weights_only and sees the same weights', async () => {
    const weights = readSafetensorsF32(join(set.dir, 'model.safetensors'), { skipNonF32: true });
    expect(weights.size).toBeGreaterThan(150);
    const names = ['t2-bare.pt', 'full.pth'];
    const outputs = await Promise.all(
      names.map((name) => runPython(py.venvPython, 'load_checkpoint.py', [join(set.dir, name)])),
    );
    for (const [i, name] of names.entries()) {
      const out = JSON.parse(outputs[i]!) as {
        state_dict_key: string | null;
        tensors: Record<string, { dtype: string; shape: number[]; sum: number; first: number[] }>;
      };
      expect(out.state_dict_key).toBe(name === 'full.pth' ? 'model_state_dict' : null);
      expect(Object.keys(out.tensors)).toHaveLength(set.manifest.num_state_dict_entries);
      for (const [key, t] of weights) {
        const desc = out.tensors[key];
        expect(desc, key).toBeDefined();
        expect(desc!.dtype).toBe('float32');
        expect(desc!.shape).toEqual(t.shape);
        expect(desc!.first).toEqual(Array.from(t.data.subarray(0, 4)));
        let sum = 0;
        for (const v of t.data) sum += v;
        expect(Math.abs(sum - desc!.sum)).toBeLessThanOrEqual(1e-9 * t.data.length + 1e-9 * Math.abs(sum));
      }
      expect(out.tensors['position_head.1.num_batches_tracked']).toMatchObject({ dtype: 'int64', shape: [], sum: 1234 });
    }
  });

  it('real torch refuses the Lightning checkpoint under weights_only, naming AttributeDict', async () => {
    const lightning = join(set.dir, 'lightning.ckpt');
    await expect(runPython(py.venvPython, 'load_checkpoint.py', [lightning])).rejects.toThrow(
      /lightning\.fabric\.utilities\.data\.AttributeDict/,
    );
  });

  it('check_onnx.py reports a broken file without failing itself', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'heimdall-oracle-'));
    try {
      const bad = join(dir, 'bad.onnx');
      await writeFile(bad, Buffer.from('this is not a protobuf'));
      const lines = (await runPython(py.venvPython, 'check_onnx.py', [bad])).trim().split('\n');
      expect(lines).toHaveLength(1);
      const r = JSON.parse(lines[0]!) as { file: string; ok: boolean; error: string | null };
      expect(r.file).toBe(bad);
      expect(r.ok).toBe(false);
      expect(r.error).toMatch(/\S/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
