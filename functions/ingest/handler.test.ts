/**
 * Ingest of an uploaded `.onnx` model (already exported: straight to validate) on the embedded
 * store: the run id is its sha256, and a file
 * that is not a model is INVALID_MODEL (never a retriable IO_ERROR).
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../shared/config/index.ts';
import { isRetriable, type HeimdallError } from '../../shared/errors/index.ts';
import { parseTraceparent, runIdOf, type AnyCloudEvent } from '../../shared/events/index.ts';
import type { ObjectRecord } from '../../shared/events/minio.ts';
import { createLogger } from '../../shared/logging/index.ts';
import { createAdapters } from '../../shared/pipeline/adapters.ts';
import { executeStage, withStageContext, type StageEnvironment } from '../../shared/pipeline/execute.ts';
import { ingestLocalFile } from '../../shared/pipeline/local-ingest.ts';
import { fetchUri, MODELS_BUCKET, modelKey } from '../../shared/storage/object-store.ts';
import { writeSmallCheckpoint } from '../../test/support/small-model.ts';
import { tempDir } from '../../test/support/temp.ts';
import { stageFunctions } from '../index.ts';
import { ingestHandler } from './handler.ts';

const UPLOADS = 'model-uploads';
const dir = await tempDir('heimdall-ingest-');
let environment: StageEnvironment;
let onnxPath: string;

/** Puts a file in the uploads bucket and hands ingest the record its notification would carry. */
async function ingestUpload(key: string, path: string, versionId?: string) {
  const info = await environment.store.putFile(UPLOADS, key, path);
  const record: ObjectRecord = { eventName: 's3:ObjectCreated:Put', bucket: UPLOADS, key, size: info.size, etag: info.etag, ...(versionId ? { versionId } : {}) };
  return withStageContext('ingest', 'upload', environment, {}, (ctx) => ingestHandler(record, ctx));
}

beforeAll(async () => {
  const config = loadConfig({ HEIMDALL_DATA_DIR: join(dir, 'data') });
  await mkdir(join(dir, 'scratch'), { recursive: true });
  environment = { ...(await createAdapters(config)), config, logger: createLogger('silent'), scratchDir: join(dir, 'scratch') };
  const checkpoint = join(dir, 'small.pth');
  await writeSmallCheckpoint(checkpoint);
  const exported = await executeStage(stageFunctions.find((s) => s.name === 'export')!, await ingestLocalFile(checkpoint, environment.store, () => undefined), environment);
  const model = await fetchUri(environment.store, (exported as AnyCloudEvent & { data: { onnx: { uri: string } } }).data.onnx.uri);
  onnxPath = join(dir, 'exported.onnx');
  await writeFile(onnxPath, await readFile(model.path));
  await model.release();
});

describe('ingest of an uploaded ONNX model', () => {
  it('announces it as exported under its sha256, placed at the run\'s model key', async () => {
    const sha256 = createHash('sha256').update(await readFile(onnxPath)).digest('hex');
    const event = await ingestUpload('uploads/model.onnx', onnxPath);
    expect(event).toMatchObject({
      type: 'heimdall.model.exported',
      data: {
        runId: runIdOf(sha256),
        checkpoint: { uri: environment.store.uri(UPLOADS, 'uploads/model.onnx'), sha256, format: 'onnx' },
        onnx: { uri: environment.store.uri(MODELS_BUCKET, modelKey(runIdOf(sha256))), sha256, opset: 14 },
        architecture: { variant: 'custom', params: expect.any(Number) },
      },
    });
    expect((event.data as { architecture: { params: number } }).architecture.params).toBeGreaterThan(0);
  });

  it('starts a new trace for each run it starts (random trace id, sampled), about the uploaded key', async () => {
    const [first, second] = [await ingestUpload('uploads/model.onnx', onnxPath), await ingestUpload('uploads/again.onnx', onnxPath)];
    expect(first).toMatchObject({ source: 'heimdall/ingest', subject: 'uploads/model.onnx', traceparent: expect.stringMatching(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/) });
    expect(parseTraceparent(first.traceparent!)?.traceId).not.toBe(parseTraceparent(second.traceparent!)?.traceId);
  });

  it('refuses a file that is not a model with INVALID_MODEL, not retriable', async () => {
    const path = join(dir, 'not-a-model.onnx');
    await writeFile(path, 'weights, honestly');
    const error = await ingestUpload('uploads/not-a-model.onnx', path).then(
      () => undefined,
      (e: unknown) => e as HeimdallError,
    );
    expect(error).toMatchObject({ code: 'INVALID_MODEL', message: expect.stringMatching(/^not a valid ONNX model: /) });
    expect(isRetriable(error!.code)).toBe(false);
  });
});
