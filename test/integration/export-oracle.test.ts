/**
 * The exporter held to real PyTorch: checkpoints of every variant, in every layout, written by torch
 * 1.13 (Debian) and torch 2.13, exported at opsets 14, 17 and 20, must pass onnx.checker's full check
 * and reproduce PyTorch's outputs on 16 fixed inputs within 1e-6.
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { beforeAll, describe, expect, it } from 'vitest';
import { exportCheckpoint } from '../../shared/models/localization-net/export.ts';
import { SUPPORTED_OPSETS } from '../../shared/models/localization-net/graph.ts';
import { ensureFixtures, ensureOracle, readSafetensorsF32, runPython, type FixtureSet } from '../support/oracle.ts';
import { tempDir } from '../support/temp.ts';

const VARIANTS = ['tiny', 'small', 'base', 'large'] as const;
const FILES = ['bare.pt', 'full.pth', 'lightning.ckpt', 'model.safetensors', 't2-bare.pt', 't2-full.pth'] as const;
const TOLERANCE = 1e-6;
const checkOnnx = join(import.meta.dirname, '../oracle/check_onnx.py');

function maxAbsDiff(actual: Float32Array, expected: Float32Array): number {
  expect(actual.length).toBe(expected.length);
  let max = 0;
  for (let i = 0; i < actual.length; i++) max = Math.max(max, Math.abs(actual[i]! - expected[i]!));
  return max;
}

/** Runs `rows` of the golden inputs (cycling past 16) and compares with the matching golden outputs. */
async function compareBatch(session: ort.InferenceSession, golden: ReturnType<typeof readSafetensorsF32>, rows: number) {
  const inputs = golden.get('inputs')!;
  const sample = inputs.data.length / inputs.shape[0]!;
  const pick = (data: Float32Array, width: number) => {
    const out = new Float32Array(rows * width);
    for (let r = 0; r < rows; r++) out.set(data.subarray((r % inputs.shape[0]!) * width, (r % inputs.shape[0]!) * width + width), r * width);
    return out;
  };
  const result = await session.run({ mel_spectrogram: new ort.Tensor('float32', pick(inputs.data, sample), [rows, 3, 128, 32]) });
  return {
    positions: maxAbsDiff(result.positions!.data as Float32Array, pick(golden.get('positions')!.data, 2)),
    uncertainties: maxAbsDiff(result.uncertainties!.data as Float32Array, pick(golden.get('uncertainties')!.data, 2)),
    dims: [result.positions!.dims, result.uncertainties!.dims],
  };
}

let venvPython: string;
let work: string;
beforeAll(async () => {
  ({ venvPython } = await ensureOracle());
  work = await tempDir('heimdall-oracle-');
});

for (const variant of VARIANTS) {
  describe(`ConvNeXt-${variant} checkpoints written by real torch`, () => {
    let fixtures: FixtureSet;
    beforeAll(async () => {
      fixtures = await ensureFixtures(variant);
      expect(fixtures.files.map((f) => f.name).sort()).toEqual([...FILES].sort());
    });

    for (const name of FILES) {
      it(`${name}: exports at opsets ${SUPPORTED_OPSETS.join('/')}, passes onnx.checker, matches PyTorch within ${TOLERANCE}`, async () => {
        const fixture = fixtures.files.find((f) => f.name === name)!;
        const golden = readSafetensorsF32(fixture.golden);
        const outputs = SUPPORTED_OPSETS.map((opset) => join(work, `${variant}-${name}-${opset}.onnx`));
        try {
          for (const [i, opset] of SUPPORTED_OPSETS.entries()) {
            const result = await exportCheckpoint(fixture.path, outputs[i]!, { opset });
            expect(result.spec.variant).toBe(variant);
            if (name === 'lightning.ckpt') expect(result.warnings.join('\n')).toMatch(/AttributeDict/);
          }
          const checks = (await runPython(venvPython, checkOnnx, outputs)).trim().split('\n').map((l) => JSON.parse(l));
          expect(checks.map((c) => [c.ok, c.error, c.opset])).toEqual(SUPPORTED_OPSETS.map((opset) => [true, null, opset]));

          for (const [i, opset] of SUPPORTED_OPSETS.entries()) {
            const session = await ort.InferenceSession.create(outputs[i]!);
            try {
              const sixteen = await compareBatch(session, golden, 16);
              expect(sixteen.positions, `opset ${opset} positions max |diff|`).toBeLessThanOrEqual(TOLERANCE);
              expect(sixteen.uncertainties, `opset ${opset} uncertainties max |diff|`).toBeLessThanOrEqual(TOLERANCE);
              for (const batch of [1, 7, 32]) {
                const run = await compareBatch(session, golden, batch);
                expect(run.dims).toEqual([[batch, 2], [batch, 2]]);
                expect(Math.max(run.positions, run.uncertainties), `opset ${opset} batch ${batch}`).toBeLessThanOrEqual(TOLERANCE);
              }
            } finally {
              await session.release();
            }
          }
        } finally {
          await Promise.all(outputs.map((o) => rm(o, { force: true })));
        }
      });
    }
  });
}
