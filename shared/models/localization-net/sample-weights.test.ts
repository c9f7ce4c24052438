import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ensureOracle, ORACLE_DIR, runPython, type OraclePythons } from '../../../test/support/oracle.ts';
import { tempDir } from '../../../test/support/temp.ts';
import { describeValue, expectSameProbe, probeCheckpoint, type Probed } from '../../checkpoint/torch-probe.test-helper.ts';
import { specForVariant, stateDictEntries } from './architecture.ts';
import { sampleCheckpointRoot, sampleNormals, sampleStateDict, writeSampleCheckpoint, type SampleLayout } from './sample-weights.ts';

const dir = await tempDir('sample-weights-');
let pythons: OraclePythons;
beforeAll(async () => {
  pythons = await ensureOracle();
});

const SEED = 1234;
const tiny = specForVariant('tiny');

function stats(values: Float32Array) {
  let sum = 0;
  let sumSq = 0;
  let min = Infinity;
  let max = -Infinity;
  for (const v of values) {
    sum += v;
    sumSq += v * v;
    min = Math.min(min, v);
    max = Math.max(max, v);
  }
  const mean = sum / values.length;
  return { mean, std: Math.sqrt(sumSq / values.length - mean * mean), min, max };
}

describe('sampleStateDict', () => {
  it('covers every state_dict entry in order, with the right shapes and dtypes, deterministically', () => {
    const sample = sampleStateDict(tiny, SEED);
    const entries = stateDictEntries(tiny);
    expect(sample.map((s) => s.name)).toEqual(entries.map((e) => e.name));
    sample.forEach((s, i) => {
      expect(s.tensor.shape).toEqual(entries[i]!.shape);
      expect(s.tensor.dtype).toBe(entries[i]!.dtype);
    });
    const again = sampleStateDict(tiny, SEED);
    const other = sampleStateDict(tiny, SEED + 1);
    const bytes = (data: Float32Array | BigInt64Array) => Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    for (const i of [0, 5, 100, sample.length - 1]) {
      const a = sample[i]!.tensor.data();
      expect(bytes(again[i]!.tensor.data()).equals(bytes(a)), `seed ${SEED} twice, tensor ${i}`).toBe(true);
      expect(sample[i]!.tensor.data()).not.toBe(a); // a fresh array each call: nothing is cached
      expect(bytes(other[i]!.tensor.data()).equals(bytes(a)), `another seed, tensor ${i}`).toBe(false);
    }
    // Tensors of one seed are not copies of each other (each has its own stream).
    const blocks = sample.filter((s) => s.name.endsWith('block.3.weight')).map((s) => s.tensor.data() as Float32Array);
    expect(blocks[0]!.subarray(0, 8)).not.toEqual(blocks[1]!.subarray(0, 8));
  });

  it('draws values at the documented magnitudes', () => {
    const sample = sampleStateDict(tiny, SEED);
    const shapes = new Map(sample.map((s) => [s.name, s.tensor.shape]));
    for (const { name, entry, tensor } of sample) {
      const data = tensor.data();
      if (entry.kind === 'num_batches_tracked') {
        expect(data).toBeInstanceOf(BigInt64Array);
        expect(Number(data[0])).toBeGreaterThanOrEqual(1000);
        expect(Number(data[0])).toBeLessThan(10000);
        continue;
      }
      const values = data as Float32Array;
      expect(values.every(Number.isFinite), name).toBe(true);
      const s = stats(values);
      const weightShape = shapes.get(name.replace(/bias$/, 'weight'));
      if (entry.kind === 'weight' && entry.shape.length >= 2) {
        const expected = 1 / Math.sqrt(entry.shape.slice(1).reduce((a, b) => a * b, 1));
        if (values.length >= 1000) {
          expect(Math.abs(s.std / expected - 1), name).toBeLessThan(0.1);
          expect(Math.abs(s.mean), name).toBeLessThan((5 * expected) / Math.sqrt(values.length));
        }
      } else if (entry.kind === 'weight') {
        expect([s.min >= 0.9, s.max <= 1.1], name).toEqual([true, true]);
      } else if (entry.kind === 'bias' && weightShape && weightShape.length >= 2) {
        if (values.length >= 96) expect(Math.abs(s.std / 0.02 - 1), name).toBeLessThan(0.3);
        if (name === 'uncertainty_head.8.bias') expect([s.min > -1.1, s.max < -0.9], name).toEqual([true, true]);
        else expect(Math.abs(s.mean), name).toBeLessThan(0.02);
      } else if (entry.kind === 'bias') {
        expect([s.min >= -0.05, s.max <= 0.05], name).toEqual([true, true]);
      } else if (entry.kind === 'layer_scale') {
        expect([s.min >= 0.1, s.max <= 0.3], name).toEqual([true, true]);
      } else if (entry.kind === 'running_mean') {
        expect(Math.abs(s.std / 0.2 - 1), name).toBeLessThan(0.3);
      } else if (entry.kind === 'running_var') {
        expect([s.min >= 0.5, s.max <= 1.5], name).toEqual([true, true]);
      }
    }
  });

  it('generates normals with the right moments and tails (ziggurat)', () => {
    const x = sampleNormals(2_000_000, 99);
    let sum = 0;
    let sumSq = 0;
    let sum4 = 0;
    let beyond3 = 0;
    for (const v of x) {
      sum += v;
      sumSq += v * v;
      sum4 += v ** 4;
      if (Math.abs(v) > 3) beyond3++;
    }
    const n = x.length;
    expect(Math.abs(sum / n)).toBeLessThan(0.004);
    expect(Math.abs(sumSq / n - 1)).toBeLessThan(0.006);
    expect(Math.abs(sum4 / n - 3)).toBeLessThan(0.05);
    expect(Math.abs(beyond3 / n - 0.0027)).toBeLessThan(0.0003);
  });
});

/** Both real torches: Debian's 1.13 and the venv's 2.x. */
const interpreters = [
  ['torch 1.13 (Debian)', () => pythons.debianPython],
  ['torch 2.x (venv)', () => pythons.venvPython],
] as const;

const written = new Map<SampleLayout, Promise<{ path: string; expected: Probed }>>();

/** Each layout is written (tiny variant) and described once, then probed by both torches. */
function sample(layout: SampleLayout) {
  let entry = written.get(layout);
  if (!entry) {
    entry = (async () => {
      const path = join(dir, `tiny-${layout}.pt`);
      const options = { variant: 'tiny', seed: SEED, layout };
      const result = await writeSampleCheckpoint(path, options);
      expect(result.tensors).toBe(stateDictEntries(tiny).length);
      return { path, expected: await describeValue(sampleCheckpointRoot(options).root) };
    })();
    written.set(layout, entry);
  }
  return entry;
}

const pairs = (p: Probed, tag: '$dict' | '$od') => (p as Record<typeof tag, Array<[Probed, Probed]>>)[tag];
const keysOf = (p: Probed, tag: '$dict' | '$od') => pairs(p, tag).map(([k]) => k);
const field = (p: Probed, key: string) => pairs(p, '$dict').find(([k]) => k === key)?.[1];

describe('writeSampleCheckpoint (tiny) in real torch', () => {
  const names = stateDictEntries(tiny).map((e) => e.name);

  for (const layout of ['bare', 'model_state_dict', 'lightning'] as const) {
    for (const [label, python] of interpreters) {
      // torch 1.13's weights_only unpickler has no BINFLOAT, so it cannot load any checkpoint
      // holding a Python float (the config); torch 2.x can. torch.save output has the same limit.
      const weightsOnly = layout === 'bare' || label.includes('2.x');
      it(`${layout} loads in ${label} (weights_only=${weightsOnly ? 'True' : 'False'}) with every tensor byte exact`, async () => {
        const { path, expected } = await sample(layout);
        const probe = await probeCheckpoint(python(), path, weightsOnly);
        // Names, order, dtypes, shapes, strides, sha256 of the bytes, float64 sums, first values;
        // config values and types; the state_dict's _metadata.
        expectSameProbe(probe.value, expected);

        // And what the layout promises, spelled out.
        let stateDict: Probed;
        if (layout === 'bare') {
          stateDict = probe.value;
          expect(keysOf(stateDict, '$od')).toEqual(names);
        } else if (layout === 'model_state_dict') {
          expect(keysOf(probe.value, '$dict')).toEqual(['model_state_dict', 'config', 'epoch']);
          expect(field(probe.value, 'config')).toEqual({
            $dict: [
              ['backbone_size', 'tiny'],
              ['uncertainty_min', { $float: '0.01' }],
              ['uncertainty_max', { $float: '1.0' }],
            ],
          });
          expect(field(probe.value, 'epoch')).toEqual({ $int: '0' });
          stateDict = field(probe.value, 'model_state_dict')!;
          expect(keysOf(stateDict, '$od')).toEqual(names);
        } else {
          expect(keysOf(probe.value, '$dict')).toEqual(['epoch', 'global_step', 'pytorch-lightning_version', 'state_dict', 'hyper_parameters']);
          expect(field(probe.value, 'hyper_parameters')).toEqual(field((await sample('model_state_dict')).expected, 'config'));
          stateDict = field(probe.value, 'state_dict')!;
          expect(keysOf(stateDict, '$od')).toEqual(names.map((n) => `model.${n}`));
        }
        const metadata = (stateDict as { $state: Record<string, Probed> }).$state['_metadata']!;
        const versions = Object.fromEntries(pairs(metadata, '$od').map(([k, v]) => [k as string, field(v, 'version')]));
        const prefix = layout === 'lightning' ? 'model.' : '';
        expect(versions['']).toEqual({ $int: '1' });
        expect(versions[`${prefix}backbone.0.1.0.block.3`]).toEqual({ $int: '1' });
        expect(versions[`${prefix}position_head.1`]).toEqual({ $int: '2' }); // BatchNorm1d
      });
    }
  }

  it("loads strictly into the oracle's LocalizationNet and gives non-degenerate outputs", async () => {
    const { path } = await sample('bare');
    const script = join(dir, 'forward.py');
    await writeFile(
      script,
      String.raw`
import json, sys
sys.path.insert(0, sys.argv[2])
import torch
from localization_net import LocalizationNet
model = LocalizationNet("tiny")
model.load_state_dict(torch.load(sys.argv[1], weights_only=True), strict=True)
model.eval()
torch.manual_seed(0)
with torch.no_grad():
    positions, uncertainties = model(torch.randn(8, 3, 128, 32))
print(json.dumps({"positions": positions.tolist(), "uncertainties": uncertainties.tolist()}))
`,
    );
    const out = JSON.parse(await runPython(pythons.debianPython, script, [path, ORACLE_DIR])) as {
      positions: number[][];
      uncertainties: number[][];
    };
    const positions = out.positions.flat();
    const uncertainties = out.uncertainties.flat();
    expect(positions.every(Number.isFinite)).toBe(true);
    // Different inputs give different outputs, and not vanishingly small ones.
    expect(stats(Float32Array.from(out.positions.map((p) => p[0]!))).std).toBeGreaterThan(1e-3);
    expect(Math.max(...positions.map(Math.abs))).toBeGreaterThan(1e-2);
    // Uncertainties inside the clamp range and not pinned to its ends.
    expect(uncertainties.every((u) => u > 0.01 && u < 1)).toBe(true);
  });
});
