/**
 * Production shape on one machine: a checkpoint uploaded to a real S3 server (moto), announced by a
 * MinIO-format notification on a real nats-server, worked by two `heimdall serve` processes, ends
 * registered in a real MLflow server, and Python MLflow loads `models:/heimdall-localization@staging`.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MlflowClient } from '../../shared/registry/mlflow/client.ts';
import { fetchModel, MODELS_BUCKET, modelKey } from '../../shared/storage/object-store.ts';
import { S3ObjectStore } from '../../shared/storage/s3.ts';
import { startNatsServer, type NatsServer } from '../support/nats-server.ts';
import { ensureFixtures } from '../support/oracle.ts';
import { minioNotification, PipelineObserver, startServe, stopServe, waitFor, type WorkerProcess } from '../support/nats-pipeline.ts';
import { MLFLOW_OFFLINE_ENV, startMlflowServer, type MlflowServer } from '../support/services/mlflow-server.ts';
import { startS3Server, type S3Server } from '../support/services/s3-server.ts';
import { runServicesPython } from '../support/services/venv.ts';
import { writeSmallCheckpoint } from '../support/small-model.ts';
import { tempDir } from '../support/temp.ts';

const MODEL = 'heimdall-localization';
const TRAINING_BUCKET = 'training';
const dir = await tempDir('heimdall-nats-services-');
let nats: NatsServer;
let s3: S3Server;
let mlflow: MlflowServer;
let observer: PipelineObserver;
const workers: WorkerProcess[] = [];

beforeAll(async () => {
  [nats, s3, mlflow] = await Promise.all([startNatsServer(), startS3Server(), startMlflowServer()]);
  const env = { NATS_URL: nats.url, HEIMDALL_DATA_DIR: join(dir, 'data'), ...s3.env, ...mlflow.env, ...MLFLOW_OFFLINE_ENV };
  workers.push(startServe(env), startServe(env));
  await waitFor('two workers', () => workers.every((w) => w.stderr().includes('serving')), 60_000);
  observer = await PipelineObserver.connect(nats.url);
  observer.follow();
});
afterAll(async () => {
  await Promise.all(workers.map(stopServe));
  await observer?.close();
  await Promise.all([nats?.stop(), s3?.stop(), mlflow?.stop()]);
});

describe('NATS workers with S3 and MLflow', () => {
  it('register an uploaded, announced checkpoint once, even announced twice to two workers, and Python MLflow loads it', async () => {
    const store = new S3ObjectStore(s3);
    const checkpoint = join(dir, 'epoch 3.pth');
    await writeSmallCheckpoint(checkpoint, { seed: 11 });
    const key = 'runs/2026-11-27/epoch 3.pth';
    const info = await store.putFile(TRAINING_BUCKET, key, checkpoint);
    const notification = minioNotification(TRAINING_BUCKET, key, info);
    await Promise.all([observer.notify(notification), observer.notify(notification)]);

    const registered = await waitFor('the registration', () => observer.of('heimdall.model.registered')[0], 180_000);
    expect(registered.data.registry).toMatchObject({ name: MODEL, version: '1', created: true });
    expect(registered.data.alias).toEqual({ name: 'staging', moved: true });
    const exported = observer.of('heimdall.model.exported')[0]!;
    expect(exported.data.checkpoint.uri).toBe(`s3://${TRAINING_BUCKET}/${key}`);

    // The ONNX object carries the DESIGN §3 metadata, and its bytes hash to what the events say.
    const runId = registered.data.runId;
    const object = await store.stat(MODELS_BUCKET, modelKey(runId));
    expect(object?.metadata).toMatchObject({ 'run-id': runId, 'source-checkpoint': `s3://${TRAINING_BUCKET}/${key}`, opset: '14', 'model-type': 'LocalizationNet', sha256: registered.data.onnx.sha256 });
    // With its weights (model.onnx.data) beside it, as the stages read it.
    const model = await fetchModel(store, store.uri(MODELS_BUCKET, modelKey(runId)));

    // Python MLflow loads the alias; its outputs equal onnxruntime-node's.
    const batch = 2;
    const inputs = new Float32Array(batch * 3 * 128 * 32).map((_, i) => Math.sin(i));
    const inputsFile = join(dir, 'inputs.f32');
    await writeFile(inputsFile, Buffer.from(inputs.buffer));
    const loaded = JSON.parse(await runServicesPython('load_registered_model.py', [`models:/${MODEL}@staging`, inputsFile, String(batch)], { ...mlflow.env, ...MLFLOW_OFFLINE_ENV })) as { onnx: Record<string, number[]>; sha256: string };
    expect(loaded.sha256).toBe(registered.data.onnx.sha256);
    const session = await ort.InferenceSession.create(model.path);
    const ours = await session.run({ mel_spectrogram: new ort.Tensor('float32', inputs, [batch, 3, 128, 32]) });
    await session.release();
    await model.release();
    for (const output of ['positions', 'uncertainties'] as const) {
      const expected = ours[output]!.data as Float32Array;
      expect(Math.max(...loaded.onnx[output]!.map((v, i) => Math.abs(v - expected[i]!)))).toBeLessThanOrEqual(1e-6);
    }

    // Announced twice, worked by two processes: one run, one version.
    await new Promise((r) => setTimeout(r, 2000));
    expect(observer.of('heimdall.checkpoint.created')).toHaveLength(1);
    const api = new MlflowClient({ trackingUri: mlflow.url, username: mlflow.username, password: mlflow.password });
    const { model_versions = [] } = await api.get<{ model_versions?: unknown[] }>('model-versions/search', { filter: `name = '${MODEL}'` });
    expect(model_versions).toHaveLength(1);
  });

  it('stream a 1 GB checkpoint through ingest and export with the worker\'s peak RSS under 1.5x the weights', async () => {
    // One measured worker alone on the consumers: the others stop first (they drain and exit).
    await Promise.all(workers.splice(0).map(stopServe));
    const env = { NATS_URL: nats.url, HEIMDALL_DATA_DIR: join(dir, 'data'), ...s3.env, ...mlflow.env, ...MLFLOW_OFFLINE_ENV };
    const worker = startServe(env, ['--stages', 'ingest,export']);
    workers.push(worker);
    await waitFor('the measured worker', () => worker.stderr().includes('serving'), 60_000);

    // ConvNeXt-base with its Adam state: 1.06 GB on disk, 352 MB of weights.
    const fixture = (await ensureFixtures('base')).files.find((f) => f.name === 'full.pth')!;
    const store = new S3ObjectStore(s3);
    const info = await store.putFile(TRAINING_BUCKET, 'runs/base-with-optimizer.pth', fixture.path);
    expect(info.size).toBeGreaterThan(1e9);
    await observer.notify(minioNotification(TRAINING_BUCKET, 'runs/base-with-optimizer.pth', info));
    const exported = await waitFor('the export', () => observer.of('heimdall.model.exported').find((e) => e.data.checkpoint.uri.endsWith('base-with-optimizer.pth')), 300_000);

    const weightBytes = exported.data.architecture.params * 4;
    const peak = Number(/VmHWM:\s+(\d+) kB/.exec(await readFile(`/proc/${worker.child.pid}/status`, 'utf8'))![1]) * 1024;
    console.info(`1 GB checkpoint through ingest + export: worker peak RSS ${(peak / 1e6).toFixed(0)} MB = ${(peak / weightBytes).toFixed(2)}x the ${(weightBytes / 1e6).toFixed(0)} MB of weights`);
    expect(peak / weightBytes, `peak RSS ${(peak / 1e6).toFixed(0)} MB for ${(weightBytes / 1e6).toFixed(0)} MB of weights`).toBeLessThan(1.5);
  });
});
