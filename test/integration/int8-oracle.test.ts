/**
 * The INT8 variant (DESIGN §3 Variants) as the ONNX ecosystem's own tools see it, on the PyTorch
 * fixtures: the full onnx.checker, onnxruntime at batch 1, 7 and 32, its error against the fp32
 * model on PyTorch's golden inputs within the default tolerance, and its weights byte for byte what
 * onnxruntime's quantize_dynamic (per-channel int8, MatMul) makes of our fp32 model.
 */
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../shared/config/index.ts';
import { exportCheckpoint, type ExportResult } from '../../shared/models/localization-net/export.ts';
import { ensureFixtures, ensureOracle, readSafetensorsF32, runPython, type Variant } from '../support/oracle.ts';
import { servicesVenvBin } from '../support/services/venv.ts';
import { tempDir } from '../support/temp.ts';

const TOLERANCE = loadConfig({}).variantTolerance.int8;
/** quantize_dynamic of large costs 30 s and 2.4 GB: the weights' identity is shown on the smaller two, the rest on all three. */
const FIXTURES: ReadonlyArray<{ variant: Variant; compareWithOnnxruntime: boolean }> = [
  { variant: 'tiny', compareWithOnnxruntime: true },
  { variant: 'base', compareWithOnnxruntime: true },
  { variant: 'large', compareWithOnnxruntime: false },
];

let work: string;
let venvPython: string;
let servicesPython: string;
beforeAll(async () => {
  work = await tempDir();
  ({ venvPython } = await ensureOracle());
  servicesPython = join(await servicesVenvBin(), 'python');
}, 600_000);

async function outputs(model: string, input: Float32Array, batch: number) {
  const session = await ort.InferenceSession.create(model, { intraOpNumThreads: 2 });
  try {
    const out = await session.run({ mel_spectrogram: new ort.Tensor('float32', input, [batch, 3, 128, 32]) });
    return { positions: out.positions!, uncertainties: out.uncertainties! };
  } finally {
    await session.release();
  }
}

const maxAbs = (a: ort.Tensor, b: ort.Tensor) => Math.max(...Array.from(a.data as Float32Array, (v, i) => Math.abs(v - (b.data as Float32Array)[i]!)));

for (const { variant, compareWithOnnxruntime } of FIXTURES) {
  describe(`the int8 variant of ${variant}`, () => {
    let exported: ExportResult;
    let golden: ReturnType<typeof readSafetensorsF32>;
    const int8 = () => exported.variants[0]!.onnx.path;
    beforeAll(async () => {
      const fixture = (await ensureFixtures(variant)).files.find((f) => f.name === 'full.pth')!;
      exported = await exportCheckpoint(fixture.path, join(work, `${variant}.onnx`), { variants: ['int8'] });
      golden = readSafetensorsF32(fixture.golden);
    }, 900_000);

    it('passes the full onnx.checker', async () => {
      const [result] = (await runPython(venvPython, 'check_onnx.py', [int8()])).trim().split('\n').map((line) => JSON.parse(line) as { ok: boolean; error: string | null });
      expect(result).toMatchObject({ ok: true, error: null });
    });

    it(`stays within the default tolerance (${TOLERANCE}) of the fp32 model on PyTorch's golden inputs, and serves batch 1, 7 and 32`, async () => {
      const inputs = golden.get('inputs')!;
      const batch = inputs.shape[0]!;
      const [fp32, quantized] = [await outputs(exported.onnx.path, inputs.data, batch), await outputs(int8(), inputs.data, batch)];
      const errors = { positions: maxAbs(quantized.positions, fp32.positions), uncertainties: maxAbs(quantized.uncertainties, fp32.uncertainties) };
      console.log(`int8 ${variant}: ${exported.variants[0]!.onnx.bytes} bytes (fp32 ${exported.onnx.bytes}); max |int8 - fp32| on ${batch} golden samples: positions ${errors.positions.toExponential(2)}, uncertainties ${errors.uncertainties.toExponential(2)}`);
      expect(errors.positions).toBeLessThanOrEqual(TOLERANCE);
      expect(errors.uncertainties).toBeLessThanOrEqual(TOLERANCE);
      // Quantized indeed: not the fp32 model under another name.
      expect(errors.positions).toBeGreaterThan(0);
      for (const size of [1, 7, 32]) {
        const input = Float32Array.from({ length: size * 3 * 128 * 32 }, (_, i) => inputs.data[i % inputs.data.length]!);
        const out = await outputs(int8(), input, size);
        expect([out.positions.dims, out.uncertainties.dims]).toEqual([[size, 2], [size, 2]]);
        expect(Array.from(out.positions.data as Float32Array).every(Number.isFinite)).toBe(true);
      }
    });

    if (compareWithOnnxruntime) it("holds the weights onnxruntime's quantize_dynamic makes of our fp32 model, byte for byte", async () => {
      const report = JSON.parse(await runPython(servicesPython, 'int8_compare.py', [exported.onnx.path, int8(), join(work, `${variant}.ort-int8.onnx`)])) as {
        matrices: number;
        identical: number;
        differences: unknown[];
        missing: string[];
        scales_identical: number;
        zero_points_identical: number;
      };
      const blocks = (await ensureFixtures(variant)).manifest.depths.reduce((a, b) => a + b, 0);
      expect(report).toEqual({ matrices: 2 * blocks, identical: 2 * blocks, differences: [], missing: [], scales_identical: 2 * blocks, zero_points_identical: 2 * blocks });
    }, 300_000);
  });
}
