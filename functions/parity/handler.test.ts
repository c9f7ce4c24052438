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
import type { AnyCloudEvent, CloudEvent } from '../../shared/events/index.ts';
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
  environment = { ...createAdapters(config), config, logger: createLogger('silent'), scratchDir: join(dir, 'scratch') };
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
});
