/**
 * `heimdall run` against a real S3-protocol server (moto) and a real MLflow server (basic auth,
 * proxied artifacts): the model lands in the bucket with its metadata and in MLflow so that Python
 * MLflow loads it; registration is idempotent, also when raced; MLflow outages are ridden out,
 * wrong credentials and missing objects fail clearly and leave nothing half-registered.
 */
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stageFunctions } from '../../functions/index.ts';
import { loadConfig } from '../../shared/config/index.ts';
import { createEvent } from '../../shared/events/index.ts';
import { createLogger } from '../../shared/logging/index.ts';
import { executeStage } from '../../shared/pipeline/execute.ts';
import { MlflowClient } from '../../shared/registry/mlflow/client.ts';
import { MlflowModelRegistry } from '../../shared/registry/mlflow/registry.ts';
import type { RegistrationRequest } from '../../shared/registry/model-registry.ts';
import { S3ObjectStore } from '../../shared/storage/s3.ts';
import { CHECKPOINTS_BUCKET, fetchModel, MODELS_BUCKET, modelKey, reportKey } from '../../shared/storage/object-store.ts';
import { heimdallRun } from '../support/heimdall-cli.ts';
import { startHttpProxy } from '../support/services/http-proxy.ts';
import { MLFLOW_OFFLINE_ENV, startMlflowServer, type MlflowServer } from '../support/services/mlflow-server.ts';
import { startS3Server, type S3Server } from '../support/services/s3-server.ts';
import { runServicesPython } from '../support/services/venv.ts';
import { writeSmallCheckpoint } from '../support/small-model.ts';
import { tempDir } from '../support/temp.ts';

const MODEL = 'heimdall-localization';
const FAST_RETRY = { attempts: 4, baseDelayMs: 10, maxDelayMs: 50 };

const dir = await tempDir('heimdall-services-');
let s3: S3Server;
let mlflow: MlflowServer;
let store: S3ObjectStore;
let mlflowApi: MlflowClient;

beforeAll(async () => {
  [s3, mlflow] = await Promise.all([startS3Server(), startMlflowServer()]);
  store = new S3ObjectStore(s3);
  mlflowApi = new MlflowClient({ trackingUri: mlflow.url, username: mlflow.username, password: mlflow.password });
});
afterAll(async () => {
  await Promise.all([s3?.stop(), mlflow?.stop()]);
});

/** `heimdall run` with S3 and MLflow configured, on a fresh small checkpoint (seed -> distinct model). */
async function runOnServices(seed: number, env: Record<string, string> = {}) {
  const checkpoint = join(dir, `small-${seed}.pth`);
  await writeSmallCheckpoint(checkpoint, { seed });
  return heimdallRun(checkpoint, join(dir, `work-${seed}`), { ...s3.env, ...mlflow.env, ...MLFLOW_OFFLINE_ENV, ...env });
}

async function versionsWithSha256(sha256: string): Promise<string[]> {
  const { model_versions = [] } = await mlflowApi.get<{ model_versions?: Array<{ version: string }> }>('model-versions/search', { filter: `name = '${MODEL}' and tags.sha256 = '${sha256}'` });
  return model_versions.map((v) => v.version);
}

describe('heimdall run with S3 and MLflow', () => {
  const batch = 3;
  const inputs = new Float32Array(batch * 3 * 128 * 32).map(() => Math.random() * 2 - 1);
  let first: Awaited<ReturnType<typeof runOnServices>>;
  /** What Python MLflow sees of `models:/heimdall-localization@staging` (load_registered_model.py). */
  let loaded: {
    onnx: Record<string, number[]>;
    pyfunc: Record<string, number[]>;
    sha256: string;
    flavors: string[];
    signature: { inputs: string; outputs: string };
    version: { version: string; source: string; tags: Record<string, string>; aliases: string[] };
    run: { params: Record<string, string>; metrics: string[]; status: string; artifacts: string[] };
  };
  beforeAll(async () => {
    first = await runOnServices(1);
    if (first.code !== 0) return;
    const inputsFile = join(dir, 'inputs.f32');
    await writeFile(inputsFile, Buffer.from(inputs.buffer));
    loaded = JSON.parse(await runServicesPython('load_registered_model.py', [`models:/${MODEL}@staging`, inputsFile, String(batch)], { ...mlflow.env, ...MLFLOW_OFFLINE_ENV }));
  });

  it('registers the model in MLflow so that Python MLflow loads it, with the outputs of onnxruntime-node', async () => {
    expect(first.report.error).toBeUndefined();
    expect(first.code).toBe(0);
    expect(first.report.registry).toMatchObject({ name: MODEL, version: '1', created: true });

    // model.onnx and model.onnx.data downloaded side by side, as every stage reads a model.
    const model = await fetchModel(store, store.uri(MODELS_BUCKET, modelKey(first.report.runId)));
    const session = await ort.InferenceSession.create(model.path);
    const expected = await session.run({ mel_spectrogram: new ort.Tensor('float32', inputs, [batch, 3, 128, 32]) });
    await session.release();
    await model.release();

    expect(loaded.sha256).toBe(first.report.onnx!.sha256);
    expect(loaded.flavors).toEqual(['onnx', 'python_function']);
    expect(JSON.parse(loaded.signature.inputs)).toEqual([{ name: 'mel_spectrogram', type: 'tensor', 'tensor-spec': { dtype: 'float32', shape: [-1, 3, 128, 32] } }]);
    expect(JSON.parse(loaded.signature.outputs)).toEqual([
      { name: 'positions', type: 'tensor', 'tensor-spec': { dtype: 'float32', shape: [-1, 2] } },
      { name: 'uncertainties', type: 'tensor', 'tensor-spec': { dtype: 'float32', shape: [-1, 2] } },
    ]);
    for (const flavor of ['onnx', 'pyfunc'] as const) {
      for (const output of ['positions', 'uncertainties'] as const) {
        const ours = expected[output]!.data as Float32Array;
        const theirs = loaded[flavor][output]!;
        expect(theirs).toHaveLength(batch * 2);
        const maxDiff = Math.max(...theirs.map((v, i) => Math.abs(v - ours[i]!)));
        expect(maxDiff, `${flavor} ${output}`).toBeLessThanOrEqual(1e-6);
      }
    }
  });

  it('records one MLflow run per model: params, metrics and the report', () => {
    const { runId, onnx } = first.report;
    const checkpointUri = `s3://${CHECKPOINTS_BUCKET}/${runId}/small-1.pth`;
    // MLflow 3: the version's source is the LoggedModel holding the model directory.
    expect(loaded.version).toMatchObject({ version: '1', aliases: ['staging'], source: expect.stringMatching(/^models:\/m-[0-9a-f]{32}$/) });
    expect(loaded.version.tags).toMatchObject({ sha256: onnx!.sha256, onnx_uri: `s3://${MODELS_BUCKET}/${modelKey(runId)}`, checkpoint_uri: checkpointUri });
    expect(loaded.run.status).toBe('FINISHED');
    expect(loaded.run.params).toMatchObject({ variant: 'custom', opset: '14', sha256: onnx!.sha256, checkpoint_uri: checkpointUri });
    expect(loaded.run.metrics).toEqual(expect.arrayContaining(['latency_p50_batch1_ms', 'throughput_batch8', 'parity_max_abs_positions', 'model_bytes']));
    // The model directory lives in the LoggedModel (test/integration/mlflow3.test.ts); the run keeps the report.
    expect(loaded.run.artifacts).toEqual(['report.json']);
  });

  it('stores the ONNX model in the bucket with the metadata of DESIGN §3 and its sha256', async () => {
    const { runId, onnx } = first.report;
    expect(onnx!.uri).toBe(`s3://${MODELS_BUCKET}/${modelKey(runId)}`);
    const info = await store.stat(MODELS_BUCKET, modelKey(runId));
    expect(info?.metadata).toEqual({
      sha256: onnx!.sha256,
      'source-checkpoint': `s3://${CHECKPOINTS_BUCKET}/${runId}/small-1.pth`,
      'source-checkpoint-sha256': expect.stringMatching(new RegExp(`^${runId}[0-9a-f]{48}$`)),
      'run-id': runId,
      opset: '14',
      'export-date': expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$/),
      'model-type': 'LocalizationNet',
    });
    const model = await store.fetchFile(MODELS_BUCKET, modelKey(runId));
    expect(model.sha256).toBe(onnx!.sha256);
    await model.release();
    // Its weights beside it, uploaded first, with the same metadata and their own sha256, which the model names.
    const exported = first.report.events.find((e) => e.type === 'heimdall.model.exported')!.data as { onnx: { externalData: { uri: string; sha256: string; bytes: number } } };
    expect(exported.onnx.externalData.uri).toBe(`s3://${MODELS_BUCKET}/${modelKey(runId)}.data`);
    const data = await store.fetchFile(MODELS_BUCKET, `${modelKey(runId)}.data`);
    expect([data.sha256, data.size]).toEqual([exported.onnx.externalData.sha256, exported.onnx.externalData.bytes]);
    await data.release();
    expect((await store.stat(MODELS_BUCKET, `${modelKey(runId)}.data`))?.metadata).toEqual({ ...info!.metadata, sha256: exported.onnx.externalData.sha256 });
    // The report carries no sha256 of its own model's bytes: the store reads it back (it checks a sha256 it finds).
    expect(await store.stat(MODELS_BUCKET, reportKey(runId))).toMatchObject({ metadata: { 'run-id': runId } });
    const report = await store.fetchFile(MODELS_BUCKET, reportKey(runId));
    expect(JSON.parse(await readFile(report.path, 'utf8'))).toMatchObject({ runId });
    await report.release();
  });

  it('registers the same checkpoint once, however often it runs', async () => {
    const again = await runOnServices(1);
    expect(again.code).toBe(0);
    expect(again.report.registry).toMatchObject({ name: MODEL, version: '1', created: false });
    expect(await versionsWithSha256(first.report.onnx!.sha256)).toEqual(['1']);
  });

  it('rides out MLflow answering 503 for a while', async () => {
    const proxy = await startHttpProxy(mlflow.url);
    try {
      proxy.failNext(4);
      const result = await runOnServices(2, { MLFLOW_TRACKING_URI: proxy.url });
      expect(result.report.error).toBeUndefined();
      expect(result.report.registry).toMatchObject({ version: '2', created: true });
      // The benchmark's baseline came from MLflow: version 1 held the alias.
      expect(result.report.benchmark!.baseline).toMatchObject({ version: '1', ratio: expect.any(Number) });
      expect(proxy.requests).toBeGreaterThan(4);
    } finally {
      await proxy.stop();
    }
  });

  it('fails with REGISTRY_AUTH on wrong MLflow credentials, registering nothing', async () => {
    const result = await runOnServices(3, { MLFLOW_TRACKING_PASSWORD: 'not-the-password' });
    expect(result.code).toBe(1);
    // The benchmark asks the registry for its baseline first: that is where the credentials are refused.
    expect(result.report.error).toMatchObject({ stage: 'benchmark', code: 'REGISTRY_AUTH' });
    expect(result.report.events.at(-1)).toMatchObject({ type: 'heimdall.pipeline.failed', data: { retriable: false } });
    expect(result.stderr).not.toContain('not-the-password');
    expect(await versionsWithSha256(result.report.onnx!.sha256)).toEqual([]);
  });

  it('fails with OBJECT_NOT_FOUND for a checkpoint missing in the bucket, asking once', async () => {
    const proxy = await startHttpProxy(s3.endpoint);
    try {
      const config = loadConfig({ HEIMDALL_DATA_DIR: join(dir, 'missing'), ...s3.env, S3_ENDPOINT: proxy.url });
      const exportStage = stageFunctions.find((s) => s.name === 'export')!;
      const created = createEvent('heimdall.checkpoint.created', {
        stage: 'ingest',
        source: 'heimdall/ingest',
        data: { bucket: CHECKPOINTS_BUCKET, key: 'nowhere/gone.pth', size: 1, etag: 'x', runId: '0123456789abcdef' },
      });
      const environment = { store: new S3ObjectStore(config.s3!), registry: new MlflowModelRegistry({ trackingUri: mlflow.url, experimentName: 'unused' }), config, logger: createLogger('silent'), scratchDir: dir };
      const failed = await executeStage(exportStage, created, environment);
      expect(failed).toMatchObject({ type: 'heimdall.pipeline.failed', data: { stage: 'export', error: { code: 'OBJECT_NOT_FOUND' }, retriable: false } });
      expect(proxy.requests).toBe(1);
    } finally {
      await proxy.stop();
    }
  });
});

describe('MlflowModelRegistry on a real MLflow server', () => {
  let modelFile: string;
  beforeAll(async () => {
    modelFile = join(dir, 'model.onnx');
    await writeFile(modelFile, randomBytes(4096));
  });

  const registry = (experimentName: string, overrides: Partial<ConstructorParameters<typeof MlflowModelRegistry>[0]> = {}) =>
    new MlflowModelRegistry({ trackingUri: mlflow.url, username: mlflow.username, password: mlflow.password, experimentName, ...overrides });
  const request = (name: string, overrides: Partial<RegistrationRequest> = {}): RegistrationRequest => {
    const sha256 = randomBytes(32).toString('hex');
    return { name, sha256, pipelineRunId: sha256.slice(0, 16), modelPath: modelFile, modelUri: 's3://heimdall-models/x/model.onnx', tags: { latency_p50_batch1_ms: '1.5' }, params: { variant: 'tiny' }, metrics: { model_bytes: 4096 }, report: { ok: true }, ...overrides };
  };

  it('registers one version when several workers register the same model at once', async () => {
    const same = request('raced-model');
    const results = await Promise.all([1, 2, 3].map(() => registry('raced').register(same)));
    expect(new Set(results.map((r) => r.version.version))).toEqual(new Set(['1']));
    expect(results.filter((r) => r.created)).toHaveLength(1);
    const { model_versions = [] } = await mlflowApi.get<{ model_versions?: unknown[] }>('model-versions/search', { filter: "name = 'raced-model'" });
    expect(model_versions).toHaveLength(1);
    const experiment = await mlflowApi.get<{ experiment: { experiment_id: string } }>('experiments/get-by-name', { experiment_name: 'raced' });
    const { runs = [] } = await mlflowApi.post<{ runs?: unknown[] }>('runs/search', { experiment_ids: [experiment.experiment.experiment_id], run_view_type: 'ACTIVE_ONLY' });
    expect(runs).toHaveLength(1);
    expect(await registry('raced').findVersionBySha256('raced-model', same.sha256)).toMatchObject({ version: '1', aliases: [], tags: { sha256: same.sha256 } });
  });

  it('restores a deleted experiment and registers into it', async () => {
    const { experiment_id } = await mlflowApi.post<{ experiment_id: string }>('experiments/create', { name: 'deleted-once' });
    await mlflowApi.post('experiments/delete', { experiment_id });
    await registry('deleted-once').register(request('restored-model'));
    const { experiment } = await mlflowApi.get<{ experiment: { experiment_id: string; lifecycle_stage: string } }>('experiments/get-by-name', { experiment_name: 'deleted-once' });
    expect(experiment).toMatchObject({ experiment_id, lifecycle_stage: 'active' });
  });

  it('leaves no model version when registration fails on the way', async () => {
    const broken = request('half-model', { modelPath: join(dir, 'vanished.onnx') });
    await expect(registry('half').register(broken)).rejects.toThrow();
    expect(await registry('half').findVersionBySha256('half-model', broken.sha256)).toBeUndefined();
    // Its LoggedModel, created before the upload failed, is deleted (search leaves deleted ones out).
    const { experiment } = await mlflowApi.get<{ experiment: { experiment_id: string } }>('experiments/get-by-name', { experiment_name: 'half' });
    const { models = [] } = await mlflowApi.post<{ models?: unknown[] }>('logged-models/search', { experiment_ids: [experiment.experiment_id] });
    expect(models).toEqual([]);
  });

  it('authenticates with a bearer token, and maps a refused one to REGISTRY_AUTH', async () => {
    const basic = `Basic ${Buffer.from(`${mlflow.username}:${mlflow.password}`).toString('base64')}`;
    const gateway = await startHttpProxy(mlflow.url, { authorize: (header) => (header === 'Bearer good-token' ? basic : undefined) });
    try {
      const viaToken = registry('bearer', { trackingUri: gateway.url, username: undefined, password: undefined, token: 'good-token' });
      const registered = await viaToken.register(request('bearer-model'));
      expect(await viaToken.findVersionBySha256('bearer-model', registered.version.tags['sha256']!)).toMatchObject({ version: '1' });
      const wrong = registry('bearer', { trackingUri: gateway.url, username: undefined, password: undefined, token: 'bad-token', retry: FAST_RETRY });
      await expect(wrong.getVersionByAlias('bearer-model', 'candidate')).rejects.toMatchObject({ code: 'REGISTRY_AUTH' });
    } finally {
      await gateway.stop();
    }
  });

  it('maps an invalid request to REGISTRY_REJECTED and an unreachable server to REGISTRY_ERROR', async () => {
    await expect(mlflowApi.post('runs/create', { experiment_id: '999999' })).rejects.toMatchObject({ code: 'REGISTRY_REJECTED', mlflowCode: 'RESOURCE_DOES_NOT_EXIST' });
    const nowhere = registry('x', { trackingUri: 'http://127.0.0.1:9', retry: FAST_RETRY });
    await expect(nowhere.findVersionBySha256('m', 'a'.repeat(64))).rejects.toMatchObject({ code: 'REGISTRY_ERROR', message: expect.stringContaining('cannot reach MLflow') });
  });
});
