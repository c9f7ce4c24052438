import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { openCheckpoint, type LazyTensor } from '../../checkpoint/index.ts';
import { SMALL_SPEC, writeSmallCheckpoint } from '../../../test/support/small-model.ts';
import { ensureFixtures, readSafetensorsF32, type Variant } from '../../../test/support/oracle.ts';
import { tempDir } from '../../../test/support/temp.ts';
import { stateDictEntries, type LocalizationNetSpec } from './architecture.ts';
import { inferArchitecture } from './infer.ts';
import { ReferenceModel, erf, gelu, softplus } from './reference.ts';
import { referencePass } from './reference-pass.ts';
import { sampleStateDict } from './sample-weights.ts';

/** erf(x) from mpmath at 60 digits, rounded to double. */
const ERF_TABLE: readonly (readonly [number, number])[] = [
  [1e-300, 1.1283791670955126e-300],
  [1e-20, 1.1283791670955125e-20],
  [3.725290298461914e-9, 4.203539964167448e-9],
  [1e-5, 1.1283791670579e-5],
  [0.001, 0.0011283787909692365],
  [0.01, 0.011283415555849618],
  [0.1, 0.1124629160182849],
  [0.25, 0.27632639016823696],
  [0.5, 0.5204998778130465],
  [0.6174, 0.6174107484113941],
  [0.75, 0.7111556336535151],
  [0.84374, 0.7672201241832406],
  [0.84375, 0.7672256612323416],
  [0.9, 0.7969082124228322],
  [1, 0.8427007929497149],
  [1.1, 0.8802050695740817],
  [1.2499, 0.922876473187532],
  [1.25, 0.9229001282564583],
  [1.5, 0.9661051464753108],
  [1.75, 0.9866716712191824],
  [1.8921982179230894, 0.9925487215065139],
  [1.9999, 0.9953201979070294],
  [2, 0.9953222650189527],
  [2.0001, 0.9953243313041966],
  [2.3029231426501258, 0.9988733418581444],
  [2.5, 0.999593047982555],
  [2.857, 0.9999466417399131],
  [2.8572, 0.9999467060575912],
  [3, 0.9999779095030014],
  [3.5, 0.9999992569016276],
  [4, 0.9999999845827421],
  [4.5, 0.9999999998033839],
  [5, 0.9999999999984626],
  [5.5, 0.9999999999999927],
  [5.9, 0.9999999999999999],
  [5.9999, 1.0],
];

describe('erf, GELU and softplus', () => {
  it('erf is within a few ulp (and 1e-15) of the true value, series and continued fraction alike', () => {
    let worst = 0;
    for (const [x, want] of ERF_TABLE) {
      for (const sign of [1, -1]) {
        const got = erf(sign * x);
        const error = Math.abs(got - sign * want);
        const relative = error / (Number.EPSILON * Math.abs(want));
        worst = Math.max(worst, relative);
        expect(relative, `erf(${sign * x}) = ${got}, expected ${sign * want}`).toBeLessThanOrEqual(5);
        expect(error).toBeLessThanOrEqual(1e-15);
      }
    }
    console.log(`erf: worst error ${worst.toFixed(2)} x 2^-52 x |erf(x)| over ${ERF_TABLE.length * 2} points`);
    expect(erf(0)).toBe(0);
    expect(erf(6)).toBe(1);
    expect(erf(Infinity)).toBe(1);
    expect(erf(-Infinity)).toBe(-1);
    expect(erf(NaN)).toBeNaN();
  });

  it('erf is odd and increasing across its interval boundaries', () => {
    const problems: string[] = [];
    let previous = -1;
    for (let x = -6.5; x <= 6.5; x += 1 / 1024) {
      const y = erf(x);
      if (!Object.is(erf(-x), -y)) problems.push(`erf(${-x}) = ${erf(-x)} but erf(${x}) = ${y}`);
      if (!(y >= previous)) problems.push(`erf(${x}) = ${y} < ${previous}`);
      previous = y;
    }
    expect(problems).toEqual([]);
  });

  it('GELU is exact (erf) GELU and softplus follows torch (threshold 20)', () => {
    // x * Phi(x), Phi from mpmath.
    expect(gelu(1)).toBeCloseTo(0.8413447460685429, 15);
    expect(gelu(-1)).toBeCloseTo(-0.15865525393145705, 15);
    expect(gelu(0.5)).toBeCloseTo(0.34573123063700656, 15);
    expect(gelu(-3)).toBeCloseTo(-0.0040496940948902835, 15);
    expect(gelu(10)).toBe(10);
    expect(gelu(-10)).toBe(-0);
    expect(softplus(0)).toBe(Math.LN2);
    expect(softplus(-30)).toBeCloseTo(9.357622968839737e-14, 25);
    expect(softplus(20)).toBeCloseTo(20.000000002061153, 12);
    expect(softplus(20.5)).toBe(20.5);
  });
});

/** Samples compared per checkpoint: all 16 golden inputs, except for large (about a second per sample). */
const SAMPLES: Record<Variant, number> = { tiny: 16, small: 16, base: 16, large: 4 };
const TOLERANCE = 1e-5;
const CHECKPOINTS = ['bare.pt', 'full.pth'] as const;

describe.each(['tiny', 'small', 'base', 'large'] as const)('the reference pass against PyTorch: %s', (variant) => {
  for (const name of CHECKPOINTS) {
    it(`reproduces the golden outputs of ${name} within ${TOLERANCE}, on worker threads as parity runs it`, async () => {
      const fixtures = await ensureFixtures(variant);
      const file = fixtures.files.find((f) => f.name === name);
      if (!file) throw new Error(`fixture set ${fixtures.dir} has no ${name}`);
      const checkpoint = await openCheckpoint(file.path);
      // full.pth carries its config: the uncertainty range (0.05, 0.8) comes from there.
      const spec = inferArchitecture(checkpoint.tensors, checkpoint.config);
      await checkpoint.close();
      const [min, max] = name === 'bare.pt' ? fixtures.manifest.default_range : fixtures.manifest.config_range;
      expect([spec.uncertaintyMin, spec.uncertaintyMax]).toEqual([min, max]);

      const golden = readSafetensorsF32(file.golden);
      const inputs = golden.get('inputs')!;
      expect(inputs.shape).toEqual([16, 3, 128, 32]);
      const count = SAMPLES[variant];
      const started = performance.now();
      const outputs = await referencePass(file.path, spec, inputs.data.subarray(0, count * ReferenceModel.sampleSize), count);
      const seconds = (performance.now() - started) / 1000;

      const report: string[] = [];
      for (const output of ['positions', 'uncertainties'] as const) {
        const expected = golden.get(output)!.data.subarray(0, count * 2);
        const diff = maxAbsDiff(outputs[output], expected);
        report.push(`${output} max |diff| ${diff.toExponential(2)}`);
        expect(diff, `${variant}/${name} ${output}: max |diff| ${diff.toExponential(3)} over ${count} samples (tolerance ${TOLERANCE})`).toBeLessThanOrEqual(
          TOLERANCE,
        );
      }
      console.log(`reference ${variant}/${name}: ${report.join(', ')} over ${count} samples; ${seconds.toFixed(2)} s`);
    });
  }
});

describe('ReferenceModel on a miniature ConvNeXt', () => {
  /** A state dict in memory that counts the values read, tensor by tensor. */
  const inMemory = (spec: LocalizationNetSpec, seed = 7, reads = new Map<string, number>()): Map<string, LazyTensor> =>
    new Map(
      sampleStateDict(spec, seed).map(({ name, tensor }) => {
        const numel = tensor.shape.reduce((a, b) => a * b, 1);
        const lazy: LazyTensor = {
          dtype: tensor.dtype,
          shape: tensor.shape,
          numel,
          readFloat32: async () => {
            reads.set(name, (reads.get(name) ?? 0) + 1);
            return Float32Array.from(tensor.data(), Number);
          },
        };
        return [name, lazy];
      }),
    );
  const randomInput = (batch: number): Float32Array => {
    let state = 12345;
    return Float32Array.from({ length: batch * ReferenceModel.sampleSize }, () => {
      state = (Math.imul(state, 1103515245) + 12345) >>> 0;
      return state / 2 ** 31 - 1;
    });
  };
  const blocks = SMALL_SPEC.depths.reduce((a, b) => a + b, 0);

  it('gives each sample of a batch exactly what it gives that sample alone, reading each weight once per pass', async () => {
    const reads = new Map<string, number>();
    const model = ReferenceModel.open(inMemory(SMALL_SPEC, 7, reads), SMALL_SPEC);
    // Nothing is read until a pass needs it.
    expect(reads.size).toBe(0);
    const input = randomInput(5);
    const progress: number[] = [];
    const batch = await model.forward(input, 5, { onProgress: (done, total) => progress.push(done / total) });
    expect(progress).toEqual(Array.from({ length: blocks }, (_, i) => (i + 1) / blocks));
    const weights = stateDictEntries(SMALL_SPEC).filter((e) => e.kind !== 'num_batches_tracked');
    expect([...reads.keys()].sort()).toEqual(weights.map((e) => e.name).sort());
    expect([...reads.values()].every((n) => n === 1)).toBe(true);
    // 5 samples: one group of four rows and a leftover row in every Linear layer.
    for (let i = 0; i < 5; i++) {
      const alone = await model.forward(input.subarray(i * ReferenceModel.sampleSize, (i + 1) * ReferenceModel.sampleSize), 1);
      expect(batch.positions.subarray(i * 2, i * 2 + 2)).toEqual(alone.positions);
      expect(batch.uncertainties.subarray(i * 2, i * 2 + 2)).toEqual(alone.uncertainties);
    }
    for (const u of batch.uncertainties) {
      expect(u).toBeGreaterThanOrEqual(Math.fround(SMALL_SPEC.uncertaintyMin));
      expect(u).toBeLessThanOrEqual(SMALL_SPEC.uncertaintyMax);
    }
    expect(batch.positions.every(Number.isFinite)).toBe(true);
  });

  it('stops between layers when its signal fires', async () => {
    const model = ReferenceModel.open(inMemory(SMALL_SPEC), SMALL_SPEC);
    const controller = new AbortController();
    const progress: number[] = [];
    const pass = model.forward(randomInput(2), 2, {
      signal: controller.signal,
      onProgress: (done) => {
        progress.push(done);
        if (done === 2) controller.abort(new Error('stop'));
      },
    });
    await expect(pass).rejects.toThrow('stop');
    expect(progress).toEqual([1, 2]);
  });

  it('refuses weights that do not match the spec, naming the tensors, before reading any', () => {
    const reads = new Map<string, number>();
    const tensors = inMemory(SMALL_SPEC, 7, reads);
    const wider = { ...SMALL_SPEC, positionHidden: [32, 8] };
    expect(() => ReferenceModel.open(tensors, wider)).toThrowError(
      expect.objectContaining({
        code: 'INVALID_STATE_DICT',
        message: expect.stringContaining('position_head.0.weight has shape [16, 32], expected [32, 32]'),
      }),
    );
    const deeper = { ...SMALL_SPEC, depths: [1, 2, 2, 1] };
    expect(() => ReferenceModel.open(tensors, deeper)).toThrowError(
      expect.objectContaining({ code: 'INVALID_STATE_DICT', message: expect.stringContaining('backbone.0.5.1.block.0.weight is missing') }),
    );
    expect(() => ReferenceModel.open(tensors, { ...SMALL_SPEC, dims: [8, 16, 24] })).toThrowError(expect.objectContaining({ code: 'UNSUPPORTED_ARCHITECTURE' }));
    expect(reads.size).toBe(0);
  });

  it('refuses an input whose length is not batch x 3 x 128 x 32', async () => {
    const model = ReferenceModel.open(inMemory(SMALL_SPEC), SMALL_SPEC);
    await expect(model.forward(new Float32Array(ReferenceModel.sampleSize + 1), 1)).rejects.toThrow(/needs 1 x 3 x 128 x 32/);
    await expect(model.forward(randomInput(2), 3)).rejects.toThrow(RangeError);
  });
});

describe('referencePass: the reference forward pass on worker threads', () => {
  let path: string;
  beforeAll(async () => {
    path = join(await tempDir('heimdall-reference-'), 'small.pth');
    await writeSmallCheckpoint(path, { seed: 5 });
  });

  it('splits the samples between threads and gives what one pass on this thread gives', async () => {
    const input = Float32Array.from({ length: 5 * ReferenceModel.sampleSize }, (_, i) => Math.sin(i * 0.37));
    const checkpoint = await openCheckpoint(path);
    let expected: Awaited<ReturnType<ReferenceModel['forward']>>;
    try {
      expected = await ReferenceModel.open(checkpoint.tensors, SMALL_SPEC).forward(input, 5);
    } finally {
      await checkpoint.close();
    }
    const progress: number[] = [];
    const outputs = await referencePass(path, SMALL_SPEC, input, 5, { threads: 3, onProgress: (fraction) => progress.push(fraction) });
    expect(outputs).toEqual(expected);
    expect(progress.at(-1)).toBe(1);
    expect(progress.every((f, i) => f > 0 && f <= 1 && (i === 0 || f >= progress[i - 1]!))).toBe(true);
  });

  it("rejects with the checkpoint's own error code, and with the signal's reason when stopped", async () => {
    const input = new Float32Array(2 * ReferenceModel.sampleSize);
    await expect(referencePass(`${path}.missing`, SMALL_SPEC, input, 2)).rejects.toMatchObject({ code: 'CHECKPOINT_NOT_FOUND' });
    await expect(referencePass(path, { ...SMALL_SPEC, depths: [1, 2, 2, 1] }, input, 2)).rejects.toMatchObject({ code: 'INVALID_STATE_DICT' });
    const controller = new AbortController();
    const pass = referencePass(path, SMALL_SPEC, input, 2, { signal: controller.signal, onProgress: () => controller.abort(new Error('stopped')) });
    await expect(pass).rejects.toThrow('stopped');
  });
});
function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let max = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (!(d <= max)) max = d; // NaN propagates as a failure
  }
  return max;
}
