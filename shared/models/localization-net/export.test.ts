import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../../test/support/temp.ts';
import { SMALL_SPEC, writeSmallCheckpoint } from '../../../test/support/small-model.ts';
import { RandomAccessFile } from '../../checkpoint/random-access-file.ts';
import { ZipReader } from '../../checkpoint/zip-reader.ts';
import { openCheckpoint } from '../../checkpoint/index.ts';
import { readModelSummary } from '../../onnx/reader.ts';
import { structuralProblems, weightLayoutProblems } from '../../onnx/structure.ts';
import { exportCheckpoint, variantPath } from './export.ts';
import { SUPPORTED_OPSETS } from './graph.ts';
import { inferArchitecture } from './infer.ts';
import { ReferenceModel } from './reference.ts';
import { writeSampleCheckpoint } from './sample-weights.ts';

let dir: string;
let checkpoint: string;
beforeAll(async () => {
  dir = await tempDir();
  checkpoint = join(dir, 'small.pth');
  await writeSampleCheckpoint(checkpoint, { variant: 'custom', spec: { ...SMALL_SPEC, uncertaintyMin: 0.02, uncertaintyMax: 0.7 }, seed: 7, layout: 'model_state_dict' });
});

async function run(model: string, batch: number) {
  const session = await ort.InferenceSession.create(model);
  const input = new Float32Array(batch * 3 * 128 * 32).map((_, i) => Math.sin(i * 0.37));
  const out = await session.run({ mel_spectrogram: new ort.Tensor('float32', input, [batch, 3, 128, 32]) });
  await session.release();
  return { positions: out.positions!, uncertainties: out.uncertainties! };
}

describe('exportCheckpoint', () => {
  for (const opset of SUPPORTED_OPSETS) {
    it(`writes a sound opset-${opset} model with a dynamic batch`, async () => {
      const out = join(dir, `small-${opset}.onnx`);
      const result = await exportCheckpoint(checkpoint, out, { opset });
      expect(result).toMatchObject({ opset, irVersion: { 14: 7, 17: 8, 20: 9 }[opset], spec: { variant: 'custom', dims: SMALL_SPEC.dims } });

      const model = await readModelSummary(out);
      expect(structuralProblems(model)).toEqual([]);
      expect(model.graph.inputs).toEqual([{ name: 'mel_spectrogram', elemType: 1, shape: ['batch_size', 3, 128, 32] }]);
      expect(model.graph.outputs.map((o) => [o.name, o.shape])).toEqual([['positions', ['batch_size', 2]], ['uncertainties', ['batch_size', 2]]]);
      expect(model.metadata).toMatchObject({ source_sha256: result.checkpoint.sha256, variant: 'custom', parameters: String(result.parameters) });
      const ops = new Set(model.graph.nodes.map((n) => n.opType));
      expect(ops.has('LayerNormalization')).toBe(opset >= 17);
      expect(ops.has('Gelu')).toBe(opset >= 20);
      expect(ops.has('BatchNormalization')).toBe(false);

      for (const batch of [1, 7, 32]) {
        const { positions, uncertainties } = await run(out, batch);
        expect(positions.dims).toEqual([batch, 2]);
        const u = Array.from(uncertainties.data as Float32Array);
        expect(u.every((v) => v >= 0.02 - 1e-7 && v <= 0.7 + 1e-7)).toBe(true);
      }
    });
  }

  it('stores every weight as its consumer reads it (MatMul [in, out], Gemm [out, in] with transB), as torch.onnx.export does', async () => {
    const model = await readModelSummary(join(dir, 'small-14.onnx'));
    expect(weightLayoutProblems(model)).toEqual([]);
    const initializers = new Map(model.graph.initializers.map((i) => [i.name, i.dims]));
    const matMuls = model.graph.nodes.filter((n) => n.opType === 'MatMul');
    const blocks = SMALL_SPEC.depths.reduce((a, b) => a + b, 0);
    expect(matMuls).toHaveLength(2 * blocks);
    // Each block's Linears: dim -> 4 dim, then 4 dim -> dim, their weights transposed from torch's [out, in].
    const expected = SMALL_SPEC.dims.flatMap((dim, s) => Array.from({ length: SMALL_SPEC.depths[s]! }, () => [[dim, 4 * dim], [4 * dim, dim]])).flat();
    expect(matMuls.map((n) => initializers.get(n.inputs[1]!))).toEqual(expected);
    expect(matMuls.every((n) => n.inputs[1]!.endsWith('.weight.transposed'))).toBe(true);
    const gemms = model.graph.nodes.filter((n) => n.opType === 'Gemm');
    expect(gemms.map((n) => initializers.get(n.inputs[1]!))).toEqual([[16, 32], [8, 16], [2, 8], [12, 32], [6, 12], [2, 6]]);
    // Only the activations are permuted: two per block and per channels-first LayerNorm (stem, downsamplers).
    expect(model.graph.nodes.filter((n) => n.opType === 'Transpose')).toHaveLength(2 * blocks + 2 * SMALL_SPEC.dims.length);
  });

  it('computes what the reference forward pass computes from the checkpoint (the transposed weights are the right ones)', async () => {
    const batch = 2;
    const input = new Float32Array(batch * ReferenceModel.sampleSize).map((_, i) => Math.sin(i * 0.37));
    const source = await openCheckpoint(checkpoint);
    const expected = await ReferenceModel.open(source.tensors, inferArchitecture(source.tensors, source.config))
      .forward(input, batch)
      .finally(() => source.close());
    const session = await ort.InferenceSession.create(join(dir, 'small-14.onnx'));
    const actual = await session.run({ mel_spectrogram: new ort.Tensor('float32', input, [batch, 3, 128, 32]) });
    await session.release();
    const maxDiff = (a: Float32Array, b: Float32Array) => Math.max(...Array.from(a, (v, i) => Math.abs(v - b[i]!)));
    expect(maxDiff(actual.positions!.data as Float32Array, expected.positions)).toBeLessThan(1e-5);
    expect(maxDiff(actual.uncertainties!.data as Float32Array, expected.uncertainties)).toBeLessThan(1e-5);
  });

  it('gives the same outputs at every opset', async () => {
    const [a, b, c] = await Promise.all(SUPPORTED_OPSETS.map((o) => run(join(dir, `small-${o}.onnx`), 4)));
    const maxDiff = (x: ort.Tensor, y: ort.Tensor) => Math.max(...Array.from(x.data as Float32Array, (v, i) => Math.abs(v - (y.data as Float32Array)[i]!)));
    expect(maxDiff(a!.positions, b!.positions)).toBeLessThan(1e-5);
    expect(maxDiff(a!.positions, c!.positions)).toBeLessThan(1e-5);
  });

  it('is deterministic: the same checkpoint gives byte-identical ONNX', async () => {
    const first = await exportCheckpoint(checkpoint, join(dir, 'first.onnx'));
    const second = await exportCheckpoint(checkpoint, join(dir, 'second.onnx'));
    expect(second.onnx.sha256).toBe(first.onnx.sha256);
  });

  it('can keep the weights in an external data file that onnxruntime loads', async () => {
    const out = join(dir, 'external.onnx');
    const result = await exportCheckpoint(checkpoint, out, { externalData: true });
    expect(result.onnx.externalData?.path).toBe(`${out}.data`);
    expect(result.onnx.bytes).toBeLessThan(200_000);
    const inline = await run(join(dir, 'small-14.onnx'), 2);
    const external = await run(out, 2);
    expect(Array.from(external.positions.data as Float32Array)).toEqual(Array.from(inline.positions.data as Float32Array));
  });

  it('fails on a damaged weight record with CHECKPOINT_CORRUPT and leaves no model behind', async () => {
    const path = join(dir, 'crc.pth');
    const bytes = await readFile(checkpoint);
    const file = await RandomAccessFile.open(checkpoint);
    const zip = await ZipReader.open(file);
    const record = [...zip.entries.values()].find((e) => e.name.endsWith('/data/7'))!;
    await file.close();
    bytes[record.dataOffset + 3]! ^= 0x40;
    await writeFile(path, bytes);
    const out = join(dir, 'crc.onnx');
    await expect(exportCheckpoint(path, out)).rejects.toMatchObject({ code: 'CHECKPOINT_CORRUPT', message: expect.stringMatching(/CRC mismatch in .*data\/7/) });
    expect(existsSync(out) || existsSync(`${out}.partial`)).toBe(false);
    // Told the file's digest (the store vouched for it), it reads only the records again, and still finds the damage.
    const phases = new Set<string>();
    const told = exportCheckpoint(path, out, { sha256: 'f'.repeat(64), onProgress: ({ phase }) => phases.add(phase) });
    await expect(told).rejects.toMatchObject({ code: 'CHECKPOINT_CORRUPT', message: expect.stringMatching(/CRC mismatch in .*data\/7/) });
    expect(phases.has('check') && !phases.has('hash')).toBe(true);
    expect(existsSync(out) || existsSync(`${out}.partial`)).toBe(false);
  });

  it('carries a digest it is told instead of hashing the checkpoint again, into the result and the metadata', async () => {
    const out = join(dir, 'told.onnx');
    const told = 'a'.repeat(64);
    const result = await exportCheckpoint(checkpoint, out, { sha256: told });
    expect(result.checkpoint.sha256).toBe(told);
    expect((await readModelSummary(out)).metadata['source_sha256']).toBe(told);
  });

  it('warns about NaN/Inf weights but still exports (validation fails them later)', async () => {
    const path = join(dir, 'nan.pth');
    await writeSmallCheckpoint(path, { poisoned: 'backbone.0.1.0.block.3.bias', values: [Number.NaN, Number.POSITIVE_INFINITY] });
    const result = await exportCheckpoint(path, join(dir, 'nan.onnx'));
    expect(result.warnings).toEqual(['2 NaN/Inf values in backbone.0.1.0.block.3.bias']);
  });

  describe('with the int8 variant', () => {
    const out = () => join(dir, 'variant.onnx');
    let result: Awaited<ReturnType<typeof exportCheckpoint>>;
    beforeAll(async () => {
      result = await exportCheckpoint(checkpoint, out(), { variants: ['int8'] });
    });

    it('writes model.int8.onnx beside the fp32 model, which stays byte for byte what it is without a variant', async () => {
      expect(variantPath(out(), 'int8')).toBe(join(dir, 'variant.int8.onnx'));
      expect(result.variants.map((v) => [v.name, v.onnx.path])).toEqual([['int8', join(dir, 'variant.int8.onnx')]]);
      const alone = await exportCheckpoint(checkpoint, join(dir, 'alone.onnx'));
      expect(result.onnx.sha256).toBe(alone.onnx.sha256);
      const model = await readModelSummary(result.variants[0]!.onnx.path);
      expect(structuralProblems(model)).toEqual([]);
      expect(model.metadata).toMatchObject({ quantization: 'int8', fp32_sha256: result.onnx.sha256, source_sha256: result.checkpoint.sha256 });
    });

    it('runs every block Linear as MatMulInteger on [in, out] int8 weights with per-column scales, and keeps the rest in float32', async () => {
      const model = await readModelSummary(result.variants[0]!.onnx.path);
      const initializers = new Map(model.graph.initializers.map((i) => [i.name, i]));
      const count = (op: string) => model.graph.nodes.filter((n) => n.opType === op).length;
      const blocks = SMALL_SPEC.depths.reduce((a, b) => a + b, 0);
      expect([count('MatMul'), count('MatMulInteger'), count('DynamicQuantizeLinear'), count('Gemm')]).toEqual([0, 2 * blocks, 2 * blocks, 6]);
      for (const node of model.graph.nodes.filter((n) => n.opType === 'MatMulInteger')) {
        const [weight, zeroPoint] = [initializers.get(node.inputs[1]!)!, initializers.get(node.inputs[3]!)!];
        expect([weight.dataType, zeroPoint.dataType, zeroPoint.dims]).toEqual([3, 3, [weight.dims[1]]]);
      }
      // A quarter of the bytes of each quantized weight; every other initializer as the fp32 model has it.
      const fp32 = new Map((await readModelSummary(out())).graph.initializers.map((i) => [i.name, i]));
      const transposed = [...fp32.values()].filter((i) => i.name.endsWith('.weight.transposed'));
      expect(transposed.map((i) => [`${i.name}.quantized`, i.dims, i.byteLength / 4])).toEqual(transposed.map((i) => [`${i.name}.quantized`, initializers.get(`${i.name}.quantized`)!.dims, initializers.get(`${i.name}.quantized`)!.byteLength]));
      const rest = [...fp32.values()].filter((i) => !i.name.endsWith('.weight.transposed'));
      expect(rest.map((i) => initializers.get(i.name)?.byteLength)).toEqual(rest.map((i) => i.byteLength));
    });

    it('serves every batch size close to the fp32 model', async () => {
      for (const batch of [1, 7, 32]) {
        const [fp32, int8] = await Promise.all([run(out(), batch), run(variantPath(out(), 'int8'), batch)]);
        expect(int8.positions.dims).toEqual([batch, 2]);
        const maxDiff = Math.max(...Array.from(int8.positions.data as Float32Array, (v, i) => Math.abs(v - (fp32.positions.data as Float32Array)[i]!)));
        expect(maxDiff).toBeGreaterThan(0);
        expect(maxDiff).toBeLessThan(5e-2);
      }
    });

    it('leaves neither model behind when stopped while the variant is written', async () => {
      const stopped = join(dir, 'stopped.onnx');
      const controller = new AbortController();
      const export_ = exportCheckpoint(checkpoint, stopped, {
        variants: ['int8'],
        signal: controller.signal,
        onProgress: ({ variant }) => variant && controller.abort(),
      });
      await expect(export_).rejects.toMatchObject({ code: 'ABORTED' });
      expect([existsSync(variantPath(stopped, 'int8')), existsSync(`${variantPath(stopped, 'int8')}.partial`)]).toEqual([false, false]);
    });
  });
});
