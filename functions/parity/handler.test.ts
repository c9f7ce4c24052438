/**
 * Parity on golden samples from a `<checkpoint>.parity.safetensors` sidecar: as many samples as the
 * sidecar holds, run PARITY_BATCH at a time (the sidecar never decides how much memory inference
 * takes), every one of them compared; and a checkpoint uri of another store is INVALID_EVENT.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../shared/config/index.ts';
import type { AnyCloudEvent, CloudEvent, EventData } from '../../shared/events/index.ts';
import { createLogger } from '../../shared/logging/index.ts';
import { createAdapters } from '../../shared/pipeline/adapters.ts';
import { executeStage, type StageEnvironment } from '../../shared/pipeline/execute.ts';
import { ingestLocalFile } from '../../shared/pipeline/local-ingest.ts';
import { sampleInput } from '../../shared/runtime/sample-input.ts';
import { CHECKPOINTS_BUCKET, fetchUri, PARITY_SIDECAR_SUFFIX } from '../../shared/storage/object-store.ts';
import { writeSmallCheckpoint } from '../../test/support/small-model.ts';
import { tempDir } from '../../test/support/temp.ts';
import { stageFunctions } from '../index.ts';
import { PARITY_BATCH } from './handler.ts';

const SAMPLES = PARITY_BATCH + 8;

const dir = await tempDir('heimdall-parity-');
let environment: StageEnvironment;
let validated: CloudEvent<'heimdall.model.validated'>;
let golden: { inputs: Float32Array; positions: Float32Array; uncertainties: Float32Array };

const stage = (name: string) => stageFunctions.find((s) => s.name === name)!;

/** safetensors (u64 header length, JSON header, data) with float32 tensors. */
function safetensors(tensors: Record<string, { shape: number[]; data: Float32Array }>): Buffer {
  const header: Record<string, unknown> = {};
  const parts: Buffer[] = [];
  let offset = 0;
  for (const [name, { shape, data }] of Object.entries(tensors)) {
    header[name] = { dtype: 'F32', shape, data_offsets: [offset, offset + data.byteLength] };
    parts.push(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
    offset += data.byteLength;
  }
  const json = Buffer.from(JSON.stringify(header));
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([length, json, ...parts]);
}

/** Puts golden samples beside the run's checkpoint in the store. */
async function putSidecar(outputs: { positions: Float32Array; uncertainties: Float32Array }) {
  const path = join(dir, `sidecar-${Math.random().toString(36).slice(2)}.safetensors`);
  await writeFile(path, safetensors({ inputs: { shape: [SAMPLES, 3, 128, 32], data: golden.inputs }, positions: { shape: [SAMPLES, 2], data: outputs.positions }, uncertainties: { shape: [SAMPLES, 2], data: outputs.uncertainties } }));
  const { bucket, key } = environment.store.parseUri(validated.data.checkpoint.uri);
  await environment.store.putFile(bucket, `${key}${PARITY_SIDECAR_SUFFIX}`, path);
}

beforeAll(async () => {
  const config = loadConfig({ HEIMDALL_DATA_DIR: join(dir, 'data') });
  await mkdir(join(dir, 'scratch'), { recursive: true });
  environment = { ...(await createAdapters(config)), config, logger: createLogger('silent'), scratchDir: join(dir, 'scratch') };
  const checkpoint = join(dir, 'small.pth');
  await writeSmallCheckpoint(checkpoint);
  let event: AnyCloudEvent = await ingestLocalFile(checkpoint, environment.store, () => undefined);
  for (const name of ['export', 'validate']) event = await executeStage(stage(name), event, environment);
  validated = event as CloudEvent<'heimdall.model.validated'>;

  // What PyTorch would have computed at training time: here, the model itself on SAMPLES inputs in one batch.
  const inputs = sampleInput(SAMPLES, 3);
  const model = await fetchUri(environment.store, validated.data.onnx.uri);
  const session = await ort.InferenceSession.create(model.path);
  const out = await session.run({ mel_spectrogram: new ort.Tensor('float32', inputs, [SAMPLES, 3, 128, 32]) });
  await session.release();
  await model.release();
  golden = { inputs, positions: out.positions!.data as Float32Array, uncertainties: out.uncertainties!.data as Float32Array };
});

describe('parity on golden samples', () => {
  it(`checks all ${SAMPLES} samples of a sidecar, ${PARITY_BATCH} at a time`, async () => {
    await putSidecar(golden);
    const result = await executeStage(stage('parity'), validated, environment);
    expect(result).toMatchObject({ type: 'heimdall.model.parity-checked', data: { reference: 'golden', samples: SAMPLES, passed: true } });
  });

  it('finds a difference in the last sample, past the first batch', async () => {
    const positions = golden.positions.slice();
    positions[SAMPLES * 2 - 1]! += 0.5;
    await putSidecar({ positions, uncertainties: golden.uncertainties });
    const result = await executeStage(stage('parity'), validated, environment);
    expect(result).toMatchObject({ type: 'heimdall.pipeline.failed', data: { error: { code: 'PARITY_EXCEEDED', message: expect.stringMatching(/^positions max \|diff\| 5\.0\de-1/) }, retriable: false } });
  });

  it('refuses a checkpoint uri of another store as INVALID_EVENT, not retriable', async () => {
    const elsewhere = { ...validated, data: { ...validated.data, checkpoint: { ...validated.data.checkpoint, uri: `s3://${CHECKPOINTS_BUCKET}/runs/x.pth` } } };
    const result = await executeStage(stage('parity'), elsewhere, environment);
    expect(result).toMatchObject({ type: 'heimdall.pipeline.failed', data: { stage: 'parity', error: { code: 'INVALID_EVENT' }, retriable: false } });
  });

  it("compares each validated variant with the fp32 model's outputs on the same samples, and holds back one over its tolerance or one that failed validation", async () => {
    await putSidecar(golden);
    const checks = validated.data.checks;
    const run = async (variants: NonNullable<EventData<'heimdall.model.validated'>['variants']>, env: Record<string, string> = {}) => {
      const config = loadConfig({ HEIMDALL_DATA_DIR: join(dir, 'data'), ...env });
      return (await executeStage(stage('parity'), { ...validated, data: { ...validated.data, variants } }, { ...environment, config })) as CloudEvent<'heimdall.model.parity-checked'>;
    };
    // The fp32 model standing in as its own variant: no difference at all.
    const same = await run([{ name: 'int8', onnx: validated.data.onnx, passed: true, checks }]);
    expect(same.type).toBe('heimdall.model.parity-checked');
    expect(same.data.variants).toEqual([{ name: 'int8', onnx: validated.data.onnx, perOutput: { positions: { maxAbs: 0, meanAbs: 0 }, uncertainties: { maxAbs: 0, meanAbs: 0 } }, tolerance: 1e-2, passed: true }]);
    expect(same.data.skippedVariants).toBeUndefined();

    // Another model's outputs against a tolerance nothing meets: not a failed run, held back with the figures.
    const path = join(dir, 'other.pth');
    await writeSmallCheckpoint(path, { seed: 9 });
    const otherExported = (await executeStage(stage('export'), await ingestLocalFile(path, environment.store, () => undefined), environment)) as CloudEvent<'heimdall.model.exported'>;
    const over = await run([{ name: 'int8', onnx: otherExported.data.onnx, passed: true, checks }], { HEIMDALL_INT8_TOLERANCE: '1e-9' });
    expect(over.type).toBe('heimdall.model.parity-checked');
    expect(over.data.passed).toBe(true);
    expect(over.data.variants).toMatchObject([{ name: 'int8', tolerance: 1e-9, passed: false }]);
    expect(over.data.variants![0]!.perOutput.positions!.maxAbs).toBeGreaterThan(1e-9);
    expect(over.data.skippedVariants).toEqual([{ name: 'int8', stage: 'parity', reason: expect.stringMatching(new RegExp(`^positions max \\|diff\\| \\S+, uncertainties max \\|diff\\| \\S+ against the fp32 model on ${SAMPLES} samples exceeds its tolerance 1e-9$`)) }]);

    // One that failed validation is not run, and the reason names its checks.
    const failed = await run([{ name: 'int8', onnx: otherExported.data.onnx, passed: false, checks: [{ name: 'load', passed: false, detail: 'not a valid ONNX model: truncated' }] }]);
    expect(failed.data.variants).toEqual([]);
    expect(failed.data.skippedVariants).toEqual([{ name: 'int8', stage: 'validate', reason: 'failed validation (load: not a valid ONNX model: truncated)' }]);

    // NaN outputs have no figure an event can carry: held back, the fp32 run goes on.
    const poisonedPath = join(dir, 'poisoned.pth');
    await writeSmallCheckpoint(poisonedPath, { poisoned: 'backbone.0.1.0.block.3.bias', values: [Number.NaN] });
    const poisoned = (await executeStage(stage('export'), await ingestLocalFile(poisonedPath, environment.store, () => undefined), environment)) as CloudEvent<'heimdall.model.exported'>;
    const nan = await run([{ name: 'int8', onnx: poisoned.data.onnx, passed: true, checks }]);
    expect(nan.type).toBe('heimdall.model.parity-checked');
    expect(nan.data.variants).toEqual([]);
    expect(nan.data.skippedVariants).toEqual([{ name: 'int8', stage: 'parity', reason: `its outputs on the ${SAMPLES} samples are not all finite` }]);

    // A variant whose file is gone from the store is held back too.
    const gone = await run([{ name: 'int8', onnx: { ...otherExported.data.onnx, uri: otherExported.data.onnx.uri.replace(/model\.onnx$/, 'gone.onnx') }, passed: true, checks }]);
    expect(gone.type).toBe('heimdall.model.parity-checked');
    expect(gone.data.skippedVariants).toMatchObject([{ name: 'int8', stage: 'parity' }]);
  });
});
