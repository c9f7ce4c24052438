/**
 * Validate on variants (DESIGN §3 Variants): each gets the fp32 model's checks; one that fails them
 * is no failed run, its entry says which checks failed; without variants the event has none. And
 * the model's weights' file (model.onnx.data): the model's own, or the model is refused.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../shared/config/index.ts';
import type { CloudEvent, OnnxArtifact } from '../../shared/events/index.ts';
import { createLogger } from '../../shared/logging/index.ts';
import { createAdapters } from '../../shared/pipeline/adapters.ts';
import { executeStage, type StageEnvironment } from '../../shared/pipeline/execute.ts';
import { ingestLocalFile } from '../../shared/pipeline/local-ingest.ts';
import { sha256File } from '../../shared/runtime/sha256.ts';
import { externalDataName } from '../../shared/onnx/model.ts';
import { fetchModel, MODELS_BUCKET, modelKey } from '../../shared/storage/object-store.ts';
import { writeSmallCheckpoint } from '../../test/support/small-model.ts';
import { tempDir } from '../../test/support/temp.ts';
import { stageFunctions } from '../index.ts';

const dir = await tempDir('heimdall-validate-');
let environment: StageEnvironment;
let exported: CloudEvent<'heimdall.model.exported'>;
let other: OnnxArtifact;
const stage = (name: string) => stageFunctions.find((s) => s.name === name)!;

async function exportSeed(seed: number): Promise<CloudEvent<'heimdall.model.exported'>> {
  const path = join(dir, `seed-${seed}.pth`);
  await writeSmallCheckpoint(path, { seed });
  return (await executeStage(stage('export'), await ingestLocalFile(path, environment.store, () => undefined), environment)) as CloudEvent<'heimdall.model.exported'>;
}

const validate = async (variants: { name: 'int8'; onnx: OnnxArtifact }[]) =>
  (await executeStage(stage('validate'), { ...exported, data: { ...exported.data, variants } }, environment)) as CloudEvent<'heimdall.model.validated'>;

beforeAll(async () => {
  const config = loadConfig({ HEIMDALL_DATA_DIR: join(dir, 'data') });
  await mkdir(join(dir, 'scratch'), { recursive: true });
  environment = { ...(await createAdapters(config)), config, logger: createLogger('silent'), scratchDir: join(dir, 'scratch') };
  exported = await exportSeed(5);
  other = (await exportSeed(6)).data.onnx;
});

describe('validate with variants', () => {
  it('checks a variant as the fp32 model: structure, io contract, every batch size', async () => {
    const validated = await validate([{ name: 'int8', onnx: other }]);
    expect(validated.type).toBe('heimdall.model.validated');
    const [variant] = validated.data.variants!;
    expect(variant).toMatchObject({ name: 'int8', onnx: other, passed: true });
    expect(variant!.checks.map((c) => c.name)).toEqual(validated.data.checks.map((c) => c.name));
  });

  it('passes the run with a variant that fails its checks, and says which', async () => {
    const junk = join(dir, 'junk.onnx');
    await writeFile(junk, 'not an ONNX model');
    const sha256 = await sha256File(junk);
    await environment.store.putFile(MODELS_BUCKET, modelKey(exported.data.runId, 'int8'), junk, { sha256 });
    const onnx = { ...other, uri: environment.store.uri(MODELS_BUCKET, modelKey(exported.data.runId, 'int8')), sha256 };
    const validated = await validate([{ name: 'int8', onnx }]);
    expect(validated.type).toBe('heimdall.model.validated');
    expect(validated.data.checks.every((c) => c.passed)).toBe(true);
    expect(validated.data.variants).toEqual([{ name: 'int8', onnx, passed: false, checks: [{ name: 'load', passed: false, detail: expect.stringMatching(/^not a valid ONNX model: /) }] }]);
  });

  it('says nothing of variants when none was exported', async () => {
    const validated = await executeStage(stage('validate'), exported, environment);
    expect(validated.type).toBe('heimdall.model.validated');
    expect(validated.data).not.toHaveProperty('variants');
  });
});

describe('validate of the weights stored beside the model', () => {
  it('checks that the model.onnx.data beside the model is the one its metadata names', async () => {
    const validated = await executeStage(stage('validate'), exported, environment);
    expect(validated.type).toBe('heimdall.model.validated');
    expect(exported.data.onnx.externalData).toMatchObject({ uri: `${exported.data.onnx.uri}.data`, bytes: expect.any(Number) });
    expect((validated as CloudEvent<'heimdall.model.validated'>).data.checks).toContainEqual({ name: 'external-data', passed: true, detail: expect.stringMatching(/^weights in model\.onnx\.data \(/) });
  });

  it("refuses a model whose data file was replaced by another model's, before onnxruntime opens it", async () => {
    // Another run's weights (same architecture, other values) stored under this model's data key, with their own digest.
    const theirs = await fetchModel(environment.store, other.uri);
    const runId = '00c0ffee00c0ffee';
    try {
      const key = modelKey(runId);
      await environment.store.putFile(MODELS_BUCKET, externalDataName(key), theirs.externalData!.path, { sha256: theirs.externalData!.sha256! });
      const ours = await fetchModel(environment.store, exported.data.onnx.uri);
      await environment.store.putFile(MODELS_BUCKET, key, ours.path, { sha256: exported.data.onnx.sha256 });
      await ours.release();
    } finally {
      await theirs.release();
    }
    const onnx = { ...exported.data.onnx, uri: environment.store.uri(MODELS_BUCKET, modelKey(runId)) };
    const failed = await executeStage(stage('validate'), { ...exported, data: { ...exported.data, runId, onnx } }, environment);
    expect(failed).toMatchObject({ type: 'heimdall.pipeline.failed', data: { retriable: false, error: { code: 'INVALID_MODEL', message: expect.stringMatching(/^external-data: model\.onnx\.data has sha256 [0-9a-f]{64}, the model names [0-9a-f]{64}: they are not one model$/) } } });
  });
});
