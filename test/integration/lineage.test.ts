/**
 * Training lineage (DESIGN §3 Lineage) held to real PyTorch and carried by the pipeline: torch.save
 * writes a develop `.pth` and a Lightning-shaped `.ckpt` (test/fixtures/lineage_checkpoints.py),
 * and our exporter's `training` is what torch holds (a 0-d float64 tensor at full precision, a
 * float32 best_model_score to its exact value). Uploaded to a real S3-protocol server (moto) with
 * the trainer's `mlflow-run-id` as user metadata, the Lightning checkpoint runs through ingest,
 * export, validate and parity, and every event carries the same `training`.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stageFunctions } from '../../functions/index.ts';
import { ingestHandler } from '../../functions/ingest/handler.ts';
import { loadConfig } from '../../shared/config/index.ts';
import type { AnyCloudEvent, Training } from '../../shared/events/index.ts';
import { parseNotification } from '../../shared/events/minio.ts';
import { createLogger } from '../../shared/logging/index.ts';
import { exportCheckpoint } from '../../shared/models/localization-net/export.ts';
import { createAdapters } from '../../shared/pipeline/adapters.ts';
import { executeStage, withStageContext, type StageEnvironment } from '../../shared/pipeline/execute.ts';
import type { StageName } from '../../shared/pipeline/stage.ts';
import { ensureOracle, runPython } from '../support/oracle.ts';
import { startS3Server, type S3Server } from '../support/services/s3-server.ts';
import { writeSmallCheckpoint } from '../support/small-model.ts';
import { tempDir } from '../support/temp.ts';

const SCRIPT = join(import.meta.dirname, '../fixtures/lineage_checkpoints.py');
const CONFIG_RUN = '0123456789abcdef0123456789abcdef';
const UPLOAD_RUN = 'fedcba9876543210fedcba9876543210';
const BUCKET = 'training-runs';
const KEY = 'localization/epoch=6-step=700.ckpt';

const dir = await tempDir('heimdall-lineage-');
let expected: { develop: Training; lightning: Training };

beforeAll(async () => {
  const { venvPython } = await ensureOracle();
  const source = join(dir, 'small.pt');
  await writeSmallCheckpoint(source);
  expected = JSON.parse((await runPython(venvPython, SCRIPT, [source, dir, CONFIG_RUN])).trim().split('\n').at(-1)!);
});

describe('the exporter reads what torch.save left beside the weights', () => {
  it('develop .pth: epoch, val_loss, train_loss, a 0-d float64 val_rmse, config flattened, the run id in the config', async () => {
    const result = await exportCheckpoint(join(dir, 'develop.pth'), join(dir, 'develop.onnx'));
    expect(result.checkpoint.layout).toBe('model_state_dict');
    expect(result.training).toEqual(expected.develop);
    expect(result.training?.metrics['val_rmse']).toBe(0.123456789012345);
  });

  it("Lightning .ckpt: epoch, global_step, ModelCheckpoint's best_model_score under val_loss, hyper_parameters", async () => {
    const result = await exportCheckpoint(join(dir, 'lightning.ckpt'), join(dir, 'lightning.onnx'));
    expect(result.checkpoint.layout).toBe('lightning');
    expect(result.training).toEqual(expected.lightning);
    expect(result.training?.metrics['val_loss']).toBe(Math.fround(0.3));
    expect(result.warnings).toEqual([]);
  });
});

describe('the events carry it, from an S3 upload with mlflow-run-id metadata', () => {
  let s3: S3Server;
  let environment: StageEnvironment;
  beforeAll(async () => {
    s3 = await startS3Server();
    const config = loadConfig({ HEIMDALL_DATA_DIR: join(dir, 'data'), HEIMDALL_PARITY_SAMPLES: '1', ...s3.env });
    await mkdir(join(dir, 'scratch'), { recursive: true });
    environment = { ...(await createAdapters(config)), config, logger: createLogger('silent'), scratchDir: join(dir, 'scratch') };
  });
  afterAll(() => s3?.stop());

  it('export, validate and parity each carry the training, its run id from the object metadata', async () => {
    // A trainer's upload, tagged with its MLflow run (S3 lower-cases user metadata names).
    const object = await environment.store.putFile(BUCKET, KEY, join(dir, 'lightning.ckpt'), { 'Mlflow-Run-Id': UPLOAD_RUN });
    const notification = JSON.stringify({
      EventName: 's3:ObjectCreated:Put',
      Key: `${BUCKET}/${encodeURIComponent(KEY)}`,
      Records: [{ eventName: 's3:ObjectCreated:Put', s3: { bucket: { name: BUCKET }, object: { key: encodeURIComponent(KEY), size: object.size, eTag: `"${object.etag}"` } } }],
    });
    const [record] = parseNotification(notification);
    let event: AnyCloudEvent = await withStageContext('ingest', 'lineage', environment, {}, (ctx) => ingestHandler(record!, ctx));
    const training = { ...expected.lightning, mlflowRunId: UPLOAD_RUN };
    const stage = (name: StageName) => stageFunctions.find((s) => s.name === name)!;
    for (const [name, type] of [['export', 'heimdall.model.exported'], ['validate', 'heimdall.model.validated'], ['parity', 'heimdall.model.parity-checked']] as const) {
      event = await executeStage(stage(name), event, environment);
      expect(event.type, JSON.stringify(event.data)).toBe(type);
      expect((event.data as { training?: Training }).training).toEqual(training);
    }
  });
});
